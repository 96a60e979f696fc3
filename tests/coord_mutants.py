"""Broken variants of the coordination store that its simulator must catch."""

from __future__ import annotations

from typing import Any

from electiond.coord.host import MEMBERS_KEY
from electiond.coord.replica import ConfigReplica, Entry
from electiond.protocols.lease import QuorumLease


class AckBeforeMajority(ConfigReplica):
    """The leader acknowledges a write once it alone persisted it."""

    def commit_quorum(self) -> int:
        return 1


class VoteIgnoresStore(QuorumLease):
    """A voter that grants a candidate whose store misses entries it holds."""

    def _coord_behind(self, body: dict[str, Any]) -> bool:
        return False


class BarrierOffByOne(ConfigReplica):
    """Lets participants through one short of the count."""

    def barrier_need(self, count: int) -> int:
        return count - 1


class LeaveWhenSelfRemoved(ConfigReplica):
    """Lets a leaving participant out once its own removal committed, not waiting for the others."""

    def leave_done(self, remaining: list[str], participant: str) -> bool:
        return participant not in remaining


class NoSnapshot(ConfigReplica):
    """Never sends a snapshot: a follower behind the kept log stays behind."""

    def _send_snap(self, peer: str) -> list[Any]:
        return []


class MemberViewInPlace(ConfigReplica):
    """Updates the member view in place: a new view of the same term takes
    the version of its last one instead of a new entry (a version reused)."""

    def _append_entry(self, e: Entry) -> int:
        if e.key == MEMBERS_KEY:
            for i in range(len(self._log) - 1, -1, -1):
                old = self._log[i]
                if old.key == MEMBERS_KEY and old.term == e.term:
                    self._log[i] = Entry(old.version, e.term, e.op, e.key, e.value, e.req, e.ttl_ms)
                    return old.version
        return super()._append_entry(e)
