"""The simulator's parts, each driven directly."""

import os
import random

import pytest

from electiond.node import PROTOCOLS
from electiond.protocols.base import (
    ROLE_FOLLOWER,
    ROLE_LEADER,
    ElectionProtocol,
    Member,
    Persist,
    PersistedState,
    Promote,
    Send,
    Settings,
)
from electiond.sim.checker import BULLY_INVARIANTS, LEASE_INVARIANTS, Checker
from electiond.sim.clock import SimClock
from electiond.sim.cluster import Cluster
from electiond.sim.faults import plan_run
from electiond.sim.network import Links, NetworkModel


class Recorder(ElectionProtocol):
    """A scripted protocol: records every input; its effects come from a class-level script."""

    name = "recorder"
    script: dict = {}
    log: list = []

    def __init__(self, settings, rng, now, persisted=None):
        super().__init__(settings, rng, now, persisted)
        self.persisted = persisted
        self._deadline = now + 1.0
        self._role = ROLE_FOLLOWER
        Recorder.log.append((settings.node_name, "start", now, persisted))

    def on_message(self, msg, now):
        Recorder.log.append((self.settings.node_name, "msg", now, msg))
        return list(self.script.get((self.settings.node_name, msg.kind), []))

    def on_tick(self, now):
        Recorder.log.append((self.settings.node_name, "tick", now, None))
        if now < self._deadline:
            return []  # the node glue ticks for its own timers too
        self._deadline = now + 1.0
        effects = list(self.script.get((self.settings.node_name, "tick"), []))
        if any(isinstance(e, Promote) for e in effects):
            self._role = ROLE_LEADER
        return effects

    def deadline(self):
        return self._deadline

    @property
    def role(self):
        return self._role

    @property
    def leader(self):
        return None

    @property
    def term(self):
        return 0


def _cluster(n=3, clocks=None, network=None, invariants=BULLY_INVARIANTS):
    members = tuple(Member(f"n{i}", i) for i in range(1, n + 1))
    settings = [Settings("t", m.name, members) for m in members]
    Recorder.log = []
    registry = {**PROTOCOLS, "recorder": Recorder}
    net = network or NetworkModel(base_delay_s=0.001, jitter_mean_s=0.0)
    return Cluster(settings, "recorder", invariants, random.Random(1), clocks, net, registry, trace=True)


# ---- clock -------------------------------------------------------------------


def test_clock_offset_rate_and_inverse():
    c = SimClock(offset_s=50.0, rate=1.001)
    assert c.local(0.0) == 50.0
    assert c.local(10.0) == pytest.approx(60.01)
    for local in (50.0, 51.234567, 1e3 + 0.1):
        t = c.true_time_of(local)
        assert c.local(t) >= local
        assert c.local(t) - local < 1e-9


def test_clock_rate_change_keeps_reading_continuous_and_monotonic():
    c = SimClock(0.0, 1.0)
    before = c.local(5.0)
    c.set_rate(5.0, 0.999)
    assert c.local(5.0) == before
    assert c.local(6.0) == pytest.approx(before + 0.999)
    assert c.true_time_of(before + 0.999) == pytest.approx(6.0)


# ---- network -----------------------------------------------------------------


def test_symmetric_partition_and_lone_nodes():
    links = Links()
    links.partition([[0], [1, 2]], [0, 1, 2, 3])
    assert not links.up(0, 1) and not links.up(1, 0)
    assert links.up(1, 2) and links.up(2, 1)
    assert not links.up(3, 1) and not links.up(0, 3)  # n4 is in no group: alone
    links.heal()
    assert links.up(0, 1)


def test_one_way_cut():
    links = Links()
    links.cut_one_way([0], [1])
    assert not links.up(0, 1)
    assert links.up(1, 0)


def test_delays_are_capped_and_spikes_stretch_them():
    net = NetworkModel(base_delay_s=0.001, jitter_mean_s=0.01, max_delay_s=0.005)
    rng = random.Random(3)
    delays = [net.delay_s(rng) for _ in range(2000)]
    assert max(delays) <= 0.005 and min(delays) >= 0.001
    net.spike_max_delay_s = 0.5
    assert max(net.delay_s(rng) for _ in range(2000)) > 0.1


