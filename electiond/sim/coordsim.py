"""A simulator for the embedded coordination store (config register).

It runs the daemon's own Node (quorum-lease) and ConfigReplica through
``electiond.coord.host.CoordHost`` on drifting clocks, over a network that
delays, loses, duplicates and partitions, with hosts that crash and restart
from what they persisted. One client per host issues set / cas / delete / get
requests (retrying with the same request id) and one watcher per host polls
its local committed log. The checker (``CoordChecker``) judges:

- ``two-values``: one version seen with two different (key, value) pairs
  (acknowledged writes, reads, watch events);
- ``lost-write``: a get invoked after a write to that key was acknowledged
  returned an older version (so an acknowledged write was lost or a read
  was stale: either breaks linearizability of the register);
- ``watch-gap``: a watch stream skipped or repeated a version;
- ``barrier-early``: a participant was let through a barrier before
  ``count`` distinct participants had entered it;
- ``leave-early``: a participant was let out of a double barrier (its
  leave) before every participant that passed it had started leaving;
- ``behind``: once the cluster has been whole and quiet for seconds, a
  host's committed state is not the leader's (the log kept above the base
  is drawn small per seed, so hosts that were down catch up by snapshot);
- ``member-view``: one member-view version carried two views (on two
  hosts' watches, or one host's over time): versions are agreed;
- ``member-order`` / ``member-gap``: a host's member-view stream (the
  versions of ``_coord/members`` its watch gives, as ``members --watch``
  reads them) did not strictly increase, or skipped a view version some
  host saw;
- ``member-rejoin``: a stream reported a node joined twice with no left or
  suspected between (the changes derived as ``host.member_changes`` does);
- ``lock-overlap`` / ``lock-token``: two holders' intervals of one lock
  overlap, or a later grant has a token not above an earlier one. A
  holder's interval runs from the grant's arrival to the first of its
  release, its crash, or its own deadline: the first send of the acquire
  (or of the last renewal answered) + ttl on its own clock, as electionctl
  computes it.

Separate from ``electiond.sim.cluster`` (the election simulator, compiled
with mypyc for campaigns): this one runs interpreted and is smaller; its
faults are crashes, partitions, loss, duplication and delay.
"""

from __future__ import annotations

import heapq
import random
from functools import partial
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from electiond.coord.host import MEMBERS_KEY, CoordHost, decode_view, member_changes
from electiond.coord.replica import (
    ERR_COMPACTED,
    ERR_UNAVAILABLE,
    BARRIER_DONE,
    OP_BARRIER,
    OP_BARRIER_LEAVE,
    OP_CAS,
    OP_DELETE,
    OP_GET,
    OP_LOCK,
    OP_NOOP,
    OP_RENEW,
    OP_UNLOCK,
    OP_SET,
    ConfigReplica,
    Entry,
    Reply,
    StorePersist,
    StoreState,
)
from electiond.node import Node
from electiond.protocols.base import Demote, ElectionProtocol, Member, Message, Persist, PersistedState, Send, Settings
from electiond.sim.clock import SimClock

KEYS = ("a", "b", "c")
LOCK = "job"
LOCK_TTL_MS = 300
REQUEST_TIMEOUT_S = 0.4
RETRY_PAUSE_S = 0.05
MAX_ATTEMPTS = 12


@dataclass
class Violation:
    t: float
    rule: str
    detail: str

    def __str__(self) -> str:
        return f"t={self.t:.4f} {self.rule}: {self.detail}"


