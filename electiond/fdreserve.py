"""A few spare file descriptors, held back for the work that must not fail.

A daemon out of descriptors (EMFILE: its own limit; ENFILE: the system's) can
still do the few things that keep the cluster safe — write its term and vote,
start the promote hook whose failure makes it step down — if it kept some
descriptors aside while it could. The reserve holds them open on /dev/null.
Work that hits EMFILE/ENFILE is retried once with the reserve released
(``call`` for synchronous work such as a state write, ``released`` around
anything else), and the reserve is taken back right after.

Only the event loop's thread touches a reserve. Synchronous work inside
``released()`` is safe from other tasks: nothing else runs until it returns, so
what it closes is what it reopens. Around an ``await`` other tasks may take the
freed descriptors first; taking back is then best effort and the shortfall is
made up on the next ``replenish()`` (every ``released()`` starts with one).
"""

from __future__ import annotations

import errno
import logging
import os
import resource
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

log = logging.getLogger("electiond.fdreserve")

# a state write needs 2 (temp file, directory). Starting a hook needs 5 under
# asyncio's loop and 9 under uvloop (output pipe, exec-error pipes, /dev/null
# for stdin, libuv's own; measured by lowering RLIMIT_NOFILE until it failed);
# twice that leaves room for whatever a newer uvloop needs
DEFAULT_RESERVE = 16
EXHAUSTED_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE})

T = TypeVar("T")


def is_exhaustion(exc: BaseException) -> bool:
    """Whether an error means "out of file descriptors"."""
    return isinstance(exc, OSError) and exc.errno in EXHAUSTED_ERRNOS


class DescriptorReserve:
    def __init__(self, size: int = DEFAULT_RESERVE) -> None:
        self.size = size
        self._fds: list[int] = []
        self.uses = 0  # how often the reserve was released, for status/metrics
        self.replenish()

    @property
    def held(self) -> int:
        return len(self._fds)

    def replenish(self) -> int:
        """Take descriptors back up to ``size``; returns how many are held."""
        while len(self._fds) < self.size:
            try:
                self._fds.append(os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC))
            except OSError:
                break  # still exhausted: try again on the next use
        return len(self._fds)

    def _release(self) -> int:
        freed = len(self._fds)
        for fd in self._fds:
            try:
                os.close(fd)
            except OSError:
                pass
        self._fds.clear()
        return freed

    @contextmanager
    def released(self) -> Iterator[int]:
        """Free the reserve for the body (yields how many were freed), then take it back."""
        self.replenish()
        freed = self._release()
        self.uses += 1
        try:
            yield freed
        finally:
            if self.replenish() < self.size:
                log.warning("descriptor reserve: only %d of %d taken back (still short of descriptors)",
                            len(self._fds), self.size)

    def call(self, work: Callable[[], T], what: str) -> T:
        """Run ``work``; if it runs out of descriptors, run it once more with
        the reserve released. Other errors, and a second failure, propagate."""
        try:
            return work()
        except OSError as exc:
            if not is_exhaustion(exc):
                raise
            log.warning("%s: out of file descriptors (%s); retrying with the %d reserved",
                        what, exc.strerror or exc, len(self._fds))
        with self.released():
            return work()

    def status(self) -> dict[str, int | None]:
        """For ``electionctl status``: the reserve, and how close the process is to its limit."""
        try:
            open_now: int | None = len(os.listdir("/proc/self/fd"))
        except OSError:  # no /proc, or no descriptor left to list it with
            open_now = None
        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
        return {
            "open": open_now,
            "limit": None if soft == resource.RLIM_INFINITY else soft,
            "reserve_held": len(self._fds),
            "reserve_size": self.size,
            "reserve_uses": self.uses,
        }

    def close(self) -> None:
        self._release()
