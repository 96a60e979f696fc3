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

from electiond.detector import PeerWatches
from electiond.protocols.base import (
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
from electiond.protocols.lease import QuorumLease
from electiond.protocols.ring import Ring

PROTOCOLS: dict[str, type[ElectionProtocol]] = {
    Bully.name: Bully,
    EtcdElection.name: EtcdElection,
    QuorumLease.name: QuorumLease,
    Ring.name: Ring,
}

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


@dataclass(frozen=True, slots=True)
class HistoryEntry:
    at: float  # node-local monotonic seconds
    event: str  # promote, demote, leader, split_brain, hook, ...
    term: int
    detail: dict[str, Any]


class Membership:
    """Who was last heard from, and when (any authenticated message counts)."""

    def __init__(self, settings: Settings, now: float) -> None:
        self._settings = settings
        self._last_seen: dict[str, float | None] = {m.name: None for m in settings.peers()}
        self._duplicate_seen: dict[str, float] = {}  # name -> last time two processes used it

    def saw(self, name: str, now: float) -> None:
        if name in self._last_seen:
            self._last_seen[name] = now

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
        return 3 * self.presence_interval_s()

    def presence_interval_s(self) -> float:
        return max(0.5, 10 * self._settings.heartbeat_interval_s)

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

    # ---- inputs -----------------------------------------------------------

    def message_schemas(self) -> dict[str, dict]:
        return {**self.protocol.MESSAGE_SCHEMAS, PRESENCE: {}}

    def on_message(self, msg: Message, now: float) -> list[Effect]:
        self.membership.saw(msg.sender, now)
        if msg.kind == PRESENCE:
            self.peer_watches.observe(msg.sender, now)
            return []
        if DUPLICATE_NAME in self._blockers:
            # Peers cannot tell our grants from the other process's, so we
            # make none (two voters under one name break quorum intersection):
            # the protocol hears nothing, which every protocol survives as loss.
            return []
        effects = self.protocol.on_message(msg, now)
        return self._observe(effects, now) if effects else effects

    def on_tick(self, now: float) -> list[Effect]:
        effects = self._observe(self.protocol.on_tick(now), now)
        if DUPLICATE_NAME in self._blockers and now >= self._duplicate_clears_at():
            self.history.append(HistoryEntry(now, "duplicate_name_cleared", self.protocol.term, {}))
            effects += self.set_blocker(DUPLICATE_NAME, False, now)
        if now >= self._next_presence:
            self._next_presence = now + self.membership.presence_interval_s()
            effects.append(Send(PRESENCE, self.protocol.term))
        return effects

    def deadline(self) -> float:
        d = self.protocol.deadline()
        if d > self._next_presence:
            d = self._next_presence
        if DUPLICATE_NAME in self._blockers:
            clears = self._duplicate_clears_at()
            if clears < d:
                d = clears
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

    def transfer(self, target: str | None, now: float) -> list[Effect]:
        return self._observe(self.protocol.transfer(target, now), now)

    def stepdown(self, now: float) -> list[Effect]:
        return self._observe(self.protocol.stepdown(now), now)

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
        return len(self.leader_changes) > FLAP_CHANGES_PER_HOUR

    def status(self, now: float) -> dict[str, Any]:
        s = self.settings
        self._trim_changes(now)
        members = []
        suspicion = self.peer_watches.snapshot(now)
        for m in s.members:
            if m.name == s.node_name:
                members.append({"name": m.name, "id": m.id, "alive": True, "last_seen_ms": 0.0, "self": True,
                                "duplicate": DUPLICATE_NAME in self._blockers})
                continue
            seen = self.membership.last_seen(m.name)
            members.append({
                "name": m.name,
                "id": m.id,
                "alive": self.membership.alive(m.name, now),
                "last_seen_ms": None if seen is None else round((now - seen) * 1000, 1),
                "self": False,
                "duplicate": self.membership.duplicate(m.name, now),
                "suspicion": suspicion.get(m.name),
            })
        leader = self.protocol.leader
        return {
            "node": s.node_name,
            "cluster": s.cluster,
            "protocol": self.protocol_name,
            "role": self.role(now),
            "leader": s.node_name if self.is_leader(now) else (leader if leader != s.node_name else None),
            "term": self.protocol.term,
            "members": members,
            "quorum": s.quorum,
            "leader_changes_last_hour": len(self.leader_changes),
            "flapping": len(self.leader_changes) > FLAP_CHANGES_PER_HOUR,
            "split_brains": self.split_brains,
            "blocked_by": dict(self._blockers),
            "disk": self.protocol.disk.snapshot(now),
            **self.protocol.extra_status(now),
        }

    # ---- bookkeeping ----------------------------------------------------------

    def _trim_changes(self, now: float) -> None:
        while self.leader_changes and now - self.leader_changes[0] > FLAP_WINDOW_S:
            self.leader_changes.popleft()

    def _observe(self, effects: list[Effect], now: float) -> list[Effect]:
        persist_seen = False
        for e in effects:
            if type(e) is Send:
                continue  # the common case: nothing to record
            if isinstance(e, Persist):
                persist_seen = True
                self._promote_after_persist = None
            elif isinstance(e, Promote):
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
