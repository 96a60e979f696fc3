"""A small hand-driven network for quorum-lease tests.

One global clock; each node has its own drifting clock. The harness plays
the shell: it carries out effects in order, keeps each node's durable state
(only Persist changes it), and checks while it runs:

- persistence ordering: a granted VOTE leaves only after (term, voted_for =
  candidate) is durable, a REQUEST_VOTE only after (term, self) is; no
  message carries a term beyond the durable one (pre-votes excepted: they
  name the term a candidacy *would* take);
- a HEARTBEAT leaves only while the sender holds a valid lease;
- at no event time do two running nodes answer is_leader() == True (a
  lease interval can only start at an event, so checking at events finds
  any overlap); a paused or crashed node counts as not leading;
- at most one node is ever promoted per term;
- lease coverage (stronger, catches unsafe rules before they cause an
  overlap): a node that claims leadership at true time t must have a
  majority bound to it until max(t, the true end of its lease): bound means
  promised to it or quarantined (grants no vote at all) until then, on that
  node's own clock. A crashed node stays bound by what it had promised (on
  restart its quarantine takes over).
"""

from __future__ import annotations

import heapq
import random
from dataclasses import dataclass, field, replace

from electiond.protocols.base import (
    Demote,
    Message,
    Member,
    Persist,
    PersistedState,
    Promote,
    Send,
    Settings,
)
from electiond.protocols.lease import HEARTBEAT, PREVOTE, PREVOTE_REPLY, REQUEST_VOTE, VOTE, QuorumLease


class InvariantViolation(AssertionError):
    pass


@dataclass
class NodeClock:
    offset_s: float = 0.0
    rate: float = 1.0  # local seconds per global second

    def local(self, t: float) -> float:
        return self.offset_s + t * self.rate

    def global_of(self, local: float) -> float:
        return (local - self.offset_s) / self.rate


@dataclass(order=True)
class _Event:
    at: float
    seq: int
    kind: str = field(compare=False)  # "deliver" | "wake"
    to: str = field(compare=False)
    msg: Message | None = field(compare=False, default=None)


