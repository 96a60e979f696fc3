"""scripts/bench scale: 3 to 65 daemons on one namespace LAN.

For each size and system (one system at a time, so a 65-daemon cluster has
the machine to itself as far as this benchmark goes; the system order rotates
from size to size): build a LAN of that many host namespaces, start every
daemon at once and measure

* time to the first leader: from the first spawn to the first promote hook
  (MASTER on its notify FIFO for keepalived), and to one leader every daemon agrees on
  (electiond: every control socket names it; keepalived: the hook log alone);
* steady state for --steady-s (the issue asks for 10 minutes; the report says
  which window ran): packets sent and received per second per node on lan0
  (the kernel's counters in each namespace: election traffic plus the odd
  IGMP/ARP), and false elections = promote hooks in the window, where
  nothing failed;
* failover: --kills SIGKILLs of the leader, kill to successor's promote.
"""

from __future__ import annotations

import json
import random
import shlex
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from bench_lab import Bed, stats
from lab.hooklog import leaders_between, read_log
from lab.machine import load_average, machine
from lab.report import write_section

SIZES = "3,5,9,17,33,65"


def lan_packets(bed: Bed, host: str) -> tuple[int, int]:
    """(sent, received) packets of the host's lan0, from the kernel's counters."""
    out = subprocess.run(["ip", "-n", bed.lan.ns[host], "-s", "-j", "link", "show", "dev", "lan0"],
                         capture_output=True, text=True, timeout=30, check=True).stdout
    st = json.loads(out)[0]["stats64"]
    return st["tx"]["packets"], st["rx"]["packets"]


class ScaleBed(Bed):
    def settle_bound_s(self) -> float:
        # 65 daemons starting at once on a few cores, each polled through its control socket
        return super().settle_bound_s() + 30.0 + 2.0 * len(self.hosts)


def measure(system: str, size: int, args, root: Path, rng: random.Random) -> dict:
    row: dict = {"system": system, "size": size, "error": None, "failover_ms": [], "missed": 0}
    try:
        bed = ScaleBed(system, size, args.interval, root)
    except (RuntimeError, OSError) as exc:
        row["error"] = f"LAN not built: {exc}"
        return row
    try:
        began = time.time()
        bed.start()
        agreed = bed.settle()
        row["agreed_s"] = time.time() - began
        promotes = [e.t_s for e in read_log(bed.system.log) if e.event == "promote"]
        row["first_leader_s"] = min(promotes) - began if promotes else None
        time.sleep(1.0)
        c0 = {h: lan_packets(bed, h) for h in bed.hosts}
        t0 = time.time()
        time.sleep(args.steady_s)
        t1 = time.time()
        c1 = {h: lan_packets(bed, h) for h in bed.hosts}
        window_s = t1 - t0
        sent = [(c1[h][0] - c0[h][0]) / window_s for h in bed.hosts]
        received = [(c1[h][1] - c0[h][1]) / window_s for h in bed.hosts]
        row["leader"] = agreed
        row["sent_leader"] = sent[bed.hosts.index(agreed)]
        row["sent_median"] = statistics.median(sent)
        row["received_median"] = statistics.median(received)
        row["window_s"] = window_s
        row["false_elections"] = sum(1 for e in read_log(bed.system.log) if e.event == "promote" and t0 <= e.t_s <= t1)
        row["split_brain_s"] = leaders_between(bed.system.verdict().intervals, t0, t1)
        for _ in range(args.kills):
            bed.trial(rng, args.log)
    except (AssertionError, RuntimeError, OSError, subprocess.SubprocessError) as exc:
        # one size that does not come up is a finding of its own, not the end of the run
        row["error"] = str(exc).splitlines()[0][:200].replace("|", "/")
        if args.keep is not None:
            keep_statuses(bed, root / f"{system}-statuses.json")
    finally:
        row["failover_ms"] = list(bed.samples_ms)
        row["missed"] = bed.missed
        bed.close()
    args.log(f"  scale {system} x{size}: {row}")
    return row


def keep_statuses(bed: Bed, path: Path) -> None:
    """Every electiond daemon's status as it failed to settle (what each one
    thinks, its loop lag, who it hears), for --keep: the diagnosis of a size
    that did not come up needs more than the timeout."""
    cluster = getattr(bed.system, "cluster", None)
    if cluster is None:
        return
    names = cluster.running()
    path.write_text(json.dumps(dict(zip(names, cluster.statuses(names))), indent=1))


def _f(x, fmt: str = ".2f") -> str:
    return "-" if x is None else format(x, fmt)


