"""Small-scope exhaustive exploration (breadth first, with state hashing).

From one start state (all nodes booted at t=0; their randomized timeouts
fixed by ``--seed``), enumerate every sequence of these actions up to a depth:

* ``deliver k``  hand in-flight datagram k to its recipient now;
* ``drop k``     lose it (at most ``--drops`` per path);
* ``dup k``      deliver a copy and keep the original in flight (``--dups``);
* ``tick``       advance time to the earliest pending deadline of a running
                 node and fire that node's timer;
* ``crash i`` / ``restart i``  (at most ``--crashes`` crashes per path;
                 restarts keep the disk).

The node glue's PRESENCE beacons (which never reach a protocol) are handed
over at once rather than branched on, and demote hooks finish at once (the
node is told ``demote_hooks_done`` right after its Demote).

How time is discretized: time stands still between ticks and jumps to the
next node deadline on ``tick``, so every input happens at an instant some
node's timer defines; a datagram sent at s may be delivered at any of those
instants up to s + ``max_delay`` (the tick that would pass that bound is not
enabled until the datagram is delivered or dropped). So delays are quantized
to the gaps between deadlines and bounded, and every rule stated in terms of
elapsed time (timeouts, leases, promises) is evaluated at exactly the
instants where it can change. Clocks are perfect here (rate 1, offset 0):
drift is the random simulator's job, which covers it with many seeds.

States are deep copies of the whole world (nodes with their protocol state
and random generators, disks, in-flight datagrams, fault budgets, checker);
two states with the same digest (``state_key``) are explored once. The checker is the simulator's, with the protocol's row of
``INVARIANTS``; time-based bully rules (settle windows) rarely apply at these
depths, fencing and the lease and vote rules always do.
"""

from __future__ import annotations

import argparse
import copyreg
import io
import pickle
import hashlib
import random
import sys
import time as _time
from dataclasses import dataclass, field
from typing import Mapping

from electiond.node import PRESENCE, Node
from electiond.protocols.base import (
    Demote,
    ElectionProtocol,
    Member,
    Message,
    Persist,
    PersistedState,
    Promote,
    Send,
    Settings,
    TokenRaised,
)
from electiond.sim.checker import Checker, InvariantSet, invariants_for

_CURRENT: list["World"] = []
_SHARED: dict[int, object] = {}  # frozen values shared by every copied world


def _shared(key: int):
    return _SHARED[key]


def _share(o):
    _SHARED[id(o)] = o
    return (_shared, (id(o),))


_RNG_STATES: dict[int, tuple] = {}  # interned generator states: most steps draw nothing


def _rng_from_state(state):
    r = random.Random.__new__(random.Random)  # no __init__: skips seeding from the OS
    r.setstate(state)
    return r


def _rng_from_interned(key: int):
    return _rng_from_state(_RNG_STATES[key])


def _rng_reduce(r: random.Random):
    state = r.getstate()
    key = hash(state)
    known = _RNG_STATES.setdefault(key, state)
    if known is state or known == state:
        return (_rng_from_interned, (key,))
    return (_rng_from_state, (state,))  # a hash collision: carry the state itself


_DISPATCH = {**copyreg.dispatch_table, random.Random: _rng_reduce}
for _t in (Settings, Member, Message, PersistedState):
    _DISPATCH[_t] = _share
# for digests, frozen values go by value (two equal messages must hash alike);
# only the settings, the same for every state, go by reference
_KEY_DISPATCH = {**copyreg.dispatch_table, random.Random: _rng_reduce, Settings: _share}  # the world the checker's callbacks read


def _current() -> "World":
    return _CURRENT[-1]


# module-level (so a World pickles): the checker reads the world being stepped
def _local_now(i: int, t: float) -> float:
    return t  # perfect clocks in the explorer


def _true_time_of(i: int, local: float) -> float:
    return local  # perfect clocks: local time is true time


def _running(i: int) -> bool:
    return _current().running(i)


def _protocol_of(i: int):
    n = _current().nodes[i]
    return n.protocol if n is not None else None


@dataclass
class World:  # no slots: a plain __dict__ pickles fastest
    now: float
    nodes: list[Node | None]
    disks: list
    inflight: list[tuple[float, int, int, Message]]  # (sent at, src, dst, msg)
    drops_left: int
    dups_left: int
    crashes_left: int
    restarts: int
    checker: Checker
    path: tuple = ()

    def running(self, i: int) -> bool:
        return self.nodes[i] is not None