class Cluster:
    CHECK_COVERAGE = True  # tests may switch it off to see a mutant's actual overlap
    def __init__(
        self,
        n: int,
        seed: int = 0,
        *,
        protocol: type[QuorumLease] = QuorumLease,
        priorities: dict[str, int] | None = None,
        drift_ppm: dict[str, float] | None = None,
        delay_s: tuple[float, float] = (0.0005, 0.002),
        loss: float = 0.0,
        duplicate: float = 0.0,
        start_times: dict[str, float] | None = None,
        hook_s: float = 0.0,
        **overrides,
    ) -> None:
        self.t = 0.0
        self.rng = random.Random(seed)
        self.seed = seed
        self.protocol = protocol
        self.delay_s = delay_s
        self.loss = loss
        self.duplicate = duplicate
        self.hook_s = hook_s  # how long demote hooks take to run
        self.members = tuple(Member(f"n{i}", i) for i in range(1, n + 1))
        self.names = [m.name for m in self.members]
        priorities = priorities or {}
        self.settings = {
            name: Settings(
                cluster="test",
                node_name=name,
                members=self.members,
                priority=priorities.get(name, 0),
                **overrides,
            )
            for name in self.names
        }
        drift_ppm = drift_ppm or {}
        self.clocks = {
            name: NodeClock(offset_s=1000.0 * i, rate=1.0 + drift_ppm.get(name, 0.0) / 1e6)
            for i, name in enumerate(self.names, start=1)
        }
        self.durable = {name: PersistedState() for name in self.names}
        self.nodes: dict[str, QuorumLease] = {}
        self.down: set[str] = set()
        self.paused_until: dict[str, float] = {}
        self.blocked: set[tuple[str, str]] = set()  # (sender, receiver)
        self.link_delay_s: dict[tuple[str, str], float] = {}
        self._queue: list[_Event] = []
        self._seq = 0
        self.promotions: dict[int, str] = {}
        self.log: list[tuple[float, str, object]] = []  # (global t, node, effect)
        self.max_leaders_seen = 0
        self.check_coverage = self.CHECK_COVERAGE
        self._bound_at_crash: dict[str, tuple[str | None, float, float]] = {}
        start_times = start_times or {}
        for name in self.names:
            if name in start_times and start_times[name] > 0:
                self.down.add(name)
                self._push(start_times[name], "start", name)
            else:
                self._boot(name)

    # ---- clocks -------------------------------------------------------------

    def local(self, name: str) -> float:
        return self.clocks[name].local(self.t)

    # ---- node lifecycle --------------------------------------------------------

    def _boot(self, name: str) -> None:
        s = self.settings[name]
        rng = random.Random(self.rng.random())
        self.nodes[name] = self.protocol(s, rng, self.local(name), self.durable[name])
        self.down.discard(name)
        self.log.append((self.t, name, "start"))

    def crash(self, name: str) -> None:
        p = self.nodes[name]
        to, until = p.promise
        self._bound_at_crash[name] = (to, until, p.quarantine_until)
        self.down.add(name)
        self.paused_until.pop(name, None)
        self.log.append((self.t, name, "crash"))

    def restart(self, name: str) -> None:
        self._boot(name)
        self._check()

    def pause(self, name: str, duration_s: float) -> None:
        self.paused_until[name] = self.t + duration_s
        self._push(self.t + duration_s, "wake", name)
        self.log.append((self.t, name, "pause"))

    # ---- network -------------------------------------------------------------

    def partition(self, *groups: list[str]) -> None:
        """Only nodes in the same group hear each other."""
        group_of = {n: i for i, g in enumerate(groups) for n in g}
        self.blocked = {
            (a, b) for a in self.names for b in self.names
            if a != b and group_of.get(a, -1) != group_of.get(b, -2)
        }

    def block(self, sender: str, receiver: str) -> None:
        self.blocked.add((sender, receiver))

    def heal(self) -> None:
        self.blocked = set()

    # ---- driving ---------------------------------------------------------------

    def _push(self, at: float, kind: str, to: str, msg: Message | None = None) -> None:
        self._seq += 1
        heapq.heappush(self._queue, _Event(at, self._seq, kind, to, msg))

    def _delay(self, sender: str, receiver: str) -> float:
        if (sender, receiver) in self.link_delay_s:
            return self.link_delay_s[(sender, receiver)]
        return self.rng.uniform(*self.delay_s)

    def apply(self, name: str, effects: list) -> None:
        node = self.nodes[name]
        now = self.local(name)
        for e in effects:
            self.log.append((self.t, name, e))
            if isinstance(e, Persist):
                if e.state.term < self.durable[name].term:
                    raise InvariantViolation(f"{name} persisted a term going backwards: {e}")
                self.durable[name] = e.state
            elif isinstance(e, Send):
                self._check_send_durable(name, e)
                if e.kind == HEARTBEAT and not node.is_leader(now):
                    raise InvariantViolation(f"t={self.t:.4f} {name} sent a heartbeat without a valid lease")
                self._transmit(name, e)
            elif isinstance(e, Demote):
                self._push(self.t + self.hook_s, "hooks_done", name)
            elif isinstance(e, Promote):
                other = self.promotions.get(e.term)
                if other is not None and other != name:
                    raise InvariantViolation(f"term {e.term} promoted both {other} and {name}")
                self.promotions[e.term] = name

    def _check_send_durable(self, name: str, e: Send) -> None:
        d = self.durable[name]
        if e.kind == PREVOTE or (e.kind == PREVOTE_REPLY and e.body.get("granted")):
            return
        if e.term > d.term:
            raise InvariantViolation(f"{name} sent {e.kind} at term {e.term} before persisting it ({d})")
        if e.kind == VOTE and e.body["granted"] and (d.term != e.term or d.voted_for != e.to):
            raise InvariantViolation(f"{name} granted a vote to {e.to} in term {e.term} before persisting it ({d})")
        if e.kind == REQUEST_VOTE and (d.term != e.term or d.voted_for != name):
            raise InvariantViolation(f"{name} asked for votes in term {e.term} before persisting its own ({d})")

    def _transmit(self, sender: str, e: Send) -> None:
        targets = [e.to] if e.to is not None else [n for n in self.names if n != sender]
        for to in targets:
            if (sender, to) in self.blocked or self.rng.random() < self.loss:
                continue
            msg = Message(e.kind, sender, e.term, dict(e.body), e.to)
            copies = 2 if self.rng.random() < self.duplicate else 1
            for _ in range(copies):
                self._push(self.t + self._delay(sender, to), "deliver", to, msg)

    def _running(self, name: str) -> bool:
        return name not in self.down and name not in self.paused_until

    def leaders(self) -> list[str]:
        return [n for n in self.names if self._running(n) and self.nodes[n].is_leader(self.local(n))]

    def _check(self) -> None:
        leaders = self.leaders()
        if self.check_coverage:
            for leader in leaders:
                self._check_coverage(leader)
        self.max_leaders_seen = max(self.max_leaders_seen, len(leaders))
        if len(leaders) > 1:
            raise InvariantViolation(f"seed={self.seed} t={self.t:.4f}: two leaders at once: {leaders}")

    def bound_until(self, name: str, leader: str) -> float:
        """True time until which ``name`` will grant no vote to anyone but ``leader``."""
        if name in self.down:
            to, until, quarantine = self._bound_at_crash.get(name, (None, -1.0, -1.0))
            if to == leader or quarantine > -1e300:
                return float("inf")  # it can vote only after restarting, in quarantine
            return -float("inf")
        p = self.nodes[name]
        clock = self.clocks[name]
        to, until = p.promise
        bound = clock.global_of(p.quarantine_until)
        if to == leader:
            bound = max(bound, clock.global_of(until))
        return bound

    def _check_coverage(self, leader: str) -> None:
        p = self.nodes[leader]
        # the lease itself, not only the claim (which ends a guard earlier)
        claim_end = self.clocks[leader].global_of(p.lease_until)
        need = max(self.t, claim_end) - 1e-9
        bound = [n for n in self.names if self.bound_until(n, leader) >= need]
        if len(bound) < p.settings.quorum:
            raise InvariantViolation(
                f"seed={self.seed} t={self.t:.4f}: lease-uncovered: {leader} claims until t={claim_end:.4f} "
                f"but only {bound} are bound to it that long"
            )

    def _next_deadline(self) -> tuple[float, str | None]:
        best, who = float("inf"), None
        for name in self.names:
            if not self._running(name):
                continue
            at = self.clocks[name].global_of(self.nodes[name].deadline())
            if at < best:
                best, who = at, name
        return best, who

    def step(self, until: float) -> bool:
        tick_at, ticker = self._next_deadline()
        event_at = self._queue[0].at if self._queue else float("inf")
        at = min(tick_at, event_at)
        if at > until:
            self.t = until
            self._check()
            return False
        self.t = max(self.t, at)
        if event_at <= tick_at:
            ev = heapq.heappop(self._queue)
            self._handle(ev)
        else:
            assert ticker is not None
            self.apply(ticker, self.nodes[ticker].on_tick(self.local(ticker)))
        self._check()
        return True

    def _handle(self, ev: _Event) -> None:
        if ev.kind == "start":
            self._boot(ev.to)
            return
        if ev.kind == "hooks_done":
            if ev.to in self.paused_until:  # hooks finish, the daemon hears of it on waking
                self._push(self.paused_until[ev.to] + 1e-9, ev.kind, ev.to)
            elif ev.to not in self.down:
                self.apply(ev.to, self.nodes[ev.to].demote_hooks_done(self.local(ev.to)))
            return
        if ev.kind == "wake":
            if self.paused_until.get(ev.to) == ev.at:
                del self.paused_until[ev.to]
                # a woken node's timers fire first: its lease is checked
                # before any buffered datagram is read
                self.apply(ev.to, self.nodes[ev.to].on_tick(self.local(ev.to)))
            return
        if ev.to in self.down:
            return
        if ev.to in self.paused_until:
            # the datagram waits in the socket buffer until the process runs
            self._push(self.paused_until[ev.to] + 1e-9, ev.kind, ev.to, ev.msg)
            return
        assert ev.msg is not None
        if (ev.msg.sender, ev.to) in self.blocked:
            return  # the partition formed while it was in flight
        self.apply(ev.to, self.nodes[ev.to].on_message(ev.msg, self.local(ev.to)))

    def run(self, duration_s: float, max_steps: int = 200_000) -> None:
        until = self.t + duration_s
        for _ in range(max_steps):
            if not self.step(until):
                return
        raise AssertionError(f"seed={self.seed}: no progress after {max_steps} steps (livelock?)")

    def run_until(self, predicate, timeout_s: float, max_steps: int = 200_000) -> bool:
        until = self.t + timeout_s
        for _ in range(max_steps):
            if predicate():
                return True
            if not self.step(until):
                return predicate()
        raise AssertionError(f"seed={self.seed}: no progress after {max_steps} steps")

    # ---- helpers for tests -------------------------------------------------------

    def leader(self) -> str | None:
        ls = self.leaders()
        return ls[0] if ls else None

    def elect(self, timeout_s: float = 5.0) -> str:
        assert self.run_until(lambda: self.leader() is not None, timeout_s), "no leader elected"
        return self.leader()  # type: ignore[return-value]

    def effects_of(self, name: str, kind: type) -> list[tuple[float, object]]:
        return [(t, e) for t, n, e in self.log if n == name and isinstance(e, kind)]

    def demotes(self, name: str) -> list[tuple[float, Demote]]:
        return self.effects_of(name, Demote)  # type: ignore[return-value]


