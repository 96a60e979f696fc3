#!/usr/bin/env python3
"""Leadership under a datagram flood from a host without the key (issue #13).

Starts a keyed N-node loopback cluster, waits for a leader, then runs one
attacker process (electiond.devattack, source 127.0.0.66) that sends forged
envelopes with random MACs, mutated genuine-looking datagrams and random
bytes as fast as it can to the group and to every daemon's unicast port, for
--seconds. It reports:

  attacker rate     datagrams/s the attacker managed (one process, one core)
  leader changes    promote hooks run during the flood (must be 0)
  view changes      sum over nodes of their leader_changes_last_hour increase
  worst gap         the largest heartbeat inter-arrival a follower's leader
                    watch recorded while the flood ran (status max_interval_ms,
                    polled every 0.25 s)
  dropped           each node's dropped{reason} increase (rate_limited, bad_mac...)

Usage: scripts/bench-flood [--seconds 45] [--nodes 3] [--protocol quorum-lease]
Traffic stays on loopback (the group with TTL 1 on lo); the attacker stops by itself.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import re
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from electiond.devcluster import Cluster  # noqa: E402

UNICAST = re.compile(r"unicast=127\.0\.0\.1:(\d+)")


def keyed_cluster(workdir: pathlib.Path, nodes: int, protocol: str) -> Cluster:
    key = workdir / "cluster.key"
    key.write_bytes(b"flood-bench-key-0123456789abcdef\n")
    cluster = Cluster(workdir, nodes, protocol=protocol)
    cluster.config_text = cluster.config_text.replace(
        "interface = 127.0.0.1", f"interface = 127.0.0.1\nkey_file = {key}", 1)
    return cluster


def unicast_ports(cluster: Cluster) -> dict[str, int]:
    ports = {}
    for name in cluster.names:
        def found(name: str = name) -> int | None:
            m = UNICAST.search((cluster.workdir / f"{name}.log").read_text(errors="replace"))
            return int(m.group(1)) if m else None
        ports[name] = cluster.wait_for(found, 15, f"{name}'s unicast port in its log")
    return ports


def start_attacker(cluster: Cluster, seconds: float, extra: list[str] | None = None) -> subprocess.Popen:
    targets = [f"{cluster.group}:{cluster.port}"] + [f"127.0.0.1:{p}" for p in unicast_ports(cluster).values()]
    argv = [sys.executable, "-m", "electiond.devattack", "--cluster", cluster.cluster_name,
            "--members", ",".join(cluster.names), "--seconds", str(seconds)]
    for target in targets:
        argv += ["--target", target]
    return subprocess.Popen(argv + (extra or []), stdout=subprocess.PIPE, text=True,
                            env={"PYTHONPATH": str(ROOT)}, cwd=cluster.workdir)


def dropped(status: dict | None) -> dict[str, int]:
    return dict((status or {}).get("dropped") or {})


def observe_flood(cluster: Cluster, attacker: subprocess.Popen, seconds: float) -> dict:
    """Poll the cluster while the attacker runs; return what changed."""
    before = {n: cluster.status(n) or {} for n in cluster.names}
    started_wall = time.time()
    worst_gap_ms = 0.0
    leaders_seen: list[str | None] = []
    deadline = time.monotonic() + seconds + 30
    while attacker.poll() is None and time.monotonic() < deadline:
        for name in cluster.names:
            status = cluster.status(name)
            watch = (status or {}).get("leader_watch")
            if watch and watch.get("max_interval_ms") is not None:
                worst_gap_ms = max(worst_gap_ms, watch["max_interval_ms"])
        leader = cluster.agreed_leader()
        if not leaders_seen or leaders_seen[-1] != leader:
            leaders_seen.append(leader)
        time.sleep(0.25)
    try:
        out, _ = attacker.communicate(timeout=30)
    finally:
        if attacker.poll() is None:
            attacker.kill()  # only the attacker this run started
            attacker.wait(5)
    time.sleep(0.5)
    after = {n: cluster.status(n) or {} for n in cluster.names}
    promotes = [e for e in cluster.hook_events() if e[0] >= started_wall and e[1] == "promote"]
    drops = {}
    for name in cluster.names:
        b, a = dropped(before[name]), dropped(after[name])
        drops[name] = {r: a[r] - b.get(r, 0) for r in a if a[r] - b.get(r, 0)}
    return {
        "attacker": json.loads(out.strip().splitlines()[-1]) if out.strip() else None,
        "leader_changes": len(promotes),
        "view_changes": sum(after[n].get("leader_changes_last_hour", 0) - before[n].get("leader_changes_last_hour", 0)
                            for n in cluster.names),
        "worst_follower_heartbeat_gap_ms": worst_gap_ms,
        "agreed_leaders_polled": leaders_seen,
        "dropped": drops,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=45.0)
    parser.add_argument("--nodes", type=int, default=3)
    parser.add_argument("--protocol", default="quorum-lease")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    args = parser.parse_args()
    workdir = pathlib.Path(tempfile.mkdtemp(prefix="electiond-flood-"))
    try:
        with keyed_cluster(workdir, args.nodes, args.protocol) as cluster:
            cluster.start_all()
            leader = cluster.wait_leader(15)
            time.sleep(2)  # let the followers' detectors fill their windows
            attacker = start_attacker(cluster, args.seconds)
            result = observe_flood(cluster, attacker, args.seconds)
            result.update(protocol=args.protocol, nodes=args.nodes, seconds=args.seconds, leader_before=leader,
                          leader_after=cluster.agreed_leader())
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    print(json.dumps(result, indent=1))
    return 0 if result["leader_changes"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
