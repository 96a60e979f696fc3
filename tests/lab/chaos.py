"""Seeded chaos schedules on a lab LAN, for electiond's protocols and keepalived.

A schedule is drawn from its seed alone (so ``--seed N`` replays its faults;
which node is "the leader" is resolved when a step runs). Each step applies
one fault, holds it, heals everything (links, filters, shaping, frozen and
dead daemons) and waits for the system to agree on one leader again.

Judged from the hook log (hooklog.py):
* quorum-lease: no two leadership intervals overlap, fencing tokens only
  grow, and after every heal a leader is agreed within RECOVERY_BOUND_S.
  Hook stamps come after a process spawn, which a starved machine delays
  (600 ms seen at load 12 on 2 cores): the daemons' logs give each hook's
  dispatch time, so tokens are checked in the daemons' order, and an overlap
  no longer than the largest spawn lag measured in the same run is reported
  (Result.skipped) rather than failed; all overlaps stay in Result.overlaps;
* bully, ring, keepalived: split-brain seconds are reported (non-zero is
  expected under partitions), and every split must be over after the heal
  (checked when a leader is agreed, or at the latest 2 x RECOVERY_BOUND_S
  after it; a slow recovery alone is reported, not failed: they promise no
  bound).
"""

from __future__ import annotations

import dataclasses
import json
import random
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from .faults import Faults, netem_available
from .hooklog import dispatches, hook_lags_s, read_log, token_order
from .lan import Lan
from .systems import LabSystem, make_system

RECOVERY_BOUND_S = 10.0  # heal -> a leader every running daemon agrees on (5 hosts, 50 ms heartbeat)
RESUME_DEMOTE_S = 1.0  # a resumed frozen leader's demote hook must start within this
START_BOUND_S = 30.0
FAULTS = ("kill_leader", "kill_random", "freeze_leader", "restart_random", "partition", "isolate_leader",
          "one_way", "loss", "duplicate", "congest", "flap", "delay")
PARTITIONS = ("partition", "isolate_leader", "one_way")


@dataclasses.dataclass(frozen=True)
class Step:
    fault: str
    hold_s: float
    params: dict

    def describe(self) -> str:
        extra = " ".join(f"{k}={v}" for k, v in self.params.items())
        return f"{self.fault} {extra} for {self.hold_s:.1f}s".replace("  ", " ")


def schedule(seed: int, hosts: list[str], steps: int = 4) -> list[Step]:
    """The faults of one schedule, from its seed alone."""
    rng = random.Random(seed)
    out = []
    for i in range(steps):
        fault = rng.choice(FAULTS)
        if i == steps - 1 and not any(st.fault in PARTITIONS for st in out) and fault not in PARTITIONS:
            fault = "partition"  # every schedule splits the LAN once: the case the protocols differ on
        hold_s = round(rng.uniform(0.5, 2.5), 1)
        params: dict = {}
        if fault in ("kill_random", "restart_random"):
            params["host"] = rng.choice(hosts)
        elif fault == "partition":
            shuffled = hosts[:]
            rng.shuffle(shuffled)
            parts = rng.choice([2, 2, 3]) if len(hosts) >= 3 else 2
            cuts = sorted(rng.sample(range(1, len(hosts)), parts - 1))
            bounds = [0, *cuts, len(hosts)]
            params["groups"] = [sorted(shuffled[a:b]) for a, b in zip(bounds, bounds[1:])]
        elif fault == "one_way":
            params["source"] = rng.choice(["leader", *hosts])
            params["destination"] = rng.choice([h for h in hosts if h != params["source"]])
        elif fault == "loss":
            params["host"] = rng.choice(["all", *hosts])
            params["percent"] = rng.choice([20, 40, 60])
        elif fault == "duplicate":
            params["host"] = rng.choice(["all", *hosts])
            params["percent"] = rng.choice([30, 60, 100])
        elif fault == "congest":
            params["host"] = rng.choice(["leader", *hosts])
            params["rate_kbit"] = rng.choice([8, 32, 128])
        elif fault == "flap":
            params["host"] = rng.choice(["leader", *hosts])
            params["period_s"] = rng.choice([0.2, 0.5, 1.0])
        elif fault == "delay":
            params["host"] = rng.choice(["all", *hosts])
            params["delay_ms"] = rng.choice([20, 100])
            params["jitter_ms"] = rng.choice([0, 50])  # jitter reorders
        out.append(Step(fault, hold_s, params))
    return out


