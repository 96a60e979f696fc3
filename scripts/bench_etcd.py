"""protocol = etcd failover: kill -9 the leader N times, time until the
successor's promote hook starts (its own wall-clock stamp in the hook log).

A real 3-member etcd on loopback serves 3 electiond daemons; the killed
daemon is restarted after each round so the cluster stays at 3. The number is
dominated by the lease TTL: etcd deletes a dead leader's key only when its
lease expires (its expiry check runs every 500 ms), then the next candidate's
watch fires and a fresh read confirms it is first.
"""

from __future__ import annotations

import argparse
import random
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from electiond.devcluster import Cluster
from electiond.devetcd import APT_HINT, EtcdCluster, etcd_binary


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=5)
    parser.add_argument("--ttl", type=int, default=3, help="[etcd] lease_ttl in seconds (default 3)")
    args = parser.parse_args()
    if etcd_binary() is None:
        print(f"needs etcd: {APT_HINT}")
        return 1
    rng = random.Random(1)
    workdir = Path(tempfile.mkdtemp(prefix="electiond-bench-etcd-"))
    took_s: list[float] = []
    try:
        with EtcdCluster(workdir) as etcd:
            etcd.start_all()
            cluster = Cluster(workdir, 3, protocol="etcd",
                              timing={"heartbeat_interval": "100ms", "election_timeout": "300ms-500ms"})
            cluster.config_text += f"\n[etcd]\nendpoints = {etcd.endpoints()}\nlease_ttl = {args.ttl}s\n"
            with cluster:
                cluster.start_all()
                leader = cluster.wait_leader(15.0)
                for i in range(args.kills):
                    time.sleep(rng.uniform(1.0, 2.0))  # kill at a random keep-alive phase
                    killed_at = time.time()
                    cluster.kill(leader)
                    promote = cluster.wait_for(
                        lambda: [e for e in cluster.hook_events() if e[1] == "promote" and e[0] > killed_at],
                        args.ttl + 10, "a successor's promote hook")[0]
                    took_s.append(promote[0] - killed_at)
                    print(f"kill {i + 1}: {leader} -> {promote[2]} in {took_s[-1]:.2f}s", flush=True)
                    cluster.start(leader)  # back as a follower, at the end of the queue
                    leader = cluster.wait_leader(15.0)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print(f"etcd lease_ttl {args.ttl}s: median failover {statistics.median(took_s):.2f}s "
          f"(min {min(took_s):.2f}s, max {max(took_s):.2f}s) over {len(took_s)} kills")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
