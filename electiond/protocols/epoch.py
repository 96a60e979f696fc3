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
Raising a sitting leader's token (both protocols). When a lower id claims to
lead while we do (it lost our heartbeats: a partition, a one-way link), it may
have handed out tokens of its own, and we must fence above them. The rule:

- We raise our epoch (to one above the claim) only when the claim's term is
  at least our epoch *and* above the epoch we already raised to over that
  same rival. A rival that cannot hear us learns our raised epoch second-hand
  and repeats it in every claim: that is our own token relayed back, not one
  it handed out, and it never raises again. So a raise costs one per rival per
  new token it shows, not one per message: with one rival that stays cut off,
  one raise per split-brain episode; a re-election resets the bookkeeping, so
  at most one more per real change of leader.
- A raise is not a change of leader: it comes as ``TokenRaised``, never as a
  second ``Promote``, so promote hooks (a VIP hook's gratuitous ARPs) run once
  per term of office, not on the heartbeat path. Downstream reads the raised
  token from the status (``fencing_token``), the history and the log.
- The split brain is reported (``SplitBrain``) and the rival reminded with a
  COORDINATOR once per episode: at its first claim, again after it was quiet
  for longer than any detector waits (``max_suspicion_timeout_s``), and with
  every raise; our heartbeats remind it in between.
- Status shows the token held (``fencing_token``): the epoch (``term``) can run
  ahead of it, taken up from peers' messages, without this node holding it.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
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
    Promote,
    Settings,
    TokenRaised,
    mypyc_attr,
)


@dataclass(slots=True)
class _Rival:
    """A lower id that claimed to lead while we did."""

    fenced_epoch: int  # the epoch we raised to over its claims (-1: none yet)
    last_claim_s: float  # when it last claimed, on our clock


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
        # lower ids that claimed to lead during our term of office (see the module doc)
        self._rivals: dict[str, _Rival] = {}
        # the token of our last Promote or TokenRaised; the epoch may move past it
        # while we lead (taken up from a peer's message) without our holding it
        self._token = -1
        # an operator's stepdown sticks: we do not take leadership back from
        # the leader that followed it (``_preempt_suppressed``)
        self._stepped_down = False
        self._yielded_to: str | None = None

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

    def fencing_token(self) -> int | None:
        """The token this node holds while it leads (status: ``fencing_token``)."""
        return self._token if self._role == ROLE_LEADER else None

    def _promoted(self, reason: str) -> Promote:
        self._token = self._epoch
        self._stepped_down = False
        self._yielded_to = None
        return Promote(self._epoch, reason)

    def _raised(self, reason: str) -> TokenRaised:
        self._token = self._epoch
        return TokenRaised(self._epoch, reason)

    def _rival_claim(self, rival: str, their_term: int, now: float) -> tuple[bool, bool]:
        """A lower id claims to lead in ``their_term`` while we lead (our epoch
        has already taken up their term if it was higher). Returns (raise,
        new_episode): whether our token must go above theirs (the epoch is
        raised here), and whether this claim starts a split-brain episode."""
        seen = self._rivals.get(rival)
        if seen is None:
            seen = _Rival(-1, now)
            self._rivals[rival] = seen
            new_episode = True
        else:
            new_episode = now - seen.last_claim_s > self.settings.max_suspicion_timeout_s
        seen.last_claim_s = now
        if their_term < self._epoch or their_term <= seen.fenced_epoch:
            return False, new_episode  # already fenced above it, or our own token relayed back
        self._epoch += 1
        seen.fenced_epoch = self._epoch
        return True, new_episode

    def _operator_stepped_down(self) -> None:
        self._stepped_down = True
        self._yielded_to = None

    def _preempt_suppressed(self, leader: str) -> bool:
        """After an operator's stepdown, the first leader we follow keeps its
        office against our preemption; a later leader (a change nobody asked
        for) does not."""
        if self._stepped_down:
            self._stepped_down = False
            self._yielded_to = leader
        elif self._yielded_to is not None and self._yielded_to != leader:
            self._yielded_to = None
        return self._yielded_to == leader

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