@dataclasses.dataclass
class Result:
    system: str
    seed: int
    steps: list[str]
    recovery_s: list[float | None]
    split_brain_s: float
    overlap_s: float
    overlaps: int
    late_demotes: list[str]
    token_faults: list[str]
    failures: list[str]
    skipped: list[str]
    duration_s: float
    max_hook_lag_s: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.failures


class Runner:
    def __init__(self, system: LabSystem, faults: Faults, rng: random.Random, netem: tuple[bool, str]) -> None:
        self.system = system
        self.faults = faults
        self.rng = rng
        self.netem = netem
        self.dead: list[str] = []
        self.frozen: list[str] = []

    def resolve(self, host: str) -> str:
        if host != "leader":
            return host
        leaders = [h for h in self.system.leaders() if h in self.system.running()]
        return leaders[0] if leaders else self.rng.choice(self.system.hosts)

    def targets(self, host: str) -> list[str]:
        return list(self.system.hosts) if host == "all" else [self.resolve(host)]

    def apply(self, step: Step) -> str | None:
        """Put the fault in place; a reason string if it cannot run here."""
        s, f, p = self.system, self.faults, step.params
        if step.fault in ("kill_leader", "kill_random"):
            host = self.resolve("leader") if step.fault == "kill_leader" else p["host"]
            s.kill(host)
            self.dead.append(host)
        elif step.fault == "freeze_leader":
            host = self.resolve("leader")
            s.freeze(host)
            self.frozen.append(host)
        elif step.fault == "restart_random":
            s.restart(p["host"])
        elif step.fault == "partition":
            f.partition(p["groups"])
        elif step.fault == "isolate_leader":
            f.isolate(self.resolve("leader"))
        elif step.fault == "one_way":
            source = self.resolve(p["source"])
            destination = p["destination"] if p["destination"] != source else next(
                h for h in s.hosts if h != source)
            f.one_way(source, destination)
        elif step.fault == "loss":
            for host in self.targets(p["host"]):
                f.loss(host, p["percent"])
        elif step.fault == "duplicate":
            for host in self.targets(p["host"]):
                f.duplicate(host, p["percent"])
        elif step.fault == "congest":
            f.congest(self.resolve(p["host"]), p["rate_kbit"])
        elif step.fault == "flap":
            f.flap(self.resolve(p["host"]), p["period_s"])
        elif step.fault == "delay":
            if not self.netem[0]:
                return self.netem[1]
            for host in self.targets(p["host"]):
                f.delay(host, p["delay_ms"], p["jitter_ms"])
        return None

    def heal(self) -> None:
        self.faults.heal()
        for host in self.frozen:
            self.system.resume(host)
        for host in self.dead:
            self.system.start(host)
        self.frozen, self.dead = [], []
        self.system.marks.add("heal")


