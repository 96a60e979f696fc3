"""One daemon per state directory: an exclusive flock held for the process's life.

Everything a daemon shares with a second copy of itself hangs off the state
directory: state.json (two writers could each vote once in the same term),
hooks.token (the second would kill the first's hooks), the startup demote hook
(it would drop a live leader's VIP) and, by convention, the control socket.
So the lock is taken before any of them is touched, and ``--cleanup`` and
``--recover-state`` take it too. The kernel drops a flock when its holder
dies, however it dies, so a crash never leaves a stale lock behind; the PID
written into the file is only there to name the holder in the refusal.
"""

from __future__ import annotations

import errno
import fcntl
import os

LOCK_FILE = "electiond.lock"
EX_TEMPFAIL = 75  # sysexits.h: the directory is busy now; it may not be later


class LockHeld(Exception):
    def __init__(self, path: str, holder_pid: int | None) -> None:
        who = f"PID {holder_pid}" if holder_pid else "another process (PID not yet written)"
        super().__init__(f"{path} is locked by {who}: another electiond uses this state directory")
        self.path = path
        self.holder_pid = holder_pid


class LockError(Exception):
    pass


class StateLock:
    """An acquired lock; keep the object (its descriptor) alive as long as it must hold."""

    def __init__(self, path: str, fd: int) -> None:
        self.path = path
        self._fd: int | None = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the only descriptor releases the flock
            self._fd = None


def _read_pid(fd: int) -> int | None:
    try:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def acquire(directory: str) -> StateLock:
    """Lock <directory>/electiond.lock or raise LockHeld (naming the holder) or LockError."""
    path = os.path.join(directory, LOCK_FILE)
    try:
        os.makedirs(directory, mode=0o750, exist_ok=True)
        # os.open descriptors are not inherited: a hook left running by a dead
        # daemon must not keep its successor locked out
        # read-only: the lock must not keep the file system busy, or the state
        # directory could not be remounted read-only (nor its write faults
        # tested); flock works on any descriptor, and the PID goes in through a
        # descriptor of its own that is closed at once
        fd = os.open(path, os.O_RDONLY | os.O_CREAT, 0o640)
    except OSError as exc:
        raise LockError(f"cannot open {path}: {exc.strerror or exc}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        holder = _read_pid(fd)
        os.close(fd)
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
            raise LockHeld(path, holder) from None
        raise LockError(f"cannot lock {path}: {exc.strerror or exc}") from None
    try:
        write_fd = os.open(path, os.O_WRONLY | os.O_TRUNC)
        try:
            os.write(write_fd, f"{os.getpid()}\n".encode())
        finally:
            os.close(write_fd)
    except OSError as exc:
        os.close(fd)
        raise LockError(f"cannot write {path}: {exc.strerror or exc}") from None
    return StateLock(path, fd)
