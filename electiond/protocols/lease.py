"""quorum-lease: Raft's election without the log, plus PaxosLease leases (sans-IO).

Safety argument in one paragraph. Every vote and every heartbeat ack is a
*lease grant*: the granting node promises (until its local r + L_f) to vote
for nobody else. A requester that collects grants from a majority for
requests it *sent* at local time s holds a lease until s + L on its own
clock; since s precedes every grant and L_f outlasts L under the configured
drift bound, every grant's promise outlives the lease. Two majorities share
a node, and that node votes for a second candidate only after its promise to
the first expired, so the second lease starts after the first one ended.
The leader stops acting as leader at lease_until - guard on its own clock
(``is_leader`` answers from the clock, not from the last tick), so a leader
cut off in a minority, or frozen by SIGSTOP, never overlaps its successor.
A restarted node may have forgotten promises, so it grants no vote for L_f
(quarantine); ``(term, voted_for)`` is persisted before any vote reply or
candidacy message is listed (the shell carries effects out in order).

Persist-then-send is a checked contract, not an assumption. The shell tells
us whether each list's Persists landed (``persist_done``); only then is a
state durable (``_durable``). After a failed write the shell has dropped the
list's Sends and Promotes; we undo what the list claimed (a candidacy, a
promotion in a cluster of one) and, until a retried write of our current
state lands (``on_tick``, with backoff), grant no vote, acknowledge no
heartbeat and do not stand (``_vote_blocked_for`` and ``_on_heartbeat``). So
a vote we decided on while the disk was failing leaves only once it is on
disk: a retransmitted REQUEST_VOTE is answered after the retry, not before.

A lost state file (``PersistedState.recovering``, written by ``electiond
--recover-state``): we may have voted in terms we no longer know. We grant
no vote and do not stand until we have heard from a quorum of distinct
peers; M, the highest term they showed us, is then persisted with the vote
withheld (``VOTE_WITHHELD``), and we vote only in terms above M. Why that is
enough: a vote we cast in term T before the loss can help a candidate win T
only with quorum-1 other voters that reached term >= T. We heard from q =
quorum distinct peers out of the n-1 others; q + (q - 1) > n - 1 because
2q > n, so one of them is such a voter and showed us a term >= T: M >= T.

Candidacy order. The config gives this node only its own priority, so the
delay before standing is a fixed function of what every node knows: its
priority and its id's rank among the members (higher id first, as in bully):

    delay = (heartbeat_interval / 2) * (255 - p) / 255      p clamped to [0, 255]
          + (heartbeat_interval / 50) * (number of members with a higher id)
          + U(0, heartbeat_interval / 50)

The priority spread (25 ms at the default 50 ms interval, like keepalived's
skew time) keeps failover short; priorities about 40 apart dominate the id
order in a 5-node cluster, equal priorities fall back to the id order
(1 ms apart), and the jitter only separates exact ties after backoff.
Priorities learned from messages are used to pick a transfer target and to
decide preemption. The order holds when followers detect the leader's death
at about the same time (the adaptive detector, once it has samples); with
the randomized start-up timeouts, detection spread can outweigh it.

Hand-over (transfer, stepdown, preemption, becoming ineligible): the leader
stops renewing and demotes at once; RELEASE (followers drop their promise to
it) and TIMEOUT_NOW (the target campaigns without pre-vote) leave only when
the shell reports the demote hooks finished (``demote_hooks_done``), so the
old and new leader's hooks never overlap. Without that report the promises
simply lapse and an ordinary election follows.

Liveness details: a candidate retransmits its vote request every heartbeat
interval (fresher grants, voters released meanwhile) and gives up at once
when refusals make a majority impossible (a split vote); refusals carry how
long the voter is still bound, so a pre-vote retries when enough of them
lapse. A leader whose acks straggle sends a rescue heartbeat half an interval
before it would have to step down.
"""

from __future__ import annotations

import math
import random
from typing import Any, Final

from electiond.detector import Backoff, LeaderWatch
from electiond.protocols.base import (
    ROLE_CANDIDATE,
    ROLE_FOLLOWER,
    ROLE_LEADER,
    CommandError,
    Demote,
    Effect,
    ElectionProtocol,
    LeaderChanged,
    Message,
    Persist,
    PersistedState,
    Promote,
    Send,
    DISK_RETRY_FIRST_S,
    VOTE_WITHHELD,
    Settings,
    mypyc_attr,
)

PREVOTE: Final = "PREVOTE"
PREVOTE_REPLY: Final = "PREVOTE_REPLY"
REQUEST_VOTE: Final = "REQUEST_VOTE"
VOTE: Final = "VOTE"
HEARTBEAT: Final = "LEASE_HEARTBEAT"  # distinct from bully/ring HEARTBEAT: other body
HEARTBEAT_ACK: Final = "LEASE_ACK"
RELEASE: Final = "RELEASE"
TIMEOUT_NOW: Final = "TIMEOUT_NOW"
TRANSFER_REQUEST: Final = "TRANSFER_REQUEST"

PRIORITY_MAX: Final = 255
NO_HINT_MS: Final = -1  # a refusal that waiting will not cure (stale term, already voted)

PHASE_QUARANTINE: Final = "quarantine"
PHASE_FOLLOWER: Final = "follower"
PHASE_PREVOTE: Final = "prevote"
PHASE_CANDIDATE: Final = "candidate"
PHASE_LEADER: Final = "leader"
PHASE_INELIGIBLE: Final = "ineligible"
PHASE_WITNESS: Final = "witness"

INF: Final = float("inf")

# adaptive lease: a leader asks for room for STRAIN_FACTOR x the worst lateness
# seen in the last STRAIN_WINDOW_S (its heartbeats' timer lateness, its quorum
# acks' round trip, and how far past its lease it was when it lost one).
# Not a follower's heartbeat gaps: one lost datagram would lengthen every
# lease, and with it failover, on a lossy but otherwise healthy LAN
STRAIN_FACTOR: Final = 2.0
STRAIN_WINDOW_S: Final = 60.0


class _Strain:
    """A sliding maximum over about STRAIN_WINDOW_S, kept in two half-window
    buckets (O(1), no per-sample memory): the worst lateness seen lately."""

    def __init__(self) -> None:
        self._bucket_start = -INF
        self._current_s = 0.0
        self._previous_s = 0.0

    def _roll(self, now: float) -> None:
        half_s = STRAIN_WINDOW_S / 2
        if now - self._bucket_start < half_s:
            return
        if now - self._bucket_start < 2 * half_s:
            self._previous_s = self._current_s
        else:
            self._previous_s = 0.0
        self._current_s = 0.0
        self._bucket_start = now

    def note(self, now: float, late_s: float) -> None:
        self._roll(now)
        if late_s > self._current_s:
            self._current_s = late_s

    def worst_s(self, now: float) -> float:
        self._roll(now)
        return self._current_s if self._current_s > self._previous_s else self._previous_s


