"""Line up single failovers from a traced benchmark directory.

    python scripts/failover_timeline.py DIR [--kill N]

DIR is what ``scripts/bench_failover.py --trace`` kept: kills.jsonl and one
<node>.trace per daemon. For each kill, times are ms relative to the kill:
each survivor's last heartbeat from the dead leader (and the lease it
announced), its promise end, its phase changes, every pre-vote / vote it
sent or got (with refusal hints), and the promote hook's start.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

SHOWN = {"PREVOTE", "PREVOTE_REPLY", "REQUEST_VOTE", "VOTE", "LEASE_HEARTBEAT", "RELEASE", "TIMEOUT_NOW"}


def load(directory: Path) -> tuple[list[dict], dict[str, list[dict]]]:
    kills = [json.loads(line) for line in (directory / "kills.jsonl").read_text().splitlines()]
    traces = {}
    for path in sorted(directory.glob("*.trace")):
        traces[path.stem] = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return kills, traces


def describe(ev: dict) -> str:
    body = ev.get("body", {})
    if ev["ev"] == "state":
        until = ev.get("promise_until")
        return f"state {ev['phase']} term {ev['term']} leader {ev['leader']} promised_to {ev['promised_to']}" + (
            f" until {until:.3f}" if until else "")
    kind, peer = ev["kind"], ev["peer"] or "*"
    extra = ""
    if "granted" in body:
        extra = f" granted={body['granted']} retry_ms={body.get('retry_ms')}"
    if "lease_s" in body:
        extra += f" lease_s={body['lease_s'] * 1000:.0f}ms"
    arrow = "->" if ev["ev"] == "tx" else "<-"
    return f"{kind} {arrow} {peer} term {ev['term']} round {body.get('round')}{extra}"


def timeline(kill: dict, traces: dict[str, list[dict]], before_s: float = 0.3) -> list[str]:
    k0, dead = kill["killed_at"], kill["leader"]
    end = kill["hook_at"] + 0.05
    lines = [f"kill of {dead} at {k0:.3f}: {kill['new_leader']} hook at +{(kill['hook_at'] - k0) * 1000:.0f} ms"]
    for node, events in traces.items():
        if node == dead:
            continue
        last_hb = [e for e in events if e["ev"] == "rx" and e["kind"] == "LEASE_HEARTBEAT" and e["peer"] == dead
                   and e["t"] <= end]
        if last_hb:
            hb = last_hb[-1]
            lines.append(f"  {node}: last heartbeat from {dead} at {(hb['t'] - k0) * 1000:+.0f} ms"
                         f" (lease_s {hb['body'].get('lease_s', 0) * 1000:.0f} ms)")
    merged = []
    for node, events in traces.items():
        for e in events:
            if k0 - before_s <= e["t"] <= end and (e["ev"] == "state" or e["kind"] in SHOWN):
                if e["ev"] in ("rx", "tx") and e["kind"] == "LEASE_HEARTBEAT" and e["t"] < k0:
                    continue
                merged.append((e["t"], node, e))
    merged.sort(key=lambda x: x[0])
    for t, node, e in merged:
        extra = ""
        if e["ev"] == "state" and e.get("promise_until"):
            extra = f" (promise ends {(e['promise_until'] - k0) * 1000:+.0f} ms)"
        lines.append(f"  {(t - k0) * 1000:+7.1f} {node}: {describe(e)}{extra}")
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("directory", type=Path)
    parser.add_argument("--kill", type=int, help="only this kill (1-based)")
    args = parser.parse_args()
    kills, traces = load(args.directory)
    for i, kill in enumerate(kills, 1):
        if args.kill is not None and i != args.kill:
            continue
        print(f"#{i} " + "\n".join(timeline(kill, traces)) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
