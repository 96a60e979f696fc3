"""python -m electiond.sim [campaign options] | explore ... | scenario FILE... | bench ... | native-build

Campaign: run seeds, print a summary, exit 1 if any run broke an invariant,
printing the failing seed's trace tail and the command that replays it.
"""

from __future__ import annotations

import argparse
import os
import sys

TRACE_TAIL_LINES = 120


def _campaign_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m electiond.sim", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--protocol", default="bully")
    p.add_argument("--seeds", type=int, default=int(os.environ.get("ELECTIOND_SIM_SEEDS", "200")),
                   help="how many seeds (default $ELECTIOND_SIM_SEEDS or 200)")
    p.add_argument("--first-seed", type=int, default=0)
    p.add_argument("--seed", type=int, help="run this one seed only")
    p.add_argument("--nodes", type=int, help="cluster size (default: drawn from the seed, 3-9)")
    p.add_argument("--trace", action="store_true", help="print the whole trace (with --seed)")
    p.add_argument("--jobs", type=int, default=int(os.environ.get("ELECTIOND_SIM_JOBS", "1")),
                   help="worker processes (default $ELECTIOND_SIM_JOBS or 1); results do not depend on it")
    p.add_argument("--variant", metavar="MODULE:CLASS",
                   help="run this subclass in place of the protocol (a mutant), checked with its invariants")
    return p.parse_args(argv)


def _reproduce(a: argparse.Namespace, seed: int) -> str:
    extra = f" --nodes {a.nodes}" if a.nodes is not None else ""
    extra += f" --variant {a.variant}" if a.variant else ""
    return f"python -m electiond.sim --protocol {a.protocol} --seed {seed}{extra}"


def main_campaign(argv: list[str]) -> int:
    from electiond.sim.native import build_kind
    from electiond.sim.runner import campaign, run_seed, with_variant

    a = _campaign_args(argv)
    registry = None
    if a.variant:
        import importlib

        module, _, cls = a.variant.partition(":")
        registry = with_variant(a.protocol, getattr(importlib.import_module(module), cls))
    if a.nodes is not None and not 1 <= a.nodes <= 64:
        print("--nodes must be between 1 and 64", file=sys.stderr)
        return 2
    if a.protocol not in (registry or __import__("electiond.node").node.PROTOCOLS):
        print(f"unknown protocol {a.protocol!r}", file=sys.stderr)
        return 2
    seeds = [a.seed] if a.seed is not None else range(a.first_seed, a.first_seed + a.seeds)
    if a.jobs < 1:
        print("--jobs must be at least 1", file=sys.stderr)
        return 2
    summary = campaign(seeds, a.protocol, a.nodes, registry, jobs=a.jobs)
    if a.seed is not None and a.trace:
        print("\n".join(run_seed(a.seed, a.protocol, a.nodes, registry, trace=True).trace))
    mean = summary.mean_time_to_leader_s()
    print(
        f"protocol={a.protocol} runs={summary.runs} violations={len(summary.failures)} "
        f"mean_time_to_leader={'n/a' if mean is None else f'{mean * 1000:.1f}ms'} "
        f"simulated={summary.sim_s:.1f}s wall={summary.wall_s:.1f}s "
        f"speed={summary.speedup_per_process():.0f}x real time per process"
        f"{f', {summary.speedup():.0f}x with {a.jobs} jobs' if a.jobs > 1 else ''} events={summary.events} "
        f"build={build_kind()}"
    )
    print(
        f"split brain (measured; asserted only for runs without partitions or loss): "
        f"{summary.split_brain_runs} runs, {summary.split_brain_total_s:.3f}s in total"
    )
    for r in summary.failures:
        print(f"seed {r.seed}: {r.violations[0]}")
    if summary.failures:
        first = summary.failures[0]
        if not (a.seed is not None and a.trace):
            trace = run_seed(first.seed, a.protocol, a.nodes, registry, trace=True).trace
            print(f"--- trace of seed {first.seed} (first line and last {TRACE_TAIL_LINES} lines; "
                  f"--trace prints all) ---")
            print(trace[0])
            print("\n".join(trace[-TRACE_TAIL_LINES:]))
        for r in summary.failures:
            print(f"reproduce with: {_reproduce(a, r.seed)} --trace")
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "explore":
        from electiond.sim.explore import main as explore_main

        return explore_main(argv[1:])
    if argv and argv[0] == "bench":
        from electiond.sim.bench import main as bench_main

        return bench_main(argv[1:])
    if argv and argv[0] == "native-build":
        from electiond.sim.native import main as native_main

        return native_main(argv[1:])
    if argv and argv[0] == "scenario":
        from electiond.sim.scenario import main as scenario_main

        return scenario_main(argv[1:])
    return main_campaign(argv)


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BrokenPipeError:  # piped into head: the reader has seen enough
        sys.stderr.close()
        sys.exit(1)
