"""Durable state: the term and vote, and the incarnation counter.

Written atomically (temp file, fsync, rename, fsync of the directory) so a
crash leaves either the old or the new state, never a torn one. A corrupt file
is an error an operator must look at: silently restarting from term 0 could
let this node vote twice in a term it already voted in. The way out is
``electiond --recover-state`` (see ``recover``), which keeps the old file and
starts the node in a mode where it votes only in terms it has not seen yet.
"""

from __future__ import annotations

import errno
import json
import os
import stat
import time
from dataclasses import dataclass
from typing import Any

from electiond.protocols.base import PersistedState

STATE_FILE = "state.json"
# a real state file is under 200 bytes; the cap keeps a runaway file from
# costing memory and bounds the nesting the parser can be asked to walk
MAX_STATE_BYTES = 64 * 1024
# JSON numbers beyond 2^53 lose precision in most other readers, and a term
# near 2^64 could never be incremented on the wire (msgpack uint64)
MAX_COUNTER = 2**53
MAX_VOTED_FOR_CHARS = 255
REQUIRED_KEYS = ("term", "voted_for", "incarnation")
OPTIONAL_KEYS = ("recovering",)
RECOVER_HINT = "run 'electiond --recover-state' to set it aside and rejoin safely"
# what a start from a recovered file does; the protocols act on PersistedState.recovering
RECOVERING_MEANS = ("with quorum-lease this node votes only after it has learnt the current term from its "
                    "peers, and then only in later terms; bully and ring adopt the cluster's epoch")


class StateError(Exception):
    pass


def _counter(data: dict[str, Any], key: str) -> int:
    value = data[key]
    # bool is an int subclass: `true` must not pass as term 1
    if not isinstance(value, int) or isinstance(value, bool):
        raise ValueError(f"{key} must be an integer, not {_json_type(value)}")
    if not 0 <= value <= MAX_COUNTER:
        shown = str(value) if len(str(value)) <= 24 else f"of {len(str(value))} digits"
        raise ValueError(f"{key} {shown} is outside [0, 2^53]")
    return value


def _json_type(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def _decode(raw: bytes) -> dict[str, Any]:
    """The JSON object in raw; ValueError says what is wrong, in a few words."""
    if len(raw) > MAX_STATE_BYTES:
        raise ValueError(f"larger than {MAX_STATE_BYTES // 1024} KiB")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(f"not UTF-8 text (byte {exc.start})") from None
    if not text.strip():
        raise ValueError("empty")
    try:
        data = json.loads(text)
    except RecursionError:
        raise ValueError("nested too deeply") from None
    except ValueError as exc:  # JSONDecodeError, and int() refusing thousands of digits
        first_line = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ValueError(f"not valid JSON ({first_line})") from None
    if not isinstance(data, dict):
        raise ValueError(f"not a JSON object (it is {_json_type(data)})")
    return data


def parse_state(raw: bytes) -> tuple[PersistedState, int]:
    """(state, incarnation) from a state file's bytes; ValueError names the fault."""
    data = _decode(raw)
    missing = [key for key in REQUIRED_KEYS if key not in data]
    if missing:
        raise ValueError(f"missing key(s) {', '.join(missing)}")
    unknown = sorted(key for key in data if key not in REQUIRED_KEYS + OPTIONAL_KEYS)
    if unknown:
        raise ValueError(f"unknown key(s) {', '.join(repr(k)[:40] for k in unknown[:5])}")
    term = _counter(data, "term")
    incarnation = _counter(data, "incarnation")
    voted_for = data["voted_for"]
    if voted_for is not None:
        if not isinstance(voted_for, str):
            raise ValueError(f"voted_for must be null or a string, not {_json_type(voted_for)}")
        if not 1 <= len(voted_for) <= MAX_VOTED_FOR_CHARS:
            raise ValueError(f"voted_for must be 1 to {MAX_VOTED_FOR_CHARS} characters, not {len(voted_for)}")
    recovering = data.get("recovering", False)
    if not isinstance(recovering, bool):
        raise ValueError(f"recovering must be true or false, not {_json_type(recovering)}")
    return PersistedState(term, voted_for, recovering=recovering), incarnation


def _read_capped(path: str) -> bytes:
    # O_NONBLOCK: a FIFO planted as state.json must not hang the start
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, "not a regular file")
        return os.read(fd, MAX_STATE_BYTES + 1)  # a regular file's read is not short before EOF
    finally:
        os.close(fd)