class CoordChecker:
    def __init__(self) -> None:
        self.violations: list[Violation] = []
        self.by_version: dict[int, tuple[str, str, str | None]] = {}  # version -> (op, key, value)
        self.acked: dict[str, list[tuple[float, int]]] = {k: [] for k in KEYS}  # key -> (ack time, version)
        self.acks = 0
        self.reads = 0
        self.watch_events = 0
        self.lock_intervals: list[tuple[float, float, int, int]] = []  # (start, end, token, client)
        self.absent_reads: list[tuple[float, float, str, int]] = []  # (invoked, t, key, newest acked version)
        self.barrier_entered: dict[str, dict[str, float]] = {}  # barrier -> participant -> first poll
        self.barrier_passes = 0
        self.barrier_passed_by: dict[str, dict[str, float]] = {}  # barrier -> participant -> first told it passed
        self.leave_started: dict[str, dict[str, float]] = {}  # barrier -> participant -> first leave poll
        self.leaves: list[tuple[float, str, str]] = []  # (time let out, barrier, participant)

        self.member_views: dict[int, str | None] = {}  # member-view version -> the view
        self.member_streams: list[list[int]] = []  # every watch stream's member-view versions
        # host -> (its current stream's versions, [the view before], node -> its last change)
        self._member_stream: dict[str, tuple[list[int], list[str | None], dict[str, str]]] = {}
        self.member_events = 0
        self.member_joins: list[tuple[float, str, int, str]] = []  # (t, host, version, node)

    def member_stream_start(self, host: str, before: str | None, before_version: int = 0) -> None:
        """A host's watch starts (again) with ``before`` (at ``before_version``) as the view it knows."""
        if before_version > 0:
            old = self.member_views.setdefault(before_version, before)
            if old != before:
                self.violate(0.0, "member-view", f"member view version {before_version}: {old!r} and "
                                                 f"{before!r} ({host}'s starting view)")
        versions: list[int] = [before_version] if before_version > 0 else []  # gaps count from the start view
        self.member_streams.append(versions)
        live, suspected = decode_view(before)
        last = {n: "joined" for n in live}
        last.update({n: "suspected" for n in suspected})
        self._member_stream[host] = (versions, [before], last)

    def member_view(self, t: float, host: str, version: int, value: str | None) -> None:
        stream = self._member_stream.get(host)
        if stream is None:
            return
        versions, before, last = stream
        if versions and version <= versions[-1]:
            self.violate(t, "member-order", f"{host}: member view {version} after {versions[-1]}")
        old = self.member_views.setdefault(version, value)
        if old != value:
            self.violate(t, "member-view", f"member view version {version}: {old!r} and {value!r} ({host})")
        for node, change in member_changes(before[0], value):
            self.member_events += 1
            if change == "joined" and last.get(node) == "joined":
                self.violate(t, "member-rejoin", f"{host}: {node} joined at {version} without leaving")
            last[node] = change
            if change == "joined":
                self.member_joins.append((t, host, version, node))
        before[0] = value
        versions.append(version)

    def check_member_streams(self, t: float) -> None:
        known = sorted(self.member_views)
        for versions in self.member_streams:
            for a, b in zip(versions, versions[1:]):
                skipped = [v for v in known if a < v < b]
                if skipped:
                    self.violate(t, "member-gap", f"a member stream went from {a} to {b}, skipping {skipped}")
        # judged against the agreed sequence too: a join reported at v means the node was not
        # live in the agreed view just before v (else it was reported joined twice, e.g. by a
        # stream that began from a wrong view or skipped the one with its earlier join)
        for at, host, version, node in self.member_joins:
            earlier = [v for v in known if v < version]
            if earlier and node in decode_view(self.member_views[earlier[-1]])[0]:
                self.violate(at, "member-rejoin", f"{host}: {node} joined at {version}, but it was live in "
                                                  f"view {earlier[-1]} with no left or suspected between")

    def leave_polled(self, t: float, name: str, participant: str) -> None:
        self.leave_started.setdefault(name, {}).setdefault(participant, t)

    def left(self, t: float, name: str, participant: str) -> None:
        self.leaves.append((t, name, participant))

    def check_leaves(self, t: float) -> None:
        # every participant told it passed before ``who`` was let out must have started
        # leaving by then (one told later belongs to the name's next round: reuse after all left)
        for at, name, who in self.leaves:
            started = self.leave_started.get(name, {})
            passed = self.barrier_passed_by.get(name, {})
            late = sorted(p for p, t_passed in passed.items() if t_passed <= at and started.get(p, float("inf")) > at)
            if late:
                self.violate(at, "leave-early", f"{who} left {name!r} before {late} started leaving")

    def barrier_polled(self, t: float, name: str, participant: str) -> None:
        self.barrier_entered.setdefault(name, {}).setdefault(participant, t)

    def barrier_passed(self, t: float, name: str, participant: str, count: int) -> None:
        self.barrier_passes += 1
        self.barrier_passed_by.setdefault(name, {}).setdefault(participant, t)
        entered = [p for p, at in self.barrier_entered.get(name, {}).items() if at <= t]
        if len(entered) < count or participant not in entered:
            self.violate(t, "barrier-early", f"{participant} passed {name!r} with {sorted(entered)} entered, "
                                             f"count {count}")

    def violate(self, t: float, rule: str, detail: str) -> None:
        self.violations.append(Violation(t, rule, detail))

    def saw(self, t: float, version: int, op: str, key: str, value: str | None, how: str) -> None:
        if version <= 0:
            return
        seen = (op, key, value)
        old = self.by_version.setdefault(version, seen)
        if old != seen:
            self.violate(t, "two-values", f"version {version}: {old} and {seen} ({how})")

    def write_acked(self, t: float, key: str, op: str, value: str | None, version: int) -> None:
        self.acks += 1
        self.saw(t, version, op, key, value, "acknowledged write")
        self.acked[key].append((t, version))

    def read(self, t_invoked: float, t: float, key: str, value: str | None, version: int) -> None:
        self.reads += 1
        if version > 0:
            self.saw(t, version, OP_SET if value is not None else OP_DELETE, key, value, "read")
        newest = max((v for at, v in self.acked[key] if at < t_invoked), default=0)
        if value is None and version == 0 and newest > 0:
            # absent at version 0: right if a delete at or above ``newest`` was compacted since (below
            # the watermark a delete leaves nothing); judged at the end, once every watch has told
            # which versions were deletes of this key
            self.absent_reads.append((t_invoked, t, key, newest))
        elif version < newest:
            self.violate(t, "lost-write", f"get {key!r} invoked at {t_invoked:.4f} returned version {version}, "
                                          f"but version {newest} was acknowledged before")

    def check_absent_reads(self) -> None:
        for t_invoked, t, key, newest in self.absent_reads:
            if not any(v >= newest and op == OP_DELETE and k == key for v, (op, k, _) in self.by_version.items()):
                self.violate(t, "lost-write", f"get {key!r} invoked at {t_invoked:.4f} found it absent (version 0), "
                                              f"but version {newest} was acknowledged before and no delete followed")

    def watched(self, t: float, host: str, last: int, e: Entry) -> None:
        self.watch_events += 1
        if e.version != last + 1:
            self.violate(t, "watch-gap", f"{host}: after version {last} the watch gave {e.version}")
        if e.op != OP_NOOP:
            self.saw(t, e.version, e.op, e.key, e.value, f"watch on {host}")


    def check_locks(self, t: float) -> None:
        last_end = -1.0
        last_token = 0
        last_client = -1
        for start, end, token, client in sorted(self.lock_intervals):
            if start < last_end:
                self.violate(t, "lock-overlap", f"client {client} held token {token} from {start:.4f}, "
                                                f"client {last_client} until {last_end:.4f}")
            if token <= last_token:
                self.violate(t, "lock-token", f"token {token} granted at {start:.4f} after token {last_token}")
            last_end = max(last_end, end)
            last_token = max(last_token, token)
            last_client = client


