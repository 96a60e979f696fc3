"""Everything a run does, derived from one seed (TigerBeetle VOPR style).

``plan_run(seed)`` draws, in a fixed order, the cluster size, the protocol
settings, the network, the clocks and a schedule of faults. Nothing else in a
run draws from the seed's generator except through the cluster's own child
generators, so the same seed always gives the same run.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from electiond.protocols.base import Member, Settings
from electiond.sim.clock import SimClock
from electiond.sim.network import NetworkModel

PARTITION_KINDS = ("symmetric", "one-way", "isolate-one", "split-majority")
LEADER = -2  # Fault.node: whoever leads when the fault fires
SAME = -3  # Fault.node: the host its paired fault hit (detail["ref"])


@dataclass(slots=True)
class Fault:
    t: float
    kind: str  # partition, heal, crash, restart, pause, resume, clock, loss, spike,
    # disk-fail, disk-ok, crash-in-write (a "crash-many" draw becomes several crash/restart faults)
    node: int = -1
    detail: dict = field(default_factory=dict)


@dataclass(slots=True)
class RunPlan:
    seed: int
    size: int
    settings: list[Settings]
    clocks: list[SimClock]
    network: NetworkModel
    boot_at: list[float]
    faults: list[Fault]
    safety_s: float
    partitions: bool
    state_loss: bool
    keep_down: list[int]  # crashed through the liveness phase (a minority)
    round_s: float  # one election round, the unit the schedule is drawn in
    disk_faults: bool = False  # some host's writes fail for a while in the safety phase


def _settings(rng: random.Random, size: int, cluster: str = "sim") -> tuple[list[Settings], dict]:
    ids = sorted(rng.sample(range(1, 10 * size + 1), size))
    rng.shuffle(ids)  # names and ids in different orders: n1 need not be lowest
    members = tuple(Member(f"n{i + 1}", ids[i]) for i in range(size))
    scale = rng.uniform(0.4, 2.0)
    hb = 0.05 * scale
    et_min = hb * rng.uniform(2.5, 4.0)
    et_max = et_min * rng.uniform(1.3, 2.2)
    knobs = dict(
        heartbeat_interval_s=hb,
        election_timeout_min_s=et_min,
        election_timeout_max_s=et_max,
        preempt=rng.random() < 0.6,
        preempt_delay_s=et_max * rng.uniform(2.0, 6.0),
        lease_s=et_min * rng.uniform(0.7, 1.0),
        clock_drift_ppm=rng.choice([0.0, 100.0, 500.0, 1000.0, 2000.0]),
        lease_guard_s=et_min * rng.uniform(0.05, 0.15),
        min_suspicion_timeout_s=hb * rng.uniform(1.5, 3.0),
        max_suspicion_timeout_s=et_max * rng.uniform(2.0, 4.0),
        backoff_base_s=hb * rng.uniform(0.5, 1.5),
        backoff_jitter_s=hb * rng.uniform(0.5, 1.5),
        backoff_max_s=et_max * rng.uniform(3.0, 6.0),
        answer_timeout_s=et_min * rng.uniform(0.5, 0.8),
    )
    # adaptive leases (quorum-lease) in about half the runs, up to 4 x the
    # lease; from a stream of its own, so that every other draw stays as it was
    lease_rng = random.Random(ids[0] * 1_000_003 + round(hb * 1e9))
    if lease_rng.random() < 0.5:
        knobs["lease_max_s"] = knobs["lease_s"] * lease_rng.uniform(1.5, 4.0)
    settings = [
        Settings(cluster=cluster, node_name=m.name, members=members, priority=rng.randint(0, 2), **knobs)
        for m in members
    ]
    return settings, knobs


def plan_run(seed: int, size: int | None = None) -> RunPlan:
    rng = random.Random(seed)
    n = size if size is not None else rng.randint(3, 9)
    settings, knobs = _settings(rng, n)
    s0 = settings[0]
    rho = s0.clock_drift_ppm / 1e6
    clocks = [SimClock(rng.uniform(0.0, 100.0), 1.0 + rng.uniform(-rho, rho)) for _ in range(n)]
    quick = min(s0.answer_timeout_s, s0.heartbeat_interval_s)
    network = NetworkModel(
        base_delay_s=rng.uniform(0.00005, 0.001),
        jitter_mean_s=rng.uniform(0.0, 0.1 * quick),
        max_delay_s=0.25 * quick,
        loss=rng.choice([0.0, 0.0, 0.01, 0.05, 0.1]),
        duplicate=rng.choice([0.0, 0.01, 0.05]),
    )
    if rng.random() < 0.3:
        network.straggler = rng.uniform(0.005, 0.1)
        network.straggler_max_s = s0.lease_s * rng.uniform(0.2, 3.0)
    if rng.random() < 0.3:
        for _ in range(rng.randint(1, n)):
            a, b = rng.sample(range(n), 2)
            network.slow_links[(a, b)] = s0.lease_s * rng.uniform(0.1, 1.0)
    round_s = max(s0.election_timeout_max_s, s0.max_suspicion_timeout_s) + s0.answer_timeout_s
    boot_at = [rng.uniform(0.0, s0.election_timeout_min_s) for _ in range(n)]
    safety_s = round_s * rng.uniform(4.0, 12.0)
    partitions = rng.random() < 0.5
    state_loss = rng.random() < 0.25
    faults: list[Fault] = []
    kinds = ["crash", "crash", "crash-many", "pause", "clock", "loss", "spike", "spike"] + ["partition"] * (4 if partitions else 0)
    for _ in range(rng.randint(0, 12)):
        t = rng.uniform(0.0, safety_s)
        kind = rng.choice(kinds)
        node = rng.randrange(n)
        # half the time a fault hits whoever leads when it fires (the drawn
        # node if nobody does): the stale-leader cases live there
        at_leader = rng.random() < 0.5
        ref = {"node": node}  # a fault and its undo act on the same host
        if kind == "crash-many" and at_leader:
            # every follower at once (a rack power blip with the leader elsewhere)
            downs = [(_down_s(rng, s0, round_s), not (state_loss and rng.random() < 0.5)) for _ in range(n)]
            faults.append(Fault(t, "crash-followers", detail={"downs": downs}))
        elif kind in ("crash", "crash-many"):
            # crash-many: a rack's power blips, several hosts go at once
            victims = [node] if kind == "crash" else rng.sample(range(n), rng.randint(2, n))
            for node in victims:
                ref = {"node": node}
                lead = at_leader and kind == "crash"
                faults.append(Fault(t, "crash", LEADER if lead else node, {"ref": ref}))
                if rng.random() < 0.8:
                    keep = not (state_loss and rng.random() < 0.5)
                    faults.append(Fault(t + _down_s(rng, s0, round_s), "restart", SAME, {"keep": keep, "ref": ref}))
        elif kind == "pause":
            faults.append(Fault(t, "pause", LEADER if at_leader else node, {"ref": ref}))
            faults.append(Fault(t + round_s * rng.uniform(0.3, 6.0), "resume", SAME, {"ref": ref}))
        elif kind == "clock":
            faults.append(Fault(t, "clock", node, {"rate": 1.0 + rng.uniform(-rho, rho)}))
        elif kind == "loss":
            faults.append(Fault(t, "loss", detail={"loss": rng.uniform(0.2, 0.6)}))
            faults.append(Fault(t + round_s * rng.uniform(0.5, 4.0), "loss", detail={"loss": network.loss}))
        elif kind == "spike":
            cap = s0.answer_timeout_s * rng.uniform(1.0, 8.0)
            faults.append(Fault(t, "spike", detail={"max_delay_s": cap}))
            faults.append(Fault(t + round_s * rng.uniform(0.2, 2.0), "spike", detail={"max_delay_s": 0.0}))
        else:
            f = _partition(rng, t, n)
            if at_leader and f.detail["kind"] == "isolate-one":
                f.detail["kind"] = "isolate-leader"
            elif at_leader and f.detail["kind"] == "one-way":
                f.detail["kind"] = "mute-leader"  # it hears everyone, nobody hears it
            faults.append(f)
            faults.append(Fault(t + round_s * rng.uniform(0.5, 6.0), "heal"))
    # a minority may stay down through the liveness phase
    keep_down = rng.sample(range(n), rng.randint(0, (n - 1) // 2)) if rng.random() < 0.3 else []
    # disk faults come from a generator of their own, so adding them left
    # every other draw of a seed as it was
    disk_faults = _disk_faults(random.Random(seed ^ 0xD15C), n, s0, round_s, safety_s)
    faults += disk_faults
    faults.sort(key=lambda f: f.t)
    return RunPlan(seed, n, settings, clocks, network, boot_at, faults, safety_s, partitions, state_loss,
                   sorted(keep_down), round_s, any(f.kind == "disk-fail" for f in disk_faults))


def _disk_faults(rng: random.Random, n: int, s0: Settings, round_s: float, safety_s: float) -> list[Fault]:
    """Writes that fail for a while (ENOSPC, EROFS: the disk keeps its old
    state), and crashes between a write and its rename (the write never
    lands). Half of them hit whoever leads (or is about to), where a
    promotion's Persist can fail."""
    faults: list[Fault] = []
    if rng.random() >= 0.4:
        return faults
    for _ in range(rng.randint(1, 3)):
        t = rng.uniform(0.0, safety_s)
        ref = {"node": rng.randrange(n)}
        node = LEADER if rng.random() < 0.3 else ref["node"]
        if rng.random() < 0.7:
            faults.append(Fault(t, "disk-fail", node, {"ref": ref}))
            faults.append(Fault(t + round_s * rng.uniform(0.3, 4.0), "disk-ok", SAME, {"ref": ref}))
        else:
            faults.append(Fault(t, "crash-in-write", node, {"ref": ref, "down_s": _down_s(rng, s0, round_s)}))
    return faults


def _down_s(rng: random.Random, s0: Settings, round_s: float) -> float:
    if rng.random() < 0.5:
        # a quick daemon restart (systemd Restart=): back while the promises
        # it made before the crash may still bind it
        return s0.lease_s * rng.uniform(0.01, 1.5)
    return round_s * rng.uniform(0.2, 5.0)


def _partition(rng: random.Random, t: float, n: int) -> Fault:
    kind = rng.choice(PARTITION_KINDS)
    nodes = list(range(n))
    rng.shuffle(nodes)
    if kind == "isolate-one":
        return Fault(t, "partition", detail={"kind": kind, "groups": [[nodes[0]], nodes[1:]]})
    if kind == "split-majority":
        k = n // 2 + 1
        return Fault(t, "partition", detail={"kind": kind, "groups": [nodes[:k], nodes[k:]]})
    cut = rng.randint(1, n - 1)
    if kind == "symmetric":
        return Fault(t, "partition", detail={"kind": kind, "groups": [nodes[:cut], nodes[cut:]]})
    return Fault(t, "partition", detail={"kind": kind, "from": nodes[:cut], "to": nodes[cut:]})
