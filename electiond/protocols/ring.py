"""The ring algorithm (Chang–Roberts with ring repair), sans-IO.

The logical ring is the configured members ordered by id. A node that
suspects the leader starts an ELECTION that travels successor to successor
(directed), each node appending its id when it may lead. Every hop is
acknowledged with HOP_ACK; an unacknowledged hop is sent once more, then the
silent successor is marked suspect and skipped (ring repair). When the
ELECTION returns to its initiator the highest collected id is leader: a
COORDINATOR goes around the ring the same way and is also multicast, so a
broken ring still learns the result. If the initiator itself is skipped (it
died with its election in flight), the node that finds it dead finishes the
election on its behalf.

Concurrent elections die Chang–Roberts style: a node that is taking part in
an election forwards another only if its initiator has a higher id, and
swallows the lower ones. The epoch grows with every completed election and is
the fencing token. The leader multicasts HEARTBEAT; a leader that receives an
ELECTION swallows it and multicasts a reminder COORDINATOR instead (a node
that rejoins or lost heartbeats is spliced back in without an election),
unless `preempt` is on and the initiator has a higher id. Two leaders that
hear each other resolve as in bully: the lower id yields, and the event is
reported as a split brain. Like bully, ring cannot prevent two leaders during
a partition. A sitting leader whose token must grow (a lower rival shows one
at least as new, or an election round re-elects it under a new epoch) raises
it with TokenRaised, never a second Promote: hooks run once per term of
office, and a rival cut off by a one-way link costs one raise, not one per
heartbeat (epoch.py states the rule).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
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
HOP_ACK: Final = "HOP_ACK"
COORDINATOR: Final = "COORDINATOR"
HEARTBEAT: Final = "HEARTBEAT"
JOIN: Final = "JOIN"

# a hop that is not acknowledged is sent this many times before skipping the successor
HOP_TRIES: Final = 2


def _member_ids(values: list[Any]) -> list[int]:
    """Only the ints of a peer's id list: the wire checks the list, not its items."""
    return [v for v in values if type(v) is int]


@dataclass(slots=True)
class _Hop:
    """A directed message waiting for its HOP_ACK."""

    kind: str
    term: int
    body: dict[str, Any]  # without the hop id
    target: str
    deadline: float
    tries: int
    sent_at: float
    resent: bool = False  # Karn's rule: an ack to a resent hop says nothing about the RTT


