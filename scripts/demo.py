"""The demo behind scripts/demo: 5 daemons, kill the leader, measure the failover."""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from electiond.devcluster import Cluster


def electionctl(cluster: Cluster, name: str, *args: str) -> None:
    ctl = Path(sys.executable).with_name("electionctl")
    cmd = [str(ctl)] if ctl.exists() else [sys.executable, "-m", "electiond.cli"]
    subprocess.run([*cmd, "--socket", cluster.socket(name), *args], check=False, timeout=10)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--protocol", default="quorum-lease", choices=["quorum-lease", "bully", "ring"])
    parser.add_argument("--nodes", type=int, default=5)
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="electiond-demo-"))
    try:
        with Cluster(workdir, args.nodes, protocol=args.protocol) as cluster:
            print(f"starting {args.nodes} daemons ({args.protocol}) on 127.0.0.1, group {cluster.group}:{cluster.port}")
            t0 = time.monotonic()
            cluster.start_all()
            leader = cluster.wait_leader(20.0)
            check = (" (quorum-lease: each node first compares its clock with its peers' for clock_check = 2s)"
                     if args.protocol == "quorum-lease" else "")
            print(f"leader: {leader} (agreed by all {args.nodes} after {time.monotonic() - t0:.2f}s{check})\n")
            electionctl(cluster, leader, "status")

            print(f"\nkill -9 {leader}")
            killed_at = time.time()
            cluster.kill(leader)
            new_leader = cluster.wait_leader(10.0)
            agreed_s = time.time() - killed_at

            def promote_hook():
                return [e for e in cluster.hook_events()
                        if e[1] == "promote" and e[2] == new_leader and e[0] >= killed_at]

            promoted = cluster.wait_for(promote_hook, 10.0, f"{new_leader}'s promote hook")[0]
            print(f"new leader: {new_leader}")
            print(f"failover: {(promoted[0] - killed_at) * 1000:.0f} ms from kill -9 to {new_leader}'s promote hook "
                  f"(term {promoted[3]}); all survivors agreed within {agreed_s * 1000:.0f} ms\n")
            electionctl(cluster, new_leader, "status")
            print("\nhook log (wall time, event, node, term, reason):")
            for stamp, event, node, term, reason in cluster.hook_events():
                print(f"  {stamp:.3f} {event:<8} {node:<4} term {term:<3} {reason}")
        return 0
    except AssertionError as exc:
        print(f"demo failed: {exc}", file=sys.stderr)
        return 1
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