def _absent_as_0(got: tuple[str | None, int]) -> tuple[str | None, int]:
    return (None, 0) if got[0] is None else got


@dataclass
class _Holder:
    client: int
    token: int
    start_t: float
    deadline_t: float  # true time of the holder's own deadline
    release_t: float
    req_seq: int = 0


@dataclass
class _Host:
    index: int
    settings: Settings
    clock: SimClock
    host: CoordHost | None = None
    disk: PersistedState | None = None
    store: StoreState | None = None
    timer_version: int = 0
    armed_t: float = -1.0  # when the pending (current-version) timer fires; -1: none pending
    watch_from: int = 0
    incarnation: int = 0


@dataclass
class _Call:
    client: int
    req: str
    op: str
    key: str
    value: str | None
    version: int
    invoked_t: float
    attempts: int = 0
    done: bool = False
    attempt_id: int = 0


@dataclass
class CoordRun:
    seed: int
    size: int
    violations: list[Violation]
    acks: int
    reads: int
    watch_events: int
    unknown: int  # requests whose outcome stayed unknown after every retry
    lock_grants: int
    barrier_passes: int
    barrier_leaves: int
    snapshots: int
    events: int
    trace: list[str] = field(default_factory=list)
    member_events: int = 0

    @property
    def ok(self) -> bool:
        return not self.violations


