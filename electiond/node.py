"""Pure glue: one protocol, the membership view and the leadership history.

The daemon's runtime, the simulator and the tests all drive a Node; none of
them talks to a protocol directly, so a bug seen in one replays in the others.
"""

from __future__ import annotations

import dataclasses
import random
from collections import deque
from dataclasses import dataclass
from typing import Any, Final, Mapping

from electiond.clockrate import BEYOND, UNKNOWN, WITHIN, ClockBounds, PeerClock, self_blame
from electiond.detector import PeerWatches
from electiond.promote_backoff import PromoteBackoff
from electiond.protocols.base import (
    ROLE_CANDIDATE,
    ROLE_FOLLOWER,
    ROLE_LEADER,
    Demote,
    Send,
    Effect,
    ElectionProtocol,
    LeaderChanged,
    Message,
    Persist,
    PersistedState,
    Promote,
    Settings,
    SplitBrain,
    TokenRaised,
)
from electiond.protocols.bully import Bully
from electiond.protocols.etcd import EtcdElection
from electiond.protocols.lease import HEARTBEAT_ACK, NO_HINT_MS, PREVOTE_REPLY, VOTE, QuorumLease, vote_reply
from electiond.protocols.ring import Ring

PROTOCOLS: dict[str, type[ElectionProtocol]] = {
    Bully.name: Bully,
    EtcdElection.name: EtcdElection,
    QuorumLease.name: QuorumLease,
    Ring.name: Ring,
}

INF: Final = float("inf")
HISTORY_LENGTH: Final = 200
# DESIGN §6: more than this many leadership changes in an hour is flapping
FLAP_CHANGES_PER_HOUR: Final = 2
FLAP_WINDOW_S: Final = 3600.0
# Followers in bully and ring send nothing while all is well; a slow presence
# beacon lets every member's table say who is alive.
PRESENCE: Final = "PRESENCE"
# Another process speaking under our name: FAULT until it has been silent for
# this many presence intervals (it beacons once per interval while it runs).
DUPLICATE_NAME: Final = "duplicate_name"
DUPLICATE_QUIET_PRESENCES: Final = 3
# maintenance mode (`electionctl pause`): a blocker like any other
PAUSED: Final = "paused"
# promote hooks that keep failing: a growing wait, then FAULT (promote_backoff.py)
PROMOTE_BACKOFF: Final = "promote_backoff"
PROMOTE_FAULT: Final = "promote_failed"
# quorum-lease's start-up clock check (Node._clock_check): the blocker's name,
# the phase status shows meanwhile, and the widest error margin on a peer's
# rate estimate that still counts as agreement. An estimate r^ +- m that
# overlaps the bound puts the true rate within the bound + 2m, so with 0.05
# a clock off by more than about 10 % (x0.5, x2, x1.2) can never pass; a
# smaller excess is left to the running estimator (1.01: 7-9 s). On a quiet
# path m (4E/span, E >= 5 ms) is 0.01 at the estimator's 2 s minimum span,
# so the span sets the wait; a path whose delays vary by tens of ms needs a
# longer span (the simulator's slow links: up to ~10 s; 0.02 held some
# nodes past 20 s).
CLOCK_CHECK: Final = "clock_check"
PHASE_CLOCK_CHECK: Final = "clock-check"
CLOCK_CHECK_MAX_MARGIN: Final = 0.05
# a check that has waited this many spans says so in the log, once
CLOCK_CHECK_NAG_SPANS: Final = 5.0


@dataclass(frozen=True, slots=True)
class ClockEvent:
    """A clock verdict changed; the shell logs it (self-beyond: an error, peer-beyond: a warning)."""

    kind: str  # self-beyond, self-cleared, peer-beyond, peer-cleared
    text: str


@dataclass(frozen=True, slots=True)
class HistoryEntry:
    at: float  # node-local monotonic seconds
    event: str  # promote, demote, leader, split_brain, hook, ...
    term: int
    detail: dict[str, Any]


# PRESENCE beacons a member hears per second at most, whatever the cluster's
# size: every member beacons to every other, so a fixed period made that work
# grow with n^2 over the cluster (at 65 daemons, 64 beacons a second each, six
# times the leader's heartbeats: most of what a follower decoded)
PRESENCE_HEARD_PER_S = 32.0


def presence_interval_s(settings: Settings) -> float:
    """Every member's PRESENCE beacon period: 10 heartbeats (at least 0.5 s),
    longer in a cluster of more than 33 so no member hears more than
    PRESENCE_HEARD_PER_S beacons a second."""
    return max(0.5, 10 * settings.heartbeat_interval_s, (len(settings.members) - 1) / PRESENCE_HEARD_PER_S)


