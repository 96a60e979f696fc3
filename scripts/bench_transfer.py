"""scripts/bench transfer: graceful hand-over with `electionctl transfer NODE`.

quorum-lease, the protocol on a LAN that offers transfer (bully and ring
answer "does not support transfer": `--systems quorum-lease,bully,ring`
reports that as their row), on its own 5-host namespace LAN; with several
systems they run at once, trials interleaved system by system. One trial asks the
settled leader (through its control socket, with the real electionctl
command) to hand over to a random other member and measures, from the hook
log the daemons' hooks write:

* the gap from the old leader's demote hook to the new leader's promote hook
  (the time without a leader whose hooks ran; never negative for
  quorum-lease, whose old leader's demote hooks finish before it releases);
* the command's start to the target's promote hook;
* how long `electionctl transfer NODE` takes to return (the process, Python
  start-up included), and the control request's own round trip is not
  separated from it.

keepalived has no transfer (VRRP only moves mastership by priority or by
stopping the master), so it has no row here.
"""

from __future__ import annotations

import json
import os
import random
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench_lab import Bed, stats
from electiond.devcluster import wait_for
from lab.hooklog import read_log
from lab.machine import load_average, machine
from lab.report import write_section

ELECTIOND_SYSTEMS = ("quorum-lease",)  # bully and ring refuse transfer; --systems can show it


def ctl_argv(socket_path: str, *argv: str) -> list[str]:
    return [sys.executable, "-m", "electiond.cli", "--socket", socket_path, "--json", *argv]


class TransferBed(Bed):
    def __init__(self, *a, **kw) -> None:
        super().__init__(*a, **kw)
        self.gaps_ms: list[float] = []
        self.to_promote_ms: list[float] = []
        self.return_ms: list[float] = []
        self.elsewhere = 0  # someone other than the target took over
        self.refused: list[str] = []
        self.unsupported = ""  # the daemon's answer when its protocol has no transfer

    def transfer_trial(self, rng: random.Random, log) -> None:
        if self.unsupported:
            return
        s = self.system
        leader = self.settle()
        target = rng.choice([h for h in self.hosts if h != leader])
        # the target must have passed its start-up clock check, or it may not stand yet
        s.cluster.wait_clock_checked(target, 30.0)
        time.sleep(rng.uniform(0.0, self.heartbeat_ms / 1000))  # a random heartbeat phase
        began = time.time()
        done = subprocess.run(ctl_argv(s.cluster.socket(leader), "transfer", target), capture_output=True,
                              text=True, timeout=60, env=dict(os.environ, PYTHONPATH=str(Path(__file__).parent.parent)))
        returned = time.time()
        if done.returncode != 0 and "does not support transfer" in done.stdout:
            self.unsupported = json.loads(done.stdout).get("error", "not supported")
            log(f"  {self.name}: {self.unsupported}")
            return
        if done.returncode != 0:
            self.refused.append(f"{leader}->{target}: exit {done.returncode} {done.stdout.strip()} {done.stderr.strip()}")
            log(f"  {self.name}: transfer {leader}->{target} refused: {self.refused[-1]}")
            return
        self.return_ms.append((returned - began) * 1000)

        def hand_over():
            demote = promote = None
            for e in read_log(s.log):
                if e.t_s < began:
                    continue
                if e.event == "demote" and e.node == leader and demote is None:
                    demote = e.t_s
                if e.event == "promote" and e.node != leader and promote is None:
                    promote = e
            return (demote, promote) if demote is not None and promote is not None else None

        try:
            demote_s, promote = wait_for(hand_over, self.bound_s(), f"{self.name}'s hand-over", s.diagnostics)
        except AssertionError:
            self.missed += 1
            log(f"  {self.name}: no demote+promote within {self.bound_s():.0f}s of transfer {leader}->{target}")
            return
        if promote.node != target:
            self.elsewhere += 1
        self.gaps_ms.append((promote.t_s - demote_s) * 1000)
        self.to_promote_ms.append((promote.t_s - began) * 1000)
        log(f"  {self.name}: transfer {leader}->{target}: promote {promote.node} after "
            f"{self.to_promote_ms[-1]:.0f} ms, demote->promote gap {self.gaps_ms[-1]:.0f} ms, "
            f"electionctl returned after {self.return_ms[-1]:.0f} ms")


