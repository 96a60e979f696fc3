"""scripts/bench: electiond's three protocols and keepalived, measured in one
run on one namespace LAN setup (root only), trial by trial interleaved.

  scripts/bench failover [--intervals 50,100,1000] [--kills 20] [--kills-slow 20] [--preempt no|yes] [--quick]
  scripts/bench footprint [--interval 50] [--seconds 60] [--quick]   (appends to the report)
  scripts/bench load [--interval 50] [--seconds 60] [--quick]        (appends to the report)

failover: 5 hosts per system, each system on its own LAN, all running at
once. One trial SIGKILLs the current leader of every system in turn (the
order rotates each trial) and times the kill to the successor's promote hook
(electiond) or its MASTER line in keepalived's notify FIFO, as the lab's
reader stamped it (tests/lab/kafifo.py); the killed daemon is restarted and
the system settles before the next trial. Heartbeat (electiond) = advert
interval (keepalived, VRRPv3), election timeouts and leases scaled with it.
Writes docs/benchmarks.md (or --out) and, when matplotlib imports, a PNG plot
next to it.
"""

from __future__ import annotations

import argparse
import os
import random
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

from lab.hooklog import read_log  # noqa: E402
from lab.lan import Lan, install_signal_teardown  # noqa: E402
from lab.machine import keepalived_version, machine  # noqa: E402
from lab.plots import pyplot  # noqa: E402
from lab.report import write_section  # noqa: E402
from lab.systems import SYSTEMS, LabSystem, make_system  # noqa: E402
from electiond.devcluster import wait_for  # noqa: E402