@dataclass(slots=True)
class ExploreResult:
    states: int = 0
    transitions: int = 0
    depth_done: int = 0
    wall_s: float = 0.0
    violation: str | None = None
    path: tuple = ()
    stopped: str = ""
    frontier: int = 0
    per_depth: list[int] = field(default_factory=list)

    def rate(self) -> float:
        return self.states / self.wall_s if self.wall_s > 0 else 0.0


# Node fields that only feed status and history, never a decision
_BOOKKEEPING = ("history", "leader_changes", "split_brains", "started_at")


def _steering_state(n: Node | None):
    if n is None:
        return None
    return sorted((k, v) for k, v in vars(n).items() if k not in _BOOKKEEPING)


def state_key(w: World) -> bytes:
    """A digest of everything that decides a world's future.

    It is the pickle of the nodes (protocol, detector, membership, timers;
    only history and flap counters are left out), disks, in-flight datagrams (sorted,
    by value), fault budgets, the time and the checker's memory. Settings are
    pickled as one shared reference and generators by their interned state.
    Equal digests mean equal states; equal states may occasionally get
    different digests (a set iterated in another order), which only costs
    some pruning, never soundness.
    """
    c = w.checker
    inflight = sorted(
        ((sent, a, b, m.kind, m.sender, m.term, sorted(m.body.items(), key=repr), m.recipient)
         for sent, a, b, m in w.inflight),
        key=repr,
    )
    snapshot = (
        w.now, w.drops_left, w.dups_left, w.crashes_left, w.disks,
        [_steering_state(n) for n in w.nodes],
        inflight,
        (c.max_promoted_term, sorted(c._term_owner.items()), sorted(c._votes.items()), sorted(c.role_leaders),
         c.partitioned, c.lossy, c.last_fault_s, c.state_lost, sorted(c._promise_at_crash.items())),
    )
    buf = io.BytesIO()
    p = pickle.Pickler(buf, pickle.HIGHEST_PROTOCOL)
    p.dispatch_table = _KEY_DISPATCH
    p.dump(snapshot)
    return hashlib.blake2b(buf.getvalue(), digest_size=16).digest()