class CoordSim:
    def __init__(self, seed: int, size: int = 3, replica_cls: type[ConfigReplica] = ConfigReplica,
                 trace: bool = False, registry: Mapping[str, type[ElectionProtocol]] | None = None,
                 holder_ignores_deadline: bool = False, log_keep: int | None = None) -> None:
        # the mutant holder: keeps its CMD running until its planned release
        self.holder_ignores_deadline = holder_ignores_deadline
        self.holders: dict[int, _Holder] = {}
        self._barrier_round: dict[int, int] = {}
        self._barrier_give_up: dict[int, float] = {}
        self._barrier_leaving: dict[int, bool] = {}
        self.barrier_count = 0  # set by plan()
        # lock request id -> (client, first send on the client's clock, kind, attempt)
        self.lock_calls: dict[str, list[Any]] = {}
        self.registry = registry  # a QuorumLease variant swapped in (mutants)
        self.seed = seed
        self.rng = random.Random(seed)
        self.size = size
        self.replica_cls = replica_cls
        # small: a host down for a few hundred ms falls behind the kept log and needs a snapshot
        self.log_keep = log_keep if log_keep is not None else self.rng.choice([4, 8, 16, 64])
        members = tuple(Member(f"n{i}", i + 1) for i in range(size))
        drift = 1000.0  # ppm: every clock stays within it
        self.hosts = [
            _Host(i, Settings(cluster="sim", node_name=m.name, members=members, clock_check_s=0.0,
                              clock_drift_ppm=drift),
                  SimClock(self.rng.uniform(0, 100), 1.0 + self.rng.uniform(-drift, drift) / 2e6))
            for i, m in enumerate(members)
        ]
        self.index = {h.settings.node_name: h.index for h in self.hosts}
        self.now = 0.0
        self._q: list[tuple[float, int, Callable[[], None]]] = []
        self._seq = 0
        self.events = 0
        self.groups: list[set[int]] | None = None  # None: no partition
        self.loss = self.rng.choice([0.0, 0.0, 0.02, 0.1])
        self.dup = self.rng.choice([0.0, 0.05])
        self.checker = CoordChecker()
        self.calls: dict[str, _Call] = {}
        self.unknown = 0
        self.snapshots = 0  # installed on live followers by the end (a restart forgets its count)
        self.checkpoint_commit = 0
        self._next_req = 0
        self.tracing = trace
        self.trace: list[str] = []

    # ---- event queue -------------------------------------------------------------

    def at(self, t: float, action: Callable[[], None]) -> None:
        self._seq += 1
        heapq.heappush(self._q, (t, self._seq, action))

    def run_until(self, t_end: float) -> None:
        while self._q and self._q[0][0] <= t_end:
            t, _, action = heapq.heappop(self._q)
            self.now = max(self.now, t)
            self.events += 1
            action()
        self.now = max(self.now, t_end)

    def note(self, text: str) -> None:
        if self.tracing:
            self.trace.append(f"{self.now:.4f} {text}")

    def local(self, h: _Host) -> float:
        return h.clock.local(self.now)

    # ---- hosts ---------------------------------------------------------------------

    def boot(self, i: int) -> None:
        h = self.hosts[i]
        if h.host is not None:
            return
        node = Node(h.settings, "quorum-lease", random.Random(self.rng.getrandbits(64)), self.local(h), h.disk,
                    self.registry)
        h.host = CoordHost(node, h.store, self.log_keep)
        if self.replica_cls is not ConfigReplica:
            s = h.settings
            h.host.replica = self.replica_cls(s.node_name, tuple(m.name for m in s.members),
                                              s.heartbeat_interval_s, h.store, s.clock_drift_ppm, self.log_keep)
            h.host.lease.coord_last = h.host.replica.last
        h.incarnation += 1
        h.armed_t = -1.0
        h.watch_from = 0
        self.checker.member_stream_start(h.settings.node_name, None)
        self.note(f"n{i} boot")
        self._arm(h)
        self._schedule_watch(h)

    def crash(self, i: int) -> None:
        h = self.hosts[i]
        if h.host is None:
            return
        h.host = None
        self.note(f"n{i} crash")
        holder = self.holders.get(i)
        if holder is not None:
            self._end_hold(holder, "crash")  # its CMD dies with the host

    def _arm(self, h: _Host) -> None:
        ch = h.host
        if ch is None:
            return
        d = min(ch.node.deadline(), ch.deadline())
        if d == float("inf"):
            return
        t = max(self.now, h.clock.true_time_of(d))
        if t == h.armed_t:
            return  # the pending timer fires then already: no second heap entry (most arms change nothing)
        h.timer_version += 1
        h.armed_t = t
        version = h.timer_version
        self.at(t, lambda: self._timer(h, version))

    def _timer(self, h: _Host, version: int) -> None:
        if h.host is None or version != h.timer_version:
            return
        h.armed_t = -1.0
        now = self.local(h)
        ch = h.host
        self._carry_out(h, ch.node.on_tick(now))
        if h.host is ch:
            self._carry_out(h, ch.after_node_event(now))
            self._arm(h)

    def _deliver(self, i: int, msg: Message) -> None:
        h = self.hosts[i]
        ch = h.host
        if ch is None:
            return
        now = self.local(h)
        if CoordHost.handles(msg.kind):
            self._carry_out(h, ch.on_message(msg, now))
        else:
            self._carry_out(h, ch.node.on_message(msg, now))
            if h.host is ch:
                self._carry_out(h, ch.after_node_event(now))
        if h.host is ch:
            self._arm(h)

    def _carry_out(self, h: _Host, effects: list[Any]) -> None:
        ch = h.host
        wrote = False
        for e in effects:
            if h.host is not ch or ch is None:
                return
            et = type(e)
            if et is Send:
                self._send(h, e)
            elif et is Persist:
                h.disk = e.state
                wrote = True
            elif et is StorePersist:
                h.store = e.state
            elif et is Reply:
                self._reply(h, e)
            elif et is Demote:
                node = ch.node
                self.at(self.now + 0.005, lambda: self._demote_done(h, ch, node))
        if wrote and ch is not None and h.host is ch:
            self._carry_out(h, ch.node.persist_done(True, self.local(h)))

    def _demote_done(self, h: _Host, ch: CoordHost, node: Node) -> None:
        if h.host is not ch:
            return
        self._carry_out(h, node.demote_hooks_done(self.local(h)))
        if h.host is ch:
            self._arm(h)

    def _up(self, a: int, b: int) -> bool:
        if self.groups is None:
            return True
        return any(a in g and b in g for g in self.groups)

    def _send(self, h: _Host, e: Send) -> None:
        msg = Message(e.kind, h.settings.node_name, e.term, e.body, e.to)
        targets = [j for j in range(self.size) if j != h.index] if e.to is None else [self.index[e.to]]
        for j in targets:
            if not self._up(h.index, j) or self.rng.random() < self.loss:
                continue
            copies = 2 if self.rng.random() < self.dup else 1
            for _ in range(copies):
                delay = self.rng.uniform(0.0005, 0.004) if self.rng.random() > 0.05 else self.rng.uniform(0.004, 0.03)
                self.at(self.now + delay, partial(self._deliver, j, msg))

    # ---- clients --------------------------------------------------------------------

    def _new_call(self, client: int) -> None:
        rng = self.rng
        key = rng.choice(KEYS)
        r = rng.random()
        self._next_req += 1
        req = f"c{client}-{self._next_req}"
        if r < 0.4:
            call = _Call(client, req, OP_SET, key, f"v{self._next_req}", 0, self.now)
        elif r < 0.55:
            known = [v for at, v in self.checker.acked[key]]
            version = known[-1] if known and rng.random() < 0.7 else rng.randrange(0, 4)
            call = _Call(client, req, OP_CAS, key, f"w{self._next_req}", version, self.now)
        elif r < 0.62:
            call = _Call(client, req, OP_DELETE, key, None, 0, self.now)
        else:
            call = _Call(client, req, OP_GET, key, None, 0, self.now)
        self.calls[req] = call
        self._attempt(call)

    def _attempt(self, call: _Call) -> None:
        if call.done:
            return
        if call.attempts >= MAX_ATTEMPTS:
            call.done = True
            self.unknown += 1 if call.op != OP_GET else 0
            self._next_call_later(call.client)
            return
        call.attempts += 1
        call.attempt_id += 1
        attempt = call.attempt_id
        h = self.hosts[call.client]
        if call.op == OP_GET:
            # a read's own invocation: each attempt is a fresh read
            call.invoked_t = self.now
        if h.host is not None:
            ch = h.host
            self._carry_out(h, ch.request(call.req, call.op, call.key, call.value, call.version, self.local(h)))
            if h.host is ch:
                self._arm(h)
        self.at(self.now + REQUEST_TIMEOUT_S, lambda: self._timed_out(call, attempt))

    def _timed_out(self, call: _Call, attempt: int) -> None:
        if not call.done and call.attempt_id == attempt:
            self._attempt(call)

    def _reply(self, h: _Host, r: Reply) -> None:
        if r.req in self.lock_calls:
            self._lock_reply(h, r)
            return
        if r.req.startswith("B"):
            self._barrier_reply(h, r)
            return
        call = self.calls.get(r.req)
        if call is None or call.done or call.client != h.index:
            return
        if not r.ok and r.error == ERR_UNAVAILABLE:
            attempt = call.attempt_id
            self.at(self.now + RETRY_PAUSE_S, lambda: self._timed_out(call, attempt))
            return
        call.done = True
        self.note(f"reply {r}")
        if r.ok:
            if call.op == OP_GET:
                self.checker.read(call.invoked_t, self.now, r.key, r.value, r.version)
            else:
                op = OP_DELETE if call.op == OP_DELETE else OP_SET
                self.checker.write_acked(self.now, r.key, op, r.value, r.version)
        self._next_call_later(call.client)

    def _next_call_later(self, client: int) -> None:
        if self.now < self.clients_until:
            self.at(self.now + self.rng.uniform(0.0, 0.05), lambda: self._new_call(client))

    # ---- lock clients: acquire, renew every ttl/3, release or lose it -------------------

    def _lock_start(self, client: int) -> None:
        if self.now >= self.clients_until or client in self.holders:
            return
        self._next_req += 1
        req = f"L{client}-{self._next_req}"
        h = self.hosts[client]
        self.lock_calls[req] = [client, self.local(h), OP_LOCK, 0, 0]
        self._lock_send(req)

    def _lock_send(self, req: str) -> None:
        client, first_local, op, token, attempt = self.lock_calls[req]
        if attempt >= 6 or (op == OP_LOCK and client in self.holders):
            del self.lock_calls[req]
            if op == OP_LOCK:
                self.at(self.now + self.rng.uniform(0.01, 0.2), lambda: self._lock_start(client))
            return
        self.lock_calls[req][4] = attempt + 1
        h = self.hosts[client]
        if h.host is not None:
            ch = h.host
            self._carry_out(h, ch.request(req, op, LOCK, f"c{client}" if op == OP_LOCK else None, token,
                                          self.local(h), ttl_ms=LOCK_TTL_MS if op != OP_UNLOCK else 0))
            if h.host is ch:
                self._arm(h)
        self.at(self.now + 0.1, lambda: self._lock_retry(req, attempt + 1))

    def _lock_retry(self, req: str, attempt: int) -> None:
        call = self.lock_calls.get(req)
        if call is not None and call[4] == attempt:
            self._lock_send(req)

    def _lock_reply(self, h: _Host, r: Reply) -> None:
        client, first_local, op, token, attempt = self.lock_calls[r.req]
        if client != h.index:
            return
        if not r.ok and r.error == ERR_UNAVAILABLE and op != OP_UNLOCK:
            self.lock_calls[r.req][4] = attempt  # retried by the timer
            return
        del self.lock_calls[r.req]
        # the deadline counts from the FIRST send of this request id, on our clock:
        # a retry may be answered from the first one's grant
        deadline_t = h.clock.true_time_of(first_local + LOCK_TTL_MS / 1000.0)
        if op == OP_LOCK:
            if not r.ok or self.now >= deadline_t or h.index in self.holders:
                self.at(self.now + self.rng.uniform(0.01, 0.2), lambda: self._lock_start(client))
                return
            holder = _Holder(client, r.version, self.now, deadline_t, self.now + self.rng.uniform(0.05, 1.5))
            self.holders[client] = holder
            self.note(f"c{client} holds {LOCK} token {r.version} until {deadline_t:.4f}")
            self.at(holder.release_t, lambda: self._release(holder))
            self.at(deadline_t, lambda: self._deadline(holder))
            self._schedule_renew(holder)
        elif op == OP_RENEW and r.ok:
            holder2 = self.holders.get(client)
            if holder2 is not None and holder2.token == token and deadline_t > holder2.deadline_t:
                holder2.deadline_t = deadline_t
                self.at(deadline_t, lambda: self._deadline(holder2))

    def _schedule_renew(self, holder: _Holder) -> None:
        def renew() -> None:
            if self.holders.get(holder.client) is not holder:
                return
            self._next_req += 1
            req = f"R{holder.client}-{self._next_req}"
            self.lock_calls[req] = [holder.client, self.local(self.hosts[holder.client]), OP_RENEW, holder.token, 0]
            self._lock_send(req)
            self._schedule_renew(holder)
        self.at(self.now + LOCK_TTL_MS / 3000.0, renew)

    def _deadline(self, holder: _Holder) -> None:
        if self.holders.get(holder.client) is holder and self.now >= holder.deadline_t:
            if not self.holder_ignores_deadline:
                self._end_hold(holder, "deadline")

    def _release(self, holder: _Holder) -> None:
        if self.holders.get(holder.client) is not holder:
            return
        self._end_hold(holder, "release")
        self._next_req += 1
        req = f"U{holder.client}-{self._next_req}"
        self.lock_calls[req] = [holder.client, self.local(self.hosts[holder.client]), OP_UNLOCK, holder.token, 0]
        self._lock_send(req)

    def _end_hold(self, holder: _Holder, why: str) -> None:
        del self.holders[holder.client]
        self.checker.lock_intervals.append((holder.start_t, self.now, holder.token, holder.client))
        self.note(f"c{holder.client} stops holding token {holder.token} ({why})")
        if why != "crash":
            self.at(self.now + self.rng.uniform(0.01, 0.2), lambda: self._lock_start(holder.client))

    def _checkpoint(self) -> None:
        # what every host must have committed by the end, 1.5 quiet seconds later
        leader = self._leader()
        ch = self.hosts[leader].host if leader is not None else None
        self.checkpoint_commit = ch.replica.commit if ch is not None else 0

    def check_caught_up(self) -> None:
        leader = self._leader()
        if leader is None:
            return
        lead = self.hosts[leader].host
        assert lead is not None
        for h in self.hosts:
            ch = h.host
            if ch is None or h.index == leader:
                continue
            self.snapshots += ch.replica.snapshots_installed
            # a deleted key: its version is the delete's or 0, as far as each compacted (both say absent)
            mine = [_absent_as_0(ch.replica.committed_get(k)) for k in KEYS]
            theirs = [_absent_as_0(lead.replica.committed_get(k)) for k in KEYS]
            # entries committed in the last 1.5 s may still be on their way (lost news is resent
            # every QUIET_TICKS heartbeats, so ~7 tries); older ones not
            if ch.replica.commit < self.checkpoint_commit or (ch.replica.commit == lead.replica.commit
                                                               and mine != theirs):
                self.checker.violate(self.now, "behind", f"n{h.index} committed {ch.replica.commit} {mine}, "
                                                         f"leader n{leader} {lead.replica.commit} {theirs}")

    def finish(self) -> None:
        self.check_caught_up()
        for holder in list(self.holders.values()):
            self._end_hold(holder, "crash")
        self.checker.check_locks(self.now)
        self.checker.check_leaves(self.now)
        self.checker.check_member_streams(self.now)
        self.checker.check_absent_reads()

    # ---- barrier clients: each host's works through barriers b0, b1, ... ----------------

    def _barrier_start(self, client: int, round_: int) -> None:
        if self.now >= self.clients_until:
            return
        self._barrier_round[client] = round_
        self._barrier_leaving[client] = False
        self._barrier_give_up[client] = self.now + 2.0
        self._barrier_poll(client, round_)

    def _barrier_poll(self, client: int, round_: int, leaving: bool = False) -> None:
        if self._barrier_round.get(client) != round_ or self._barrier_leaving.get(client, False) != leaving:
            return
        if self.now >= self._barrier_give_up[client]:
            self.at(self.now + 0.01, lambda: self._barrier_start(client, round_ + 1))
            return
        h = self.hosts[client]
        name = f"b{round_}"
        if h.host is not None:
            self._next_req += 1
            ch = h.host
            if leaving:
                self.checker.leave_polled(self.now, name, f"p{client}")
                fx = ch.request(f"BL{client}-{round_}-{self._next_req}", OP_BARRIER_LEAVE, name, f"p{client}", 0,
                                self.local(h))
            else:
                self.checker.barrier_polled(self.now, name, f"p{client}")
                fx = ch.request(f"B{client}-{round_}-{self._next_req}", OP_BARRIER, name, f"p{client}",
                                self.barrier_count, self.local(h))
            self._carry_out(h, fx)
            if h.host is ch:
                self._arm(h)
        self.at(self.now + 0.2, lambda: self._barrier_poll(client, round_, leaving))

    def _barrier_reply(self, h: _Host, r: Reply) -> None:
        client = h.index
        round_ = self._barrier_round.get(client)
        leaving = r.req.startswith("BL")
        if (round_ is None or r.key != f"b{round_}" or not r.ok or r.value != BARRIER_DONE
                or leaving != self._barrier_leaving.get(client, False)):
            return
        if leaving:
            self.checker.left(self.now, r.key, f"p{client}")
            self._barrier_leaving[client] = False
            self._barrier_round[client] = round_ + 1  # stops the polls of this round
            self.at(self.now + self.rng.uniform(0.0, 0.1), lambda: self._barrier_start(client, round_ + 1))
            return
        self.checker.barrier_passed(self.now, r.key, f"p{client}", self.barrier_count)
        if round_ % 2 == 0:
            self._barrier_round[client] = round_ + 1  # even rounds: a single barrier, on to the next
            self.at(self.now + self.rng.uniform(0.0, 0.1), lambda: self._barrier_start(client, round_ + 1))
            return
        # odd rounds, a double barrier: work a little, then leave (and wait for the others to)
        self._barrier_leaving[client] = True
        self._barrier_give_up[client] = self.now + 2.0
        self.at(self.now + self.rng.uniform(0.0, 0.3), lambda: self._barrier_poll(client, round_, True))

    # ---- watchers ------------------------------------------------------------------

    def _schedule_watch(self, h: _Host) -> None:
        inc = h.incarnation
        self.at(self.now + self.rng.uniform(0.02, 0.1), lambda: self._watch(h, inc))

    def _watch(self, h: _Host, incarnation: int) -> None:
        if h.host is None or h.incarnation != incarnation:
            return
        got = h.host.replica.changes_since(h.watch_from)
        if got == ERR_COMPACTED:
            h.watch_from = h.host.replica.commit  # the explicit error; start again from now
            view, view_version = h.host.replica.committed_get(MEMBERS_KEY)
            self.checker.member_stream_start(h.settings.node_name, view, view_version)
        elif not isinstance(got, str):
            for e in got:
                self.checker.watched(self.now, h.settings.node_name, h.watch_from, e)
                h.watch_from = e.version
                if e.key == MEMBERS_KEY and e.op == OP_SET:
                    self.checker.member_view(self.now, h.settings.node_name, e.version, e.value)
        self._schedule_watch(h)

    # ---- a random schedule -----------------------------------------------------------

    def plan(self, duration_s: float) -> None:
        rng = self.rng
        for i in range(self.size):
            self.at(rng.uniform(0.0, 0.2), partial(self.boot, i))
        self.clients_until = duration_s - 1.0
        for c in range(self.size):
            self.at(0.5 + rng.uniform(0.0, 0.1), partial(self._new_call, c))
            self.at(0.5 + rng.uniform(0.0, 0.1), partial(self._lock_start, c))
            self.at(0.5 + rng.uniform(0.0, 0.3), partial(self._barrier_start, c, 0))
        self.barrier_count = rng.choice([self.size // 2 + 1, self.size])
        t = 0.8
        faults_until = duration_s - 2.0
        while t < faults_until:
            kind = rng.choice(["crash_leader", "crash_leader", "crash", "partition", "isolate_leader"])
            if kind in ("crash_leader", "crash"):
                down_s = rng.uniform(0.05, 0.8)
                self.at(t, partial(self._crash_some, kind == "crash_leader", down_s))
            else:
                heal_after = rng.uniform(0.2, 0.8)
                self.at(t, partial(self._partition, kind == "isolate_leader"))
                self.at(t + heal_after, self._heal)
            t += rng.uniform(0.3, 1.0)
        self.at(faults_until, self._heal)
        for i in range(self.size):
            self.at(faults_until, partial(self.boot, i))
        self._final_reads_at = duration_s - 0.5
        self.at(duration_s, self._checkpoint)

    def _leader(self) -> int | None:
        for h in self.hosts:
            if h.host is not None and h.host.node.is_leader(self.local(h)):
                return h.index
        return None

    def _crash_some(self, leader: bool, down_s: float) -> None:
        i = self._leader() if leader else None
        if i is None:
            i = self.rng.randrange(self.size)
        self.crash(i)
        self.at(self.now + down_s, lambda: self.boot(i))

    def _partition(self, isolate_leader: bool) -> None:
        i = self._leader() if isolate_leader else None
        if i is None:
            i = self.rng.randrange(self.size)
        rest = set(range(self.size)) - {i}
        minority = {i}
        if self.size >= 5 and self.rng.random() < 0.5:
            j = self.rng.choice(sorted(rest))
            minority.add(j)
            rest.discard(j)
        self.groups = [minority, rest]
        self.note(f"partition {self.groups}")

    def _heal(self) -> None:
        self.groups = None
        self.note("heal")

    def final_reads(self) -> None:
        """Every key read back once the cluster is whole: no acknowledged write lost."""
        for key in KEYS:
            self._next_req += 1
            call = _Call(0, f"final-{self._next_req}", OP_GET, key, None, 0, self.now)
            self.calls[call.req] = call
            self._attempt(call)


def run_coord_seed(seed: int, size: int | None = None, duration_s: float = 5.0,
                   replica_cls: type[ConfigReplica] = ConfigReplica, trace: bool = False,
                   registry: Mapping[str, type[ElectionProtocol]] | None = None,
                   holder_ignores_deadline: bool = False, log_keep: int | None = None) -> CoordRun:
    rng = random.Random(seed ^ 0xC0DE)
    n = size if size is not None else rng.choice([3, 3, 5])
    sim = CoordSim(seed, n, replica_cls, trace, registry, holder_ignores_deadline, log_keep)
    sim.plan(duration_s)
    sim.run_until(sim._final_reads_at)
    sim.final_reads()
    sim.run_until(duration_s + 1.5)  # the quiet tail: every host catches up well within it
    sim.finish()
    c = sim.checker
    return CoordRun(seed, n, c.violations, c.acks, c.reads, c.watch_events, sim.unknown,
                    len(c.lock_intervals), c.barrier_passes, len(c.leaves), sim.snapshots, sim.events, sim.trace,
                    c.member_events)