# mutants (tests/*_mutants.py, --variant) subclass it, also under scripts/sim
@mypyc_attr(allow_interpreted_subclasses=True)
class QuorumLease(ElectionProtocol):
    name = "quorum-lease"
    MESSAGE_SCHEMAS = {
        PREVOTE: {"round": int, "priority": int},
        PREVOTE_REPLY: {"round": int, "granted": bool, "retry_ms": int},
        REQUEST_VOTE: {"round": int, "priority": int},
        VOTE: {"round": int, "granted": bool, "retry_ms": int},
        HEARTBEAT: {"round": int, "priority": int, "sticky": bool},
        HEARTBEAT_ACK: {"round": int, "ok": bool, "priority": int},
        RELEASE: {},
        TIMEOUT_NOW: {"operator": bool},
        TRANSFER_REQUEST: {"priority": int},
    }

    def __init__(
        self,
        settings: Settings,
        rng: random.Random,
        now: float,
        persisted: PersistedState | None = None,
    ) -> None:
        super().__init__(settings, rng, now, persisted)
        state = persisted or PersistedState()
        self._term = state.term
        self._voted_for = state.voted_for
        self._durable = state  # what the shell reported stored
        self._written = state  # what we last asked it to store (lands or not)
        # a lost state file: which peers we heard since, and the highest term each showed
        self._recovering = state.recovering  # until M with the vote withheld is on disk
        self._recovery_terms: dict[str, int] = {}
        self._recovered_to = -1  # M, once chosen
        self._role = ROLE_FOLLOWER
        self._leader: str | None = None
        # a witness votes and acks but is never eligible: every rule that
        # keeps an ineligible node from standing keeps it from standing
        self._witness = settings.is_witness(settings.node_name)
        self._eligible = not self._witness
        self._eligible_since = now
        # we may have promised something before a crash we cannot remember
        self._quarantine_until = now + settings.follower_promise_s()
        self._promised_to: str | None = None
        self._promise_until = -INF
        self._round = 0
        self._watch = LeaderWatch(settings, rng)
        self._watch.reset(now)
        self._backoff = Backoff(settings)
        self._hold_until = -INF  # after stepdown/transfer: do not stand before this
        self._candidacy_at = self._quarantine_until + self._rank_delay_s()
        # the current pre-vote or vote round: request send times and grants
        self._phase_deadline = INF
        self._prevote_round = -1
        self._prevote_grants: set[str] = set()
        self._prevote_refusals: dict[str, int] = {}  # name -> retry hint ms
        self._sent_at: dict[int, float] = {}  # round -> local send time
        # heartbeat round -> the lease it announced (absent: settings.lease_s)
        self._round_lease: dict[int, float] = {}
        self._round_acks: dict[int, int] = {}  # heartbeat round -> acks so far
        # voter -> the latest end (our clock) of a lease its grants back
        self._granted_until: dict[str, float] = {}
        # adaptive lease: how late heartbeats and acks have been lately
        self._strain = _Strain()
        self._lost_votes: set[str] = set()  # voters that chose another candidate this term
        # the leader our detector (or lapsed promise) gave up on: until we
        # hear from it again it answers no vote, so a split that can only be
        # won with its vote is given up at once
        self._silent_leader: str | None = None
        self._next_send = INF  # leader: next heartbeat; candidate: next retransmit
        self._last_heartbeat_at = -INF
        self._lease_until = -INF
        # what we learned about peers: priority and when last heard
        self._peer_priority: dict[str, int] = {}
        self._last_heard: dict[str, float] = {}
        self._leader_priority: int | None = None
        self._following_since = -INF
        self._next_preempt_request = -INF
        self._released_by: tuple[str, int] | None = None
        # (term, target, asked by an operator) once the demote hooks are done
        self._handover: tuple[int, str | None, bool] | None = None
        self._skip_prevote = False  # picked by a hand-over while we could not stand yet
        # Operators' transfers stick: a leader elected because an operator
        # handed over to it says so in its heartbeats for its whole term, and
        # nobody preempts it. The next change nobody asked for (a new term)
        # ends that. The term we were picked for by an operator's TIMEOUT_NOW:
        self._operator_pick_term = -1
        self._sticky = False  # we lead a term an operator chose us for
        self._leader_sticky = False  # the leader we follow says it is sticky
        # the embedded coordination store's latest entry (term, version), kept
        # up to date by electiond.coord.host; Raft's up-to-date rule for it: a
        # voter refuses a candidate whose store is behind its own. (0, 0), no
        # store in use, adds nothing to the messages
        self.coord_last: tuple[int, int] = (0, 0)

    # ---- read-only view -------------------------------------------------

    @property
    def role(self) -> str:
        return self._role

    @property
    def leader(self) -> str | None:
        return self._leader

    @property
    def term(self) -> int:
        return self._term

    @property
    def lease_until(self) -> float:
        return self._lease_until

    @property
    def promise(self) -> tuple[str | None, float]:
        """(to whom, until when on our clock) we promised not to vote for others."""
        return self._promised_to, self._promise_until

    @property
    def handover_target(self) -> str | None:
        """Whom a hand-over under way will wake (None: none, or anyone)."""
        return self._handover[1] if self._handover is not None else None

    @property
    def quarantine_until(self) -> float:
        """Until then we grant no vote at all (we may have promised before a crash)."""
        return self._quarantine_until

    def is_leader(self, now: float) -> bool:
        # answered from the clock: a node woken from a freeze must not claim a
        # lease that ran out while it was stopped, even before its next tick
        return self._role == ROLE_LEADER and now < self._step_down_at()

    def phase(self, now: float) -> str:
        if self._role == ROLE_LEADER:
            # a lease that ran out before the next tick is no longer leadership
            return PHASE_LEADER if self.is_leader(now) else PHASE_FOLLOWER
        if self._role == ROLE_CANDIDATE:
            return PHASE_CANDIDATE
        if self._phase_deadline < INF:
            return PHASE_PREVOTE
        if now < self._quarantine_until:
            return PHASE_QUARANTINE
        if self._witness:
            return PHASE_WITNESS
        if not self._eligible:
            return PHASE_INELIGIBLE
        return PHASE_FOLLOWER

    def extra_status(self, now: float) -> dict[str, Any]:
        lease_ms = None
        if self._role == ROLE_LEADER:
            lease_ms = round(max(0.0, self._lease_until - now) * 1000, 1)
        return {
            "phase": self.phase(now),
            "eligible": self._eligible,
            "voted_for": self._voted_for,
            "lease_remaining_ms": lease_ms,
            "promised_to": self._promised_to if now < self._promise_until else None,
            "promise_remaining_ms": round(max(0.0, self._promise_until - now) * 1000, 1),
            "quarantine_remaining_ms": round(max(0.0, self._quarantine_until - now) * 1000, 1),
            "leader_timeout_ms": round(self._watch.timeout_s() * 1000, 1),
            "leader_watch": self._watch.suspicion_snapshot(now) if self._leader not in (None, self.settings.node_name) else None,
            "election_attempt": self._backoff.attempt,
            # an operator chose this leadership: no preemption this term
            "operator_chosen": self._sticky if self._role == ROLE_LEADER else self._leader_sticky,
            "recovering": self._recovering,
            # adaptive lease: what a leader asks for now, and the lateness behind it
            "lease_announced_ms": round(self.announced_lease_s(now) * 1000, 1) if self._role == ROLE_LEADER else None,
            "lease_strain_ms": round(self._strain.worst_s(now) * 1000, 1),
        }

    # ---- time -------------------------------------------------------------

    def _heartbeat_due(self) -> float:
        """The regular interval, or sooner when the lease is about to lapse:
        one lost or straggling ack must not cost the lease when the cluster
        has no member to spare (a rescue round half an interval before the
        step-down, never more often than every quarter interval)."""
        hb_s = self.settings.heartbeat_interval_s
        rescue = max(self._step_down_at() - hb_s / 2, self._last_heartbeat_at + hb_s / 4)
        return min(self._next_send, rescue)

    def deadline(self) -> float:
        d = self._protocol_deadline()
        return d if self.disk.ok or d < self.disk.retry_at else self.disk.retry_at

    def _protocol_deadline(self) -> float:
        if self._role == ROLE_LEADER:
            return min(self._heartbeat_due(), self._step_down_at())
        if self._role == ROLE_CANDIDATE:
            return min(self._next_send, self._phase_deadline)
        if self._phase_deadline < INF:
            return self._phase_deadline
        if self._leader is not None:
            return min(self._watch.deadline(), self._preempt_due(), self._promise_lapse_at())
        if not self._eligible:
            return INF
        return self._candidacy_at

    def on_tick(self, now: float) -> list[Effect]:
        effects = self._check_lease(now)
        if self.disk.retry_due(now):
            # the retried write goes first: what follows may need it
            effects += self._retry_write(now)
        if self._role == ROLE_LEADER:
            due = self._heartbeat_due()
            if now >= due:
                self._strain.note(now, now - due)
                effects += self._send_heartbeat(now)
            return effects
        if self._role == ROLE_CANDIDATE:
            if now >= self._phase_deadline:
                self._abandon_round(now, self._backoff.next_delay_s(self.rng))
            elif now >= self._next_send:
                effects += self._retransmit_votes(now)
            return effects
        if self._phase_deadline < INF:
            if now >= self._phase_deadline:
                self._prevote_failed(now)
            return effects
        if self._leader is not None:
            pauses = self._watch.local_pauses
            suspected = self._watch.suspects(now)
            # our promise to it ran out with no heartbeat to renew it: it can
            # no longer hold a lease we back, so there is nothing to wait for,
            # whatever our detector (maybe widened by past gaps) still thinks.
            # Not right after our own freeze: its heartbeats may be queued
            lapsed = self._watch.local_pauses == pauses and now >= self._promise_lapse_at()
            if suspected or lapsed:
                self._silent_leader = self._leader
                self._leader = None
                self._leader_priority = None
                effects.append(LeaderChanged(None, self._term))
                # stand once our own promise to the silent leader lapses
                self._candidacy_at = max(now, self._promise_until) + self._rank_delay_s()
                return effects
            return effects + self._maybe_preempt(now)
        if now >= self._candidacy_at:
            effects += self._start_prevote(now)
        return effects

    # ---- messages -----------------------------------------------------------

    def on_message(self, msg: Message, now: float) -> list[Effect]:
        if msg.sender == self.settings.node_name or not self.settings.is_member(msg.sender):
            return []
        # a leader woken from a freeze looks at its lease before anything else
        effects = self._check_lease(now)
        self._last_heard[msg.sender] = now
        if msg.sender == self._silent_leader:
            self._silent_leader = None
        if self._recovering:
            effects += self._hear_while_recovering(msg, now)
        if "priority" in msg.body:
            self._peer_priority[msg.sender] = int(msg.body["priority"])
        more = self._dispatch(msg, now)
        return effects + more if effects else more

    def _dispatch(self, msg: Message, now: float) -> list[Effect]:
        # a chain, not a table of bound methods: compiled, each branch is a
        # native call; the kinds of every round come first
        kind = msg.kind
        if kind == HEARTBEAT:
            return self._on_heartbeat(msg, now)
        if kind == HEARTBEAT_ACK:
            return self._on_heartbeat_ack(msg, now)
        if kind == PREVOTE:
            return self._on_prevote(msg, now)
        if kind == PREVOTE_REPLY:
            return self._on_prevote_reply(msg, now)
        if kind == REQUEST_VOTE:
            return self._on_request_vote(msg, now)
        if kind == VOTE:
            return self._on_vote(msg, now)
        if kind == RELEASE:
            return self._on_release(msg, now)
        if kind == TIMEOUT_NOW:
            return self._on_timeout_now(msg, now)
        if kind == TRANSFER_REQUEST:
            return self._on_transfer_request(msg, now)
        return []

    # pre-vote: non-binding, changes no term, persists nothing
    def _on_prevote(self, msg: Message, now: float) -> list[Effect]:
        wait_s = self._vote_blocked_for(msg.sender, now)
        behind = self._coord_behind(msg.body)
        granted = msg.term > self._term and wait_s == 0.0 and not behind
        if granted:
            hint = 0
            self._yield_to(msg, now)
        elif msg.term <= self._term or behind:
            hint = NO_HINT_MS
        else:
            hint = _ceil_ms(wait_s)
        return [vote_reply(PREVOTE_REPLY, msg.term if granted else self._term, msg.body["round"], granted, hint,
                           msg.sender)]

    def _yield_to(self, msg: Message, now: float) -> None:
        """A pre-vote we granted comes from a node ranked before us (higher
        priority, then higher id: the order of _rank_delay_s): if we are
        leaderless and about to stand, or pre-voting ourselves, step back for
        one pre-vote phase rather than split the votes with it. The rank
        delay alone (1 ms per id) is lost in scheduling noise on a busy host:
        two or three candidates in one term were most slow failovers."""
        if self._role != ROLE_FOLLOWER or self._leader is not None or not self._eligible:
            return
        s = self.settings
        their_rank = (int(msg.body["priority"]), s.id_of(msg.sender))
        if their_rank <= (s.priority, s.self_id):
            return
        self._cancel_prevote()
        # by then it has won (its heartbeat stops us) or its pre-vote failed
        self._candidacy_at = max(self._candidacy_at, now + s.election_timeout_min_s + self._rank_delay_s())

    def _on_prevote_reply(self, msg: Message, now: float) -> list[Effect]:
        if msg.term > self._term and not msg.body["granted"]:
            return self._adopt_term(msg.term, now)
        if self._phase_deadline == INF or self._role != ROLE_FOLLOWER:
            return []
        if msg.body["round"] != self._prevote_round:
            return []
        if msg.body["granted"]:
            self._prevote_grants.add(msg.sender)
            self._prevote_refusals.pop(msg.sender, None)
        else:
            self._prevote_refusals[msg.sender] = int(msg.body["retry_ms"])
        if len(self._prevote_grants) >= self.settings.quorum:
            return self._start_candidacy(now)
        if len(self._prevote_refusals) > len(self.settings.members) - self.settings.quorum:
            self._prevote_failed(now)
        return []

    def _on_request_vote(self, msg: Message, now: float) -> list[Effect]:
        refuse = self._refuse_vote(msg, now)
        if refuse is not None:
            return refuse
        effects: list[Effect] = []
        if msg.term > self._term:
            effects += self._adopt_term(msg.term, now, persist=False)
        if self._voted_for not in (None, msg.sender):
            return effects + self._vote_reply(msg, False, NO_HINT_MS)
        self._voted_for = msg.sender
        self._promise(msg.sender, now, self.settings.lease_s)
        # an election is under way: drop our own pre-vote (standing now would
        # break the promise just made) and do not stand before it could finish
        self._cancel_prevote()
        self._candidacy_at = max(self._candidacy_at, self._promise_until + self._rank_delay_s())
        return effects + self._vote_reply(msg, True, 0)

    def _refuse_vote(self, msg: Message, now: float) -> list[Effect] | None:
        """A refusal that leaves our term alone (stale request, or we are bound)."""
        if msg.term < self._term:
            return self._vote_reply(msg, False, NO_HINT_MS)
        if self._coord_behind(msg.body):
            # it misses a store entry we hold (maybe acknowledged): not this term
            return self._vote_reply(msg, False, NO_HINT_MS)
        if msg.term == self._term and self._voted_for not in (None, msg.sender):
            # our vote in this term is cast (to a rival, or to ourselves): say
            # it is final, before any wait hint, so the candidate counts it
            # lost and gives up an unwinnable split at once. Answered with a
            # hint (our promise to the rival lapses in L_f), it kept asking
            # for its whole round (issue 17: most slow failovers)
            return self._vote_reply(msg, False, NO_HINT_MS)
        wait_s = self._vote_blocked_for(msg.sender, now)
        if wait_s > 0.0:
            # bound to another leader: keep our term, so a node that could
            # not reach that leader cannot depose it by inflating terms
            return self._vote_reply(msg, False, _ceil_ms(wait_s))
        return None

    def _vote_reply(self, msg: Message, granted: bool, hint_ms: int) -> list[Effect]:
        # whatever the answer, the state it reflects is stored before it
        # leaves; but a refusal grants nothing, so while writes fail it does
        # not wait for one (a write per retransmitted request would only
        # push the retry back)
        effects: list[Effect] = self._persist() if granted or self.disk.ok else []
        effects.append(vote_reply(VOTE, self._term, msg.body["round"], granted, hint_ms, msg.sender))
        return effects

    def _on_vote(self, msg: Message, now: float) -> list[Effect]:
        if msg.term > self._term:
            return self._adopt_term(msg.term, now)
        if self._role != ROLE_CANDIDATE or msg.term != self._term:
            return []
        sent_at = self._sent_at.get(msg.body["round"])
        if sent_at is None:
            return []
        if not msg.body["granted"]:
            if msg.body["retry_ms"] == NO_HINT_MS:
                # it voted for another candidate of this term: that vote is final
                self._lost_votes.add(msg.sender)
                if self._votes_within_reach() < self.settings.quorum:
                    # a split vote nobody can win: stop renewing our voters'
                    # promises and retry later rather than at the round's end
                    self._abandon_round(now, self._backoff.next_delay_s(self.rng))
            return []
        self._record_grant(msg.sender, self._lease_start(sent_at, now) + self.settings.lease_s)
        return self._maybe_win(now)

    def _votes_within_reach(self) -> int:
        """How many votes this candidacy could still collect: every member
        but those lost to a rival, and but the leader we timed out (silent
        since), unless it granted already. Only decides when to give up."""
        reach = len(self.settings.members) - len(self._lost_votes)
        silent = self._silent_leader
        if silent is not None and silent not in self._lost_votes and silent not in self._granted_until:
            reach -= 1
        return reach

    def _on_heartbeat(self, msg: Message, now: float) -> list[Effect]:
        if msg.term < self._term:
            # a deposed leader: tell it the term it missed
            return [Send(HEARTBEAT_ACK, self._term, {"round": msg.body["round"], "ok": False, "priority": self.settings.priority}, to=msg.sender)]
        if msg.term == self._term and self._role == ROLE_LEADER:
            return []  # one leader per term: quorum intersection rules this out
        if self._released_by == (msg.sender, msg.term):
            # overtaken by its own RELEASE: that leader never leads this term again
            return []
        effects: list[Effect] = []
        if msg.term > self._term:
            effects += self._adopt_term(msg.term, now)
        elif self._role == ROLE_CANDIDATE:
            self._to_follower()  # someone else won this term
        self._cancel_prevote()
        self._skip_prevote = False
        if self._leader != msg.sender:
            self._leader = msg.sender
            self._watch.reset(now, msg.sender, msg.term)
            self._following_since = now
            self._backoff.reset()
            effects.append(LeaderChanged(msg.sender, self._term))
        self._leader_priority = int(msg.body["priority"])
        self._leader_sticky = msg.body.get("sticky") is True  # absent from older peers: not sticky
        self._watch.heartbeat(now)
        if not self.disk.ok:
            # our term is not durable: an ack would back a lease in a term we
            # may not remember after a restart. Follow, but grant nothing
            return effects
        # the ack is a lease grant: promise before it leaves
        lease_s = self._granted_lease_s(msg.body)
        self._promise(msg.sender, now, lease_s)
        ack: dict[str, Any] = {"round": msg.body["round"], "ok": True, "priority": self.settings.priority}
        if "lease_s" in msg.body:
            ack["lease_s"] = lease_s  # what we promised for: the leader counts no more
        effects.append(Send(HEARTBEAT_ACK, self._term, ack, to=msg.sender))
        return effects + self._maybe_preempt(now)

    def _on_heartbeat_ack(self, msg: Message, now: float) -> list[Effect]:
        if msg.term > self._term:
            return self._adopt_term(msg.term, now)
        if self._role != ROLE_LEADER or msg.term != self._term or not msg.body["ok"]:
            return []
        round_ = msg.body["round"]
        sent_at = self._sent_at.get(round_)
        if sent_at is None:
            return []
        asked_s = self._round_lease.get(round_, self.settings.lease_s)
        promised_s = self._granted_lease_s(msg.body)
        self._record_grant(msg.sender, self._lease_start(sent_at, now) + min(asked_s, promised_s))
        self._lease_until = max(self._lease_until, self._quorum_lease_until())
        acks = self._round_acks.get(round_)
        if acks is not None:
            self._round_acks[round_] = acks + 1
            if acks + 2 == self.settings.quorum:  # with our own grant, this ack makes the majority
                self._strain.note(now, now - sent_at)
        return []

    def _on_release(self, msg: Message, now: float) -> list[Effect]:
        if msg.term < self._term:
            return []
        effects: list[Effect] = []
        if msg.term > self._term:
            effects += self._adopt_term(msg.term, now)
        self._released_by = (msg.sender, msg.term)
        if self._promised_to == msg.sender:
            self._promise_until = now
            self._promised_to = None
        if self._leader == msg.sender:
            self._leader = None
            self._leader_priority = None
            effects.append(LeaderChanged(None, self._term))
            # the transfer target campaigns at once; stand only if it does not
            self._candidacy_at = now + self._election_round_s() + self._rank_delay_s()
        return effects

    def _on_timeout_now(self, msg: Message, now: float) -> list[Effect]:
        # a stale or duplicated TIMEOUT_NOW must not start a candidacy that
        # inflates terms under a healthy leader: only in our own term, and
        # not while we follow somebody else (the sender's own heartbeat or
        # RELEASE may still be on its way: datagrams overtake each other)
        if msg.term != self._term or self._role != ROLE_FOLLOWER:
            return []
        if self._leader not in (None, msg.sender):
            return []
        self._released_by = (msg.sender, msg.term)
        # the term we campaign in; a later term (somebody else won) is not sticky
        self._operator_pick_term = msg.term + 1 if msg.body.get("operator") is True else -1
        effects: list[Effect] = []
        if self._promised_to == msg.sender:
            # the old leader demoted before sending this, as it does before RELEASE
            self._promise_until = now
            self._promised_to = None
        if self._leader == msg.sender:
            self._leader = None
            effects.append(LeaderChanged(None, self._term))
        self._cancel_prevote()
        if not self._eligible:
            return effects
        wait_s = max(self._vote_blocked_for(self.settings.node_name, now), self._hold_until - now)
        if wait_s > 0.0:
            # just restarted (quarantine): campaign, still without a pre-vote,
            # the moment we may, unless a leader shows up first
            self._skip_prevote = True
            self._candidacy_at = now + wait_s
            return effects
        return effects + self._start_candidacy(now)

    def _on_transfer_request(self, msg: Message, now: float) -> list[Effect]:
        if not self.is_leader(now) or msg.term != self._term:
            return []
        if int(msg.body["priority"]) <= self.settings.priority:
            return []
        # hand over to the asker: it is eligible and healthy (it would not ask
        # otherwise). A better node that cannot stand would ignore the
        # TIMEOUT_NOW, and preemption would then repeat forever
        return self._hand_over(msg.sender, now, "preempted")

    # ---- election -------------------------------------------------------------

    def _start_prevote(self, now: float) -> list[Effect]:
        if self._skip_prevote and self._can_stand(now) and self._vote_blocked_for(self.settings.node_name, now) == 0.0:
            self._skip_prevote = False  # a hand-over picked us: no pre-vote
            return self._start_candidacy(now)
        if not self._can_stand(now):
            self._candidacy_at = max(now, self._hold_until, self._quarantine_until) + self._rank_delay_s()
            return []
        wait_s = self._vote_blocked_for(self.settings.node_name, now)
        if wait_s > 0.0:
            self._candidacy_at = now + wait_s + self._rank_delay_s()
            return []
        self._round += 1
        self._prevote_round = self._round
        self._prevote_grants = {self.settings.node_name}
        self._prevote_refusals = {}
        self._phase_deadline = now + self.settings.election_timeout_min_s
        if len(self._prevote_grants) >= self.settings.quorum:  # a cluster of one
            return self._start_candidacy(now)
        return [Send(PREVOTE, self._term + 1, self._with_coord({"round": self._round, "priority": self.settings.priority}))]

    def _prevote_failed(self, now: float) -> None:
        delay_s = self._backoff.next_delay_s(self.rng)
        hint_s = self._prevote_retry_hint_s()
        if hint_s is not None:
            # refusals that only need time (quarantine, a lapsing promise):
            # retry when enough of them lapse instead of backing off far, with
            # the backoff's jitter: every refused candidate got the same hint
            delay_s = min(delay_s, hint_s + self.rng.uniform(0.0, self.settings.backoff_jitter_s))
        self._cancel_prevote()
        self._candidacy_at = now + delay_s + self._rank_delay_s()

    def _prevote_retry_hint_s(self) -> float | None:
        needed = self.settings.quorum - len(self._prevote_grants)
        waits = sorted(ms for ms in self._prevote_refusals.values() if ms >= 0)
        if needed <= 0 or len(waits) < needed:
            return None
        return waits[needed - 1] / 1000.0

    def _cancel_prevote(self) -> None:
        if self._prevote_round == -1 and self._phase_deadline == INF:
            return  # nothing under way (every heartbeat comes through here)
        self._phase_deadline = INF
        self._prevote_round = -1
        self._prevote_grants = set()
        self._prevote_refusals = {}

    def _start_candidacy(self, now: float) -> list[Effect]:
        me = self.settings.node_name
        self._cancel_prevote()
        self._skip_prevote = False
        wait_s = self._vote_blocked_for(me, now)
        if wait_s > 0.0:
            # voting for ourselves is a grant too: not while bound to another
            self._candidacy_at = now + wait_s + self._rank_delay_s()
            return []
        self._term += 1
        self._voted_for = me
        self._role = ROLE_CANDIDATE
        self._leader = None
        self._sent_at = {}
        self._granted_until = {}
        self._lost_votes = set()
        self._phase_deadline = now + self._election_round_s()
        effects: list[Effect] = self._persist()  # before the request leaves
        return effects + self._send_vote_requests(now) + self._maybe_win(now)

    def _send_vote_requests(self, now: float) -> list[Effect]:
        self._round += 1
        self._sent_at[self._round] = now
        # our own vote is a grant made when the request leaves; votes back
        # the configured lease (only heartbeats announce a longer one)
        self._record_grant(self.settings.node_name, now + self.settings.lease_s)
        self._promise(self.settings.node_name, now, self.settings.lease_s)
        self._next_send = now + self.settings.heartbeat_interval_s
        return [Send(REQUEST_VOTE, self._term, self._with_coord({"round": self._round, "priority": self.settings.priority}))]

    def _with_coord(self, body: dict[str, Any]) -> dict[str, Any]:
        if self.coord_last != (0, 0):
            body["coord_term"] = self.coord_last[0]
            body["coord_version"] = self.coord_last[1]
        return body

    def _coord_behind(self, body: dict[str, Any]) -> bool:
        """The candidate's store ends before ours (absent fields: an empty store)."""
        if self.coord_last == (0, 0):
            return False
        t = body.get("coord_term", 0)
        v = body.get("coord_version", 0)
        if type(t) is not int or type(v) is not int:
            return True
        return (t, v) < self.coord_last

    def _retransmit_votes(self, now: float) -> list[Effect]:
        # ask everyone again: lost requests get another chance, a voter whose
        # promise to a releasing leader has lapsed can now grant, and fresher
        # grants from those who already voted lengthen the starting lease
        return self._send_vote_requests(now)

    def _maybe_win(self, now: float) -> list[Effect]:
        lease_until = self._quorum_lease_until()
        # grants so old that the lease would lapse before one heartbeat could
        # renew it are no win: promoting would only flap (promote, then
        # lease_lost a moment later); a retransmission fetches fresher grants
        margin_s = self.settings.lease_guard_s + self.settings.heartbeat_interval_s
        if now >= lease_until - margin_s:
            return []
        self._role = ROLE_LEADER
        self._leader = self.settings.node_name
        self._leader_priority = self.settings.priority
        self._lease_until = lease_until
        self._phase_deadline = INF
        self._handover = None  # a hand-over from an earlier term is moot
        self._sticky = self._operator_pick_term == self._term
        self._backoff.reset()
        self._sent_at = {r: t for r, t in self._sent_at.items() if t + self.settings.lease_s > now}
        self._round_lease = {}
        self._round_acks = {}
        effects: list[Effect] = [Promote(self._term, "elected"), LeaderChanged(self._leader, self._term)]
        return effects + self._send_heartbeat(now)

    def _send_heartbeat(self, now: float) -> list[Effect]:
        self._round += 1
        self._sent_at[self._round] = now
        lease_s = self.announced_lease_s(now)
        self._round_lease[self._round] = lease_s
        self._round_acks[self._round] = 0
        self._record_grant(self.settings.node_name, now + lease_s)
        self._promise(self.settings.node_name, now, lease_s)
        # our own grant alone is a majority in a cluster of one
        self._lease_until = max(self._lease_until, self._quorum_lease_until())
        self._next_send = now + self.settings.heartbeat_interval_s
        self._last_heartbeat_at = now
        horizon = now - self.settings.lease_ceiling_s()
        self._sent_at = {r: t for r, t in self._sent_at.items() if t > horizon}
        if len(self._round_lease) > len(self._sent_at):
            self._round_lease = {r: x for r, x in self._round_lease.items() if r in self._sent_at}
            self._round_acks = {r: x for r, x in self._round_acks.items() if r in self._sent_at}
        body: dict[str, Any] = {"round": self._round, "priority": self.settings.priority, "sticky": self._sticky}
        if self.settings.lease_ceiling_s() > self.settings.lease_s:
            # adaptive: followers promise for this lease (absent: lease_s), and
            # say in their ack which one they promised for
            body["lease_s"] = lease_s
        return [Send(HEARTBEAT, self._term, body)]

    def announced_lease_s(self, now: float) -> float:
        """The lease this leader asks its followers to back: the configured
        one on a quiet host, longer (up to lease_max) when the worst lateness
        of its heartbeats or quorum acks in the last minute needs it, so a
        stall like one already seen costs no lease. Safety does not depend on
        the choice: each grant is counted for what the granter promised."""
        s = self.settings
        ceiling_s = s.lease_ceiling_s()
        if ceiling_s <= s.lease_s:
            return s.lease_s
        # a renewal must land before the guard: one interval, plus a send
        # that many seconds late, plus acks that slow (STRAIN_FACTOR x the
        # worst of either covers both at once). The configured lease already
        # covers a quiet host: on one, nothing changes
        wanted_s = s.lease_guard_s + s.heartbeat_interval_s + STRAIN_FACTOR * self._strain.worst_s(now)
        if wanted_s <= s.lease_s:
            return s.lease_s
        return wanted_s if wanted_s < ceiling_s else ceiling_s

    def _granted_lease_s(self, body: dict[str, Any]) -> float:
        """The lease a heartbeat (or, at the leader, an ack) asks to back,
        within our own bounds: absent (an older peer, adaptivity off) or
        malformed, the configured lease."""
        s = self.settings
        value = body.get("lease_s")
        if type(value) is not float:
            return s.lease_s
        if not value > s.lease_s:  # also NaN
            return s.lease_s
        ceiling_s = s.lease_ceiling_s()
        return value if value < ceiling_s else ceiling_s

    def _lease_start(self, sent_at: float, now: float) -> float:
        """A grant counts from when we sent the request it answers, never from
        when the reply arrived: the granter's promise started in between."""
        return sent_at

    def _record_grant(self, name: str, until: float) -> None:
        """``name`` backs a lease of ours until ``until`` (s + the L it promised for)."""
        self._granted_until[name] = max(self._granted_until.get(name, -INF), until)

    def _quorum_lease_until(self) -> float:
        """The latest T such that a majority backs a lease of ours until T or later."""
        times = sorted(self._granted_until.values())  # no reverse=: compiled, keywords cost a slow call
        k = len(times) - self.settings.quorum
        if k < 0:
            return -INF
        return times[k]

    def _step_down_at(self) -> float:
        return self._lease_until - self.settings.lease_guard_s

    def _check_lease(self, now: float) -> list[Effect]:
        if self._role == ROLE_LEADER and now >= self._step_down_at():
            # the lease was too short for what this host or network just did:
            # the next one we lead asks for more
            self._strain.note(now, now - self._lease_until + self.settings.lease_s - self.settings.heartbeat_interval_s)
            effects = self._demote(now, "lease_lost")
            self._candidacy_at = now + self._rank_delay_s() + self._jitter_s()
            return effects
        return []

    # ---- transitions -----------------------------------------------------------

    def _adopt_term(self, term: int, now: float, persist: bool = True) -> list[Effect]:
        effects: list[Effect] = []
        if self._role == ROLE_LEADER:
            effects += self._demote(now, "higher_term")
        elif self._role == ROLE_CANDIDATE:
            self._to_follower()
        self._term = term
        self._voted_for = None
        self._skip_prevote = False  # a new term: any hand-over we were picked for is moot
        if self._leader is not None:
            self._leader = None
            self._leader_priority = None
            effects.append(LeaderChanged(None, term))
        self._cancel_prevote()
        self._candidacy_at = max(self._candidacy_at, now + self._election_round_s() + self._rank_delay_s())
        if persist:
            effects += self._persist()
        return effects

    def _demote(self, now: float, reason: str) -> list[Effect]:
        """Stop leading at once; the caller decides when to stand again."""
        term = self._term
        self._to_follower()
        self._leader = None
        self._leader_priority = None
        return [Demote(term, reason), LeaderChanged(None, term)]

    def _to_follower(self) -> None:
        self._role = ROLE_FOLLOWER
        self._lease_until = -INF
        self._phase_deadline = INF
        self._next_send = INF
        self._sent_at = {}
        self._granted_until = {}
        self._round_lease = {}
        self._round_acks = {}
        # this term can never be ours again, so the lease our own grant
        # protected will never exist: we may vote for others at once
        if self._promised_to == self.settings.node_name:
            self._promised_to = None
            self._promise_until = -INF

    def _abandon_round(self, now: float, delay_s: float) -> None:
        self._to_follower()
        self._candidacy_at = now + delay_s + self._rank_delay_s()

    def _promise_lapse_at(self) -> float:
        """When our promise to the leader we follow ends unrenewed (INF: we
        made it none, e.g. grants withheld: then only the detector judges)."""
        if self._leader is None or self._promised_to != self._leader:
            return INF
        return self._promise_until

    def _promise(self, name: str, now: float, lease_s: float) -> None:
        """Bind ourselves to ``name`` for a lease of ``lease_s`` from now. A
        promise to the same node never shrinks: an earlier grant for a
        longer lease still stands."""
        until = now + self.settings.follower_promise_for_s(lease_s)
        if self._promised_to == name and self._promise_until > until:
            return
        self._promised_to = name
        self._promise_until = until

    def _vote_blocked_for(self, candidate: str, now: float) -> float:
        """Seconds before we may grant ``candidate`` a vote (0.0: we may now).

        Every grant passes here, our own vote for ourselves included: it is
        the one place that also refuses while our state is not durable (a
        failing disk, a lost state file not yet recovered)."""
        wait_s = max(0.0, self._quarantine_until - now)
        if self._promised_to not in (None, candidate):
            wait_s = max(wait_s, self._promise_until - now)
        if not self.disk.ok:
            # at least a heartbeat interval: a retry that is due now has not landed yet
            wait_s = max(wait_s, self.disk.retry_at - now, self.settings.heartbeat_interval_s)
        if self._recovering:
            wait_s = max(wait_s, self.settings.election_timeout_min_s)
        return wait_s

    def _state(self) -> PersistedState:
        return PersistedState(self._term, self._voted_for, self._recovering and self._recovered_to < 0)

    def _persist(self) -> list[Effect]:
        """Persist (term, voted_for) unless the shell already stored exactly that.

        Also while writes fail: the gate in _vote_blocked_for keeps such
        writes rare (a new term heard), and a Persist listed before every
        state-dependent Send means the shell's rule alone (drop what follows
        a failed write) keeps an undurable vote from leaving, whatever else
        goes wrong (found by the simulator: a mutant without the gate sent
        REQUEST_VOTE with no write at all)."""
        state = self._state()
        if state == self._written:
            return []
        self._written = state
        return [Persist(state)]

    def _retry_write(self, now: float) -> list[Effect]:
        # set the next retry now: if the shell never reports, we try again
        # rather than wait for ever (persist_done moves it on a failure)
        self.disk.retry_at = now + max(self.settings.heartbeat_interval_s, DISK_RETRY_FIRST_S)
        state = self._state()
        self._written = state
        return [Persist(state)]

    def persist_done(self, ok: bool, now: float, error: str | None = None) -> list[Effect]:
        if ok:
            self._durable = self._written
            self.disk.succeeded()
            if self._recovering and not self._written.recovering:
                self._recovering = False  # M with the vote withheld is on disk
                self._candidacy_at = max(self._candidacy_at, now + self._rank_delay_s())
            return []
        # the disk keeps what it held; our next write must not be skipped as
        # a repeat of the one that failed
        self._written = self._durable
        self.disk.failed(now, error)
        effects: list[Effect] = []
        if self._role == ROLE_LEADER:
            # only a cluster of one promotes in the list that persisted its
            # candidacy; the shell dropped that Promote and the heartbeat
            effects = self._demote(now, "persist_failed")
        elif self._role == ROLE_CANDIDATE:
            # our REQUEST_VOTE never left: the candidacy is void
            self._to_follower()
        self._cancel_prevote()
        self._candidacy_at = max(self._candidacy_at, self.disk.retry_at + self._rank_delay_s())
        return effects

    def _hear_while_recovering(self, msg: Message, now: float) -> list[Effect]:
        """Collect terms from distinct peers; with a quorum of them, persist
        the highest with our vote withheld (see the module docstring)."""
        term = msg.term
        if msg.kind == PREVOTE or (msg.kind == PREVOTE_REPLY and msg.body["granted"]):
            term -= 1  # a proposed term; the sender itself is at least one below
        if term > self._recovery_terms.get(msg.sender, -1):
            self._recovery_terms[msg.sender] = term
        if self._recovered_to >= 0 or len(self._recovery_terms) < self.settings.quorum:
            return []
        m = max(self._term, max(self._recovery_terms.values()))
        effects: list[Effect] = []
        if m > self._term:
            effects = self._adopt_term(m, now, persist=False)
        self._recovered_to = m
        self._voted_for = VOTE_WITHHELD
        # if writes fail, the retry writes it later (see _state)
        return effects + self._persist()

    def _election_round_s(self) -> float:
        s = self.settings
        return self.rng.uniform(s.election_timeout_min_s, s.election_timeout_max_s)

    def _can_stand(self, now: float) -> bool:
        return self._eligible and now >= self._hold_until and now >= self._quarantine_until

    def _rank_delay_s(self) -> float:
        s = self.settings
        p = min(max(s.priority, 0), PRIORITY_MAX)
        priority_delay_s = s.heartbeat_interval_s / 2 * (PRIORITY_MAX - p) / PRIORITY_MAX
        id_rank = sum(1 for m in s.members if m.id > s.self_id)
        return priority_delay_s + id_rank * s.heartbeat_interval_s / 50 + self._jitter_s()

    def _jitter_s(self) -> float:
        return self.rng.uniform(0.0, self.settings.heartbeat_interval_s / 50)

    # ---- preemption ----------------------------------------------------------

    def _preempt_since(self) -> float | None:
        if (
            not self.settings.preempt
            or not self._eligible
            or self._leader is None
            or self._leader_priority is None
            or self._leader_priority >= self.settings.priority
            or self._leader_sticky
        ):
            return None
        return max(self._eligible_since, self._following_since)

    def _preempt_due(self) -> float:
        since = self._preempt_since()
        if since is None:
            return INF
        return max(since + self.settings.preempt_delay_s, self._next_preempt_request)

    def _maybe_preempt(self, now: float) -> list[Effect]:
        if self._role != ROLE_FOLLOWER or self._leader is None or now < self._preempt_due():
            return []
        # ask again if the transfer did not happen (the request may be lost)
        self._next_preempt_request = now + self.settings.election_timeout_max_s
        return [Send(TRANSFER_REQUEST, self._term, {"priority": self.settings.priority}, to=self._leader)]

    # ---- local requests -----------------------------------------------------------

    def _best_live_peer(self, now: float) -> str | None:
        window_s = max(self.settings.lease_s, 3 * self.settings.heartbeat_interval_s)
        live = [
            m for m in self.settings.peers()
            if now - self._last_heard.get(m.name, -INF) <= window_s and not self.settings.is_witness(m.name)
        ]
        if not live:
            return None
        best = max(live, key=lambda m: (self._peer_priority.get(m.name, 0), m.id))
        return best.name

    def _hand_over(self, target: str | None, now: float, reason: str, operator: bool = False) -> list[Effect]:
        """Stop renewing and demote now; release the followers and wake the
        target only once the shell reports the demote hooks finished
        (``demote_hooks_done``), so the two nodes' hooks never overlap. If
        the shell never reports, the promises lapse and an ordinary election
        follows: slower, never unsafe."""
        term = self._term
        effects = self._demote(now, reason)
        self._handover = (term, target, operator)
        # give the target (or anyone, if there is none) the first go
        self._hold_until = now + self.settings.election_timeout_max_s
        self._candidacy_at = self._hold_until + self._rank_delay_s()
        return effects

    def demote_hooks_done(self, now: float) -> list[Effect]:
        """The shell ran the demote hooks of our last demotion to completion."""
        if self._handover is None:
            return []
        term, target, operator = self._handover
        self._handover = None
        effects: list[Effect] = [Send(RELEASE, term)]
        if target is not None:
            effects.append(Send(TIMEOUT_NOW, term, {"operator": operator}, to=target))
        # the target campaigns now; stand ourselves only if it does not
        self._hold_until = max(self._hold_until, now + self.settings.election_timeout_max_s)
        self._candidacy_at = max(self._candidacy_at, self._hold_until + self._rank_delay_s())
        return effects

    def transfer(self, target: str | None, now: float, reason: str = "transfer") -> list[Effect]:
        effects = self._check_lease(now)
        if effects:
            return effects  # the lease already ran out: nothing left to hand over
        if not self.is_leader(now):
            raise CommandError("not the leader")
        if target is not None:
            try:
                self.settings.member(target)
            except KeyError:
                raise CommandError(f"unknown node {target!r}") from None
            if target == self.settings.node_name:
                raise CommandError("cannot transfer leadership to this node itself")
            if self.settings.is_witness(target):
                raise CommandError(f"{target} is a witness: it votes but never leads")
        else:
            target = self._best_live_peer(now)
            if target is None:
                raise CommandError("no live member to transfer to")
        return self._hand_over(target, now, reason, operator=reason == "transfer")

    def stepdown(self, now: float, reason: str = "stepdown") -> list[Effect]:
        effects = self._check_lease(now)
        if effects:
            return effects
        if not self.is_leader(now):
            raise CommandError("not the leader")
        return self._hand_over(self._best_live_peer(now), now, reason, operator=reason == "stepdown")

    def set_eligible(self, eligible: bool, now: float, reason: str) -> list[Effect]:
        effects = self._check_lease(now)
        eligible = eligible and not self._witness
        if eligible == self._eligible:
            return effects
        self._eligible = eligible
        if eligible:
            self._eligible_since = now
            self._candidacy_at = max(self._candidacy_at, now + self._rank_delay_s())
            return effects
        if self._role == ROLE_LEADER:
            return effects + self._hand_over(self._best_live_peer(now), now, reason)
        if self._role == ROLE_CANDIDATE:
            self._to_follower()
        self._cancel_prevote()
        return effects


def vote_reply(kind: str, term: int, round_: int, granted: bool, retry_ms: int, to: str | None) -> Send:
    """A VOTE or PREVOTE_REPLY: one place for its body, which Node also sends
    (a grant it withholds during its clock check goes out as a final refusal)."""
    return Send(kind, term, {"round": round_, "granted": granted, "retry_ms": retry_ms}, to=to)


def _ceil_ms(seconds: float) -> int:
    # round up (a hint that is early only wastes a round), ignoring float noise
    return max(0, math.ceil(seconds * 1000 - 1e-6))
