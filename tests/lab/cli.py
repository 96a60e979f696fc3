"""scripts/lab: the LAN lab from the command line (root only).

  scripts/lab chaos --seed N [--system quorum-lease]   replay one schedule
  scripts/lab chaos --schedules 200 [--system all] [--jobs 3] [--deadline 17:25]
                                                       a campaign, seeds 1..200, its summary in docs/chaos.md
"""

from __future__ import annotations

import argparse
import calendar
import json
import os
import shlex
import sys
import time
from pathlib import Path

from .campaign import queue, report, run_campaign
from .chaos import run_schedule, summary
from .lan import install_signal_teardown
from .machine import keepalived_version, machine
from .plots import split_brain_plot
from .systems import SYSTEMS

REPO = Path(__file__).resolve().parent.parent.parent
MAX_JOBS = 4  # each schedule's daemons want CPU of their own: more jobs than this on few cores starve them


def parse_deadline(text: str, now: float) -> float:
    """HH:MM (UTC, today; tomorrow if already past) or +SECONDS from now."""
    if text.startswith("+"):
        return now + float(text[1:])
    hh, mm = (int(x) for x in text.split(":"))
    day = time.gmtime(now)
    t = calendar.timegm((day.tm_year, day.tm_mon, day.tm_mday, hh, mm, 0, 0, 0, 0))
    return t if t > now else t + 86400


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
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
    chaos.add_argument("--jobs", type=int, default=1,
                       help=f"schedules at once, each on its own LAN in its own process (1-{MAX_JOBS}; default 1)")
    chaos.add_argument("--order", choices=("seed", "system", "quorum-lease-first"), default="seed",
                       help="seed: systems interleaved seed by seed (default); system: one system after the other; "
                            "quorum-lease-first: its schedules first, then the others interleaved")
    chaos.add_argument("--deadline", help="HH:MM UTC or +SECONDS: start no schedule that could not end by then, "
                                          "stop those still running at it")
    chaos.add_argument("--results", type=Path, help="append each result as a JSON line here as it ends")
    chaos.add_argument("--report", type=Path, default=REPO / "docs" / "chaos.md",
                       help="the campaign summary (markdown; default docs/chaos.md)")
    chaos.add_argument("--no-report", action="store_true", help="write no summary file")
    chaos.add_argument("--json", type=Path, help="write every result here (one JSON list)")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("scripts/lab needs root (network namespaces, nftables)", file=sys.stderr)
        return 2
    if not 3 <= args.hosts <= 9:
        parser.error("--hosts must be 3..9")
    if not 1 <= args.jobs <= MAX_JOBS:
        parser.error(f"--jobs must be 1..{MAX_JOBS}")
    systems = list(SYSTEMS) if args.system == "all" else args.system.split(",")
    for s in systems:
        if s not in SYSTEMS:
            parser.error(f"unknown system {s!r}")
    seeds = [args.seed] if args.seed is not None else list(range(args.first_seed, args.first_seed + args.schedules))
    install_signal_teardown()
    pairs = queue(systems, seeds, args.order)
    if len(pairs) == 1:
        return one(pairs[0], args)
    child_args = ["--hosts", str(args.hosts), "--steps", str(args.steps), "--heartbeat-ms", str(args.heartbeat_ms)]
    deadline = parse_deadline(args.deadline, time.time()) if args.deadline else None
    campaign = run_campaign(pairs, args.jobs, child_args, deadline, args.results, log=lambda m: print(m, flush=True))
    command = "scripts/lab " + " ".join(shlex.quote(a) for a in argv)
    text = report(campaign, command, f"{machine()}; {keepalived_version()}", args.jobs, args.hosts, args.steps,
                  args.heartbeat_ms)
    print("\n" + text)
    if args.json:
        import dataclasses
        args.json.write_text(json.dumps([dataclasses.asdict(r) for r in campaign.results], indent=1))
    if not args.no_report:
        args.report.parent.mkdir(parents=True, exist_ok=True)
        per_system: dict[str, list[float]] = {}
        for r in sorted(campaign.results, key=lambda r: list(SYSTEMS).index(r.system)):
            per_system.setdefault(r.system, []).append(r.split_brain_s)
        png = args.report.with_name(args.report.stem + "-split-brain.png")
        if split_brain_plot(per_system, png, f"split-brain seconds per schedule ({len(campaign.results)} schedules)"):
            text += f"\n![split-brain seconds per schedule, per system]({png.name})\n"
        args.report.write_text(text)
        print(f"summary: {args.report}")
    failed = [r for r in campaign.results if not r.ok]
    return 1 if failed or campaign.crashed else 0


def one(pair: tuple[str, int], args) -> int:
    """One schedule in this process (a replay, or one job of a campaign)."""
    system, seed = pair
    began = time.time()
    result = run_schedule(system, seed, hosts_n=args.hosts, steps=args.steps, heartbeat_ms=args.heartbeat_ms,
                          log=lambda m: print(m, flush=True))
    print(f"\n1 schedule in {time.time() - began:.0f} s\n")
    print(summary([result]))
    if args.json:
        import dataclasses
        args.json.write_text(json.dumps([dataclasses.asdict(result)], indent=1))
    if not result.ok:
        print(f"FAILED {system} seed {seed}: replay with scripts/lab chaos --seed {seed} --system {system}")
    return 0 if result.ok else 1


if __name__ == "__main__":
    sys.exit(main())
