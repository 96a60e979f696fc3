"""Broken variants of quorum-lease, each missing one safety rule.

The scenario tests and the simulator must catch every one of them: if a
checker passes a mutant, the checker (or the scenario) is too weak.
"""

from __future__ import annotations

from electiond.protocols.base import ROLE_LEADER
from electiond.protocols.lease import QuorumLease


class LeaderIgnoresLeaseExpiry(QuorumLease):
    """Keeps leading after its lease ran out (no step-down on its own clock)."""

    def is_leader(self, now: float) -> bool:
        return self.role == ROLE_LEADER

    def _check_lease(self, now: float) -> list:
        return []

    def deadline(self) -> float:
        if self.role == ROLE_LEADER:
            return self._next_send  # no step-down instant to wake up for
        return super().deadline()


class VoterIgnoresPromise(QuorumLease):
    """Votes for anyone as soon as it is out of quarantine."""

    def _vote_blocked_for(self, candidate: str, now: float) -> float:
        return max(0.0, self._quarantine_until - now)


class NoQuarantineAfterRestart(QuorumLease):
    """Forgets that it may have promised something before it crashed."""

    def __init__(self, settings, rng, now, persisted=None) -> None:
        super().__init__(settings, rng, now, persisted)
        self._quarantine_until = now
        self._candidacy_at = now + self._rank_delay_s()


class LeaseMeasuredFromReply(QuorumLease):
    """Starts the lease when the grant arrives instead of when it asked."""

    def _lease_start(self, sent_at: float, now: float) -> float:
        return now


MUTANTS = {
    "leader ignores lease expiry": LeaderIgnoresLeaseExpiry,
    "voter ignores promise": VoterIgnoresPromise,
    "no quarantine after restart": NoQuarantineAfterRestart,
    "lease measured from reply": LeaseMeasuredFromReply,
}


class DurableBeforeWrite(QuorumLease):
    """Marks its state durable when it asks for the write and ignores a
    failure: a retransmitted REQUEST_VOTE is then granted with no write at
    all (issue #12: two leaders in one term after a full disk and a restart)."""

    def persist_done(self, ok: bool, now: float, error: str | None = None) -> list:
        return super().persist_done(True, now)

# not in MUTANTS: tests/lease_harness.py has no failing disk, so only the
# simulator (tests/sim_mutants.py) and its scenarios can catch it