def clock_check_wait_s(settings: Settings) -> float:
    """The longest quorum-lease's start-up clock check holds a healthy node
    once quorum - 1 peers beacon to it: the first beacon's phase (a period),
    the span, and a period of slack for a late beacon. 0: no check."""
    if settings.clock_check_s <= 0.0 or settings.quorum <= 1:
        return 0.0
    period_s = presence_interval_s(settings)
    span_s = max(settings.clock_check_s, ClockBounds(settings.clock_drift_ppm, period_s).min_span_s)
    return span_s + 2.0 * period_s


class Membership:
    """Who was last heard from, and when (any authenticated message counts)."""

    def __init__(self, settings: Settings, now: float) -> None:
        self._settings = settings
        # asked for every member on every status line and clock check: worked
        # out once (settings never change under a node), not per call
        self._liveness_window_s = 3 * presence_interval_s(settings)
        self._last_seen: dict[str, float | None] = {m.name: None for m in settings.peers()}
        self._duplicate_seen: dict[str, float] = {}  # name -> last time two processes used it
        # what each peer's last PRESENCE said about itself (paused, fault, served term)
        self._reported: dict[str, dict[str, Any]] = {}
        # peers whose leadership our protocol gave up on by timeout, and when:
        # shown dead until they are heard again
        self._suspected_at: dict[str, float] = {}

    def saw(self, name: str, now: float) -> None:
        if name in self._last_seen:
            self._last_seen[name] = now
            if name in self._suspected_at:
                del self._suspected_at[name]

    def report(self, name: str, body: dict[str, Any]) -> None:
        """A PRESENCE body: only fields of the right type are kept (the wire
        schema requires none, so a peer without them is simply not shown)."""
        if name not in self._last_seen:
            return
        kept: dict[str, Any] = {}
        for key in ("paused", "fault"):
            value = body.get(key)
            if type(value) is bool:
                kept[key] = value
        served = body.get("served_term")
        if type(served) is int:
            kept["served_term"] = served
        self._reported[name] = kept

    def reported(self, name: str) -> dict[str, Any]:
        return self._reported.get(name, {})

    def suspect(self, name: str, now: float) -> None:
        if name in self._last_seen:
            self._suspected_at[name] = now

    def suspected(self, name: str) -> bool:
        return name in self._suspected_at

    def saw_duplicate(self, name: str, now: float) -> None:
        if name in self._last_seen:
            self._duplicate_seen[name] = now

    def duplicate(self, name: str, now: float) -> bool:
        seen = self._duplicate_seen.get(name)
        return seen is not None and now - seen <= self.liveness_window_s()

    def alive(self, name: str, now: float) -> bool:
        seen = self._last_seen.get(name)
        return seen is not None and now - seen <= self.liveness_window_s()

    def liveness_window_s(self) -> float:
        # a peer that multicasts nothing (a follower in bully) still answers
        # elections; the window is generous because it is informational only
        return self._liveness_window_s

    def presence_interval_s(self) -> float:
        return presence_interval_s(self._settings)

    def last_seen(self, name: str) -> float | None:
        return self._last_seen.get(name)


