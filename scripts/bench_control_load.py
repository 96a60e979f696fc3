"""Control-socket load: N concurrent clients hammer `status` and `metrics` on
the leader for D seconds; the cluster must not change leader. Reports the
requests served, refusals (busy), leadership changes and the worst gap
between the leader's heartbeats seen by any follower.

    scripts/bench-control-load [--clients 50] [--seconds 30] [--nodes 3]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from electiond.cli import Refused, Unreachable, request
from electiond.devcluster import Cluster


def hammer(cluster: Cluster, clients: int, seconds: float) -> dict[str, Any]:
    leader = cluster.wait_leader(10.0)
    followers = [n for n in cluster.names if n != leader]
    before = {n: cluster.status(n) for n in cluster.names}
    stop = threading.Event()
    counts = {"ok": 0, "busy": 0, "errors": 0}
    lock = threading.Lock()

    def client(k: int) -> None:
        cmd = "status" if k % 2 == 0 else "metrics"
        while not stop.is_set():
            try:
                request(cluster.socket(leader), cmd, timeout_s=10.0)
                key = "ok"
            except Unreachable as exc:
                key = "busy" if "busy" in str(exc) else "errors"
            except Refused:
                key = "errors"
            with lock:
                counts[key] += 1

    threads = [threading.Thread(target=client, args=(k,), daemon=True) for k in range(clients)]
    for t in threads:
        t.start()
    worst_gap_ms = 0.0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        time.sleep(0.5)
        for n in followers:
            watch = (cluster.status(n) or {}).get("leader_watch") or {}
            worst_gap_ms = max(worst_gap_ms, watch.get("max_interval_ms") or 0.0, watch.get("since_heartbeat_ms") or 0.0)
    stop.set()
    for t in threads:
        t.join(15)
    after = {n: cluster.status(n) for n in cluster.names}
    changes = sum(after[n]["leadership_changes_total"] - before[n]["leadership_changes_total"] for n in cluster.names)
    return {
        "leader": leader,
        "leader_after": cluster.agreed_leader(),
        "term_before": before[leader]["term"],
        "term_after": after[leader]["term"],
        "leadership_changes": changes,
        "requests": counts,
        "requests_per_s": round(counts["ok"] / seconds, 1),
        "worst_heartbeat_gap_ms": round(worst_gap_ms, 1),
        "heartbeat_interval_ms": 50,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--nodes", type=int, default=3)
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="electiond-bench-load-"))
    try:
        with Cluster(workdir, args.nodes, protocol="quorum-lease") as c:
            c.start_all()
            result = hammer(c, args.clients, args.seconds)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    for key, value in result.items():
        print(f"{key:24} {value}")
    return 0 if result["leadership_changes"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