class StateStore:
    def __init__(self, directory: str) -> None:
        self.directory = directory
        self.path = os.path.join(directory, STATE_FILE)
        self.state = PersistedState()
        self.incarnation = 0

    def load(self) -> PersistedState | None:
        """The persisted state, or None on first start. Raises StateError
        with one line naming the file and the fault."""
        try:
            raw = _read_capped(self.path)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise StateError(f"cannot read {self.path}: {exc.strerror or exc}; {RECOVER_HINT}") from None
        try:
            state, incarnation = parse_state(raw)
        except ValueError as exc:
            raise StateError(
                f"{self.path} is corrupt: {exc}; refusing to start from term 0 (it could vote twice in a "
                f"term); {RECOVER_HINT}"
            ) from None
        self.state = state
        self.incarnation = incarnation
        return self.state

    def begin_incarnation(self) -> int:
        """A number larger than any earlier start's, even if the wall clock stepped back."""
        self.incarnation = max(self.incarnation + 1, time.time_ns() // 1_000_000)
        try:
            self._write()
        except OSError as exc:  # a read-only or full state directory: the operator must act
            raise StateError(f"cannot write {self.path}: {exc.strerror or exc}") from None
        return self.incarnation

    def save(self, state: PersistedState) -> None:
        """Store ``state``; raises OSError when it did not land (then the file,
        and ``self.state``, still hold the previous state)."""
        if state == self.state:
            return
        previous, self.state = self.state, state
        try:
            self._write()
        except BaseException:
            self.state = previous  # a later save of the same state must write again
            raise

    def _write(self) -> None:
        os.makedirs(self.directory, mode=0o750, exist_ok=True)
        record: dict[str, Any] = {
            "term": self.state.term, "voted_for": self.state.voted_for, "incarnation": self.incarnation,
        }
        if self.state.recovering:
            record["recovering"] = True
        payload = json.dumps(record).encode()
        tmp = f"{self.path}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o640)
        try:
            if os.write(fd, payload) != len(payload):
                # a short write is a full disk that did not say so
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), tmp)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(tmp, self.path)
        dir_fd = os.open(self.directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


@dataclass(frozen=True, slots=True)
class Recovery:
    """What ``recover`` did, for the operator's message."""

    path: str
    kept_aside: str | None  # where the old file went; None when there was none
    old_fault: str | None  # why the old file was unusable; None when it parsed
    incarnation: int


def _salvage_incarnation(raw: bytes) -> int:
    """The old incarnation if the file still says one plainly, else 0 (the
    next start takes the wall clock in milliseconds anyway)."""
    try:
        data = _decode(raw)
        return _counter(data, "incarnation")
    except (ValueError, KeyError):
        return 0


def recover(directory: str, now_wall_s: float) -> Recovery:
    """Set the state file aside and write a fresh one that marks this node as
    recovering. The caller holds the state directory's lock. Raises StateError."""
    store = StateStore(directory)
    kept_aside: str | None = None
    old_fault: str | None = None
    incarnation = 0
    try:
        raw: bytes | None = _read_capped(store.path)
    except FileNotFoundError:
        raw = None
    except OSError as exc:
        raw = None
        old_fault = f"unreadable ({exc.strerror or exc})"
    if raw is not None:
        try:
            incarnation = parse_state(raw)[1]
        except ValueError as exc:
            old_fault = str(exc)
            incarnation = _salvage_incarnation(raw)
    moved = False
    if os.path.lexists(store.path):
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(now_wall_s))
        kept_aside = f"{store.path}.corrupt-{stamp}"
        suffix = 1
        while os.path.lexists(kept_aside):  # two recoveries in one second keep both files
            kept_aside = f"{store.path}.corrupt-{stamp}.{suffix}"
            suffix += 1
        try:
            # a second name, so the old file stays in place until the new one
            # replaces it: a failed write must not leave no file at all (a
            # start without one would not know it is recovering)
            os.link(store.path, kept_aside, follow_symlinks=False)
        except OSError:
            try:  # a directory cannot be linked
                os.rename(store.path, kept_aside)
                moved = True
            except OSError as exc:
                raise StateError(f"cannot move {store.path} aside: {exc.strerror or exc}") from None
    store.state = PersistedState(0, None, recovering=True)
    store.incarnation = incarnation
    try:
        store._write()
    except OSError as exc:
        if moved and kept_aside is not None:
            try:
                os.rename(kept_aside, store.path)
            except OSError:
                pass
        raise StateError(f"cannot write {store.path}: {exc.strerror or exc}") from None
    return Recovery(store.path, kept_aside, old_fault, incarnation)
