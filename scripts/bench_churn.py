"""Churn benchmark: every node's promote hook fails; count leadership
changes (promotes, all nodes together) per time bucket. With the backoff and
the FAULT after [hooks] max_promote_failures they must decay to zero rather
than cycle for ever. Also reports when each node entered FAULT.

    scripts/bench-churn [--nodes 3] [--seconds 120] [--bucket 60] [--protocol quorum-lease]
"""

from __future__ import annotations

import argparse
import calendar
import shutil
import sys
import tempfile
import time
from pathlib import Path

from electiond.cli import Refused, Unreachable, request
from electiond.devcluster import Cluster


def _wall(iso: str) -> float:
    stamp, _, millis = iso.rstrip("Z").partition(".")
    return calendar.timegm(time.strptime(stamp, "%Y-%m-%dT%H:%M:%S")) + int(millis or 0) / 1000


def promotes(cluster: Cluster) -> dict[str, list[float]]:
    """Wall-clock times of every promote, per node, from each node's history."""
    out: dict[str, list[float]] = {}
    for name in cluster.running():
        try:
            history = request(cluster.socket(name), "history", timeout_s=5.0)
        except (Unreachable, Refused):
            continue
        out[name] = [_wall(e["at"]) for e in history if e["event"] == "promote"]
    return out


def run(nodes: int, seconds: float, protocol: str, workdir: Path) -> tuple[float, dict[str, list[float]], dict]:
    with Cluster(workdir, nodes, protocol=protocol, hooks={"promote": "/bin/false"}) as c:
        c.start_all()
        started = time.time()
        time.sleep(seconds)
        statuses = {n: c.status(n) for n in c.names}
        return started, promotes(c), statuses


def series(started: float, times: list[float], seconds: float, bucket_s: float) -> list[int]:
    counts = [0] * max(1, int(round(seconds / bucket_s)))
    for t in times:
        k = int((t - started) // bucket_s)
        if 0 <= k < len(counts):
            counts[k] += 1
    return counts


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nodes", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=120.0)
    parser.add_argument("--bucket", type=float, default=60.0, help="seconds per bucket of the series")
    parser.add_argument("--protocol", default="quorum-lease")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="electiond-bench-churn-"))
    try:
        started, per_node, statuses = run(args.nodes, args.seconds, args.protocol, workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    everything = sorted(t for ts in per_node.values() for t in ts)
    print(f"{args.protocol}, {args.nodes} nodes, every promote hook = /bin/false, {args.seconds:g}s")
    print(f"leadership changes per {args.bucket:g}s: {series(started, everything, args.seconds, args.bucket)}")
    print(f"per 10s: {series(started, everything, args.seconds, 10.0)}")
    for name, ts in sorted(per_node.items()):
        st = statuses.get(name) or {}
        gaps = [round(b - a, 2) for a, b in zip(ts, ts[1:])]
        print(f"  {name}: {len(ts)} promotes, gaps {gaps}s, blocked_by {sorted((st.get('blocked_by') or {}))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
