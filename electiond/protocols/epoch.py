"""What bully and ring share: an epoch as fencing token, a leader watched by
the adaptive detector, eligibility, and a hold after stepping down.

Neither protocol can keep two leaders apart during a partition; both elect by
id, announce with COORDINATOR and keep the leader with heartbeats, so the
follower-side bookkeeping is the same and lives here once.

Persist-then-send: the epoch is persisted before a COORDINATOR announces it,
so a restarted node never hands out a token twice. The shell reports whether
each list's Persists landed (``persist_done``); after a failure it dropped
the list's Sends and Promotes, so a node that was crowning itself is no
leader (and one that already led steps down: a new token it cannot keep
would be reused after a restart). It stands for nothing, and so answers no
ELECTION (bully) and puts up no id (ring), until a retried write of its
epoch lands (``on_tick``, with backoff).

A lost state file (``PersistedState.recovering``): neither protocol promises
anything a lost epoch could break beyond the token itself, and both already
take up any higher epoch a peer announces, so a recovering node simply starts
from its recovered epoch and the ones it hears; a leader it outranks learns
the newest token from the others (stale-token answers) before it fences.
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
    Persist,
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
        return self._eligible and now >= self._hold_until and self.disk.ok

    # ---- the disk ---------------------------------------------------------

    def on_tick(self, now: float) -> list[Effect]:
        if self.disk.retry_due(now):
            # the retried write goes first: what follows may need it
            self.disk.retry_at = now + self.settings.heartbeat_interval_s  # until the shell reports
            return [self._persist(), *self._on_tick(now)]
        return self._on_tick(now)

    def _on_tick(self, now: float) -> list[Effect]:
        raise NotImplementedError

    def deadline(self) -> float:
        d = self._deadline()
        return d if self.disk.ok or d < self.disk.retry_at else self.disk.retry_at

    def _deadline(self) -> float:
        raise NotImplementedError

    def _persist(self) -> Persist:
        raise NotImplementedError

    def persist_done(self, ok: bool, now: float, error: str | None = None) -> list[Effect]:
        if ok:
            self.disk.succeeded()
            return []
        self.disk.failed(now, error)
        effects: list[Effect] = []
        wait_s = self.disk.retry_at - now
        if self._role == ROLE_LEADER:
            # crowned in the failed list (its COORDINATOR never left) or
            # re-asserting with a token not on disk: lead no more
            effects = self._resign(now, "persist_failed", wait_s)
        elif self._role != ROLE_FOLLOWER or self._leader is None:
            self._to_follower_without_leader(now, wait_s + self.settings.election_timeout_min_s)
        self._undo_claim()
        return effects

    def _undo_claim(self) -> None:
        """Forget that we announced ourselves under the current epoch (the
        announcement never left: the failed Persist dropped it)."""

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
