"""What bully and ring share: an epoch as fencing token, a leader watched by
the adaptive detector, eligibility, and a hold after stepping down.

Neither protocol can keep two leaders apart during a partition; both elect by
id, announce with COORDINATOR and keep the leader with heartbeats, so the
follower-side bookkeeping is the same and lives here once.
"""

from __future__ import annotations

import random
from typing import Any

from electiond.detector import Backoff, LeaderWatch
from electiond.protocols.base import (
    ROLE_FOLLOWER,
    ROLE_LEADER,
    Demote,
    Effect,
    ElectionProtocol,
    LeaderChanged,
    PersistedState,
    Settings,
    mypyc_attr,
)


@mypyc_attr(allow_interpreted_subclasses=True)  # see Bully and Ring
class EpochProtocol(ElectionProtocol):
    def __init__(
        self,
        settings: Settings,
        rng: random.Random,
        now: float,
        persisted: PersistedState | None = None,
    ) -> None:
        super().__init__(settings, rng, now, persisted)
        self._epoch = persisted.term if persisted else 0
        self._role = ROLE_FOLLOWER
        self._leader: str | None = None
        self._next_heartbeat = float("inf")
        self._eligible = True
        self._hold_until = now  # after a stepdown, do not stand before this
        self._watch = LeaderWatch(settings, rng)
        self._watch.reset(now)
        self._backoff = Backoff(settings)
        # with no leader known: when to start the next election
        self._retry_at = self._watch.deadline()

    @property
    def role(self) -> str:
        return self._role

    @property
    def leader(self) -> str | None:
        return self._leader

    @property
    def term(self) -> int:
        return self._epoch

    def _leader_watch_status(self, now: float) -> dict[str, Any] | None:
        if self._role == ROLE_FOLLOWER and self._leader is not None:
            return self._watch.suspicion_snapshot(now)
        return None

    def _can_stand(self, now: float) -> bool:
        return self._eligible and now >= self._hold_until

    def _has_live_leader(self, now: float) -> bool:
        return self._leader is not None and not self._watch.suspects(now)

    def _to_follower_without_leader(self, now: float, delay_s: float) -> None:
        self._abandon_election()
        self._role = ROLE_FOLLOWER
        self._leader = None
        self._retry_at = now + delay_s

    def _abandon_election(self) -> None:
        """Forget any election this node runs or takes part in."""

    def _resign(self, now: float, reason: str, hold_s: float) -> list[Effect]:
        """Stop leading (if we do) and stand for nothing before now + hold_s."""
        effects: list[Effect] = []
        if self._role == ROLE_LEADER:
            effects += [Demote(self._epoch, reason), LeaderChanged(None, self._epoch)]
        self._hold_until = now + hold_s
        self._to_follower_without_leader(now, hold_s + self.settings.election_timeout_min_s)
        return effects