def transfer(args) -> int:
    systems = [s for s in args.systems.split(",") if s != "keepalived"]
    rng = random.Random(args.seed)
    load_before = load_average()
    began = time.time()
    beds: list[TransferBed] = []
    with tempfile.TemporaryDirectory(prefix="electiond-bench-") as tmp:
        try:
            for system in systems:
                beds.append(TransferBed(system, args.hosts, args.interval, Path(tmp)))
            for bed in beds:
                bed.start()
            for bed in beds:
                bed.settle()
            for k in range(args.transfers):
                for bed in beds[k % len(beds):] + beds[:k % len(beds)]:
                    bed.transfer_trial(rng, args.log)
        finally:
            for bed in beds:
                bed.close()
    elapsed_s = time.time() - began
    command = "scripts/bench " + " ".join(shlex.quote(a) for a in args.argv)
    lines = [
        "## Graceful transfer (`electionctl transfer NODE`)",
        "",
        f"Measured {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} in {elapsed_s:.0f} s with `{command}`",
        f"on {machine()}. Load average before {load_before}, after {load_average()}.",
        f"{args.hosts} hosts per system on its own namespace LAN, heartbeat {args.interval} ms, all systems running",
        "at once, trials interleaved. Each trial asks the leader to hand over to a random other member.",
        "gap = old leader's demote hook to the new leader's promote hook (both stamped by the hooks);",
        "to promote = `electionctl transfer` started to the new leader's promote hook; returns = the",
        "electionctl process's wall time (Python start-up included; it returns once the leader has handed",
        "over, before the target has promoted). Only quorum-lease (and etcd, not on this LAN) offers",
        "transfer: bully and ring refuse it (`electionctl transfer` exits 1, \"does not support transfer\"),",
        "and keepalived has no transfer command (VRRP moves mastership only by priority or by stopping the",
        "master), so they have no figures.",
        "",
        "| system | transfers | missed | refused | other node took over | gap median ms | gap p90 ms | gap min ms | "
        "gap max ms | to promote median ms | to promote p90 ms | returns median ms | returns max ms |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for bed in beds:
        if bed.unsupported:
            lines.append(f"| {bed.name} | not supported: {bed.unsupported} | | | | | | | | | | | |")
            continue
        if not bed.gaps_ms:
            lines.append(f"| {bed.name} | 0 | {bed.missed} | {len(bed.refused)} | - | - | - | - | - | - | - | - | - |")
            continue
        g, p = stats(bed.gaps_ms), stats(bed.to_promote_ms)
        r = stats(bed.return_ms)
        lines.append(f"| {bed.name} | {len(bed.gaps_ms)} | {bed.missed} | {len(bed.refused)} | {bed.elsewhere} | "
                     f"{g['median']:.0f} | {g['p90']:.0f} | {g['min']:.0f} | {g['max']:.0f} | "
                     f"{p['median']:.0f} | {p['p90']:.0f} | {r['median']:.0f} | {r['max']:.0f} |")
    for bed in beds:
        for why in bed.refused:
            lines.append(f"\n- {bed.name} refused: {why}")
    if args.quick:
        lines += ["", "(`--quick`: a smoke run with tiny counts; these figures say nothing.)"]
    text = "\n".join(lines) + "\n"
    write_section(args.out, "transfer", text)
    print(text)
    ok = all(bed.gaps_ms or bed.unsupported for bed in beds)
    return 0 if ok else 1


def add_parser(sub, systems_default: str, out_default: Path) -> None:
    tr = sub.add_parser("transfer", help="electionctl transfer: demote -> promote gap, command return time")
    tr.add_argument("--interval", type=int, default=50, help="heartbeat interval in ms (default 50)")
    tr.add_argument("--transfers", type=int, default=20, help="transfers per system (default 20)")
    tr.add_argument("--systems", default=",".join(ELECTIOND_SYSTEMS))
    tr.add_argument("--hosts", type=int, default=5)
    tr.add_argument("--seed", type=int, default=1)
    tr.add_argument("--out", type=Path, default=out_default)
    tr.add_argument("--quick", action="store_true", help="smoke run: 2 transfers per system")

