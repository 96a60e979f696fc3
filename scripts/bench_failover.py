"""Failover benchmark: kill -9 the leader N times, time until the new leader's
promote hook starts (and until every survivor agrees), per protocol.

All protocols run side by side in one invocation at the same heartbeat
interval, so their ratio is meaningful on a noisy shared machine even when
the absolute numbers are not.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

from electiond.devcluster import Cluster

HEARTBEAT_MS = 50


def settled_leader(cluster: Cluster, timeout_s: float = 20.0) -> str:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        first = cluster.wait_for(cluster.agreed_leader, 15.0, "an agreed leader")
        time.sleep(1.0)
        if cluster.agreed_leader() == first:
            return first
    raise AssertionError("no stable leader after the restart")


def measure(protocol: str, nodes: int, kills: int, rng: random.Random,
            preempt: str = "no", timing: dict[str, str] | None = None,
            keep: bool = False, trace: bool = False) -> tuple[list[float], list[float]]:
    workdir = Path(tempfile.mkdtemp(prefix=f"electiond-bench-{protocol}-"))
    if trace:
        # each daemon writes workdir/<node>.trace (electiond/trace.py); the
        # kills go to workdir/kills.jsonl, to line single failovers up
        os.environ["ELECTIOND_TRACE_DIR"] = str(workdir)
    to_hook_ms: list[float] = []
    to_agree_ms: list[float] = []
    try:
        # preempt off by default: a restarted node must not cause a second change;
        # with --preempt yes it takes leadership back, and the next kill hits it
        with Cluster(workdir, nodes, protocol=protocol, node_options={"preempt": preempt},
                     timing={"heartbeat_interval": f"{HEARTBEAT_MS}ms", **(timing or {})}) as cluster:
            cluster.start_all()
            cluster.wait_leader(15.0)
            leader = settled_leader(cluster)  # not one about to be preempted
            for i in range(kills):
                time.sleep(rng.uniform(0.3, 0.8))  # kill at a random heartbeat phase
                killed_at = time.time()
                cluster.kill(leader)
                new_leader = cluster.wait_leader(15.0)
                to_agree_ms.append((time.time() - killed_at) * 1000)
                hook = cluster.wait_for(
                    lambda: [e for e in cluster.hook_events()
                             if e[1] == "promote" and e[2] == new_leader and e[0] >= killed_at],
                    15.0, "the promote hook")[0]
                to_hook_ms.append((hook[0] - killed_at) * 1000)
                with open(workdir / "kills.jsonl", "a") as kills_log:
                    kills_log.write(json.dumps({"killed_at": killed_at, "leader": leader, "new_leader": new_leader,
                                                "hook_at": hook[0], "agreed_ms": to_agree_ms[-1]}) + "\n")
                print(f"  {protocol} kill {i + 1}/{kills}: {leader} -> {new_leader} "
                      f"hook {to_hook_ms[-1]:.0f} ms, agreed {to_agree_ms[-1]:.0f} ms", file=sys.stderr)
                cluster.start(leader)
                if preempt == "no":
                    cluster.wait_for(lambda: cluster.agreed_leader() == new_leader, 15.0,
                                     "the restarted node to follow")
                    leader = new_leader
                else:
                    # the restarted node preempts (or not, below its successor)
                    # once it is up and has listened: wait for an agreement
                    # that holds for a second
                    leader = settled_leader(cluster)
    finally:
        os.environ.pop("ELECTIOND_TRACE_DIR", None)
        if keep or trace:
            print(f"  {protocol}: logs kept in {workdir}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    return to_hook_ms, to_agree_ms


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--nodes", type=int, default=5)
    parser.add_argument("--protocols", default="quorum-lease,bully")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--preempt", choices=("no", "yes"), default="no",
                        help="the nodes' preempt setting (yes: the restarted top node takes back)")
    parser.add_argument("--timing", action="append", default=[], metavar="KEY=VALUE",
                        help="extra [timing] config for every protocol, e.g. lease_max=150ms (repeatable)")
    parser.add_argument("--keep", action="store_true", help="keep each cluster's directory (logs, hooks.log, kills.jsonl)")
    parser.add_argument("--trace", action="store_true",
                        help="every daemon writes a message and phase trace (<node>.trace) beside its log; implies --keep")
    args = parser.parse_args()
    timing = dict(kv.split("=", 1) for kv in args.timing)
    rng = random.Random(args.seed)
    rows = []
    for protocol in args.protocols.split(","):
        hook_ms, agree_ms = measure(protocol, args.nodes, args.kills, rng, args.preempt, timing,
                                    keep=args.keep, trace=args.trace)
        rows.append((protocol, hook_ms, agree_ms))
    print(f"\nfailover after kill -9 of the leader: {args.nodes} nodes on loopback, heartbeat {HEARTBEAT_MS} ms, "
          f"preempt = {args.preempt}, {args.kills} kills each"
          + (f", timing {' '.join(args.timing)}" if args.timing else "") + "\n")
    print("| protocol | median to promote hook | p90 | median until all agree | in heartbeat intervals (median) |")
    print("|---|---|---|---|---|")
    for protocol, hook_ms, agree_ms in rows:
        p90 = statistics.quantiles(hook_ms, n=10)[-1] if len(hook_ms) >= 2 else hook_ms[0]
        median = statistics.median(hook_ms)
        print(f"| {protocol} | {median:.0f} ms | {p90:.0f} ms | {statistics.median(agree_ms):.0f} ms "
              f"| {median / HEARTBEAT_MS:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
