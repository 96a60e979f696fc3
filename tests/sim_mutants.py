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
from electiond.protocols import ring
from electiond.protocols.bully import COORDINATOR, HEARTBEAT, Bully
from electiond.protocols.ring import Ring


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
    DurableBeforeWrite,
    LeaderIgnoresLeaseExpiry,
    LeaseMeasuredFromReply,
    NoQuarantineAfterRestart,
    VoterIgnoresPromise,
)

# the quorum-lease checker row fails a broken rule as soon as a claimed lease
# is no longer covered by a majority's promises, or at the overlap itself
LEASE_RULES = ("lease-uncovered", "promise-forgotten", "two-leaders")

class NeverYieldRing(Ring):
    """A ring leader that never yields to a higher leader (nor to an election result)."""

    def on_message(self, msg: Message, now: float):
        if self.role == ROLE_LEADER and msg.kind in (ring.COORDINATOR, ring.HEARTBEAT):
            return []
        return super().on_message(msg, now)


class SameEpochRing(Ring):
    """An election result announced under the current epoch instead of a new one."""

    def _complete(self, body, now: float):
        self._epoch -= 1
        return super()._complete(body, now)


class NoRepairRing(Ring):
    """No ring repair: a silent successor is retried for ever, never skipped."""

    def _hop_expired(self, hop_id, hop, now: float):
        hop.tries = 0
        return super()._hop_expired(hop_id, hop, now)


# (protocol it mutates, mutant class, the rule the checker must report)
MUTANTS = [
    ("quorum-lease", LeaderIgnoresLeaseExpiry, LEASE_RULES),
    ("quorum-lease", VoterIgnoresPromise, LEASE_RULES),
    ("quorum-lease", NoQuarantineAfterRestart, LEASE_RULES),
    ("quorum-lease", LeaseMeasuredFromReply, LEASE_RULES),
    # a vote that leaves without its record on disk (ignoring a failed write)
    ("quorum-lease", DurableBeforeWrite, ("vote-not-durable", "double-vote", "term-reused")),
    ("bully", NeverYieldBully, ("two-leaders", "liveness")),
    ("bully", SameEpochBully, ("fencing", "term-reused")),
    ("ring", NeverYieldRing, ("two-leaders", "liveness")),
    ("ring", SameEpochRing, ("fencing", "term-reused")),
    ("ring", NoRepairRing, ("liveness",)),
]


class EagerBully(Bully):
    """Crowns itself at its first election timeout without asking anyone."""

    def _start_election(self, now: float):
        if not self._can_stand(now):
            return super()._start_election(now)
        return self._become_leader(now, "elected")


class EagerRing(Ring):
    """Crowns itself at its first election timeout instead of sending an ELECTION round the ring."""

    def _start_election(self, now: float):
        if not self._can_stand(now) or self._round_nonce is not None:
            return super()._start_election(now)
        self._epoch += 1
        return [self._persist(), *self._become_leader(now, "elected")]
