"""Broken variants of the coordination store that its simulator must catch."""

from __future__ import annotations

from typing import Any

from electiond.coord.replica import ConfigReplica
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