def scale(args) -> int:
    sizes = [int(x) for x in args.sizes.split(",")]
    systems = args.systems.split(",")
    rng = random.Random(args.seed)
    load_before = load_average()
    began = time.time()
    rows: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="electiond-bench-") as scratch:
        tmp = scratch if args.keep is None else str(args.keep)
        for i, size in enumerate(sizes):
            order = systems[i % len(systems):] + systems[:i % len(systems)]
            for system in order:
                sub = Path(tmp) / f"{size}"
                sub.mkdir(parents=True, exist_ok=True)
                rows.append(measure(system, size, args, sub, rng))
            # written after every size: a run cut short keeps what it measured
            done = sizes[:i + 1]
            text = table(args, rows, systems, load_before, time.time() - began,
                         None if done == sizes else f"sizes {','.join(map(str, done))} of {args.sizes} so far")
            write_section(args.out, "scale", text)
    print(text)
    return 0 if all(not r["error"] and (r["failover_ms"] or args.kills == 0) for r in rows) else 1


def table(args, rows: list[dict], systems: list[str], load_before: str, elapsed_s: float, partial: str | None) -> str:
    rows = sorted(rows, key=lambda r: (r["size"], systems.index(r["system"])))
    command = "scripts/bench " + " ".join(shlex.quote(a) for a in args.argv)
    lines = [
        "## Scale: 3 to 65 daemons",
        "",
        f"Measured {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} in {elapsed_s / 60:.0f} min with `{command}`",
        f"on {machine()}. Load average before {load_before}, after {load_average()}."
        + (f" **Partial: {partial}.**" if partial else ""),
        f"One namespace LAN per size and system (a host namespace per daemon), one system at a time, heartbeat",
        f"(electiond) = advert interval (keepalived) {args.interval} ms. **Steady window: {args.steady_s:g} s** per size and",
        "system" + (" (the issue asks for 10 minutes; this run used the shorter window given by --steady-s)."
                    if args.steady_s < 600 else "."),
        "first leader = first spawn to the first promote hook; agreed = to one leader every daemon names",
        "(keepalived: by its notify FIFOs alone); packets/s = lan0's kernel counters in each namespace over the",
        "window; false elections = promote hooks in the window (nothing failed in it); failover = SIGKILL of the",
        f"leader to the successor's promote, {args.kills} per size and system, each on a settled cluster (one agreed",
        "leader; quorum-lease: every daemon past its start-up clock check). Starting N Python daemons at once on",
        "this machine's cores is part of the first-leader time.",
        "",
        "| daemons | system | first leader s | agreed s | sent/s per node (median) | sent/s by the leader | "
        "received/s per node (median) | false elections | split-brain s | failover median ms | failover max ms | missed |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        fo = r["failover_ms"]
        if "sent_median" not in r:
            lines.append(f"| {r['size']} | {r['system']} | no figures: {r['error']} | | | | | | | | | |")
            continue
        lines.append(
            f"| {r['size']} | {r['system']} | {_f(r['first_leader_s'])} | {r['agreed_s']:.2f} | "
            f"{r['sent_median']:.1f} | {r['sent_leader']:.1f} | {r['received_median']:.1f} | "
            f"{r['false_elections']} | {r['split_brain_s']:.2f} | "
            f"{_f(stats(fo)['median'] if fo else None, '.0f')} | {_f(max(fo) if fo else None, '.0f')} | {r['missed']} |")
    errors = [r for r in rows if r["error"] and "sent_median" in r]
    lines += [f"\n- {r['size']} x {r['system']}: {r['error']} (after the steady window)" for r in errors]
    if args.quick:
        lines += ["", "(`--quick`: a smoke run with tiny sizes and windows; these figures say nothing.)"]
    return "\n".join(lines) + "\n"


def add_parser(sub, systems_default: str, out_default: Path) -> None:
    sc = sub.add_parser("scale", help="3..65 daemons: first leader, failover, packets/s per node, false elections")
    sc.add_argument("--sizes", help=f"daemons per cluster (default {SIZES}; --quick: 3,5)")
    sc.add_argument("--interval", type=int, default=100, help="heartbeat/advert interval in ms (default 100)")
    sc.add_argument("--steady-s", type=float, default=600.0,
                    help="steady window per size and system in seconds (default 600, the issue's 10 minutes)")
    sc.add_argument("--kills", type=int, default=3, help="leader SIGKILLs per size and system (default 3)")
    sc.add_argument("--systems", default=systems_default)
    sc.add_argument("--seed", type=int, default=1)
    sc.add_argument("--out", type=Path, default=out_default)
    sc.add_argument("--keep", type=Path, metavar="DIR",
                    help="run in DIR and keep it: every daemon's log and hook log, and each size that did not "
                         "settle, its daemons' statuses (SIZE/SYSTEM-statuses.json)")
    sc.add_argument("--quick", action="store_true", help="smoke run: 3 and 5 daemons, 5 s window, 1 kill")
