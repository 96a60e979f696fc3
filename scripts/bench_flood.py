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
  received          genuine datagrams each node accepted per second, calm (5 s
                    before) and while flooded: what the flood cost in lost traffic
  dropped           each node's dropped{reason} increase (rate_limited, bad_mac...)

Usage: scripts/bench-flood [--seconds 45] [--nodes 3] [--protocol quorum-lease] [--spoof N]
                          [--timing KEY=VALUE]...
Traffic stays on loopback (the group with TTL 1 on lo); the attacker stops by itself.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import shutil
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from electiond.devattack import keyed_cluster, observe_flood, received_per_s, start_attacker  # noqa: E402

def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=45.0)
    parser.add_argument("--nodes", type=int, default=3)
    parser.add_argument("--protocol", default="quorum-lease")
    parser.add_argument("--spoof", type=int, default=0,
                        help="the attacker rotates over this many loopback source addresses")
    parser.add_argument("--timing", action="append", default=[], metavar="KEY=VALUE",
                        help="a [timing] setting, e.g. lease=600ms")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    args = parser.parse_args()
    workdir = pathlib.Path(tempfile.mkdtemp(prefix="electiond-flood-"))
    try:
        with keyed_cluster(workdir, args.nodes, args.protocol,
                           dict(item.split("=", 1) for item in args.timing)) as cluster:
            cluster.start_all()
            leader = cluster.wait_leader(15)
            time.sleep(2)  # let the followers' detectors fill their windows
            calm = received_per_s(cluster, 5.0)
            attacker = start_attacker(cluster, args.seconds, ["--spoof", str(args.spoof)] if args.spoof else None)
            result = observe_flood(cluster, attacker, args.seconds)
            result["calm_received_per_s"] = calm
            result.update(protocol=args.protocol, nodes=args.nodes, seconds=args.seconds, leader_before=leader,
                          leader_after=cluster.agreed_leader())
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    print(json.dumps(result, indent=1))
    return 0 if result["leader_changes"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
