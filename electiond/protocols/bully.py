"""The bully algorithm (Garcia-Molina), sans-IO.

A node that suspects the leader sends ELECTION to every higher id. No ANSWER
in time: it announces itself with COORDINATOR. An ANSWER: it waits for a
COORDINATOR from above, and if none comes, retries with backoff. The leader
multicasts HEARTBEAT. The epoch grows with every new coordinator and is the
fencing token. Bully cannot prevent two leaders during a partition; when two
leaders hear each other the lower id yields and the event is reported.

A sitting leader raises its token (TokenRaised, no second Promote, no hooks)
when a lower id claims to lead with a token at least as new, once per new
token (epoch.py states the rule), or when a follower tells it (ANSWER) that
its token was already used.
"""

from __future__ import annotations

import random
from typing import Any, Final

from electiond.detector import RttEstimator
from electiond.protocols.base import (
    ROLE_CANDIDATE,
    ROLE_FOLLOWER,
    ROLE_LEADER,
    CommandError,
    Demote,
    Effect,
    LeaderChanged,
    Message,
    Persist,
    PersistedState,
    Send,
    Settings,
    SplitBrain,
    mypyc_attr,
)
from electiond.protocols.epoch import EpochProtocol

ELECTION: Final = "ELECTION"
ANSWER: Final = "ANSWER"
COORDINATOR: Final = "COORDINATOR"
HEARTBEAT: Final = "HEARTBEAT"

# a lower id's ELECTION is taken over while our detector still trusts the
# leader above us once its heartbeat is this many intervals overdue: one
# missed, by half an interval
TAKEOVER_SILENCE_INTERVALS: Final = 1.5
# ... and at least this fraction of our detector's current timeout. On a quiet
# LAN (timeout near its 2.2-interval floor) the interval rule decides; on an
# overloaded host the detector has widened, and a heartbeat 75 ms late is
# routine: 65 daemons on 2 cores, taking over on that alone, set off a cascade
# of elections up to the top on every false alarm (695 promote hooks in 6 min)
TAKEOVER_TIMEOUT_FRACTION: Final = 0.5
# a conclusion drawn from silence (the leader is dead, nobody above answered)
# waits once more, for LATE_GRACE_INTERVALS heartbeat intervals, when the
# shell woke us this many intervals after the deadline: our own loop was
# late, and what it has not read yet (the heartbeat, the ANSWER queued in
# the socket behind the timer) may end the silence. 65 daemons on 2 cores:
# most false promotions came from such a tick, taken before the queue
LATE_WAKE_INTERVALS: Final = 0.25
LATE_GRACE_INTERVALS: Final = 1.0

_ELECTING: Final = "electing"  # waiting for ANSWER from a higher id
_ANSWERED: Final = "answered"  # a higher id answered: waiting for its COORDINATOR


