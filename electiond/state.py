"""Durable state: the term and vote, and the incarnation counter.

Written atomically (temp file, fsync, rename, fsync of the directory) so a
crash leaves either the old or the new state, never a torn one. A corrupt file
is an error an operator must look at: silently restarting from term 0 could
let this node vote twice in a term it already voted in.
"""

from __future__ import annotations

import errno
import json
import os
import time

from electiond.protocols.base import PersistedState

STATE_FILE = "state.json"


class StateError(Exception):
    pass


class StateStore:
    def __init__(self, directory: str) -> None:
        self.directory = directory
        self.path = os.path.join(directory, STATE_FILE)
        self.state = PersistedState()
        self.incarnation = 0

    def load(self) -> PersistedState | None:
        """The persisted state, or None on first start. Raises StateError."""
        try:
            with open(self.path, encoding="utf-8") as f:
                raw = f.read()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise StateError(f"cannot read {self.path}: {exc.strerror}") from None
        try:
            data = json.loads(raw)
            term, voted_for, incarnation = data["term"], data["voted_for"], data["incarnation"]
        except (ValueError, KeyError, TypeError):
            raise StateError(
                f"{self.path} is corrupt; refusing to start from term 0 (it could vote twice in a term). "
                "Inspect it; if the node must rejoin anyway, remove the file and keep the daemon "
                "stopped for at least one lease period first"
            ) from None
        if not (isinstance(term, int) and term >= 0 and (voted_for is None or isinstance(voted_for, str))
                and isinstance(incarnation, int)):
            raise StateError(f"{self.path} holds values of the wrong type; refusing to start")
        recovering = data.get("recovering", False)  # written since the recover-state option
        if not isinstance(recovering, bool):
            raise StateError(f"{self.path} holds values of the wrong type; refusing to start")
        self.state = PersistedState(term, voted_for, recovering)
        self.incarnation = incarnation
        return self.state

    def begin_incarnation(self) -> int:
        """A number larger than any earlier start's, even if the wall clock stepped back."""
        self.incarnation = max(self.incarnation + 1, time.time_ns() // 1_000_000)
        self._write()
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
        payload = json.dumps(
            {"term": self.state.term, "voted_for": self.state.voted_for, "incarnation": self.incarnation,
             "recovering": self.state.recovering}
        ).encode()
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