def stats(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    p90 = statistics.quantiles(ordered, n=10, method="inclusive")[-1] if len(ordered) >= 2 else ordered[0]
    return {"median": statistics.median(ordered), "p90": p90, "min": ordered[0], "max": ordered[-1]}


class Bed:
    """One system on its own 5-host LAN."""

    def __init__(self, system: str, hosts_n: int, heartbeat_ms: int, root: Path, preempt: str = "no") -> None:
        self.hosts = [f"n{i}" for i in range(1, hosts_n + 1)]
        self.lan = Lan(self.hosts, clients=())
        workdir = root / f"{system}-{heartbeat_ms}"
        workdir.mkdir()
        self.system: LabSystem = make_system(system, self.lan, workdir, self.hosts, heartbeat_ms,
                                             {"preempt": preempt})
        self.heartbeat_ms = heartbeat_ms
        self.name = system
        self.samples_ms: list[float] = []
        self.missed = 0

    def bound_s(self) -> float:
        return 10.0 + 20 * self.heartbeat_ms / 1000

    def start(self) -> None:
        self.system.start_all()

    def settle_bound_s(self) -> float:
        return 30.0 + 70 * self.heartbeat_ms / 1000

    def settle(self) -> str:
        """One agreed leader, and (quorum-lease) every running daemon past its start-up
        clock check: a kill is measured on a healthy cluster, not on one whose restarted
        voters may not grant yet (the check spans 4 beacon periods, 40 s at a 1 s heartbeat)."""
        bound_s = self.settle_bound_s()
        leader = self.system.wait_leader(bound_s)
        if self.name == "quorum-lease":
            for host in self.system.running():
                self.system.cluster.wait_clock_checked(host, bound_s)
            leader = self.system.wait_leader(bound_s)
        return leader

    def trial(self, rng: random.Random, log) -> None:
        s = self.system
        leader = self.settle()
        time.sleep(rng.uniform(0.0, self.heartbeat_ms / 1000))  # a random heartbeat phase
        killed_at = time.time()
        s.kill(leader)

        def successor() -> float | None:
            for e in read_log(s.log):
                if e.event == "promote" and e.node != leader and e.t_s >= killed_at:
                    return e.t_s
            return None

        try:
            promoted_at = wait_for(successor, self.bound_s(), f"{self.name}'s successor to promote", s.diagnostics)
            self.samples_ms.append((promoted_at - killed_at) * 1000)
            log(f"  {self.name} {self.heartbeat_ms} ms: kill {leader} -> promote after {self.samples_ms[-1]:.0f} ms")
        except AssertionError:
            self.missed += 1
            log(f"  {self.name} {self.heartbeat_ms} ms: no successor within {self.bound_s():.0f}s")
        restarted_at = time.time()
        s.start(leader)
        # the restarted daemon reports in (its startup demote / BACKUP on its FIFO) before the next kill
        wait_for(lambda: any(e.node == leader and e.t_s >= restarted_at for e in read_log(s.log)),
                 30.0, f"{leader} to come back", s.diagnostics)
        self.settle()

    def close(self) -> None:
        try:
            self.system.stop_all()
        finally:
            self.lan.close()


def failover(args) -> int:
    intervals = [int(x) for x in args.intervals.split(",")]
    systems = args.systems.split(",")
    rng = random.Random(args.seed)
    rows: list[tuple[int, str, list[float], int]] = []
    aborted: list[str] = []
    load_before = os.getloadavg()
    began = time.time()
    with tempfile.TemporaryDirectory(prefix="electiond-bench-") as tmp:
        for hb in intervals:
            kills = args.kills if hb < 1000 else args.kills_slow
            beds: list[Bed] = []
            try:
                for system in systems:
                    beds.append(Bed(system, args.hosts, hb, Path(tmp), args.preempt))
                for bed in beds:
                    bed.start()
                for bed in beds:
                    bed.settle()
                for k in range(kills):
                    order = beds[k % len(beds):] + beds[:k % len(beds)]  # rotate: no system always goes first
                    for bed in order:
                        bed.trial(rng, args.log)
            except AssertionError as exc:
                # a bed that does not settle ends this interval's trials; what was measured stays
                aborted.append(f"{hb} ms: trials stopped early: {str(exc).splitlines()[0]}")
                args.log(aborted[-1])
            finally:
                for bed in beds:
                    bed.close()
            rows += [(hb, bed.name, bed.samples_ms, bed.missed) for bed in beds]
            # written after every interval, so a later failure loses nothing measured
            write_section(args.out, "failover", report(args, rows, load_before, os.getloadavg(),
                                                       time.time() - began, aborted))
    elapsed_s = time.time() - began
    load_after = os.getloadavg()
    text = report(args, rows, load_before, load_after, elapsed_s, aborted)
    if plot(rows, args.out.parent / "bench-failover.png"):
        text += "\n![failover distribution per system](bench-failover.png)\n"
    write_section(args.out, "failover", text)
    print(text)
    return 0 if all(samples for _hb, _s, samples, _m in rows) and not aborted else 1


def keepalived_ratio(rows, hb: int, median_ms: float) -> str:
    """median_ms over keepalived's median at interval hb in the same run; "-" without one."""
    theirs = [samples for h, system, samples, _m in rows if h == hb and system == "keepalived" and samples]
    if not theirs:
        return "-"
    return f"{median_ms / stats(theirs[0])['median']:.2f}"


def report(args, rows, load_before, load_after, elapsed_s: float, aborted: list[str]) -> str:
    command = "scripts/bench " + " ".join(shlex.quote(a) for a in args.argv)
    lines = [
        "## Failover after SIGKILL of the leader",
        "",
        f"Measured {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} in {elapsed_s:.0f} s with `{command}`",
        f"on {machine()}; {keepalived_version()}. Load average (1, 5, 15 min) before "
        f"{load_before[0]:.2f} {load_before[1]:.2f} {load_before[2]:.2f}, after "
        f"{load_after[0]:.2f} {load_after[1]:.2f} {load_after[2]:.2f}.",
        "",
        f"{args.hosts} hosts per system, each system on its own namespace LAN (bridge, veths), all systems",
        "running at once and measured trial by trial in turn. Time from the SIGKILL to the successor's promote",
        "hook (electiond, stamped by the hook itself, so after its spawn) or MASTER line (keepalived, written to",
        "its notify FIFO when it changes state, stamped by the lab's reader on reading: no spawn in between).",
        "electiond: heartbeat_interval = the interval, election_timeout 3-6 intervals, lease 3 intervals,",
        f"preempt = {args.preempt}. keepalived: VRRPv3, advert_int = the interval, all BACKUP, nopreempt, priorities",
        "100..104 (its master-down timer is 3 adverts plus a priority skew). Before every kill the system has",
        "one agreed leader and, for quorum-lease, every daemon (a restarted one too) has passed its start-up",
        "clock check. A kill whose successor does not promote within 10 s + 20 intervals counts as missed.",
        "x keepalived = the median over keepalived's median at the same interval, in the same run.",
        "",
        "| interval | system | kills | missed | median ms | x keepalived | p90 ms | min ms | max ms | median (intervals) | p90 (intervals) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for hb, system, samples, missed in rows:
        if not samples:
            lines.append(f"| {hb} ms | {system} | 0 | {missed} | - | - | - | - | - | - | - |")
            continue
        st = stats(samples)
        lines.append(f"| {hb} ms | {system} | {len(samples)} | {missed} | {st['median']:.0f} | "
                     f"{keepalived_ratio(rows, hb, st['median'])} | {st['p90']:.0f} | "
                     f"{st['min']:.0f} | {st['max']:.0f} | {st['median'] / hb:.1f} | {st['p90'] / hb:.1f} |")
    lines += [f"\n- {a}" for a in aborted]
    if args.quick:
        lines += ["", "(`--quick`: a smoke run with tiny counts; these figures say nothing.)"]
    return "\n".join(lines)


def plot(rows, path: Path) -> bool:
    plt = pyplot()
    if plt is None:
        return False
    intervals = sorted({hb for hb, *_ in rows})
    fig, axes = plt.subplots(1, len(intervals), figsize=(5 * len(intervals), 4), squeeze=False)
    for ax, hb in zip(axes[0], intervals):
        mine = [(s, samples) for h, s, samples, _m in rows if h == hb and samples]
        # tick labels set apart: boxplot's own keyword was renamed across matplotlib versions
        ax.boxplot([samples for _s, samples in mine])
        ax.set_xticks(range(1, len(mine) + 1), [s for s, _ in mine])
        ax.set_title(f"failover, interval {hb} ms")
        ax.set_ylabel("ms from SIGKILL to successor's promote")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    print(f"plot: {path}", file=sys.stderr)
    return True


def daemon_processes(bed: Bed, host: str):
    """The processes that make up one host's daemon (keepalived: parent and VRRP child)."""
    import psutil

    s = bed.system
    proc = s.cluster.procs[host] if hasattr(s, "cluster") else s.procs[host]
    try:
        top = psutil.Process(proc.pid)
        return [top] + [c for c in top.children(recursive=True) if c.name() == "keepalived"]
    except psutil.NoSuchProcess:
        return []


def footprint(args) -> int:
    """CPU % and RSS per daemon in steady state, every system running at once
    on its own LAN, over the same window."""
    import psutil

    hb = int(args.interval)
    load_before = os.getloadavg()
    began = time.time()
    rows = []
    with tempfile.TemporaryDirectory(prefix="electiond-bench-") as tmp:
        beds: list[Bed] = []
        try:
            for system in args.systems.split(","):
                beds.append(Bed(system, args.hosts, hb, Path(tmp)))
            for bed in beds:
                bed.start()
            leaders = {bed.name: bed.settle() for bed in beds}
            time.sleep(1.0)
            procs = {(bed.name, h): daemon_processes(bed, h) for bed in beds for h in bed.hosts}
            cpu0 = {k: sum(sum(p.cpu_times()[:2]) for p in ps) for k, ps in procs.items()}
            t0 = time.monotonic()
            rss: dict[tuple[str, str], list[float]] = {k: [] for k in procs}
            while time.monotonic() - t0 < args.seconds:
                time.sleep(min(1.0, args.seconds / 5))
                for k, ps in procs.items():
                    rss[k].append(sum(p.memory_info().rss for p in ps) / 2**20)
            wall = time.monotonic() - t0
            cpu1 = {k: sum(sum(p.cpu_times()[:2]) for p in ps) for k, ps in procs.items()}
            changes = {bed.name: sum(1 for e in read_log(bed.system.log) if e.event == "promote" and e.t_s > began)
                       for bed in beds}
        finally:
            for bed in beds:
                bed.close()
        for bed in beds:
            keys = [(bed.name, h) for h in bed.hosts]
            cpu = {k[1]: 100 * (cpu1[k] - cpu0[k]) / wall for k in keys}
            leader = leaders[bed.name]
            followers = [v for h, v in cpu.items() if h != leader]
            rows.append((bed.name, cpu[leader], statistics.median(followers),
                         statistics.median(statistics.median(rss[k]) for k in keys), changes[bed.name]))
    lines = [
        "## Footprint in steady state",
        "",
        f"`scripts/bench {' '.join(shlex.quote(a) for a in args.argv)}` on {machine()}; {keepalived_version()}.",
        f"{args.hosts} daemons per system, interval {hb} ms, all systems running at once for {args.seconds:g} s;",
        "CPU % of one core (user + system, keepalived's parent and VRRP child together), RSS median.",
        f"Load average before {load_before[0]:.2f}, after {os.getloadavg()[0]:.2f}.",
        "",
        "| system | leader CPU % | follower CPU % (median) | RSS MiB (median) | promotions since start |",
        "|---|---|---|---|---|",
    ]
    lines += [f"| {n} | {lc:.2f} | {fc:.2f} | {r:.1f} | {c} |" for n, lc, fc, r, c in rows]
    if args.quick:
        lines += ["", "(`--quick`: a smoke run; these figures say nothing.)"]
    text = "\n".join(lines) + "\n"
    write_section(args.out, "footprint", text)
    print(text)
    return 0


BUSY_LOOP = "import time\nend = time.monotonic() + {seconds}\nwhile time.monotonic() < end:\n    pass\n"


def under_load(args) -> int:
    """Busy loops on every core for the window, every system running at once:
    leadership changes per minute and split-brain seconds from the hook log."""
    from lab.hooklog import leaders_between

    hb = int(args.interval)
    load_before = os.getloadavg()
    rows = []
    with tempfile.TemporaryDirectory(prefix="electiond-bench-") as tmp:
        beds: list[Bed] = []
        burners: list[subprocess.Popen] = []
        try:
            for system in args.systems.split(","):
                beds.append(Bed(system, args.hosts, hb, Path(tmp)))
            for bed in beds:
                bed.start()
            for bed in beds:
                bed.settle()
            t0 = time.time()
            # bounded by their own clock as well: a burner outlives nothing
            burners = [subprocess.Popen([sys.executable, "-c", BUSY_LOOP.format(seconds=args.seconds + 5)])
                       for _ in range(os.cpu_count() or 1)]
            time.sleep(args.seconds)
            t1 = time.time()
            for b in burners:
                b.kill()
                b.wait(10)
            burners = []
            for bed in beds:
                v = bed.system.verdict()
                promotions = sum(1 for e in read_log(bed.system.log) if e.event == "promote" and t0 <= e.t_s <= t1)
                rows.append((bed.name, promotions * 60 / (t1 - t0), leaders_between(v.intervals, t0, t1)))
        finally:
            for b in burners:
                b.kill()
                b.wait(10)
            for bed in beds:
                bed.close()
    lines = [
        "## Under CPU load",
        "",
        f"`scripts/bench {' '.join(shlex.quote(a) for a in args.argv)}` on {machine()}.",
        f"{args.hosts} daemons per system, interval {hb} ms, all systems running at once while {os.cpu_count()}",
        f"busy loops (one per CPU) ran for {args.seconds:g} s. Load average before {load_before[0]:.2f},",
        f"after {os.getloadavg()[0]:.2f}. Leadership changes = promote hooks in the window.",
        "",
        "| system | leadership changes per minute | split-brain s |",
        "|---|---|---|",
    ]
    lines += [f"| {n} | {c:.1f} | {sb:.2f} |" for n, c, sb in rows]
    if args.quick:
        lines += ["", "(`--quick`: a smoke run; these figures say nothing.)"]
    text = "\n".join(lines) + "\n"
    write_section(args.out, "load", text)
    print(text)
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="scripts/bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    fo = sub.add_parser("failover", help="SIGKILL the leader, time the successor's promote")
    fo.add_argument("--intervals", default="50,100,1000", help="heartbeat/advert intervals in ms")
    fo.add_argument("--kills", type=int, default=20, help="kills per system below 1 s intervals (default 20)")
    fo.add_argument("--kills-slow", type=int, default=20, help="kills per system at 1 s and longer (default 20)")
    fo.add_argument("--systems", default=",".join(SYSTEMS))
    fo.add_argument("--hosts", type=int, default=5)
    fo.add_argument("--seed", type=int, default=1)
    fo.add_argument("--out", type=Path, default=REPO / "docs" / "benchmarks.md")
    fo.add_argument("--preempt", choices=("no", "yes"), default="no",
                    help="electiond's preempt setting (default no; yes: the restarted top node takes over "
                         "again, and the next kill hits it); keepalived stays nopreempt")
    fo.add_argument("--quick", action="store_true", help="smoke run: 2 kills at 100 ms only")
    fp = sub.add_parser("footprint", help="CPU %% and RSS per daemon in steady state (appends to --out)")
    fp.add_argument("--interval", type=int, default=50, help="heartbeat/advert interval in ms (default 50)")
    fp.add_argument("--seconds", type=float, default=60.0)
    fp.add_argument("--systems", default=",".join(SYSTEMS))
    fp.add_argument("--hosts", type=int, default=5)
    fp.add_argument("--out", type=Path, default=REPO / "docs" / "benchmarks.md")
    fp.add_argument("--quick", action="store_true", help="smoke run: 2 s")
    ld = sub.add_parser("load", help="busy loops on every core: leadership changes, split-brain (appends to --out)")
    ld.add_argument("--interval", type=int, default=50, help="heartbeat/advert interval in ms (default 50)")
    ld.add_argument("--seconds", type=float, default=60.0)
    ld.add_argument("--systems", default=",".join(SYSTEMS))
    ld.add_argument("--hosts", type=int, default=5)
    ld.add_argument("--out", type=Path, default=REPO / "docs" / "benchmarks.md")
    ld.add_argument("--quick", action="store_true", help="smoke run: 3 s")
    import bench_scale
    import bench_transfer

    bench_transfer.add_parser(sub, ",".join(SYSTEMS), REPO / "docs" / "benchmarks.md")
    bench_scale.add_parser(sub, ",".join(SYSTEMS), REPO / "docs" / "benchmarks.md")
    for p in sub.choices.values():
        p.add_argument("--plots", action="store_true",
                       help="(scripts/bench installs matplotlib into .venv first; plots are drawn whenever it imports)")
    args = parser.parse_args(argv)
    args.argv = argv
    args.log = lambda m: print(m, file=sys.stderr, flush=True)
    if os.geteuid() != 0:
        print("scripts/bench needs root (network namespaces)", file=sys.stderr)
        return 2
    install_signal_teardown()
    if args.command == "load":
        if args.quick:
            args.seconds = 3.0
        return under_load(args)
    if args.command == "transfer":
        if args.quick:
            args.transfers = 2
        return bench_transfer.transfer(args)
    if args.command == "scale":
        if args.quick:
            args.sizes, args.kills, args.steady_s = args.sizes or "3,5", 1, 5.0
        args.sizes = args.sizes or bench_scale.SIZES
        return bench_scale.scale(args)
    if args.command == "footprint":
        if args.quick:
            args.seconds = 2.0
        return footprint(args)
    if args.quick:
        args.intervals, args.kills, args.kills_slow = "100", 2, 1
    if args.kills < 20 and not args.quick:
        print(f"note: {args.kills} kills per system is below the 20 the figures want", file=sys.stderr)
    return failover(args)


if __name__ == "__main__":
    sys.exit(main())
