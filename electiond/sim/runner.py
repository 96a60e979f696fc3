"""One seeded run (safety phase, then liveness phase) and campaigns of many.

Safety phase: the plan's faults play out while the checker watches.
Liveness phase: the network heals and turns lossless, frozen nodes resume,
crashed nodes restart with their disks (all but a planned minority), and no
more faults happen. Within the protocol's liveness bound (a few election
rounds, see ``checker.INVARIANTS``) every running node must follow one and
the same leader, and still do so when the phase ends.
"""

from __future__ import annotations

import dataclasses
import random
import time as _time
from dataclasses import dataclass, field
from typing import Mapping

from electiond.protocols.base import DISK_RETRY_MAX_S, ElectionProtocol
from electiond.sim.checker import InvariantSet, Violation, invariants_for
from electiond.sim.cluster import Cluster
from electiond.sim.faults import LEADER, SAME, Fault, RunPlan, plan_run


@dataclass(slots=True)
class RunResult:
    seed: int
    protocol: str
    size: int
    violations: list[Violation]
    time_to_leader_s: float | None
    sim_s: float
    events: int
    split_brain_intervals: list[tuple[float, float]]
    partitions: bool
    state_loss: bool
    trace: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.violations


def _target(cluster: Cluster, f: Fault) -> int:
    """The host a fault acts on: drawn in the plan, or the leader of the moment."""
    if f.node == SAME:
        return f.detail["ref"]["node"]
    if f.node == LEADER:
        leaders = cluster.leaders()
        node = leaders[0] if leaders else f.detail["ref"]["node"]
        f.detail["ref"]["node"] = node
        return node
    return f.node


def _apply(cluster: Cluster, f: Fault) -> None:
    net = cluster.network
    if f.kind == "crash":
        cluster.crash(_target(cluster, f))
    elif f.kind == "restart":
        cluster.boot(_target(cluster, f), keep_disk=f.detail["keep"])
    elif f.kind == "crash-followers":
        leaders = cluster.leaders()
        for i in range(len(cluster.hosts)):
            if i in leaders or cluster.hosts[i].node is None:
                continue
            cluster.crash(i)
            down_s, keep = f.detail["downs"][i]
            cluster.at(cluster.now + down_s, lambda i=i, keep=keep: cluster.boot(i, keep_disk=keep), fault=True)
    elif f.kind == "pause":
        cluster.pause(_target(cluster, f))
    elif f.kind == "resume":
        cluster.resume(_target(cluster, f))
    elif f.kind == "clock":
        cluster.set_clock_rate(f.node, f.detail["rate"])
    elif f.kind == "loss":
        net.loss = f.detail["loss"]
        cluster.note(f"NETWORK loss={net.loss:.3f}")
        cluster.checker.fault(cluster.now)
    elif f.kind == "spike":
        before = net.worst_delay_s()
        net.spike_max_delay_s = f.detail["max_delay_s"]
        cluster.note(f"NETWORK delay spike max={net.spike_max_delay_s * 1000:.1f}ms")
        # datagrams already in flight keep arriving late for a while
        cluster.checker.fault(cluster.now, cluster.now + before)
        cluster.checker.lossy = True
    elif f.kind == "partition":
        d = f.detail
        if d["kind"] == "mute-leader":
            leaders = cluster.leaders()
            lone = leaders[0] if leaders else d["from"][0]
            cluster.heal()
            cluster.cut([lone], [i for i in range(len(cluster.hosts)) if i != lone])
        elif d["kind"] == "isolate-leader":
            leaders = cluster.leaders()
            lone = leaders[0] if leaders else d["groups"][0][0]
            cluster.links.heal()
            cluster.partition([[lone], [i for i in range(len(cluster.hosts)) if i != lone]])
        elif "groups" in d:
            cluster.links.heal()
            cluster.partition(d["groups"])
        else:
            cluster.heal()
            cluster.cut(d["from"], d["to"])
    elif f.kind == "heal":
        cluster.heal()
    elif f.kind == "disk-fail":
        cluster.set_disk(_target(cluster, f), True)
    elif f.kind == "disk-ok":
        cluster.set_disk(_target(cluster, f), False)
    elif f.kind == "crash-in-write":
        cluster.arm_crash_in_write(_target(cluster, f), f.detail["down_s"])
    else:  # pragma: no cover - plan_run only makes the kinds above
        raise ValueError(f.kind)


