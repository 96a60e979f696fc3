"""A chaos campaign: many seeded schedules, optionally several at once, bounded by a deadline.

Each schedule runs in its own child process (``scripts/lab chaos --seed N``),
so each has its own pid and therefore its own namespace, nftables and
keepalived names (tests/lab/lan.py names everything by pid): parallel jobs
cannot touch each other's LAN. A result is appended to the JSON-lines file
the moment its child ends, so a campaign cut short still has every finished
schedule. No new schedule starts when it could not end before the deadline
(estimated by the longest schedule seen so far); children still running at
the deadline are stopped with SIGTERM (they tear their LAN down) and listed as
cut, not counted.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .chaos import RECOVERY_BOUND_S, Result
from .lan import sh

CHILD_TIMEOUT_S = 300.0  # far above a schedule's worst case (start 30 s + 4 x (hold + 2 x recovery bound))
FIRST_ESTIMATE_S = 40.0  # a schedule's length before any has been measured


def queue(systems: list[str], seeds: list[int], order: str) -> list[tuple[str, int]]:
    """The (system, seed) pairs in the order they start.

    seed: every system runs seed k before any runs seed k+1;
    system: all of the first system's seeds, then the next system's;
    quorum-lease-first: quorum-lease's seeds (the safety claim) first, then
    the other systems interleaved seed by seed, so a cut campaign still has
    comparable counts for them.
    """
    if order == "seed":
        return [(s, k) for k in seeds for s in systems]
    if order == "system":
        return [(s, k) for s in systems for k in seeds]
    if order == "quorum-lease-first":
        first = [("quorum-lease", k) for k in seeds] if "quorum-lease" in systems else []
        others = [s for s in systems if s != "quorum-lease"]
        return first + [(s, k) for k in seeds for s in others]
    raise ValueError(f"unknown order {order!r}")


def cleanup_leftovers(pid: int) -> None:
    """What a SIGKILLed child could not tear down: processes in its namespaces, then the namespaces."""
    out = sh("ip", "netns", "list", check=False)
    names = [line.split()[0] for line in out.splitlines() if line.strip()]
    mine = [n for n in names if n == f"el{pid}sw" or n.startswith(f"el{pid}")
            and (n[len(f"el{pid}"):][:1] in ("n", "x", "s", "c"))]
    for ns in mine:
        for p in sh("ip", "netns", "pids", ns, check=False).split():
            try:
                os.kill(int(p), signal.SIGKILL)
            except (ProcessLookupError, ValueError):
                pass
    for ns in mine:
        subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=30)


@dataclasses.dataclass
class Job:
    system: str
    seed: int
    proc: subprocess.Popen
    out_path: Path
    json_path: Path
    began: float


@dataclasses.dataclass
class Campaign:
    results: list[Result]
    cut: list[tuple[str, int]]  # running at the deadline, stopped
    not_started: list[tuple[str, int]]
    crashed: list[tuple[str, int, str]]  # the child ended without a result
    elapsed_s: float
    load_before: tuple[float, float, float]
    load_after: tuple[float, float, float]


def run_campaign(pairs: list[tuple[str, int]], jobs: int, child_args: list[str], deadline: float | None,
                 results_path: Path | None, log=print) -> Campaign:
    began = time.time()
    load_before = os.getloadavg()
    todo = list(pairs)
    running: list[Job] = []
    results: list[Result] = []
    cut: list[tuple[str, int]] = []
    crashed: list[tuple[str, int, str]] = []
    durations_s: list[float] = []

    def estimate_s() -> float:
        return max(durations_s) + 5.0 if durations_s else FIRST_ESTIMATE_S
    tmp = Path(tempfile.mkdtemp(prefix="electiond-campaign-"))
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(Path(__file__).resolve().parent.parent),
                                                    env.get("PYTHONPATH", "")) if p)

    def finish(job: Job) -> None:
        text = job.out_path.read_text(errors="replace") if job.out_path.exists() else ""
        log(text.rstrip())
        try:
            data = json.loads(job.json_path.read_text())[0]
        except (OSError, ValueError, IndexError):
            crashed.append((job.system, job.seed, f"exit {job.proc.returncode}, no result"))
            log(f"CRASHED {job.system} seed {job.seed} (exit {job.proc.returncode})")
            return
        result = Result(**data)
        results.append(result)
        durations_s.append(time.time() - job.began)
        if results_path is not None:
            with open(results_path, "a") as f:
                f.write(json.dumps(dataclasses.asdict(result)) + "\n")
        log(f"-- {len(results)} done, {len(todo)} queued, {time.time() - began:.0f} s, "
            f"load {os.getloadavg()[0]:.1f}")

    def stop(job: Job) -> None:
        try:
            job.proc.send_signal(signal.SIGTERM)
            job.proc.wait(30)
        except subprocess.TimeoutExpired:
            job.proc.kill()
            job.proc.wait(10)
        cleanup_leftovers(job.proc.pid)

    try:
        stop_launching = False
        while (todo and not stop_launching) or running:
            now = time.time()
            while todo and not stop_launching and len(running) < jobs:
                if deadline is not None and now + estimate_s() > deadline:
                    log(f"deadline: {len(todo)} schedules not started (the longest so far took "
                        f"{estimate_s() - 5:.0f} s)")
                    stop_launching = True
                    break
                system, seed = todo.pop(0)
                out_path = tmp / f"{system}-{seed}.out"
                json_path = tmp / f"{system}-{seed}.json"
                with open(out_path, "wb") as out:
                    proc = subprocess.Popen(
                        [sys.executable, "-m", "lab.cli", "chaos", "--seed", str(seed), "--system", system,
                         "--json", str(json_path), "--no-report", *child_args],
                        stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
                running.append(Job(system, seed, proc, out_path, json_path, now))
            time.sleep(0.5)
            for job in list(running):
                if job.proc.poll() is not None:
                    running.remove(job)
                    finish(job)
                elif time.time() - job.began > CHILD_TIMEOUT_S:
                    log(f"TIMEOUT {job.system} seed {job.seed} after {CHILD_TIMEOUT_S:.0f} s: stopped")
                    running.remove(job)
                    stop(job)
                    crashed.append((job.system, job.seed, f"timed out after {CHILD_TIMEOUT_S:.0f} s"))
                elif deadline is not None and time.time() > deadline:
                    log(f"deadline: {job.system} seed {job.seed} cut while running")
                    running.remove(job)
                    stop(job)
                    cut.append((job.system, job.seed))
    finally:
        for job in running:
            stop(job)
            cut.append((job.system, job.seed))
    return Campaign(results, cut, todo, crashed, time.time() - began, load_before, os.getloadavg())


def _fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}"


def report(c: Campaign, command: str, machine: str, jobs: int, hosts: int, steps: int, heartbeat_ms: int) -> str:
    from .chaos import summary

    from .systems import SYSTEMS

    c = dataclasses.replace(c, results=sorted(c.results, key=lambda r: (list(SYSTEMS).index(r.system), r.seed)))
    planned = len(c.results) + len(c.cut) + len(c.not_started) + len(c.crashed)
    lines = [
        "# Chaos campaign on the namespace LAN",
        "",
        f"Run {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime(time.time() - c.elapsed_s))} for "
        f"{c.elapsed_s / 60:.0f} min with `{command}`",
        f"on {machine}. {jobs} schedule(s) at once, each on its own LAN of {hosts} hosts, {steps} faults per",
        f"schedule, heartbeat (electiond) = advert interval (keepalived) {heartbeat_ms} ms. Load average (1, 5, 15 min)",
        f"before {' '.join(f'{x:.2f}' for x in c.load_before)}, after {' '.join(f'{x:.2f}' for x in c.load_after)}"
        " (other sessions shared the machine).",
        "",
        f"Ran {len(c.results)} of {planned} planned schedules"
        + (f"; cut at the deadline while running: {len(c.cut)}" if c.cut else "")
        + (f"; not started before the deadline: {len(c.not_started)}" if c.not_started else "")
        + (f"; ended without a result: {len(c.crashed)}" if c.crashed else "") + ".",
        "",
    ]
    if c.results:
        lines += [summary(c.results), ""]
        lines += ["Per system: seeds run, recovery after each heal (heal -> one agreed leader; quorum-lease must",
                  f"stay within {RECOVERY_BOUND_S:.0f} s), largest measured hook spawn lag.", "",
                  "| system | seeds | heals | recovery p90 s | heals without an agreed leader in the bound | "
                  "schedules with split-brain | largest hook lag ms |", "|---|---|---|---|---|---|---|"]
        for system in dict.fromkeys(r.system for r in c.results):
            rs = [r for r in c.results if r.system == system]
            rec = sorted(x for r in rs for x in r.recovery_s if x is not None)
            none = sum(1 for r in rs for x in r.recovery_s if x is None)
            p90 = statistics.quantiles(rec, n=10, method="inclusive")[-1] if len(rec) >= 2 else (rec[0] if rec else None)
            seeds = sorted(r.seed for r in rs)
            span = f"{seeds[0]}..{seeds[-1]}" if seeds == list(range(seeds[0], seeds[-1] + 1)) else ",".join(map(str, seeds))
            lines.append(f"| {system} | {span} | {len(rec) + none} | {_fmt(p90)} | {none} | "
                         f"{sum(1 for r in rs if r.split_brain_s > 0)} | "
                         f"{max(r.max_hook_lag_s for r in rs) * 1000:.0f} |")
        lines.append("")
    failed = [r for r in c.results if not r.ok]
    lines += ["## Violations", ""]
    if failed:
        for r in failed:
            lines.append(f"- {r.system} seed {r.seed} (replay: `scripts/lab chaos --seed {r.seed} --system {r.system}`):")
            lines += [f"  - {f}" for f in r.failures]
    else:
        lines.append("None: no schedule failed its system's checks.")
    notes = [(r, s) for r in c.results for s in r.skipped if s.startswith("overlap")]
    if notes:
        lines += ["", "quorum-lease hook-stamp overlaps within the run's measured hook spawn lag (reported, not failed):"]
        lines += [f"- seed {r.seed}: {s}" for r, s in notes]
    if c.crashed:
        lines += ["", "Ended without a result: " + ", ".join(f"{s} seed {k} ({why})" for s, k, why in c.crashed)]
    if c.cut or c.not_started:
        left = sorted({s for s, _k in c.cut + c.not_started})
        lines += ["", "Not run (deadline): " + "; ".join(
            f"{s}: {sum(1 for x, _ in c.cut + c.not_started if x == s)} schedules" for s in left)]
    return "\n".join(lines) + "\n"