class Explorer:
    def __init__(
        self,
        protocol: str,
        nodes: int = 3,
        seed: int = 0,
        drops: int = 1,
        dups: int = 1,
        crashes: int = 1,
        max_delay_s: float | None = None,
        registry: Mapping[str, type[ElectionProtocol]] | None = None,
        invariants: InvariantSet | None = None,
        settings_overrides: dict | None = None,
    ) -> None:
        members = tuple(Member(f"n{i}", i) for i in range(1, nodes + 1))
        self.settings = [Settings("explore", m.name, members,
                                  # beacons are handed over at once here and clocks are perfect: the
                                  # start-up clock check would only push every election past the depth
                                  **{"clock_check_s": 0.0, **(settings_overrides or {})}) for m in members]
        self.protocol = protocol
        self.registry = registry
        self.inv = invariants or invariants_for(protocol)
        self.max_delay_s = max_delay_s if max_delay_s is not None else self.settings[0].heartbeat_interval_s
        self.rng = random.Random(seed)
        names = [m.name for m in members]
        checker = Checker(self.inv, self.settings[0], names, local_now=_local_now, running=_running,
                          protocol_of=_protocol_of, true_time_of=_true_time_of)
        self.names = names
        self.index_of = {n: i for i, n in enumerate(names)}
        nodes_ = [Node(s, protocol, random.Random(self.rng.getrandbits(64)), 0.0, None, registry)
                  for s in self.settings]
        self.start = World(0.0, nodes_, [None] * nodes, [], drops, dups, crashes, 0, checker)

    # ---- copying and hashing ----------------------------------------------------

    def _copy(self, w: World) -> World:
        """Deep copy by a pickling round trip: C speed, sharing preserved.
        Frozen values (settings, messages, persisted states) are shared, not
        copied, and random generators are rebuilt from their state alone."""
        buf = io.BytesIO()
        p = pickle.Pickler(buf, pickle.HIGHEST_PROTOCOL)
        p.dispatch_table = _DISPATCH
        p.dump(w)
        return pickle.loads(buf.getvalue())

    # ---- transitions ------------------------------------------------------------

    def actions(self, w: World) -> list[tuple]:
        acts: list[tuple] = []
        seen = set()
        for k, (sent, a, b, m) in enumerate(w.inflight):
            key = (sent, a, b, m.kind, m.term, m.recipient, repr(sorted(m.body.items(), key=repr)))
            if key in seen:
                continue  # an identical duplicate: same futures
            seen.add(key)
            acts.append(("deliver", k))
            if w.drops_left:
                acts.append(("drop", k))
            if w.dups_left:
                acts.append(("dup", k))
        due = self._next_tick(w)
        if due is not None:
            t, i = due
            if all(sent + self.max_delay_s >= t for sent, _, _, _ in w.inflight):
                acts.append(("tick", i))
        for i, n in enumerate(w.nodes):
            if n is not None and w.crashes_left:
                acts.append(("crash", i))
            elif n is None:
                acts.append(("restart", i))
        return acts

    def _next_tick(self, w: World):
        best = None
        for i, n in enumerate(w.nodes):
            if n is None:
                continue
            d = n.deadline()
            if best is None or d < best[0]:
                best = (d, i)
        if best is None or best[0] == float("inf"):
            return None
        return (max(best[0], w.now), best[1])

    def step(self, w: World, act: tuple) -> World:
        # pickling round trip: a deep copy in C, several times faster than
        # copy.deepcopy on these object graphs (sharing is preserved)
        child: World = self._copy(w)
        child.path = w.path + (act,)
        _CURRENT.append(child)
        try:
            self._apply(child, act)
        finally:
            _CURRENT.pop()
        # bookkeeping that does not steer the protocol: keep copies small
        for n in child.nodes:
            if n is not None:
                n.history.clear()
                n.leader_changes.clear()
        child.checker.promotions.clear()
        child.checker.raises.clear()
        return child

    def _apply(self, w: World, act: tuple) -> None:
        kind, x = act
        c = w.checker
        if kind in ("deliver", "drop", "dup"):
            sent, a, b, m = w.inflight[x]
            if kind != "dup":
                del w.inflight[x]
            if kind == "drop":
                w.drops_left -= 1
                c.lossy = True
                c.fault(w.now)
                return
            if kind == "dup":
                w.dups_left -= 1
            n = w.nodes[b]
            if n is None:
                return
            self._effects(w, b, n.on_message(m, w.now))
        elif kind == "tick":
            t, i = self._next_tick(w)
            w.now = t
            n = w.nodes[i]
            self._effects(w, i, n.on_tick(t))
            if n.deadline() <= t and w.nodes[i] is n:
                # due again at once: a tick that changes nothing would loop
                again = n.on_tick(t)
                self._effects(w, i, again)
                if n.deadline() <= t:
                    c.violate(t, "busy-loop", f"{self.names[i]}: deadline() stays due after on_tick")
        elif kind == "crash":
            c.crashing(w.now, x)
            w.nodes[x] = None
            w.crashes_left -= 1
            w.inflight = [f for f in w.inflight if f[2] != x]  # its socket buffer is gone
            c.fault(w.now)
            c.node_gone(w.now, x)
            return
        elif kind == "restart":
            w.restarts += 1
            rng = random.Random(hash((x, w.restarts, round(w.now, 9))) & 0xFFFFFFFFFFFF)
            w.nodes[x] = Node(self.settings[x], self.protocol, rng, w.now, w.disks[x], self.registry)
            c.booted(w.now, x)
            c.fault(w.now)
            self._effects(w, x, [])
        else:  # pragma: no cover
            raise ValueError(kind)

    def _effects(self, w: World, i: int, effects: list) -> None:
        c = w.checker
        for e in effects:
            te = type(e)
            if te is Send:
                msg = Message(e.kind, self.names[i], e.term, e.body, e.to)
                if e.kind == PRESENCE:
                    # the node glue's liveness beacon never reaches a protocol:
                    # hand it over at once instead of branching on it
                    for j, other in enumerate(w.nodes):
                        if j != i and other is not None:
                            other.on_message(msg, w.now)
                    continue
                if e.to is None:
                    for j in range(len(w.nodes)):
                        if j != i:
                            w.inflight.append((w.now, i, j, msg))
                elif e.to in self.index_of and self.index_of[e.to] != i:
                    w.inflight.append((w.now, i, self.index_of[e.to], msg))
            elif te is Persist:
                w.disks[i] = e.state
                c.persisted(w.now, i, e.state)
            elif te is Promote:
                c.promoted(w.now, i, e.term)
            elif te is TokenRaised:
                c.raised(w.now, i, e.term)
            elif te is Demote:
                c.demoted(i)
                # demote hooks take no time here; the shell reports them done
                node = w.nodes[i]
                if node is not None:
                    self._effects(w, i, node.demote_hooks_done(w.now))
        c.after_event(w.now, i)
        if c.inv.lease_coverage and c.role_leaders:
            c.check_coverage(w.now, i)  # quorum-lease: what binds node i may have changed

    # ---- search ---------------------------------------------------------------------

    def run(self, depth: int, budget_s: float = 60.0, max_states: int = 2_000_000) -> ExploreResult:
        res = ExploreResult()
        start = _time.perf_counter()
        seen = {state_key(self.start)}
        frontier = [self.start]
        res.states = 1
        for d in range(1, depth + 1):
            nxt: list[World] = []
            for w in frontier:
                for act in self.actions(w):
                    if _time.perf_counter() - start > budget_s:
                        res.stopped = f"time budget {budget_s:.0f}s spent during depth {d}"
                        return self._done(res, start, len(nxt))
                    child = self.step(w, act)
                    res.transitions += 1
                    if child.checker.violations:
                        res.violation = str(child.checker.violations[0])
                        res.path = child.path
                        return self._done(res, start, len(nxt))
                    key = state_key(child)
                    if key in seen:
                        continue
                    seen.add(key)
                    res.states += 1
                    nxt.append(child)
                    if res.states >= max_states:
                        res.stopped = f"state cap {max_states} reached during depth {d}"
                        return self._done(res, start, len(nxt))
            res.depth_done = d
            res.per_depth.append(len(nxt))
            frontier = nxt
            if not frontier:
                res.stopped = "state space exhausted"
                break
        return self._done(res, start, len(frontier))

    def _done(self, res: ExploreResult, start: float, frontier: int) -> ExploreResult:
        res.wall_s = _time.perf_counter() - start
        res.frontier = frontier
        return res

    def describe(self, path: tuple) -> list[str]:
        """Replay a path and narrate it, for a violation report."""
        w = self.start
        lines = []
        for act in path:
            before = w
            w = self.step(w, act)
            kind, x = act
            if kind in ("deliver", "drop", "dup"):
                sent, a, b, m = before.inflight[x]
                lines.append(f"t={w.now:.6f} {self.names[a]} → {self.names[b]} {m.kind} term={m.term} "
                             f"(sent t={sent:.6f}) {kind}")
            elif kind == "tick":
                lines.append(f"t={w.now:.6f} {self.names[x]} tick")
            else:
                lines.append(f"t={w.now:.6f} {kind} {self.names[x]}")
        return lines


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m electiond.sim explore")
    p.add_argument("--protocol", default="bully")
    p.add_argument("--nodes", type=int, default=3)
    p.add_argument("--depth", type=int, default=12)
    p.add_argument("--seed", type=int, default=0, help="fixes the nodes' randomized timeouts")
    p.add_argument("--drops", type=int, default=1)
    p.add_argument("--dups", type=int, default=1)
    p.add_argument("--crashes", type=int, default=1)
    p.add_argument("--budget-s", type=float, default=60.0)
    a = p.parse_args(argv)
    from electiond.sim.native import build_kind

    build = build_kind()
    if build != "interpreted":
        # worlds are copied by pickling, and mypyc's classes cannot be rebuilt
        # blank (their __new__ runs __init__); say so rather than crash
        print(f"explore needs the interpreted simulator (this one is {build}): "
              f"run python -m electiond.sim explore ...", file=sys.stderr)
        return 2
    ex = Explorer(a.protocol, a.nodes, a.seed, a.drops, a.dups, a.crashes)
    r = ex.run(a.depth, a.budget_s)
    print(
        f"protocol={a.protocol} nodes={a.nodes} seed={a.seed} depth_completed={r.depth_done}/{a.depth} "
        f"states={r.states} transitions={r.transitions} wall={r.wall_s:.1f}s states/s={r.rate():.0f} "
        f"frontier={r.frontier} {r.stopped}".rstrip()
    )
    print("new states per depth: " + " ".join(str(n) for n in r.per_depth))
    if r.violation:
        print(r.violation)
        print("\n".join(ex.describe(r.path)))
        print(f"reproduce with: python -m electiond.sim explore --protocol {a.protocol} --nodes {a.nodes} "
              f"--seed {a.seed} --depth {len(r.path)} --drops {a.drops} --dups {a.dups} --crashes {a.crashes}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