def run_schedule(system_name: str, seed: int, hosts_n: int = 5, steps: int = 4, heartbeat_ms: int = 50,
                 workdir: Path | None = None, log=print, slack_s: float = 0.0) -> Result:
    hosts = [f"n{i}" for i in range(1, hosts_n + 1)]
    plan = schedule(seed, hosts, steps)
    log(f"[{system_name} seed {seed}] " + "; ".join(st.describe() for st in plan))
    own_dir = workdir is None
    workdir = workdir or Path(tempfile.mkdtemp(prefix=f"electiond-lab-{system_name}-{seed}-"))
    began = time.time()
    recovery: list[float | None] = []
    failures: list[str] = []
    skipped: list[str] = []
    lan = Lan(hosts, clients=())
    system: LabSystem | None = None
    faults = Faults(lan)
    try:
        netem = netem_available(lan, hosts[0])
        system = make_system(system_name, lan, workdir, hosts, heartbeat_ms)
        runner = Runner(system, faults, random.Random(seed ^ 0x5EED), netem)
        system.start_all()
        system.wait_leader(START_BOUND_S)
        for st in plan:
            reason = runner.apply(st)
            if reason:
                skipped.append(f"{st.fault}: {reason}")
                continue
            time.sleep(st.hold_s)
            runner.heal()
            healed_at = time.time()
            try:
                system.wait_leader(RECOVERY_BOUND_S)
                recovery.append(round(time.time() - healed_at, 3))
                leaders = system.leaders()
                if len(leaders) > 1:
                    failures.append(f"after {st.describe()}: still {len(leaders)} leaders {leaders} after the heal")
            except AssertionError:
                recovery.append(None)
                if system_name == "quorum-lease":
                    failures.append(f"after {st.describe()}: no agreed leader within {RECOVERY_BOUND_S}s of the "
                                    f"heal (leaders by hook log: {system.leaders()})")
                else:
                    # the others promise no recovery bound; a split that outlives the heal is what fails them
                    end = time.monotonic() + RECOVERY_BOUND_S
                    while len(system.leaders()) > 1 and time.monotonic() < end:
                        time.sleep(0.1)
                    if len(system.leaders()) > 1:
                        failures.append(f"after {st.describe()}: the split outlived the heal by "
                                        f"{2 * RECOVERY_BOUND_S:.0f}s: leaders {system.leaders()}")
                    else:
                        skipped.append(f"after {st.describe()}: no agreed leader within {RECOVERY_BOUND_S}s "
                                       "(not a failure for this system: no split)")
            time.sleep(0.3)
        time.sleep(0.5)  # the last hooks land
        verdict = system.verdict(slack_s=slack_s, resume_demote_s=RESUME_DEMOTE_S)
        max_lag_s = 0.0
        token_faults = verdict.token_faults
        if system_name != "keepalived":
            # the daemons' own logs say when each hook was dispatched: the spawn
            # lag of this run, and the daemons' order of fencing tokens
            dispatched = [d for h in hosts for d in dispatches(workdir / f"{h}.log", h)]
            lags = hook_lags_s(read_log(system.log), dispatched)
            max_lag_s = max(lags, default=0.0)
            token_faults = token_order(sorted(dispatched, key=lambda d: d.t_s))
        if system_name == "quorum-lease":
            # an overlap of hook stamps no longer than the largest spawn lag
            # measured in this run is the machine's (a hook ran late), reported, not failed
            for a, b, lo, hi in verdict.overlaps:
                text = f"overlap {a}/{b} for {(hi - lo) * 1000:.0f} ms"
                if hi - lo <= max_lag_s:
                    skipped.append(f"{text} (within this run's largest hook spawn lag, {max_lag_s * 1000:.0f} ms)")
                else:
                    failures.append(f"{text} (largest hook spawn lag {max_lag_s * 1000:.0f} ms)")
            failures += [f"fencing token (daemon order): {t}" for t in token_faults]
            failures += [f"late demote: {t}" for t in verdict.late_demotes]
        result = Result(system_name, seed, [st.describe() for st in plan], recovery, round(verdict.split_brain_s, 3),
                        round(verdict.overlap_s(), 3), len(verdict.overlaps), verdict.late_demotes,
                        token_faults, failures, skipped, round(time.time() - began, 1), round(max_lag_s, 3))
        (workdir / "result.json").write_text(json.dumps(dataclasses.asdict(result), indent=1))
        log(f"[{system_name} seed {seed}] {'ok' if result.ok else 'FAILED'}: split-brain {result.split_brain_s:.2f}s, "
            f"overlaps {result.overlaps}, recovery {recovery}, largest hook lag {max_lag_s * 1000:.0f} ms" + "".join(f"\n  {f}" for f in failures)
            + (f"\n  skipped: {skipped}" if skipped else ""))
        return result
    finally:
        faults.heal() if faults.active() else None
        if system is not None:
            system.stop_all()
        lan.close()
        if own_dir and not failures:
            shutil.rmtree(workdir, ignore_errors=True)
        elif own_dir:
            log(f"  kept {workdir}")


def summary(results: list[Result]) -> str:
    lines = ["| system | schedules | failed | overlapping pairs | overlap s | split-brain s (total) | "
             "split-brain s (max per schedule) | recovery median s | recovery max s |",
             "|---|---|---|---|---|---|---|---|---|"]
    for system in dict.fromkeys(r.system for r in results):
        rs = [r for r in results if r.system == system]
        rec = [x for r in rs for x in r.recovery_s if x is not None]
        lines.append(
            f"| {system} | {len(rs)} | {sum(not r.ok for r in rs)} | {sum(r.overlaps for r in rs)} | "
            f"{sum(r.overlap_s for r in rs):.2f} | {sum(r.split_brain_s for r in rs):.2f} | "
            f"{max(r.split_brain_s for r in rs):.2f} | "
            f"{statistics.median(rec) if rec else float('nan'):.2f} | {max(rec) if rec else float('nan'):.2f} |")
    return "\n".join(lines)