# ---- cluster: effects, routing, pause ------------------------------------------------


def test_multicast_reaches_every_other_member_and_unicast_only_its_target():
    c = _cluster(3)
    Recorder.script = {("n1", "tick"): [Send("PING", 1), Send("HELLO", 1, to="n3")]}
    for i in range(3):
        c.boot(i)
    c.run_until(1.5)
    got = [(who, m.kind, m.sender, m.recipient) for who, what, _, m in Recorder.log if what == "msg"]
    assert ("n2", "PING", "n1", None) in got and ("n3", "PING", "n1", None) in got
    assert ("n1", "PING", "n1", None) not in got
    assert ("n3", "HELLO", "n1", "n3") in got
    assert not any(k == "HELLO" and who != "n3" for who, k, _, _ in got)


def test_persist_reaches_disk_and_survives_crash_unless_wiped():
    c = _cluster(3)
    Recorder.script = {("n2", "tick"): [Persist(PersistedState(7, "n2")), Send("X", 7)]}
    for i in range(3):
        c.boot(i)
    c.run_until(1.5)
    assert c.hosts[1].disk == PersistedState(7, "n2")
    c.crash(1)
    c.boot(1)
    assert c.hosts[1].node.protocol.persisted == PersistedState(7, "n2")
    c.crash(1)
    c.boot(1, keep_disk=False)
    assert c.hosts[1].node.protocol.persisted is None


def test_each_node_sees_its_own_clock():
    clocks = [SimClock(100.0, 1.0), SimClock(5.0, 1.001), SimClock(0.0, 0.999)]
    c = _cluster(3, clocks=clocks)
    Recorder.script = {}
    for i in range(3):
        c.boot(i)
    c.run_until(2.5)
    ticks = {}
    for who, what, now, _ in Recorder.log:
        if what == "tick":
            ticks.setdefault(who, []).append(now)
    # the protocol asked for a tick 1 s after start on its own clock (the node
    # glue adds presence-beacon ticks in between); the simulator delivered it
    # at exactly that local reading, whatever the offset and rate
    for name, start in {"n1": 100.0, "n2": 5.0, "n3": 0.0}.items():
        assert any(abs(t - (start + 1.0)) < 1e-9 for t in ticks[name]), (name, ticks[name])
    starts = {who: now for who, what, now, _ in Recorder.log if what == "start"}
    assert starts == {"n1": 100.0, "n2": 5.0, "n3": 0.0}


def test_paused_node_ticks_first_on_resume_then_gets_queued_messages():
    c = _cluster(2)
    Recorder.script = {("n1", "tick"): [Send("PING", 1)]}
    c.boot(0)
    c.boot(1)
    c.pause(1)
    c.run_until(3.5)  # n1 ticks at 1, 2, 3; n2 frozen
    assert not any(who == "n2" and what != "start" for who, what, _, _ in Recorder.log)
    mark = len(Recorder.log)
    c.resume(1)
    after = [(who, what) for who, what, _, _ in Recorder.log[mark:]]
    assert after[0] == ("n2", "tick")
    assert after[1:] == [("n2", "msg")] * 3


def test_loss_and_duplication_are_seeded():
    def run(seed):
        c = _cluster(2, network=NetworkModel(base_delay_s=0.001, jitter_mean_s=0.002, loss=0.3, duplicate=0.3))
        c.rng = random.Random(seed)
        c.net_rng = random.Random(seed)
        Recorder.script = {("n1", "tick"): [Send("PING", 1)]}
        c.boot(0)
        c.boot(1)
        c.run_until(200.5)
        return sum(1 for who, what, _, _ in Recorder.log if what == "msg"), c.trace

    count, trace = run(4)
    assert 100 < count < 300 and count != 200  # some lost, some twice
    assert run(4) == (count, trace)


def test_busy_loop_is_reported():
    class Spinner(Recorder):
        def deadline(self):
            return 0.0

    c = _cluster(1)
    c.registry = {"recorder": Spinner}
    Recorder.script = {}
    c.boot(0)
    c.run_until(1.0)
    assert [v.rule for v in c.checker.violations] == ["busy-loop"]