def run_seed(
    seed: int,
    protocol: str = "bully",
    size: int | None = None,
    registry: Mapping[str, type[ElectionProtocol]] | None = None,
    invariants: InvariantSet | None = None,
    trace: bool = False,
    witnesses: int = 0,
) -> RunResult:
    """``witnesses``: that many of the last members are quorum-lease
    witnesses (at least one member stays a voter)."""
    plan = plan_run(seed, size)
    if witnesses > 0 and plan.size > 1:
        names = tuple(s.node_name for s in plan.settings)[plan.size - min(witnesses, plan.size - 1):]
        plan.settings = [dataclasses.replace(s, witnesses=names) for s in plan.settings]
    inv = invariants or invariants_for(protocol)
    rng = random.Random(seed ^ 0x5EED)
    cluster = Cluster(plan.settings, protocol, inv, rng, plan.clocks, plan.network, registry, trace)
    cluster.note(_describe(plan, protocol))
    for i, t in enumerate(plan.boot_at):
        cluster.at(t, lambda i=i: cluster.boot(i))
    for f in plan.faults:
        cluster.at(f.t, lambda f=f: _apply(cluster, f), fault=True)
    cluster.run_until(plan.safety_s)
    result = RunResult(seed, protocol, plan.size, cluster.checker.violations, None, plan.safety_s, cluster.events,
                       [], plan.partitions, plan.state_loss)
    if not cluster.checker.violations:
        _liveness(cluster, plan, inv, result)
    alarms = cluster.clock_alarms()
    if alarms and not cluster.checker.violations:
        # the plan keeps every clock within the bound: any verdict beyond it is false
        cluster.checker.violate(cluster.now, "clock-false-alarm",
                                f"{alarms} clock verdicts beyond the bound, every clock within it")
    cluster.checker.finish(cluster.now)
    result.sim_s = cluster.now
    result.events = cluster.events
    result.split_brain_intervals = list(cluster.checker.split.intervals)
    result.violations = cluster.checker.violations
    if trace:
        result.trace = cluster.trace + [str(v) for v in result.violations]
    return result


def _liveness(cluster: Cluster, plan: RunPlan, inv: InvariantSet, result: RunResult) -> None:
    start = cluster.now
    cluster.cancel_faults()
    cluster.note("LIVENESS PHASE: heal, resume, restart; no more faults")
    cluster.heal()
    cluster.heal_disks()
    cluster.network.loss = 0.0
    cluster.network.spike_max_delay_s = 0.0
    cluster.network.straggler = 0.0
    cluster.network.slow_links = {}
    for i in range(plan.size):
        if i in plan.keep_down:
            cluster.crash(i)
        elif cluster.hosts[i].node is None:
            cluster.boot(i, keep_disk=True)
        else:
            cluster.resume(i)
    cluster.checker.fault(start, start + plan.network.worst_delay_s() + plan.settings[0].answer_timeout_s * 8)
    live = [i for i in range(plan.size) if i not in plan.keep_down]
    bound_s = inv.liveness_bound_s(plan.settings[0])
    if plan.disk_faults:
        # a node whose writes failed notices the healed disk at its next retry
        bound_s += DISK_RETRY_MAX_S
    first: list[float] = []

    def watch(t: float) -> None:
        if cluster.agreed_leader(live) is not None:
            first.append(t)
            cluster.after_event = None

    cluster.after_event = watch
    watch(start)
    cluster.run_until(start + bound_s)
    cluster.after_event = None
    if cluster.checker.violations:
        return
    if not first:
        who = [cluster.names[i] for i in cluster.leaders()]
        views = {cluster.names[i]: cluster.hosts[i].node.protocol.leader for i in live}
        cluster.checker.violate(
            cluster.now, "liveness", f"no agreed leader {bound_s:.3f}s after heal (leaders {who}, views {views})"
        )
        return
    result.time_to_leader_s = first[0] - start
    # the agreement must last: run on a little and look again
    end = start + bound_s + plan.round_s
    cluster.run_until(end)
    if cluster.checker.violations:
        return
    cluster.checker.recheck(end)
    if cluster.agreed_leader(live) is None:
        who = [cluster.names[i] for i in cluster.leaders()]
        cluster.checker.violate(cluster.now, "liveness", f"leadership not stable at the end (leaders {who})")


def _describe(plan: RunPlan, protocol: str) -> str:
    s = plan.settings[0]
    members = " ".join(f"{m.name}(id={m.id})" for m in s.members)
    net = plan.network
    return (
        f"seed={plan.seed} protocol={protocol} nodes={plan.size} [{members}] "
        f"heartbeat={s.heartbeat_interval_s * 1000:.1f}ms election={s.election_timeout_min_s * 1000:.1f}-"
        f"{s.election_timeout_max_s * 1000:.1f}ms lease={s.lease_s * 1000:.1f}ms"
        f"{'' if s.lease_ceiling_s() <= s.lease_s else f'..{s.lease_ceiling_s() * 1000:.1f}ms'} drift={s.clock_drift_ppm:.0f}ppm "
        f"preempt={s.preempt} delay={net.base_delay_s * 1000:.2f}ms+exp({net.jitter_mean_s * 1000:.2f}ms)"
        f"<={net.max_delay_s * 1000:.2f}ms loss={net.loss} dup={net.duplicate} "
        f"stragglers={net.straggler:.3f}<={net.straggler_max_s * 1000:.1f}ms "
        f"slow_links={ {f'n{a + 1}->n{b + 1}': round(x * 1000, 1) for (a, b), x in net.slow_links.items()} } "
        f"partitions={plan.partitions} state_loss={plan.state_loss} faults={len(plan.faults)} "
        f"safety={plan.safety_s:.3f}s keep_down={[plan.settings[i].node_name for i in plan.keep_down]}"
        + (f" witnesses={list(s.witnesses)}" if s.witnesses else "")
    )


