"""Speed of the simulator: a steady cluster, default settings, no faults.

python -m electiond.sim bench [--protocol bully] [--nodes 5] [--seconds 300] [--repeat 5]
prints simulated seconds per wall second (and per CPU second: the figure
that does not depend on what else the machine is doing). Shared machines are
noisy, so ``--repeat`` runs the same cluster several times and reports the
median with the range.
"""

from __future__ import annotations

import argparse
import random
import statistics
import time as _time

from electiond.protocols.base import Member, Settings
from electiond.sim.checker import invariants_for
from electiond.sim.cluster import Cluster
from electiond.sim.native import build_kind
from electiond.sim.network import NetworkModel


def bench(protocol: str = "bully", nodes: int = 5, seconds: float = 300.0, heartbeat_s: float = 0.05) -> dict:
    members = tuple(Member(f"n{i}", i) for i in range(1, nodes + 1))
    settings = [Settings("bench", m.name, members, heartbeat_interval_s=heartbeat_s) for m in members]
    cluster = Cluster(settings, protocol, invariants_for(protocol), random.Random(1), network=NetworkModel())
    for i in range(nodes):
        cluster.boot(i)
    wall0, cpu0 = _time.perf_counter(), _time.process_time()
    cluster.run_until(seconds)
    wall, cpu = _time.perf_counter() - wall0, _time.process_time() - cpu0
    return {
        "protocol": protocol,
        "nodes": nodes,
        "simulated_s": seconds,
        "events": cluster.events,
        "wall_s": wall,
        "cpu_s": cpu,
        "x_real_time_wall": seconds / wall,
        "x_real_time_cpu": seconds / cpu,
        "violations": len(cluster.checker.violations),
        "leaders": [cluster.names[i] for i in cluster.leaders()],
    }


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m electiond.sim bench")
    p.add_argument("--protocol", default="bully")
    p.add_argument("--nodes", type=int, default=5)
    p.add_argument("--seconds", type=float, default=300.0)
    p.add_argument("--heartbeat-ms", type=float, default=50.0)
    p.add_argument("--repeat", type=int, default=1, help="runs of the same cluster; the median is reported")
    p.add_argument("--profile", action="store_true", help="print the cProfile top 20")
    a = p.parse_args(argv)
    if a.repeat < 1:
        p.error("--repeat must be at least 1")
    if a.profile:
        import cProfile
        import pstats

        prof = cProfile.Profile()
        runs = [prof.runcall(bench, a.protocol, a.nodes, a.seconds, a.heartbeat_ms / 1000)]
        pstats.Stats(prof).sort_stats("tottime").print_stats(20)
    else:
        runs = [bench(a.protocol, a.nodes, a.seconds, a.heartbeat_ms / 1000) for _ in range(a.repeat)]
    r = runs[0]
    wall = sorted(x["x_real_time_wall"] for x in runs)
    cpu = sorted(x["x_real_time_cpu"] for x in runs)
    spread = f" (range {wall[0]:.0f}-{wall[-1]:.0f}x over {len(runs)} runs)" if len(runs) > 1 else ""
    print(
        f"protocol={r['protocol']} nodes={r['nodes']} heartbeat={a.heartbeat_ms:g}ms simulated={r['simulated_s']:g}s "
        f"events={r['events']} wall={statistics.median(x['wall_s'] for x in runs):.2f}s "
        f"cpu={statistics.median(x['cpu_s'] for x in runs):.2f}s "
        f"speed={statistics.median(wall):.0f}x real time (wall){spread}, {statistics.median(cpu):.0f}x (cpu) "
        f"leader={r['leaders']} violations={max(x['violations'] for x in runs)} build={build_kind()}"
    )
    return 1 if any(x["violations"] for x in runs) else 0
