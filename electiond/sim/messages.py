"""Messages per election, counted in the simulator (scripts/bench-messages).

Two scenarios per (protocol, size, seed), on a lossless simulated LAN with
the default timings: a clean start (every node boots at once, nobody leads)
and a leader kill (the agreed leader crashes). For each, every datagram a
protocol sends in the window is counted, except the steady background a
healthy cluster sends anyway (the leader's HEARTBEAT and Node's PRESENCE
beacon): what is left is the price of the election itself.

A datagram is one send on the wire (a multicast counts once); a delivery is
one datagram arriving at one node (a multicast to n-1 peers counts n-1).
Both are reported because they rank the protocols differently.
"""

from __future__ import annotations

import argparse
import random
import statistics
from collections import Counter
from dataclasses import dataclass, field

from electiond.node import PRESENCE
from electiond.protocols.base import Member, Send, Settings
from electiond.sim.checker import invariants_for
from electiond.sim.cluster import Cluster, Host
from electiond.sim.network import NetworkModel

BACKGROUND = frozenset({"HEARTBEAT", PRESENCE})
WINDOW_S = 3.0  # an election on a lossless LAN is over well within this


@dataclass(slots=True)
class Count:
    datagrams: Counter = field(default_factory=Counter)  # kind -> sends
    multicasts: int = 0
    deliveries: int = 0
    time_to_leader_s: float | None = None
    leader: str | None = None

    @property
    def total(self) -> int:
        return sum(self.datagrams.values())


class CountingCluster(Cluster):
    """The simulator's cluster, counting what leaves each node."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.count = Count()

    def _send(self, h: Host, e: Send) -> None:
        if e.kind not in BACKGROUND:
            self.count.datagrams[e.kind] += 1
            if e.to is None:
                self.count.multicasts += 1
                self.count.deliveries += len(self.hosts) - 1
            else:
                self.count.deliveries += 1
        super()._send(h, e)


def _cluster(protocol: str, size: int, seed: int) -> CountingCluster:
    members = tuple(Member(f"n{i}", i) for i in range(1, size + 1))
    settings = [Settings(cluster="bench", node_name=m.name, members=members) for m in members]
    return CountingCluster(settings, protocol, invariants_for(protocol), random.Random(seed), network=NetworkModel())


def _measure(cluster: CountingCluster, start: float, live: list[int]) -> Count:
    """Run one window from ``start``; the count is what was sent in it."""
    cluster.count = Count()
    first: list[float] = []

    def watch(t: float) -> None:
        if cluster.agreed_leader(live) is not None:
            first.append(t)
            cluster.after_event = None

    cluster.after_event = watch
    cluster.run_until(start + WINDOW_S)
    cluster.after_event = None
    count = cluster.count
    leader = cluster.agreed_leader(live)
    if not first or leader is None:
        raise RuntimeError(f"no agreed leader within {WINDOW_S}s (seed's cluster: {cluster.names})")
    count.time_to_leader_s = first[0] - start
    count.leader = cluster.names[leader]
    return count


def run(protocol: str, size: int, seed: int) -> tuple[Count, Count]:
    """(clean start, leader kill) for one seed."""
    cluster = _cluster(protocol, size, seed)
    everyone = list(range(size))
    for i in everyone:
        cluster.at(0.0, lambda i=i: cluster.boot(i))
    clean = _measure(cluster, 0.0, everyone)
    victim = cluster.index_of[clean.leader]
    t = cluster.now
    cluster.at(t, lambda: cluster.crash(victim))
    kill = _measure(cluster, t, [i for i in everyone if i != victim])
    if cluster.checker.violations:
        raise RuntimeError(f"{protocol} n={size} seed={seed}: {cluster.checker.violations[0]}")
    return clean, kill


@dataclass(slots=True)
class Row:
    protocol: str
    size: int
    clean_datagrams: float
    clean_deliveries: float
    clean_ms: float
    kill_datagrams: float
    kill_deliveries: float
    kill_ms: float
    kinds_clean: dict[str, float]
    kinds_kill: dict[str, float]


def _median_kinds(counts: list[Count]) -> dict[str, float]:
    kinds = sorted({k for c in counts for k in c.datagrams})
    return {k: statistics.median(c.datagrams[k] for c in counts) for k in kinds}


def bench(protocol: str, size: int, seeds: list[int]) -> Row:
    runs = [run(protocol, size, s) for s in seeds]
    clean = [r[0] for r in runs]
    kill = [r[1] for r in runs]
    med = statistics.median
    return Row(
        protocol,
        size,
        med(c.total for c in clean),
        med(c.deliveries for c in clean),
        med(c.time_to_leader_s for c in clean) * 1000,
        med(c.total for c in kill),
        med(c.deliveries for c in kill),
        med(c.time_to_leader_s for c in kill) * 1000,
        _median_kinds(clean),
        _median_kinds(kill),
    )


def _num(x: float) -> str:
    return f"{x:g}"


def markdown(rows: list[Row], seeds: list[int]) -> str:
    out = [
        f"Median over seeds {seeds[0]}..{seeds[-1]} ({len(seeds)} runs per cell); lossless simulated LAN, "
        "default timings, preempt on. Counted: every datagram a protocol sends except HEARTBEAT and "
        "PRESENCE. *datagrams* = sends (a multicast counts once); *deliveries* = arrivals "
        "(a multicast to n−1 peers counts n−1).",
        "",
        "| nodes | protocol | clean start: datagrams | deliveries | time to leader | "
        "leader kill: datagrams | deliveries | time to leader |",
        "|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        out.append(
            f"| {r.size} | {r.protocol} | {_num(r.clean_datagrams)} | {_num(r.clean_deliveries)} | "
            f"{r.clean_ms:.0f} ms | {_num(r.kill_datagrams)} | {_num(r.kill_deliveries)} | {r.kill_ms:.0f} ms |"
        )
    out += ["", "Datagrams by kind (medians):", "", "| nodes | protocol | clean start | leader kill |", "|---:|---|---|---|"]
    for r in rows:
        fmt = lambda d: ", ".join(f"{k} {_num(v)}" for k, v in d.items()) or "—"
        out.append(f"| {r.size} | {r.protocol} | {fmt(r.kinds_clean)} | {fmt(r.kinds_kill)} |")
    return "\n".join(out) + "\n"


SIZES = (3, 5, 9, 17)
PROTOCOLS = ("bully", "ring")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="scripts/bench-messages", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, default=7, help="runs per cell (seeds 1..N); the median is shown")
    p.add_argument("--sizes", default=",".join(map(str, SIZES)))
    p.add_argument("--protocols", default=",".join(PROTOCOLS))
    a = p.parse_args(argv)
    seeds = list(range(1, a.seeds + 1))
    rows = [
        bench(protocol, int(size), seeds)
        for size in a.sizes.split(",")
        for protocol in a.protocols.split(",")
    ]
    print(markdown(rows, seeds), end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
