"""Deliberately broken protocol variants: the simulator must catch every one.

Each mutant subclasses a real protocol and breaks one rule. Tests run the
simulator with a copy of PROTOCOLS in which the mutant stands in for the
real class (``electiond.sim.runner.with_variant``), checked with the real
protocol's invariants. From the command line:
``python -m electiond.sim --protocol bully --variant tests.sim_mutants:NeverYieldBully``.

To add one for another protocol, subclass it here and add it to MUTANTS.
"""

from __future__ import annotations

from electiond.protocols.base import ROLE_LEADER, Message
from electiond.protocols.bully import COORDINATOR, HEARTBEAT, Bully


class NeverYieldBully(Bully):
    """A leader that never yields to a higher leader (nor to its COORDINATOR)."""

    def on_message(self, msg: Message, now: float):
        if self.role == ROLE_LEADER and msg.kind in (COORDINATOR, HEARTBEAT):
            return []
        return super().on_message(msg, now)


class SameEpochBully(Bully):
    """A new coordinator that reuses the current epoch as its fencing token."""

    def _become_leader(self, now: float, reason: str):
        self._epoch -= 1
        return super()._become_leader(now, reason)


from tests.lease_mutants import (  # noqa: E402
    LeaderIgnoresLeaseExpiry,
    LeaseMeasuredFromReply,
    NoQuarantineAfterRestart,
    VoterIgnoresPromise,
)

# the quorum-lease checker row fails a broken rule as soon as a claimed lease
# is no longer covered by a majority's promises, or at the overlap itself
LEASE_RULES = ("lease-uncovered", "promise-forgotten", "two-leaders")

# (protocol it mutates, mutant class, the rule the checker must report)
MUTANTS = [
    ("quorum-lease", LeaderIgnoresLeaseExpiry, LEASE_RULES),
    ("quorum-lease", VoterIgnoresPromise, LEASE_RULES),
    ("quorum-lease", NoQuarantineAfterRestart, LEASE_RULES),
    ("quorum-lease", LeaseMeasuredFromReply, LEASE_RULES),
    ("bully", NeverYieldBully, ("two-leaders", "liveness")),
    ("bully", SameEpochBully, ("fencing", "term-reused")),
]


class EagerBully(Bully):
    """Crowns itself at its first election timeout without asking anyone."""

    def _start_election(self, now: float):
        if not self._can_stand(now):
            return super()._start_election(now)
        return self._become_leader(now, "elected")