class Node:
    def __init__(
        self,
        settings: Settings,
        protocol: str,
        rng: random.Random,
        now: float,
        persisted: PersistedState | None = None,
        registry: Mapping[str, type[ElectionProtocol]] | None = None,
        max_promote_failures: int = 3,
        max_changes_per_hour: int = FLAP_CHANGES_PER_HOUR,
    ) -> None:
        # registry: a copy of PROTOCOLS with a variant swapped in (the
        # simulator's mutants); the daemon never passes one
        protocols = PROTOCOLS if registry is None else registry
        if protocol not in protocols:
            raise ValueError(f"unknown protocol {protocol!r}")
        self.settings = settings
        self.protocol_name = protocol
        self.protocol = protocols[protocol](settings, rng, now, persisted)
        self.membership = Membership(settings, now)
        # every member's presence beacons through the same adaptive detector the
        # protocols use for the leader, so status shows each member's suspicion;
        # its timings are scaled to the beacon's period, not the heartbeat's
        presence_s = self.membership.presence_interval_s()
        beacon_settings = dataclasses.replace(
            settings,
            heartbeat_interval_s=presence_s,
            election_timeout_min_s=2 * presence_s,
            election_timeout_max_s=3 * presence_s,
            min_suspicion_timeout_s=2 * presence_s,
            max_suspicion_timeout_s=6 * presence_s,
        )
        self.peer_watches = PeerWatches(beacon_settings, random.Random(rng.random()))
        self.history: deque[HistoryEntry] = deque(maxlen=HISTORY_LENGTH)
        self.leader_changes: deque[float] = deque()
        self.split_brains = 0
        self.started_at = now
        self._next_presence = now
        # why this node must not stand now (health, a clock beyond its bound, a
        # duplicate of our name...): name -> detail; eligible only when empty
        self._blockers: dict[str, str] = {}
        # the term of a Promote listed after a Persist in the last list seen:
        # the shell drops it if that Persist fails
        self._promote_after_persist: int | None = None
        self._own_name_heard_at = -1.0  # last datagram of another process using our name
        # each peer's clock rate against ours, from the clock_ms of its beacons
        self.clock_bounds = ClockBounds(settings.clock_drift_ppm, presence_s)
        self.peer_clocks = {m.name: PeerClock(self.clock_bounds) for m in settings.peers()}
        self.clock_episodes = 0  # times our own clock was found beyond the bound
        self.peer_clock_alarms = 0  # times a peer's was, by us
        # for the shell's log; bounded, since the simulator never drains it
        self.clock_events: deque[ClockEvent] = deque(maxlen=64)
        self._clock_was_beyond: dict[str, bool] = {}  # to log a peer's return once
        # the one grant gate (_without_grants), shut for either of two reasons:
        # quorum-lease, our clock found beyond its bound and fast (a promise we
        # make would end too early in real time), or the start-up check below
        self._withhold_grants = False
        self.max_changes_per_hour = max_changes_per_hour
        # failed promote hooks: back off, then FAULT (a base of a few election
        # rounds: long enough that the rest of the cluster settles meanwhile)
        self.promote_backoff = PromoteBackoff(
            max_failures=max_promote_failures,
            base_s=max(1.0, 4 * settings.election_timeout_max_s),
            cap_s=60.0,
            rng=rng,  # drawn from only on a failure: the simulator's traces stay as they were
        )
        self.served_term = -1  # the term of the last promote whose hooks all succeeded
        # elections seen from here: role changes into and out of candidacy
        self.elections_started = 0
        self.elections_won = 0
        self.elections_lost = 0
        self._last_role = self.protocol.role
        self._clock_fast = False
        # quorum-lease's start-up clock check. Detecting a gross error takes
        # 3-8 s; until then a node whose clock is off could win an election
        # or back a lease with promises that end early. So a new node neither
        # stands nor grants (votes, pre-votes, acks) until quorum - 1 peers
        # (with us, a majority) have each shown, over at least the span
        # below, a rate estimate that agrees with ours within the bound and
        # a margin of CLOCK_CHECK_MAX_MARGIN. A gross error never shows such
        # an estimate, so it cannot pass first; a healthy cluster waits one
        # span of beacons. With fewer peers alive no majority could elect
        # anyway: the node keeps following and answers status, only its
        # grants and candidacy wait for a peer to return.
        self.clock_check_span_s = max(settings.clock_check_s, self.clock_bounds.min_span_s)
        self.clock_check_need = settings.quorum - 1
        self.clock_checked_at: float | None = None
        self._clock_checking = False
        self._clock_check_nag_at = INF
        if protocol == QuorumLease.name and settings.clock_check_s > 0.0 and self.clock_check_need > 0:
            self._clock_checking = True
            self._withhold_grants = True
            self._clock_check_nag_at = now + CLOCK_CHECK_NAG_SPANS * self.clock_check_span_s
            detail = self._clock_check_detail(now)
            self._blockers[CLOCK_CHECK] = detail
            # not leading or standing yet: nothing to carry out
            self.protocol.set_eligible(False, now, CLOCK_CHECK)
            self._clock_event(now, "check-started", detail)

    # ---- inputs -----------------------------------------------------------

    def message_schemas(self) -> dict[str, dict]:
        return {**self.protocol.MESSAGE_SCHEMAS, PRESENCE: {"clock_ms": int}}

    def on_message(self, msg: Message, now: float) -> list[Effect]:
        self.membership.saw(msg.sender, now)
        if msg.kind == PRESENCE:
            self.peer_watches.observe(msg.sender, now)
            self.membership.report(msg.sender, msg.body)
            clock_ms = msg.body.get("clock_ms")
            peer = self.peer_clocks.get(msg.sender)
            # the wire insists on clock_ms; a hand-made message in a test may lack it
            if type(clock_ms) is int and peer is not None:
                effects = self._clock_verdict_changed(msg.sender, peer, now) if peer.observe(now, clock_ms / 1000.0) else []
                if self._clock_checking:
                    effects += self._clock_check(now)
                return effects
            return []
        if DUPLICATE_NAME in self._blockers:
            # Peers cannot tell our grants from the other process's, so we
            # make none (two voters under one name break quorum intersection):
            # the protocol hears nothing, which every protocol survives as loss.
            return []
        effects = self.protocol.on_message(msg, now)
        if effects and self._withhold_grants:
            effects = _without_grants(effects, self.protocol.term)
        if not effects:
            self._note_role()
            return effects
        return self._observe(effects, now)

    def on_tick(self, now: float) -> list[Effect]:
        leader_before = self.protocol.leader
        effects = self._observe(self.protocol.on_tick(now), now)
        if leader_before is not None and leader_before != self.settings.node_name and self.protocol.leader is None:
            # the protocol timed its leader out: show it dead at once, not
            # only when the slow presence window ends
            self.membership.suspect(leader_before, now)
        if PROMOTE_BACKOFF in self._blockers and now >= self.promote_backoff.until:
            effects += self.set_blocker(PROMOTE_BACKOFF, False, now)
        if now >= self._clock_check_nag_at:
            self._clock_check_nag_at = INF
            self._clock_event(now, "check-waiting", self._clock_check_detail(now))
        if DUPLICATE_NAME in self._blockers and now >= self._duplicate_clears_at():
            self.history.append(HistoryEntry(now, "duplicate_name_cleared", self.protocol.term, {}))
            effects += self.set_blocker(DUPLICATE_NAME, False, now)
        if now >= self._next_presence:
            effects.append(self.announce(now))
        return effects

    def announce(self, now: float) -> Send:
        """The PRESENCE beacon, due now or sent early (the shell sends one when
        a promote hook finished, so a waiting `transfer --wait` hears it)."""
        self._next_presence = now + self.membership.presence_interval_s()
        body = {
            "paused": PAUSED in self._blockers,
            "fault": any(name not in (PAUSED, CLOCK_CHECK) for name in self._blockers),
            "served_term": self.served_term,
            "clock_ms": int(now * 1000.0),  # peers estimate our clock's rate from it
        }
        return Send(PRESENCE, self.protocol.term, body)

    def deadline(self) -> float:
        d = self.protocol.deadline()
        if d > self._next_presence:
            d = self._next_presence
        if DUPLICATE_NAME in self._blockers:
            clears = self._duplicate_clears_at()
            if clears < d:
                d = clears
        if PROMOTE_BACKOFF in self._blockers and self.promote_backoff.until < d:
            d = self.promote_backoff.until
        return d

    def heard_own_name(self, now: float, detail: str) -> list[Effect]:
        """An authentic datagram from another process using our name (the
        shell has told it from our own loopback): FAULT, renewed by each one."""
        self._own_name_heard_at = now
        if DUPLICATE_NAME in self._blockers:
            return []
        self.history.append(HistoryEntry(now, DUPLICATE_NAME, self.protocol.term, {"detail": detail}))
        return self.set_blocker(DUPLICATE_NAME, True, now, detail)

    def saw_duplicate_peer(self, name: str, now: float) -> None:
        """A member's name heard from two live processes: informational (an
        attacker replaying old traffic must not be able to mute a member)."""
        self.membership.saw_duplicate(name, now)

    def duplicate_peer(self, name: str, now: float) -> bool:
        return self.membership.duplicate(name, now)

    def _duplicate_clears_at(self) -> float:
        return self._own_name_heard_at + DUPLICATE_QUIET_PRESENCES * self.membership.presence_interval_s()

    def on_service(self, event: object, now: float) -> list[Effect]:
        """A reply or watch event from etcd (protocol = etcd), fed in by the shell."""
        return self._observe(self.protocol.on_service(event, now), now)

    def transfer(self, target: str | None, now: float, reason: str = "transfer") -> list[Effect]:
        return self._observe(self.protocol.transfer(target, now, reason), now)

    def stepdown(self, now: float, reason: str = "stepdown") -> list[Effect]:
        return self._observe(self.protocol.stepdown(now, reason), now)

    def set_eligible(self, eligible: bool, now: float, reason: str) -> list[Effect]:
        """Health: a failing check is the blocker named ``fault``."""
        return self.set_blocker("fault", not eligible, now, reason)

    def set_blocker(self, name: str, active: bool, now: float, detail: str = "") -> list[Effect]:
        """Raise or clear one reason not to stand. The protocol sees one
        eligibility: it becomes ineligible (a leader steps down, with ``name``
        as the reason) when the first blocker rises and eligible again when
        the last one clears, so independent checks never undo each other."""
        was_eligible = not self._blockers
        if active:
            self._blockers[name] = detail or name
        else:
            self._blockers.pop(name, None)
        eligible = not self._blockers
        if eligible == was_eligible:
            return []
        reason = "recovered" if eligible else name
        return self._observe(self.protocol.set_eligible(eligible, now, reason), now)

    @property
    def blockers(self) -> dict[str, str]:
        return dict(self._blockers)

    # ---- maintenance and failing promote hooks ------------------------------

    @property
    def paused(self) -> bool:
        return PAUSED in self._blockers

    def pause(self, now: float) -> list[Effect]:
        """Maintenance: stand for nothing; a leader hands over (the protocol's
        step-down for an ineligible leader)."""
        if PAUSED in self._blockers:
            return []
        self.history.append(HistoryEntry(now, "paused", self.protocol.term, {}))
        return self.set_blocker(PAUSED, True, now, "paused by the operator (electionctl resume)")

    def resume(self, now: float) -> list[Effect]:
        """End maintenance, and forgive failed promote hooks: the operator
        says the node can serve again."""
        effects: list[Effect] = []
        if PAUSED in self._blockers:
            self.history.append(HistoryEntry(now, "resumed", self.protocol.term, {}))
            effects += self.set_blocker(PAUSED, False, now)
        return effects + self.forgive_promote_failures(now, "resumed")

    def forgive_promote_failures(self, now: float, why: str) -> list[Effect]:
        """A reason to believe a promote hook would now succeed (an operator's
        resume, a health check that rose, new hooks on reload)."""
        if self.promote_backoff.failures == 0 and PROMOTE_FAULT not in self._blockers:
            return []
        self.history.append(HistoryEntry(now, "promote_failures_cleared", self.protocol.term,
                                         {"failures": self.promote_backoff.failures, "why": why}))
        self.promote_backoff.reset()
        effects = self.set_blocker(PROMOTE_BACKOFF, False, now)
        return effects + self.set_blocker(PROMOTE_FAULT, False, now)

    def promote_hooks_done(self, ok: bool, term: int, now: float, detail: str = "") -> list[Effect]:
        """The promote hooks of ``term`` finished. A failure makes the node
        ineligible (a leader steps down) for a wait that doubles with each
        consecutive failure, and after ``max_promote_failures`` of them puts
        it in FAULT until forgiven: an ineligible node never preempts, so a
        broken hook cannot churn the cluster."""
        if ok:
            self.served_term = term
            self.promote_backoff.reset()
            return []
        wait_s = self.promote_backoff.failed(now)
        failures = self.promote_backoff.failures
        if self.promote_backoff.exhausted:
            self.history.append(HistoryEntry(now, PROMOTE_FAULT, term, {"failures": failures, "detail": detail}))
            effects = self.set_blocker(
                PROMOTE_FAULT, True, now,
                f"{failures} promote hooks failed in a row ({detail}); fix the hook, then electionctl resume")
            return effects + self.set_blocker(PROMOTE_BACKOFF, False, now)
        self.history.append(HistoryEntry(now, PROMOTE_BACKOFF, term,
                                         {"failures": failures, "wait_s": round(wait_s, 3), "detail": detail}))
        return self.set_blocker(PROMOTE_BACKOFF, True, now,
                                f"promote hook failed {failures}x ({detail}); standing again in {wait_s:.1f}s")

    def demote_hooks_done(self, now: float) -> list[Effect]:
        """Call when the demote hooks submitted for a Demote effect finished."""
        return self._observe(self.protocol.demote_hooks_done(now), now)

    def persist_done(self, ok: bool, now: float, error: str | None = None) -> list[Effect]:
        """Call after carrying out the Persists of an effect list: all landed
        (ok), or the first failed and the list's later Sends, Promotes and
        Persists were dropped (``protocols.base.local_facts``). Carry out
        what it returns under the same rule."""
        cancelled = self._promote_after_persist
        self._promote_after_persist = None
        was_ok = self.protocol.disk.ok
        effects = self.protocol.persist_done(ok, now, error)
        if not ok:
            detail: dict[str, Any] = {"error": error, "failures": self.protocol.disk.failures}
            if cancelled is not None:
                # the "promote" entry above it never reached the hooks
                detail["cancelled_promote"] = cancelled
            self.history.append(HistoryEntry(now, "persist_failed", self.protocol.term, detail))
        elif not was_ok:
            self.history.append(HistoryEntry(now, "persist_recovered", self.protocol.term,
                                             {"failures": self.protocol.disk.failures}))
        return self._observe(effects, now)

    def record(self, now: float, event: str, **detail: Any) -> None:
        """Record something the shell did (a hook run, a pause) in the history."""
        self.history.append(HistoryEntry(now, event, self.protocol.term, detail))

    # ---- view -------------------------------------------------------------

    def is_leader(self, now: float) -> bool:
        return self.protocol.is_leader(now)

    def role(self, now: float) -> str:
        if self.is_leader(now):
            return ROLE_LEADER
        # a protocol whose lease ran out still says "leader" until its next tick
        return ROLE_FOLLOWER if self.protocol.role == ROLE_LEADER else self.protocol.role

    def flapping(self, now: float) -> bool:
        self._trim_changes(now)
        return len(self.leader_changes) > self.max_changes_per_hour

    def status(self, now: float) -> dict[str, Any]:
        s = self.settings
        self._trim_changes(now)
        blocked_by = dict(self._blockers)
        if self._clock_checking:
            blocked_by[CLOCK_CHECK] = self._clock_check_detail(now)
        members = []
        suspicion = self.peer_watches.snapshot(now)
        for m in s.members:
            if m.name == s.node_name:
                members.append({"name": m.name, "id": m.id, "alive": True, "last_seen_ms": 0.0, "self": True,
                                "duplicate": DUPLICATE_NAME in self._blockers,
                                "paused": PAUSED in self._blockers,
                                "fault": any(name != PAUSED for name in self._blockers),
                                "witness": s.is_witness(m.name)})
                continue
            seen = self.membership.last_seen(m.name)
            members.append({
                "name": m.name,
                "id": m.id,
                # heard lately, and not timed out as leader since
                "alive": self.membership.alive(m.name, now) and not self.membership.suspected(m.name),
                "last_seen_ms": None if seen is None else round((now - seen) * 1000, 1),
                "self": False,
                "duplicate": self.membership.duplicate(m.name, now),
                "suspicion": suspicion.get(m.name),
                "clock": self.peer_clocks[m.name].verdict,
                "witness": s.is_witness(m.name),  # from config: every node lists the witnesses
                **self.membership.reported(m.name),
            })
        leader = self.protocol.leader
        return {
            "node": s.node_name,
            "cluster": s.cluster,
            "protocol": self.protocol_name,
            "role": self.role(now),
            "witness": s.is_witness(s.node_name),
            "leader": s.node_name if self.is_leader(now) else (leader if leader != s.node_name else None),
            "term": self.protocol.term,
            "members": members,
            "quorum": s.quorum,
            "leader_changes_last_hour": len(self.leader_changes),
            "flapping": len(self.leader_changes) > self.max_changes_per_hour,
            "max_changes_per_hour": self.max_changes_per_hour,
            "paused": PAUSED in self._blockers,
            "promote_failures": self.promote_backoff.failures,
            "promote_backoff_ms": (round(max(0.0, self.promote_backoff.until - now) * 1000, 1)
                                   if PROMOTE_BACKOFF in self._blockers else None),
            "served_term": self.served_term,
            "elections": {"started": self.elections_started, "won": self.elections_won,
                          "lost": self.elections_lost},
            "split_brains": self.split_brains,
            "blocked_by": blocked_by,
            "disk": self.protocol.disk.snapshot(now),
            "clock": self.clock_status(),
            **self._protocol_status(now),
        }

    def _protocol_status(self, now: float) -> dict[str, Any]:
        extra = self.protocol.extra_status(now)
        if self._clock_checking and extra.get("phase") in ("ineligible", "follower", "quarantine"):
            # it may follow a leader meanwhile, but grants nothing: say why
            extra["phase"] = PHASE_CLOCK_CHECK
        return extra

    # ---- clocks -----------------------------------------------------------------

    def _clock_verdict_changed(self, name: str, peer: PeerClock, now: float) -> list[Effect]:
        """One peer's verdict changed: note it, then ask whether the odd clock
        out is ours (the vote of clockrate.self_blame) and raise or clear the
        ``clock`` blocker."""
        bound_ppm = round((self.clock_bounds.rate_high - 1.0) * 1e6)
        if peer.verdict == BEYOND:
            self.peer_clock_alarms += 1
            self._clock_event(now, "peer-beyond", f"{name}'s clock runs at {_fmt_rate(peer.rate())} of ours, "
                                                  f"beyond the {bound_ppm} ppm bound")
        elif peer.verdict == WITHIN and self._clock_was_beyond.get(name, False):
            self._clock_event(now, "peer-cleared", f"{name}'s clock is back within the bound "
                                                   f"({_fmt_rate(peer.rate())} of ours)")
        self._clock_was_beyond[name] = peer.verdict == BEYOND
        known = [n for n, p in self.peer_clocks.items() if p.verdict != UNKNOWN and self.membership.alive(n, now)]
        beyond = [n for n in known if self.peer_clocks[n].verdict == BEYOND]
        blamed = "clock" in self._blockers
        if self_blame(len(beyond), len(known), len(self.peer_clocks)):
            if blamed:
                return []
            self.clock_episodes += 1
            rates = ", ".join(f"{_fmt_rate(_inverse(self.peer_clocks[n].rate()))} of {n}'s" for n in beyond)
            detail = (f"our clock runs at {rates} (bound {bound_ppm} ppm, "
                      f"{len(beyond)} of {len(known)} peers disagree): not standing")
            self._clock_event(now, "self-beyond", detail)
            # a fast clock ends our promises early in real time (unsafe);
            # a slow one late (safe: only a lease of ours would be unsafe)
            fast = sum(1 for n in beyond if (self.peer_clocks[n].rate() or 1.0) < 1.0)
            self._clock_fast = self.protocol_name == QuorumLease.name and 2 * fast > len(beyond)
            effects = self.set_blocker("clock", True, now, detail)
            if self._clock_checking:
                # the start-up check found what it waits for: the ``clock``
                # blocker takes over (raised first, so we never stand between)
                effects += self._end_clock_check(now, "check-ended", "clock check ended: our clock is off (see the error)")
            self._withhold_grants = self._clock_fast or self._clock_checking
            return effects
        # cleared only on positive evidence: a peer whose verdict went back
        # to within, not merely the silence of the ones that disagreed
        if blamed and any(self.peer_clocks[n].verdict == WITHIN for n in known):
            self._clock_event(now, "self-cleared", "our clock agrees with our peers' again: standing")
            self._clock_fast = False
            self._withhold_grants = self._clock_checking
            return self.set_blocker("clock", False, now)
        return []

    def _clock_agrees(self, name: str, now: float) -> bool:
        """Whether this peer's beacons show its clock running at our rate, as
        the start-up check requires (see __init__)."""
        peer = self.peer_clocks[name]
        est = peer.estimate
        if peer.verdict != WITHIN or est is None or not self.membership.alive(name, now):
            return False
        b = self.clock_bounds
        # the window's span, not the last fit's: while within, the estimator
        # refits only every refit_s, and an older fit's margin is the wider
        return (peer.ts[-1] - peer.ts[0] >= self.clock_check_span_s and est.margin <= CLOCK_CHECK_MAX_MARGIN
                and b.rate_low - est.margin <= est.rate <= b.rate_high + est.margin)

    def _clock_check(self, now: float) -> list[Effect]:
        agree = [n for n in self.peer_clocks if self._clock_agrees(n, now)]
        if len(agree) < self.clock_check_need:
            return []
        rates = ", ".join(f"{n}'s ({_fmt_rate(_inverse(self.peer_clocks[n].rate()))})" for n in agree)
        return self._end_clock_check(now, "check-passed", f"clock check passed after {now - self.started_at:.1f}s: "
                                          f"our clock agrees with {rates}: standing and granting")

    def _end_clock_check(self, now: float, kind: str, text: str) -> list[Effect]:
        self._clock_checking = False
        self._clock_check_nag_at = INF
        self.clock_checked_at = now
        self._withhold_grants = self._clock_fast
        self._clock_event(now, kind, text)
        return self.set_blocker(CLOCK_CHECK, False, now)

    def _clock_check_detail(self, now: float) -> str:
        """Why the start-up check still holds us, peer by peer."""
        parts = []
        for name, peer in self.peer_clocks.items():
            if not self.membership.alive(name, now):
                parts.append(f"{name} not heard")
            elif peer.verdict == BEYOND:
                parts.append(f"{name} disagrees ({_fmt_rate(_inverse(peer.rate()))})")
            elif self._clock_agrees(name, now):
                parts.append(f"{name} agrees")
            else:
                span_s = now - peer.ts[0] if peer.ts else 0.0
                parts.append(f"{name} {span_s:.1f}s of beacons")
        return (f"clock check: not standing or granting until our clock agrees with {self.clock_check_need} "
                f"of {len(self.peer_clocks)} peers over {self.clock_check_span_s:.1f}s of beacons "
                f"({', '.join(parts)})")

    def _clock_event(self, now: float, kind: str, text: str) -> None:
        self.clock_events.append(ClockEvent(kind, text))
        self.history.append(HistoryEntry(now, "clock", self.protocol.term, {"kind": kind, "detail": text}))

    def clock_status(self) -> dict[str, Any]:
        rates: dict[str, float] = {}
        for name, peer in self.peer_clocks.items():
            r = peer.rate()
            if r is not None and r > 0.0:
                rates[name] = round(1.0 / r, 6)
        return {
            "ok": "clock" not in self._blockers,
            # the start-up check: True once passed (or not needed), with when
            "checked": not self._clock_checking,
            "checked_after_s": (None if self.clock_checked_at is None
                                else round(self.clock_checked_at - self.started_at, 3)),
            # seconds our clock counts per second of each peer's
            "rate_vs_peers": rates,
            "beyond": sorted(n for n, p in self.peer_clocks.items() if p.verdict == BEYOND),
            "bound_ppm": round((self.clock_bounds.rate_high - 1.0) * 1e6),
            "episodes": self.clock_episodes,
            "peer_alarms": self.peer_clock_alarms,
        }

    # ---- bookkeeping ----------------------------------------------------------

    def _trim_changes(self, now: float) -> None:
        while self.leader_changes and now - self.leader_changes[0] > FLAP_WINDOW_S:
            self.leader_changes.popleft()

    def _note_role(self) -> None:
        role = self.protocol.role
        if role == self._last_role:
            return
        if role == ROLE_CANDIDATE:
            self.elections_started += 1
        elif self._last_role == ROLE_CANDIDATE and role != ROLE_LEADER:
            self.elections_lost += 1
        self._last_role = role

    def _observe(self, effects: list[Effect], now: float) -> list[Effect]:
        role_before = self._last_role
        self._note_role()
        persist_seen = False
        for e in effects:
            if type(e) is Send:
                continue  # the common case: nothing to record
            if isinstance(e, Persist):
                persist_seen = True
                self._promote_after_persist = None
            elif isinstance(e, Promote):
                # won: every Promote; one without a candidacy seen (bully's
                # top id, a cluster of one) started its election too
                self.elections_won += 1
                if role_before != ROLE_CANDIDATE:
                    self.elections_started += 1
                if persist_seen:
                    self._promote_after_persist = e.term
                self.history.append(HistoryEntry(now, "promote", e.term, {"reason": e.reason}))
            elif isinstance(e, TokenRaised):
                self.history.append(HistoryEntry(now, "token_raised", e.term, {"reason": e.reason}))
            elif isinstance(e, Demote):
                self.history.append(HistoryEntry(now, "demote", e.term, {"reason": e.reason}))
            elif isinstance(e, LeaderChanged):
                if e.leader is not None:
                    self.leader_changes.append(now)
                self.history.append(HistoryEntry(now, "leader", e.term, {"leader": e.leader}))
            elif isinstance(e, SplitBrain):
                self.split_brains += 1
                self.history.append(
                    HistoryEntry(now, "split_brain", e.term, {"other": e.other, "yielded": e.yielded})
                )
        return effects


