"""scripts/lab: the LAN lab from the command line (root only).

  scripts/lab chaos --seed N [--system quorum-lease]   replay one schedule
  scripts/lab chaos --schedules 200 [--system all]     a campaign, seeds 1..200
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from .chaos import run_schedule, summary
from .lan import install_signal_teardown
from .systems import SYSTEMS


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="scripts/lab", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    chaos = sub.add_parser("chaos", help="seeded chaos schedules on a namespace LAN")
    chaos.add_argument("--seed", type=int, help="run (replay) this one schedule")
    chaos.add_argument("--schedules", type=int, default=1, help="run this many, seeds --first-seed.. (default 1)")
    chaos.add_argument("--first-seed", type=int, default=1)
    chaos.add_argument("--system", default="quorum-lease",
                       help=f"one of {', '.join(SYSTEMS)}, a comma list, or all")
    chaos.add_argument("--hosts", type=int, default=5, help="host namespaces, 3-9 (default 5)")
    chaos.add_argument("--steps", type=int, default=4, help="faults per schedule (default 4)")
    chaos.add_argument("--heartbeat-ms", type=int, default=50, help="electiond heartbeat = VRRP advert (default 50)")
    chaos.add_argument("--json", type=Path, help="write every result here")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("scripts/lab needs root (network namespaces, nftables)", file=sys.stderr)
        return 2
    if not 3 <= args.hosts <= 9:
        parser.error("--hosts must be 3..9")
    systems = list(SYSTEMS) if args.system == "all" else args.system.split(",")
    for s in systems:
        if s not in SYSTEMS:
            parser.error(f"unknown system {s!r}")
    seeds = [args.seed] if args.seed is not None else list(range(args.first_seed, args.first_seed + args.schedules))
    install_signal_teardown()
    began = time.time()
    results = []
    # interleaved: every system runs seed k before any runs seed k+1
    for seed in seeds:
        for s in systems:
            results.append(run_schedule(s, seed, hosts_n=args.hosts, steps=args.steps,
                                        heartbeat_ms=args.heartbeat_ms, log=lambda m: print(m, flush=True)))
    print(f"\n{len(results)} schedules in {time.time() - began:.0f} s "
          f"(scripts/lab {' '.join(argv if argv is not None else sys.argv[1:])})\n")
    print(summary(results))
    if args.json:
        import dataclasses
        args.json.write_text(json.dumps([dataclasses.asdict(r) for r in results], indent=1))
    failed = [r for r in results if not r.ok]
    for r in failed:
        print(f"FAILED {r.system} seed {r.seed}: replay with scripts/lab chaos --seed {r.seed} --system {r.system}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