# mutants (tests/*_mutants.py, --variant) subclass it, also under scripts/sim
@mypyc_attr(allow_interpreted_subclasses=True)
class Bully(EpochProtocol):
    name = "bully"
    MESSAGE_SCHEMAS = {ELECTION: {}, ANSWER: {}, COORDINATOR: {}, HEARTBEAT: {}}

    def __init__(
        self,
        settings: Settings,
        rng: random.Random,
        now: float,
        persisted: PersistedState | None = None,
    ) -> None:
        super().__init__(settings, rng, now, persisted)
        # who announced our current epoch (None: not known yet); kept on disk
        # in voted_for, so a restarted node still knows whose token it saw
        self._epoch_leader: str | None = persisted.voted_for if persisted else None
        self._phase: str | None = None
        self._phase_deadline = float("inf")
        # ELECTION -> ANSWER round trips; they may lengthen the ANSWER wait
        # when higher nodes answer slowly (loaded hosts), never shorten it
        # below answer_timeout_s: a missed ANSWER makes a false coordinator
        self._answer_rtt = RttEstimator.for_settings(settings)
        self._election_sent_at = now
        # members this node's detector found dead (the leader it timed out),
        # until they speak again or the entry ages out: an election does not
        # wait for their ANSWER
        self._suspects: dict[str, float] = {}
        # the leader our detector still trusted when a lower id's ELECTION
        # made us take the election over (None: a full election): only it is
        # asked, and we declare ourselves no sooner than our own detector
        # gives it up
        self._asked_leader: str | None = None
        # the deadline a late wake-up already earned a grace for (once each)
        self._graced_deadline = float("nan")
        self._grace_until = float("-inf")
        self._preempt_pending = False  # a preemption put off by the start-up hold (_preempt_from)
        # start-up listen period: a node that just started learns the cluster
        # (a sitting leader's heartbeat, others' elections) for one election
        # timeout before it first campaigns or preempts, so that daemons
        # started together do not each crown themselves in turn
        self._listen_until = now + settings.election_timeout_max_s
        # ... and it takes over from a lower leader only after preempt_delay
        # (keepalived's preempt_delay: seconds after start-up). Daemons booting
        # together come up one after another, slower than a listen period on
        # a loaded host (65 on 2 cores: one every 0.5 s), and each new highest
        # one preempted the last: 20 promote hooks. Held this long, the ones
        # that came up meanwhile answer its ELECTION, and only the top one wins
        self._preempt_from = now + max(settings.election_timeout_max_s, settings.preempt_delay_s)
        # the randomized first timeout still spreads the first campaigns apart
        self._retry_at = self._listen_until + (self._retry_at - now)

    # ---- read-only view -------------------------------------------------

    def extra_status(self, now: float) -> dict[str, Any]:
        return {
            "phase": self._phase,
            "eligible": self._eligible,
            "leader_timeout_ms": round(self._watch.timeout_s() * 1000, 1),
            "fencing_token": self.fencing_token(),
            "election_attempt": self._backoff.attempt,
            "answer_wait_ms": round(self.answer_wait_s() * 1000, 1),
            "leader_watch": self._leader_watch_status(now),
        }

    def answer_wait_s(self) -> float:
        """How long a candidate waits for an ANSWER from a higher id."""
        return max(self.settings.answer_timeout_s, self._answer_rtt.rto_s())

    # ---- time -------------------------------------------------------------

    def _deadline(self) -> float:
        if self._role == ROLE_LEADER:
            return self._next_heartbeat
        if self._role == ROLE_CANDIDATE:
            return self._graced(self._phase_deadline)
        if self._leader is not None:
            d = self._graced(self._watch.deadline())
            if self._preempt_pending:
                return d if d < self._preempt_from else self._preempt_from
            return d
        return self._retry_at

    def _on_tick(self, now: float) -> list[Effect]:
        if self._role == ROLE_LEADER:
            if now >= self._next_heartbeat:
                self._next_heartbeat = now + self.settings.heartbeat_interval_s
                return [Send(HEARTBEAT, self._epoch)]
            return []
        if self._role == ROLE_CANDIDATE:
            if now < self._phase_deadline or self._woke_late(now, self._phase_deadline):
                return []
            if self._phase == _ELECTING:
                asked = self._asked_leader
                if asked is not None:
                    # we only asked the leader we still trusted; it kept
                    # silent until our own detector gave it up: dead to us
                    self._asked_leader = None
                    self._suspect(asked, now)
                    self._leader = None
                    if self._unsuspected_higher(now):
                        # others above were not asked: ask them now
                        return [LeaderChanged(None, self._epoch), *self._start_election(now)]
                    return [LeaderChanged(None, self._epoch), *self._become_leader(now, "elected")]
                # nobody above answered. They are not marked dead for that: on
                # a loaded host an ANSWER can be late, and a member marked dead
                # turns our next false alarm into a promotion instead of a
                # question (65 daemons on loopback: hundreds of promote hooks)
                return self._become_leader(now, "elected")
            # answered but no COORDINATOR came: the higher node died meanwhile
            self._to_follower_without_leader(now, self._backoff.next_delay_s(self.rng))
            return []
        if self._leader is not None:
            if self._watch.suspects(now) and not self._woke_late(now, self._watch.deadline()):
                self._suspect(self._leader, now)
                self._leader = None
                return [LeaderChanged(None, self._epoch), *self._start_election(now)]
            if self._preempt_pending and now >= self._preempt_from:
                return self._maybe_preempt(now)
            return []
        if now >= self._retry_at:
            return self._start_election(now)
        return []

    # ---- messages -----------------------------------------------------------

    def on_message(self, msg: Message, now: float) -> list[Effect]:
        if msg.sender == self.settings.node_name:
            return []
        if self._suspects:
            self._suspects.pop(msg.sender, None)  # it spoke: alive
        effects: list[Effect] = []
        if msg.term > self._epoch:
            self._epoch = msg.term
            self._epoch_leader = None
            effects.append(self._persist())
        if msg.kind == HEARTBEAT:
            effects += self._on_leader_claim(msg, now)
        elif msg.kind == ELECTION:
            effects += self._on_election(msg, now)
        elif msg.kind == ANSWER:
            higher = self.settings.id_of(msg.sender) > self.settings.self_id
            if self._role == ROLE_CANDIDATE and self._phase == _ELECTING and higher:
                self._answer_rtt.sample(now - self._election_sent_at)
                self._phase = _ANSWERED
                self._phase_deadline = now + self.settings.election_timeout_max_s
            elif self._role == ROLE_LEADER and not higher and msg.term >= self._epoch:
                # a follower tells us our epoch is not new: it already saw this
                # token (or a newer one) from another leader
                effects += self._reassert()
        elif msg.kind == COORDINATOR:
            effects += self._on_leader_claim(msg, now)
        return effects

    def _on_election(self, msg: Message, now: float) -> list[Effect]:
        if not self._can_stand(now) or self.settings.id_of(msg.sender) > self.settings.self_id:
            return []
        effects: list[Effect] = [Send(ANSWER, self._epoch, to=msg.sender)]
        if self._role == ROLE_LEADER:
            # the sender lost our heartbeats: remind it who leads. Only it:
            # the others that lost them ask for themselves, and our next
            # heartbeat reminds the rest (a multicast here cost every member
            # a datagram per ELECTION: n^2 of them in a false-alarm storm)
            effects.append(Send(COORDINATOR, self._epoch, to=msg.sender))
        elif self._role == ROLE_FOLLOWER and self._takes_election_over(now):
            # Garcia-Molina's step: the one answered takes the election over at
            # once, instead of waiting for its own (maybe slower) detector
            if self._leader is not None and self._has_live_leader(now):
                effects += self._ask_leader(now, self._leader)
            else:
                effects += self._start_election(now)
        return effects

    def _ask_leader(self, now: float, leader: str) -> list[Effect]:
        """Take a lower id's election over while our detector still trusts
        the leader above us: ask that leader alone whether it lives (every
        higher node asking every other one made a false alarm cost O(n^2)
        datagrams at 65 daemons), and declare ourselves no sooner than our
        own detector gives it up: a missed ANSWER from a slow leader is no
        reason to promote before that (on a quiet LAN the answer wait ends
        later anyway, so failover is as fast as before)."""
        self._role = ROLE_CANDIDATE
        self._phase = _ELECTING
        self._asked_leader = leader
        self._election_sent_at = now
        answer_by = now + self.answer_wait_s()
        given_up_at = self._watch.deadline()
        self._phase_deadline = answer_by if answer_by > given_up_at else given_up_at
        return [Send(ELECTION, self._epoch, to=leader)]

    def _takes_election_over(self, now: float) -> bool:
        """A lower id's ELECTION says it lost the leader. With no live leader
        we take it over. A leader above us that our detector still trusts
        is taken over only if we too have missed a heartbeat from it (the
        ELECTION corroborates that): one that heartbeats on time is alive
        for us, and a node that merely cannot hear it (a one-way cut) must
        not set off elections all the way up each time it retries. Never a
        live leader below us (preempt off kept it: we would depose it)."""
        if now < self._listen_until:
            # still learning the cluster at start-up: the asker hears our
            # ANSWER, and we campaign ourselves when the listen ends. Taking
            # over here made each daemon of an ascending start crown itself
            # (the nodes above it not up yet) before it heard who led
            return False
        if not self._has_live_leader(now):
            return True
        assert self._leader is not None
        if self.settings.id_of(self._leader) < self.settings.self_id:
            return False
        overdue_s = TAKEOVER_SILENCE_INTERVALS * self.settings.heartbeat_interval_s
        widened_s = TAKEOVER_TIMEOUT_FRACTION * self._watch.timeout_s()
        return self._watch.silence_s(now) >= (overdue_s if overdue_s > widened_s else widened_s)

    def _on_leader_claim(self, msg: Message, now: float) -> list[Effect]:
        if self._role == ROLE_FOLLOWER and msg.sender == self._leader:
            # the usual case by far: our leader's heartbeat
            self._watch.heartbeat(now)
            return self._tell_if_stale(msg) + self._maybe_preempt(now)
        sender_id = self.settings.id_of(msg.sender)
        my_id = self.settings.self_id
        if self._role == ROLE_LEADER:
            takeover = msg.kind == COORDINATOR and sender_id > my_id
            if sender_id > my_id:
                effects: list[Effect] = []
                if not takeover:
                    effects.append(SplitBrain(msg.sender, self._epoch, yielded=True))
                effects.append(Demote(self._epoch, "preempted" if takeover else "split_brain"))
                if self._is_stale(msg):
                    # the winner's token is not newer than ours (it led on the other
                    # side of a partition, or froze): tell it, so it re-asserts
                    # with an epoch above every token issued meanwhile
                    effects.append(Send(COORDINATOR, self._epoch, to=msg.sender))
                self._role = ROLE_FOLLOWER
                return effects + self._follow(msg.sender, msg.term, now)
            # a lower id claims to lead: it lost our heartbeats. Fence above any
            # token it handed out, once per new token it shows (epoch.py's rule)
            raised, new_episode = self._rival_claim(msg.sender, msg.term, now)
            out: list[Effect] = [SplitBrain(msg.sender, self._epoch, yielded=False)] if new_episode else []
            if raised:
                self._epoch_leader = self.settings.node_name
                out += [self._persist(), Send(COORDINATOR, self._epoch), self._raised("split_brain")]
            elif new_episode:
                out.append(Send(COORDINATOR, self._epoch))  # our token is already newer: remind only
            return out
        if self._role == ROLE_CANDIDATE:
            if sender_id < my_id:
                return []  # our own election will override it
            self._role = ROLE_FOLLOWER
            self._phase = None
            return self._tell_if_stale(msg) + self._follow(msg.sender, msg.term, now)
        # follower of another leader, or of none
        if (
            self._leader is None
            or not self._has_live_leader(now)
            or sender_id > self.settings.id_of(self._leader)
        ):
            stale = self._tell_if_stale(msg)
            return stale + self._follow(msg.sender, msg.term, now)
        return []  # a lower claimant while a higher leader lives: it will yield

    def _tell_if_stale(self, msg: Message) -> list[Effect]:
        """A leader whose token is not newer than one already handed out by
        someone else (a restarted node that only knew an old epoch, a leader
        from the other side of a partition) would fence with a reused token:
        tell it our epoch, so it re-asserts above it."""
        if self._is_stale(msg):
            return [Send(ANSWER, self._epoch, to=msg.sender)]
        if msg.term == self._epoch and self._epoch_leader is None:
            self._epoch_leader = msg.sender
            return [self._persist()]
        return []

    def _is_stale(self, msg: Message) -> bool:
        """Is this leader claim's token one we know was already handed out?"""
        return msg.term < self._epoch or (msg.term == self._epoch and self._epoch_leader not in (None, msg.sender))

    def _reassert(self) -> list[Effect]:
        """A follower saw our token already used: lead on above it (no hooks)."""
        self._epoch += 1
        self._epoch_leader = self.settings.node_name
        return [
            self._persist(),
            Send(COORDINATOR, self._epoch),
            self._raised("token_reused"),
        ]

    def _follow(self, leader: str, its_term: int, now: float) -> list[Effect]:
        self._leader = leader
        self._asked_leader = None
        # same leader in the same term (it led on through our false alarm): the
        # watch keeps its history and learns the gap that caused the alarm from
        # this heartbeat; a new term (it restarted, or re-won) starts afresh.
        # The term is the one it claims, not our epoch: a false alarm that
        # made us lead for a moment raised our epoch, not its term of office,
        # and forgetting its history then made the next alarm certain
        self._watch.reset(now, leader, its_term)
        self._watch.heartbeat(now)
        self._backoff.reset()
        return [LeaderChanged(leader, self._epoch), *self._maybe_preempt(now)]

    def _maybe_preempt(self, now: float) -> list[Effect]:
        assert self._leader is not None
        self._preempt_pending = False
        if (
            self.settings.preempt
            and self.settings.id_of(self._leader) < self.settings.self_id
            and not self._preempt_suppressed(self._leader)
            and self._can_stand(now)
        ):
            if now < self._preempt_from:
                # just started: a higher node may be about to show itself
                self._preempt_pending = True
                return []
            return self._start_election(now)
        return []

    def _graced(self, deadline: float) -> float:
        """``deadline``, or the end of the grace a late wake-up earned for it."""
        return self._grace_until if deadline == self._graced_deadline else deadline

    def _woke_late(self, now: float, deadline: float) -> bool:
        """Were we woken for ``deadline`` so late that unread input may end
        the silence? Then wait a grace first, once per deadline: under a
        steady lag the second wake-up concludes (a dead leader is still
        found, at most a grace later)."""
        if deadline == self._graced_deadline:
            return now < self._grace_until
        interval_s = self.settings.heartbeat_interval_s
        if now - deadline <= LATE_WAKE_INTERVALS * interval_s:
            return False
        self._graced_deadline = deadline
        self._grace_until = now + LATE_GRACE_INTERVALS * interval_s
        return True

    def _unsuspected_higher(self, now: float) -> list[str]:
        my_id = self.settings.self_id
        return [m.name for m in self.settings.members if m.id > my_id and not self.suspected(m.name, now)]

    def _suspect(self, name: str, now: float) -> None:
        self._suspects[name] = now + self.settings.max_suspicion_timeout_s

    def suspected(self, name: str, now: float) -> bool:
        """Found dead by this node and not heard from since (for a while)."""
        until = self._suspects.get(name)
        if until is None:
            return False
        if now >= until:
            del self._suspects[name]
            return False
        return True

    # ---- transitions ----------------------------------------------------------

    def _start_election(self, now: float) -> list[Effect]:
        if not self._can_stand(now):
            self._to_follower_without_leader(now, max(self._hold_until - now, 0.0) + self.settings.election_timeout_min_s)
            return []
        # members we found dead are not waited for: if every higher one is,
        # nobody can answer, and we win at once
        higher = self._unsuspected_higher(now)
        if not higher:
            return self._become_leader(now, "elected")
        self._role = ROLE_CANDIDATE
        self._phase = _ELECTING
        self._asked_leader = None
        self._election_sent_at = now
        self._phase_deadline = now + self.answer_wait_s()
        return [Send(ELECTION, self._epoch, to=name) for name in higher]

    def _become_leader(self, now: float, reason: str) -> list[Effect]:
        self._epoch += 1
        self._epoch_leader = self.settings.node_name
        self._role = ROLE_LEADER
        self._leader = self.settings.node_name
        self._phase = None
        self._next_heartbeat = now + self.settings.heartbeat_interval_s
        self._backoff.reset()
        self._rivals.clear()  # a new term of office
        return [
            self._persist(),
            Send(COORDINATOR, self._epoch),
            self._promoted(reason),
            LeaderChanged(self._leader, self._epoch),
        ]

    def _to_follower_without_leader(self, now: float, delay_s: float) -> None:
        self._phase = None
        self._asked_leader = None
        super()._to_follower_without_leader(now, delay_s)

    def _persist(self) -> Persist:
        return Persist(PersistedState(self._epoch, self._epoch_leader))

    def _undo_claim(self) -> None:
        if self._epoch_leader == self.settings.node_name:
            self._epoch_leader = None

    # ---- local requests -----------------------------------------------------------

    def set_eligible(self, eligible: bool, now: float, reason: str) -> list[Effect]:
        self._eligible = eligible
        if not eligible:
            return self._resign(now, reason, 0.0)
        return []

    def stepdown(self, now: float, reason: str = "stepdown") -> list[Effect]:
        if self._role != ROLE_LEADER:
            raise CommandError("not the leader")
        if reason == "stepdown":
            self._operator_stepped_down()
        # hold back long enough for a lower node to notice and win
        return self._resign(now, reason, 2 * self.settings.election_timeout_max_s + self.settings.answer_timeout_s)