# mutants (tests/*_mutants.py, --variant) subclass it, also under scripts/sim
@mypyc_attr(allow_interpreted_subclasses=True)
class Ring(EpochProtocol):
    name = "ring"
    MESSAGE_SCHEMAS = {
        # ids: candidate ids collected so far; path: ids of every node that forwarded it
        ELECTION: {"initiator": str, "nonce": int, "ids": list, "path": list, "hop": int},
        HOP_ACK: {"hop": int},
        # hop is None on the multicast copy; an empty ids list marks a leader's reminder
        COORDINATOR: {"leader": str, "origin": str, "ids": list, "hop": (int, type(None))},
        HEARTBEAT: {},
        JOIN: {},
    }

    def __init__(
        self,
        settings: Settings,
        rng: random.Random,
        now: float,
        persisted: PersistedState | None = None,
    ) -> None:
        super().__init__(settings, rng, now, persisted)
        # hop -> HOP_ACK round trips widen the hop timeout on a slow network
        self._hop_rtt = RttEstimator.for_settings(settings)
        self._ring = tuple(m.name for m in sorted(settings.members, key=lambda m: m.id))
        self._ids = {m.name: m.id for m in settings.members}
        self._names = {m.id: m.name for m in settings.members}
        # successors skipped as dead, until when: an ack lost twice must not exile a live node
        self._suspects: dict[str, float] = {}
        self._pending: dict[int, _Hop] = {}
        # a random start so acks meant for a previous incarnation rarely match
        self._next_hop = rng.getrandbits(24)
        # my own election in flight
        self._round_nonce: int | None = None
        self._round_deadline = float("inf")
        # the election this node takes part in: (initiator id, nonce)
        self._part_key: tuple[int, int] | None = None
        self._part_until = float("-inf")
        self._last_coordinator: tuple[str, int] | None = None  # (origin, epoch) forwarded
        # a node that has been in the cluster before (it has an epoch on disk)
        # announces itself once at start, so peers that skipped it while it was
        # down splice it back in; a fresh cluster has nobody to tell
        self._join_due = self._epoch > 0
        self._join_at = now
        self._join_sent_epoch = -1
        self._lost_leader: str | None = None  # the leader our detector gave up on
        # the highest epoch in which we followed another leader: we must never fence with
        # it. After a restart we cannot know, so assume the epoch on disk.
        self._followed_epoch = self._epoch if persisted else -1
        self.messages_sent: dict[str, int] = {}
        self.elections_started = 0
        self.elections_completed = 0

    # ---- read-only view -------------------------------------------------

    def extra_status(self, now: float) -> dict[str, Any]:
        return {
            "eligible": self._eligible,
            "successor": self._route(self.settings.node_name),
            "suspects": sorted((n for n, until in self._suspects.items() if now < until), key=self._ids.__getitem__),
            "participating": self._participating(now),
            "leader_timeout_ms": round(self._watch.timeout_s() * 1000, 1),
            "leader_watch": self._leader_watch_status(now),
            "hop_timeout_ms": round(self._hop_timeout_s() * 1000, 1),
            "fencing_token": self.fencing_token(),
            "election_attempt": self._backoff.attempt,
            "elections_started": self.elections_started,
            "elections_completed": self.elections_completed,
            "messages_sent": dict(sorted(self.messages_sent.items())),
        }

    # ---- ring geometry -----------------------------------------------------

    def _hop_timeout_s(self) -> float:
        """How long a hop waits for its HOP_ACK: never below answer_timeout_s
        (a busy peer's loop may be late), wider when measured round trips say so.
        A timeout does not back the estimate off: a silent successor is usually
        dead, not slow, and backing off would only make the next skip slower."""
        return max(self.settings.answer_timeout_s, self._hop_rtt.rto_s())

    def _round_timeout_s(self, hops: int | None = None) -> float:
        """Long enough for ``hops`` hops (a full lap by default) that each skip
        a dead member once."""
        n = len(self._ring) if hops is None else hops
        return self.settings.election_timeout_max_s + HOP_TRIES * self._hop_timeout_s() * n

    def _suspect_ttl_s(self) -> float:
        # long enough that a dead node costs a hop timeout only once in a while
        return 20 * self.settings.election_timeout_max_s

    def _expire_suspects(self, now: float) -> None:
        if not self._suspects:
            return  # the usual case, on every message and tick
        for name in [n for n, until in self._suspects.items() if now >= until]:
            del self._suspects[name]

    def _successors(self) -> tuple[str, ...]:
        i = self._ring.index(self.settings.node_name)
        return self._ring[i + 1 :] + self._ring[:i]

    def _route(self, stop_at: str) -> str | None:
        """The next live successor, walking no further than ``stop_at``.

        Returns ``stop_at`` itself if it is reached and not suspect, None if
        the walk comes back to us or ``stop_at`` is suspect (dead)."""
        for name in self._successors():
            if name == stop_at:
                return None if name in self._suspects else name
            if name not in self._suspects:
                return name
        return None

    # ---- time -------------------------------------------------------------

    def _deadline(self) -> float:
        if self._round_nonce is not None:
            d = self._round_deadline
        elif self._role == ROLE_LEADER:
            d = self._next_heartbeat
        elif self._leader is not None:
            d = self._watch.deadline()
        elif self._part_key is not None:
            d = max(self._retry_at, self._part_until)
        else:
            d = self._retry_at
        # hop retransmissions and a pending JOIN come on top (rarely any)
        if self._pending:
            d = min(d, *[h.deadline for h in self._pending.values()])
        if self._join_due and self._join_at < d:
            d = self._join_at
        return d

    def _on_tick(self, now: float) -> list[Effect]:
        self._expire_suspects(now)
        effects: list[Effect] = []
        if self._join_due and now >= self._join_at:
            self._join_due = False
            effects.append(self._send(JOIN, {}))
        for hop_id in sorted(self._pending):
            hop = self._pending.get(hop_id)
            if hop is not None and now >= hop.deadline:
                effects += self._hop_expired(hop_id, hop, now)
        if self._round_nonce is not None:
            if now >= self._round_deadline:
                # our election never came back: whoever held it died; back off and retry
                self._round_nonce = None
                self._part_key = None
                self._role = ROLE_FOLLOWER
                self._retry_at = now + self._backoff.next_delay_s(self.rng)
                if self._leader is not None and not self._has_live_leader(now):
                    self._leader = None
                    effects.append(LeaderChanged(None, self._epoch))
            return effects
        if self._role == ROLE_LEADER:
            if now >= self._next_heartbeat:
                self._next_heartbeat = now + self.settings.heartbeat_interval_s
                effects.append(self._send(HEARTBEAT, {}))
            return effects
        if self._leader is not None:
            if self._watch.suspects(now):
                # our detector already judged it: the election skips it at once
                # (ring repair without a hop timeout); it is spliced back in
                # when it speaks again
                self._lost_leader = self._leader
                self._suspects[self._leader] = now + self._suspect_ttl_s()
                self._leader = None
                effects.append(LeaderChanged(None, self._epoch))
                effects += self._start_election(now)
            return effects
        if self._part_key is not None and now >= self._part_until:
            # the election we forwarded died with someone: wait a random while, then run our own
            self._part_key = None
            self._retry_at = max(self._retry_at, now + self._backoff.next_delay_s(self.rng))
        if now >= self._retry_at:
            effects += self._start_election(now)
        return effects

    def _hop_expired(self, hop_id: int, hop: _Hop, now: float) -> list[Effect]:
        if hop.kind == ELECTION:
            current = (self._ids[hop.body["initiator"]], hop.body["nonce"]) == self._part_key
        else:
            current = hop.term >= self._epoch and (hop.body["origin"], hop.term) == self._last_coordinator
        if not current:
            # superseded by a higher election or a newer result: chasing it is wasted traffic
            del self._pending[hop_id]
            return []
        if hop.tries < HOP_TRIES:
            hop.tries += 1
            hop.resent = True
            hop.deadline = now + self._hop_timeout_s()
            return [self._send(hop.kind, {**hop.body, "hop": hop_id}, to=hop.target, term=hop.term)]
        del self._pending[hop_id]
        if hop.kind == ELECTION and hop.target == self._leader and self._keeps_live_leader(hop.body["initiator"], now):
            # our leader does not ack, yet its heartbeats reach us: a one-way link, not a
            # death. Skipping it would crown someone below a live leader (and again on every
            # retry of the initiator); swallow the election and say who leads instead
            self._end_election()
            me = self.settings.node_name
            return [self._send(COORDINATOR, {"leader": hop.target, "origin": me, "ids": [], "hop": None})]
        self._suspects[hop.target] = now + self._suspect_ttl_s()  # ring repair: skip it for a while
        if hop.kind == ELECTION:
            return self._forward_election(hop.body, now)
        return self._forward_coordinator(hop.body, hop.term, now)

    # ---- messages -----------------------------------------------------------

    def on_message(self, msg: Message, now: float) -> list[Effect]:
        me = self.settings.node_name
        if msg.sender == me or msg.sender not in self._ids:
            return []
        self._expire_suspects(now)
        self._suspects.pop(msg.sender, None)  # it spoke, so it is alive: splice it back in
        if msg.sender == self._lost_leader:
            self._lost_leader = None
        prior_epoch = self._epoch
        effects: list[Effect] = []
        if msg.term > self._epoch:
            self._epoch = msg.term
            effects.append(self._persist())
        if msg.kind == HEARTBEAT:  # by far the most common
            effects += self._on_claim(msg.sender, msg.term, now)
        elif msg.kind == HOP_ACK:
            hop = self._pending.get(msg.body.get("hop"))  # type: ignore[arg-type]
            if hop is not None and hop.target == msg.sender:
                del self._pending[msg.body["hop"]]
                if not hop.resent:
                    self._hop_rtt.sample(now - hop.sent_at)
        elif msg.kind == ELECTION:
            effects.append(self._send(HOP_ACK, {"hop": msg.body["hop"]}, to=msg.sender))
            # whoever forwarded it was alive a moment ago (its ack may just have been lost)
            self._unsuspect_ids(_member_ids(msg.body["path"]))
            effects += self._on_election(msg, now)
        elif msg.kind == COORDINATOR:
            if msg.body.get("hop") is not None:
                effects.append(self._send(HOP_ACK, {"hop": msg.body["hop"]}, to=msg.sender))
            effects += self._on_coordinator(msg, prior_epoch, now)
        # JOIN: hearing it was all it took (the sender is no longer suspect)
        if self._role != ROLE_LEADER and self._leader not in (None, me):
            # following someone at this epoch (perhaps re-elected under it): never fence with it
            self._followed_epoch = max(self._followed_epoch, self._epoch)
        return effects

    def _on_election(self, msg: Message, now: float) -> list[Effect]:
        b = {**msg.body, "ids": _member_ids(msg.body["ids"]), "path": _member_ids(msg.body["path"])}
        initiator = b["initiator"]
        if initiator not in self._ids:
            return []
        me = self.settings.node_name
        my_id = self.settings.self_id
        key = (self._ids[initiator], b["nonce"])
        if initiator == me:
            if b["nonce"] == self._round_nonce and self._part_key == key:
                return self._complete(b, now)
            return []  # an old round, or extinguished by a higher initiator
        if my_id in b["path"]:
            return []  # already forwarded this one: a duplicate
        if self._role == ROLE_LEADER and not (self.settings.preempt and key[0] > my_id):
            # the sitting leader is alive: remind everyone instead of re-electing
            return [self._send(COORDINATOR, {"leader": me, "origin": me, "ids": [], "hop": None})]
        if self._participating(now) and self._part_key is not None and key <= self._part_key:
            if key[0] < self._part_key[0]:
                return []  # Chang–Roberts: a lower initiator's election dies here
            if key == self._part_key:
                return []  # duplicate
        self._part_key = key
        # we stand aside (and extinguish lower elections) only as long as this
        # one needs to finish its lap from here: the members not yet on its
        # path, then back to its initiator. A full lap's worth would let an
        # election whose initiator died block every election behind it for a
        # whole round (found by the simulator: 9 nodes, 4 lost at once)
        self._part_until = now + self._round_timeout_s(max(1, len(self._ring) - len(b["path"])))
        ids = list(b["ids"])
        if self._can_stand(now) and my_id not in ids:
            ids.append(my_id)
        body = {"initiator": initiator, "nonce": b["nonce"], "ids": ids, "path": [*b["path"], my_id]}
        return self._forward_election(body, now)

    def _on_coordinator(self, msg: Message, prior_epoch: int, now: float) -> list[Effect]:
        b = msg.body
        leader = b["leader"]
        if leader not in self._ids or b["origin"] not in self._ids or msg.term < prior_epoch:
            return []  # a stale result: acknowledged, not passed on
        me = self.settings.node_name
        effects: list[Effect] = []
        ids = _member_ids(b["ids"])
        self._unsuspect_ids(ids)  # they took part in the election that just ended
        if ids and self._ids[me] not in ids and self._can_stand(now) and self._join_sent_epoch != msg.term:
            # we were skipped as dead: tell everyone we are here
            self._join_sent_epoch = msg.term
            effects.append(self._send(JOIN, {}))
        accepted, claim_effects = self._apply_coordinator(leader, msg.term, prior_epoch, now)
        effects += claim_effects
        key = (b["origin"], msg.term)
        if accepted and b.get("hop") is not None and key != self._last_coordinator:
            self._last_coordinator = key
            body = {"leader": leader, "origin": b["origin"], "ids": ids}
            effects += self._forward_coordinator(body, msg.term, now)
        return effects

    def _apply_coordinator(self, leader: str, term: int, prior_epoch: int, now: float) -> tuple[bool, list[Effect]]:
        me = self.settings.node_name
        newer = term > prior_epoch
        if leader == me:
            self._end_election()
            if self._role == ROLE_LEADER:
                if newer:
                    # re-elected under a new epoch: the same leader with a new token (no hooks)
                    return True, [self._raised("reelected")]
                return True, []
            if self._can_stand(now):
                if self._epoch <= self._followed_epoch:
                    # two results of one epoch named different leaders (loss split the
                    # ring's view) and we followed the other one: lead under a new epoch
                    return True, self._reassert(now)
                return True, self._become_leader(now, "elected")
            # chosen, but no longer able to lead: let the others pick again
            return False, self._start_election(now)
        if self._role == ROLE_LEADER:
            return self._leader_hears(leader, COORDINATOR, term, now)
        if self._role == ROLE_CANDIDATE and self._keeps_running_against(leader, now):
            return False, []
        if not self._forwarding_a_preemption(leader, now):
            self._end_election()
        self._role = ROLE_FOLLOWER
        if leader == self._leader:
            self._watch.heartbeat(now)
            return True, self._maybe_preempt(now)
        if newer or not self._has_live_leader(now) or self._ids[leader] > self._ids[self._leader]:  # type: ignore[index]
            return True, self._follow(leader, now)
        return False, []  # a lower claimant while a higher leader lives: it will yield

    def _on_claim(self, leader: str, term: int, now: float) -> list[Effect]:
        """A HEARTBEAT from ``leader``."""
        if self._role == ROLE_LEADER:
            return self._leader_hears(leader, HEARTBEAT, term, now)[1]
        if self._role == ROLE_CANDIDATE:
            if self._keeps_running_against(leader, now):
                return []
            self._end_election()
            self._role = ROLE_FOLLOWER
            return self._follow(leader, now)
        if leader == self._leader:
            self._watch.heartbeat(now)
            return self._maybe_preempt(now)
        if not self._has_live_leader(now) or self._ids[leader] > self._ids[self._leader]:  # type: ignore[index]
            return self._follow(leader, now)
        return []

    def _leader_hears(self, other: str, kind: str, their_term: int, now: float) -> tuple[bool, list[Effect]]:
        """Another node leads too (a split brain), or was elected over us."""
        if self._ids[other] > self.settings.self_id:
            takeover = kind == COORDINATOR
            effects: list[Effect] = []
            if not takeover:
                effects.append(SplitBrain(other, self._epoch, yielded=True))
            effects.append(Demote(self._epoch, "preempted" if takeover else "split_brain"))
            if their_term < self._epoch or their_term <= self._token:
                # the winner's token is older than ours (it led on the other side of a
                # partition), or the very one we hold (we each raised to it over a
                # different rival): tell it, so it re-asserts above every token issued
                # meanwhile. The winner takes a rival that repeats the epoch it raised
                # to over it for its own token relayed back (epoch.py's rule), so an
                # equal token is told as one above it (found by the simulator, seed 4350)
                if their_term >= self._epoch:
                    self._epoch = their_term + 1
                    effects.append(self._persist())
                me = self.settings.node_name
                effects.append(self._send(COORDINATOR, {"leader": me, "origin": me, "ids": [], "hop": None}, to=other))
            self._role = ROLE_FOLLOWER
            return True, effects + self._follow(other, now)
        # a lower id claims to lead: it thought us dead. Fence above any token it handed
        # out, once per new token it shows (epoch.py's rule, as bully)
        raised, new_episode = self._rival_claim(other, their_term, now)
        me = self.settings.node_name
        out: list[Effect] = [SplitBrain(other, self._epoch, yielded=False)] if new_episode else []
        if raised:
            out.append(self._persist())
        if raised or new_episode:
            out.append(self._send(COORDINATOR, {"leader": me, "origin": me, "ids": [], "hop": None}))
        if raised:
            out.append(self._raised("split_brain"))
        return False, out

    def _forwarding_a_preemption(self, leader: str, now: float) -> bool:
        """We pass on an election whose initiator outranks ``leader``, with
        preempt on: a COORDINATOR from that leader (a reminder it sent when a
        lower election reached it) does not end that election here, or its
        hop waiting on a dead successor would be dropped and the preemption
        put off by a whole round (found by the simulator)."""
        return (
            self.settings.preempt
            and self._round_nonce is None
            and self._participating(now)
            and self._part_key is not None
            and self._part_key[0] > self._ids[leader]
        )

    def _keeps_running_against(self, leader: str, now: float) -> bool:
        """A candidate with preempt and a higher id ignores a lower leader: its own election wins."""
        return self.settings.preempt and self._can_stand(now) and self._ids[leader] < self.settings.self_id

    # ---- elections ------------------------------------------------------------

    def _start_election(self, now: float) -> list[Effect]:
        if self._round_nonce is not None:
            return []
        if self._participating(now):
            # someone else's election is going round: wait for its result
            self._retry_at = max(self._retry_at, self._part_until)
            return []
        # an ineligible node may still start an election: it just does not put itself up
        nonce = self.rng.getrandbits(31)
        self._round_nonce = nonce
        self._round_deadline = now + self._round_timeout_s()
        self._part_key = (self.settings.self_id, nonce)
        self._part_until = self._round_deadline
        if self._can_stand(now):
            self._role = ROLE_CANDIDATE
        self.elections_started += 1
        my_id = self.settings.self_id
        body = {
            "initiator": self.settings.node_name,
            "nonce": nonce,
            "ids": [my_id] if self._can_stand(now) else [],
            "path": [my_id],
        }
        return self._forward_election(body, now)

    def _forward_election(self, body: dict[str, Any], now: float) -> list[Effect]:
        target = self._route(body["initiator"])
        if target is None:
            # back at the initiator, or the initiator is dead: finish the election here
            return self._complete(body, now)
        return [self._send_hop(ELECTION, body, target, self._epoch, now)]

    def _complete(self, body: dict[str, Any], now: float) -> list[Effect]:
        me = self.settings.node_name
        self._end_election()
        self.elections_completed += 1
        ids = sorted(i for i in body["ids"] if self._names.get(i) is not None and self._names[i] not in self._suspects)
        if not ids:
            # nobody may lead right now: try again later
            effects: list[Effect] = []
            if self._role == ROLE_LEADER:
                effects.append(Demote(self._epoch, "not_eligible"))
            if self._leader is not None:
                effects.append(LeaderChanged(None, self._epoch))
            self._to_follower_without_leader(now, self._backoff.next_delay_s(self.rng))
            return effects
        winner = self._names[ids[-1]]
        if body["initiator"] != me and (self._keeps_live_leader(winner, now) or self._leads_already(winner, now)):
            # finishing for an initiator we found dead, while a leader we still hear (or we
            # ourselves) leads: a one-way link made the initiator lose it. A new epoch would
            # depose a live leader, or re-crown the sitting one, on every retry of the
            # initiator; say who leads instead
            return [self._send(COORDINATOR, {"leader": self._leader, "origin": me, "ids": [], "hop": None})]
        # the lap carried the highest epoch of every node on it: the new one is above all
        epoch = self._epoch + 1
        coordinator = {"leader": winner, "origin": me, "ids": ids}
        self._last_coordinator = (me, epoch)
        effects = []
        if winner == me:
            self._epoch = epoch
            effects += [self._persist(), self._send(COORDINATOR, {**coordinator, "hop": None})]
            effects += self._become_leader(now, "elected")
        else:
            # the epoch is the winner's token: we only announce it, and take it up when the
            # winner speaks under it (a result whose winner died leaves no token behind)
            effects.append(self._send(COORDINATOR, {**coordinator, "hop": None}, term=epoch))
            if self._role == ROLE_LEADER:
                effects.append(Demote(self._epoch, "preempted"))
            self._role = ROLE_FOLLOWER
            effects += self._follow(winner, now)
        effects += self._forward_coordinator(coordinator, epoch, now)
        return effects

    def _keeps_live_leader(self, winner: str, now: float) -> bool:
        """Do we follow a leader other than ``winner`` that we still hear, and
        that ``winner`` may not preempt?"""
        leader = self._leader
        if self._role != ROLE_FOLLOWER or leader is None or leader == winner:
            return False
        if not self._has_live_leader(now) or self._leader_looks_dead(leader, now):
            return False
        return not (self.settings.preempt and self._ids[winner] > self._ids[leader])

    def _leads_already(self, winner: str, now: float) -> bool:
        """Is ``winner`` the sitting leader: us, or the live leader we follow?"""
        if winner != self._leader:
            return False
        return self._role == ROLE_LEADER or (self._has_live_leader(now) and not self._leader_looks_dead(winner, now))

    def _forward_coordinator(self, body: dict[str, Any], term: int, now: float) -> list[Effect]:
        target = self._route(body["origin"])
        if target is None or target == body["origin"]:
            return []  # the lap is done
        return [self._send_hop(COORDINATOR, body, target, term, now)]

    def _end_election(self) -> None:
        self._round_nonce = None
        self._part_key = None
        if self._role == ROLE_CANDIDATE:
            self._role = ROLE_FOLLOWER

    def _leader_looks_dead(self, target: str, now: float) -> bool:
        """The leader our detector gave up on, or has half given up on: an
        election is going round, so someone else already did."""
        if target == self._lost_leader:
            return True
        # half the detector's timeout without a heartbeat: one or two missed at least
        half_silent = now >= self._watch.deadline() - self._watch.timeout_s() / 2
        return target == self._leader and half_silent

    def _unsuspect_ids(self, ids: list[Any]) -> None:
        for i in ids:
            name = self._names.get(i)
            if name is not None:
                self._suspects.pop(name, None)
                if name == self._lost_leader:
                    self._lost_leader = None

    def _participating(self, now: float) -> bool:
        return self._part_key is not None and now < self._part_until

    # ---- transitions ----------------------------------------------------------

    def _follow(self, leader: str, now: float) -> list[Effect]:
        self._leader = leader
        self._followed_epoch = max(self._followed_epoch, self._epoch)
        # the same leader in the same term (a false alarm): the watch keeps its
        # history; a new term (it restarted, or re-won) starts afresh
        self._watch.reset(now, leader, self._epoch)
        self._watch.heartbeat(now)
        self._backoff.reset()
        return [LeaderChanged(leader, self._epoch), *self._maybe_preempt(now)]

    def _maybe_preempt(self, now: float) -> list[Effect]:
        assert self._leader is not None
        if (
            self.settings.preempt
            and self._ids[self._leader] < self.settings.self_id
            and not self._preempt_suppressed(self._leader)
            and now >= self._retry_at
            and self._can_stand(now)
        ):
            return self._start_election(now)
        return []

    def _reassert(self, now: float) -> list[Effect]:
        self._epoch += 1
        me = self.settings.node_name
        return [
            self._persist(),
            self._send(COORDINATOR, {"leader": me, "origin": me, "ids": [], "hop": None}),
            *self._become_leader(now, "elected"),
        ]

    def _become_leader(self, now: float, reason: str) -> list[Effect]:
        """Lead under the current epoch (already raised by whoever completed the election)."""
        self._end_election()
        self._role = ROLE_LEADER
        self._leader = self.settings.node_name
        self._next_heartbeat = now + self.settings.heartbeat_interval_s
        self._backoff.reset()
        self._rivals.clear()  # a new term of office
        return [self._promoted(reason), LeaderChanged(self._leader, self._epoch)]

    def _persist(self) -> Persist:
        return Persist(PersistedState(self._epoch, None))

    def _undo_claim(self) -> None:
        # a COORDINATOR naming us waits for its HOP_ACK as if sent: it must not go out on a retry
        me = self.settings.node_name
        for hop_id in [k for k, h in self._pending.items() if h.kind == COORDINATOR and h.body["leader"] == me]:
            del self._pending[hop_id]
        if self._last_coordinator is not None and self._last_coordinator[0] == me:
            self._last_coordinator = None

    # ---- sending ----------------------------------------------------------------

    def _send(self, kind: str, body: dict[str, Any], to: str | None = None, term: int | None = None) -> Send:
        self.messages_sent[kind] = self.messages_sent.get(kind, 0) + 1
        return Send(kind, self._epoch if term is None else term, body, to=to)

    def _send_hop(self, kind: str, body: dict[str, Any], target: str, term: int, now: float) -> Send:
        hop_id = self._next_hop
        self._next_hop = (self._next_hop + 1) % (1 << 31)
        # no second try for a leader whose heartbeats already stopped: that wait is what makes
        # a ring failover slower than bully's, and the detector has already waited
        tries = HOP_TRIES if self._leader_looks_dead(target, now) else 1
        self._pending[hop_id] = _Hop(kind, term, body, target, now + self._hop_timeout_s(), tries, now)
        return self._send(kind, {**body, "hop": hop_id}, to=target, term=term)

    # ---- local requests -----------------------------------------------------------

    def _abandon_election(self) -> None:
        self._end_election()

    def set_eligible(self, eligible: bool, now: float, reason: str) -> list[Effect]:
        self._eligible = eligible
        if not eligible:
            was_leader = self._role == ROLE_LEADER
            effects = self._resign(now, reason, 0.0)
            # hand over at once: an election that leaves us out
            return effects + (self._start_election(now) if was_leader else [])
        return []

    def stepdown(self, now: float, reason: str = "stepdown") -> list[Effect]:
        if self._role != ROLE_LEADER:
            raise CommandError("not the leader")
        if reason == "stepdown":
            self._operator_stepped_down()
        effects = self._resign(now, reason, 2 * self.settings.election_timeout_max_s + self._round_timeout_s())
        # the ring needs no timeout to notice: start the election that leaves us out now
        return effects + self._start_election(now)