@dataclass(slots=True)
class CampaignSummary:
    protocol: str
    runs: int = 0
    failures: list[RunResult] = field(default_factory=list)
    times_to_leader: list[float] = field(default_factory=list)
    sim_s: float = 0.0
    wall_s: float = 0.0
    events: int = 0
    split_brain_runs: int = 0
    split_brain_total_s: float = 0.0

    def mean_time_to_leader_s(self) -> float | None:
        return sum(self.times_to_leader) / len(self.times_to_leader) if self.times_to_leader else None

    # seconds the runs themselves took, summed over worker processes: with
    # --jobs the wall clock shrinks, this does not
    run_s: float = 0.0

    def speedup(self) -> float:
        """Simulated seconds per wall second for the whole campaign (all workers)."""
        return self.sim_s / self.wall_s if self.wall_s > 0 else float("inf")

    def speedup_per_process(self) -> float:
        """Simulated seconds per second of one process: the simulator's own speed."""
        return self.sim_s / self.run_s if self.run_s > 0 else float("inf")

    def add(self, r: RunResult) -> None:
        self.runs += 1
        self.sim_s += r.sim_s
        self.events += r.events
        if r.time_to_leader_s is not None:
            self.times_to_leader.append(r.time_to_leader_s)
        if r.split_brain_intervals:
            self.split_brain_runs += 1
            self.split_brain_total_s += sum(b - a for a, b in r.split_brain_intervals)
        if r.violations:
            self.failures.append(r)

    def merge(self, other: CampaignSummary) -> None:
        """Add a worker's share; the caller merges shares in seed order."""
        self.runs += other.runs
        self.failures += other.failures
        self.times_to_leader += other.times_to_leader
        self.sim_s += other.sim_s
        self.events += other.events
        self.split_brain_runs += other.split_brain_runs
        self.split_brain_total_s += other.split_brain_total_s
        self.run_s += other.run_s


def campaign(
    seeds,
    protocol: str = "bully",
    size: int | None = None,
    registry: Mapping[str, type[ElectionProtocol]] | None = None,
    invariants: InvariantSet | None = None,
    stop_at_first: bool = False,
    jobs: int = 1,
    witnesses: int = 0,
) -> CampaignSummary:
    """Run ``seeds``; with ``jobs`` > 1, in that many worker processes.

    Each seed's run is the same wherever it runs, and shares are merged in
    seed order, so the summary does not depend on ``jobs`` (but for the wall
    time). ``stop_at_first`` stops a worker at its first failure; the first
    failure by seed is then still the first of the whole campaign's seeds only
    when ``jobs`` is 1.
    """
    seeds = list(seeds)
    start = _time.perf_counter()
    if jobs > 1 and len(seeds) > 1:
        summary = _campaign_in_workers(seeds, protocol, size, registry, invariants, stop_at_first, jobs, witnesses)
    else:
        summary = _campaign_here(seeds, protocol, size, registry, invariants, stop_at_first, witnesses)
    summary.wall_s = _time.perf_counter() - start
    return summary


def _campaign_here(seeds, protocol, size, registry, invariants, stop_at_first, witnesses=0) -> CampaignSummary:
    summary = CampaignSummary(protocol)
    start = _time.perf_counter()
    for seed in seeds:
        r = run_seed(seed, protocol, size, registry, invariants, witnesses=witnesses)
        summary.add(r)
        if r.violations and stop_at_first:
            break
    summary.run_s = _time.perf_counter() - start
    return summary


def _campaign_in_workers(seeds, protocol, size, registry, invariants, stop_at_first, jobs,
                         witnesses=0) -> CampaignSummary:
    from concurrent.futures import ProcessPoolExecutor
    import multiprocessing

    # small interleaved shares keep the workers evenly loaded (runs differ
    # in length by cluster size and faults) and are merged back in seed order
    share = max(1, min(25, len(seeds) // (4 * jobs)))
    shares = [seeds[k:k + share] for k in range(0, len(seeds), share)]
    summary = CampaignSummary(protocol)
    # spawn, not fork: the caller may have threads (pytest plugins, asyncio)
    with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = [pool.submit(_campaign_here, s, protocol, size, registry, invariants, stop_at_first, witnesses)
                   for s in shares]
        for f in futures:
            summary.merge(f.result())
    summary.failures.sort(key=lambda r: r.seed)
    return summary


def with_variant(protocol: str, cls: type[ElectionProtocol]) -> dict[str, type[ElectionProtocol]]:
    """A copy of PROTOCOLS where ``cls`` (a mutant, say) stands in for ``protocol``."""
    from electiond.node import PROTOCOLS

    return {**PROTOCOLS, protocol: cls}