def settings_for(n: int = 3, name: str = "n1", **overrides) -> Settings:
    members = tuple(Member(f"n{i}", i) for i in range(1, n + 1))
    return replace(Settings(cluster="test", node_name=name, members=members), **overrides)


def random_faults(protocol, seed: int, n: int) -> Cluster:
    """A seeded schedule of partitions, crashes, restarts and pauses with
    drifting clocks, loss, duplication and up to 20 ms delays; then the
    cluster heals and must elect a leader (raises InvariantViolation on any
    safety failure, AssertionError if no leader comes back)."""
    rng = random.Random(seed)
    drift = {f"n{i}": rng.choice([-1000.0, 0.0, 1000.0]) for i in range(1, n + 1)}
    c = Cluster(n, seed=seed, protocol=protocol, drift_ppm=drift, delay_s=(0.0002, 0.02), loss=0.05, duplicate=0.02)
    for _ in range(12):
        c.run(rng.uniform(0.05, 0.6))
        action = rng.random()
        live = [x for x in c.names if x not in c.down]
        if action < 0.25:
            names = list(c.names)
            rng.shuffle(names)
            k = rng.randint(1, n - 1)
            c.partition(names[:k], names[k:])
        elif action < 0.35:
            # one broken link (a flaky cable or switch port): not transitive
            a, b = rng.sample(c.names, 2)
            c.block(a, b)
            c.block(b, a)
        elif action < 0.5:
            c.heal()
        elif action < 0.65 and len(live) > 1:
            c.crash(rng.choice(live))
        elif action < 0.8 and c.down:
            c.restart(rng.choice(sorted(c.down)))
        elif live:
            c.pause(rng.choice(live), rng.uniform(0.01, 0.5))
    c.heal()
    for x in sorted(c.down):
        c.restart(x)
    c.run(0.6)
    assert c.elect(timeout_s=5.0), f"seed {seed}: no leader after healing"
    return c