# ---- checker ---------------------------------------------------------------------


def _checker(inv):
    return Checker(inv, Settings("t", "n1", (Member("n1", 1), Member("n2", 2))), ["n1", "n2"],
                   local_now=lambda i, t: t, running=lambda i: True, protocol_of=lambda i: None)


def test_double_vote_in_one_term_is_caught_and_a_new_term_is_fine():
    ch = _checker(LEASE_INVARIANTS)
    ch.persisted(1.0, 0, PersistedState(3, "n1"))
    ch.persisted(1.1, 0, PersistedState(3, "n1"))
    ch.persisted(1.2, 0, PersistedState(4, "n2"))
    assert not ch.violations
    ch.persisted(1.3, 0, PersistedState(4, "n1"))
    assert [v.rule for v in ch.violations] == ["double-vote"]


def test_wiped_disk_forgets_votes_and_stops_term_checks():
    ch = _checker(LEASE_INVARIANTS)
    ch.persisted(1.0, 0, PersistedState(3, "n1"))
    ch.disk_wiped(0)
    ch.persisted(2.0, 0, PersistedState(3, "n2"))
    ch.promoted(2.0, 0, 3)
    ch.promoted(2.1, 1, 3)
    assert not ch.violations


def test_fencing_tokens_must_grow():
    ch = _checker(LEASE_INVARIANTS)
    ch.promoted(1.0, 0, 2)
    ch.promoted(2.0, 1, 3)
    ch.demoted(0)
    ch.promoted(3.0, 0, 1)  # lower than the last token, and never used before
    assert [v.rule for v in ch.violations] == ["fencing"]
    ch = _checker(LEASE_INVARIANTS)
    ch.promoted(1.0, 0, 2)
    ch.promoted(2.0, 1, 2)
    assert [v.rule for v in ch.violations] == ["term-reused"]


def test_a_second_promotion_needs_a_demote_or_a_crash_in_between():
    ch = _checker(BULLY_INVARIANTS)
    ch.partitioned = True  # whatever the network did
    ch.promoted(1.0, 0, 1)
    ch.raised(1.5, 0, 2)  # a sitting leader's new token: no hooks, fine
    ch.demoted(0)
    ch.promoted(2.0, 0, 3)
    ch.crashing(2.5, 0)
    ch.promoted(3.0, 0, 4)
    assert not ch.violations
    ch.promoted(3.1, 0, 5)  # still leading since 3.0: the hooks would run again
    assert [v.rule for v in ch.violations] == ["promoted-twice"]


def test_bully_fencing_is_not_asserted_after_a_partition():
    ch = _checker(BULLY_INVARIANTS)
    ch.partitioned = True
    ch.promoted(1.0, 0, 2)
    ch.promoted(2.0, 1, 2)
    assert not ch.violations


def test_plan_is_a_pure_function_of_the_seed():
    a, b = plan_run(99), plan_run(99)
    assert a.size == b.size and a.settings == b.settings
    assert [(f.t, f.kind, f.node, f.detail) for f in a.faults] == [(f.t, f.kind, f.node, f.detail) for f in b.faults]
    sizes = {plan_run(s).size for s in range(200)}
    assert sizes == set(range(3, 10))
    assert plan_run(5, size=4).size == 4


def test_bench_runs_a_steady_cluster_with_one_leader():
    from electiond.sim.bench import bench

    r = bench("bully", nodes=5, seconds=20.0)
    assert r["violations"] == 0 and r["leaders"] == ["n5"]
    # 5 nodes, 50 ms heartbeats: at least 20 s * 20 heartbeats * 4 deliveries
    assert r["events"] >= 20 * 20 * 4
    assert r["x_real_time_cpu"] > 0


def test_bench_cli_reports_the_median_of_repeated_runs():
    import subprocess
    import sys

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = subprocess.run(
        [sys.executable, "-m", "electiond.sim", "bench", "--protocol", "ring", "--seconds", "5", "--repeat", "3"],
        capture_output=True, text=True, cwd=root, env={**os.environ, "PYTHONPATH": root}, timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert "over 3 runs" in out.stdout and "violations=0" in out.stdout and "leader=['n5']" in out.stdout
