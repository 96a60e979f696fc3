"""Speed of the simulator: a steady cluster, default settings, no faults.

python -m electiond.sim bench [--protocol bully] [--nodes 5] [--seconds 300]
prints simulated seconds per wall second (and per CPU second: the figure
that does not depend on what else the machine is doing).
"""

from __future__ import annotations

import argparse
import random
import time as _time

from electiond.protocols.base import Member, Settings
from electiond.sim.checker import invariants_for
from electiond.sim.cluster import Cluster
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
    p.add_argument("--profile", action="store_true", help="print the cProfile top 20")
    a = p.parse_args(argv)
    if a.profile:
        import cProfile
        import pstats

        prof = cProfile.Profile()
        r = prof.runcall(bench, a.protocol, a.nodes, a.seconds, a.heartbeat_ms / 1000)
        pstats.Stats(prof).sort_stats("tottime").print_stats(20)
    else:
        r = bench(a.protocol, a.nodes, a.seconds, a.heartbeat_ms / 1000)
    print(
        f"protocol={r['protocol']} nodes={r['nodes']} heartbeat={a.heartbeat_ms:g}ms simulated={r['simulated_s']:g}s "
        f"events={r['events']} wall={r['wall_s']:.2f}s cpu={r['cpu_s']:.2f}s "
        f"speed={r['x_real_time_wall']:.0f}x real time (wall), {r['x_real_time_cpu']:.0f}x (cpu) "
        f"leader={r['leaders']} violations={r['violations']}"
    )
    return 1 if r["violations"] else 0