def _without_grants(effects: list[Effect], term: int) -> list[Effect]:
    """quorum-lease's grants (a granted VOTE, an ok LEASE_ACK, a granted
    PREVOTE_REPLY) left out: the protocol still keeps its promise, the
    requester just cannot count it (and is not led into a candidacy we could
    not vote in). A vote or pre-vote grant is replaced by a refusal in our
    term that says waiting will not cure it: a candidate that heard nothing
    kept asking for its whole round, though this vote was cast (so lost to
    any rival) and would never count; told, it gives up an unwinnable split
    at once (issue 17: a restarted node in its clock check was in most of
    the benchmark's slow failovers)."""
    kept: list[Effect] = []
    for e in effects:
        if type(e) is Send:
            if e.kind == HEARTBEAT_ACK and e.body.get("ok") is True:
                continue
            if (e.kind == VOTE or e.kind == PREVOTE_REPLY) and e.body.get("granted") is True:
                kept.append(vote_reply(e.kind, term, e.body["round"], False, NO_HINT_MS, e.to))
                continue
        kept.append(e)
    return kept


def _inverse(rate: float | None) -> float | None:
    return None if rate is None or rate <= 0.0 else 1.0 / rate


def _fmt_rate(rate: float | None) -> str:
    return "unknown" if rate is None else f"x{rate:.4f}"
