"""Simulator: a clock beyond its bound is noticed, never leads after, and the cluster keeps a leader.

A clock that is off from the start is caught by the start-up clock check
(node.py) before it can stand or grant: the checker reports nothing at all
and the node never leads. A rate that changes while running is a fault the
lease safety argument does not cover, so there the checker honestly reports
what it costs before detection (a leader whose clock runs slow holds a
lease its followers' promises do not cover); from the moment the node
raises ``clock`` on, nothing more may be reported.
"""

import random

import pytest

from electiond.protocols.base import Member, Settings
from electiond.sim.checker import invariants_for
from electiond.sim.cluster import Cluster
from electiond.sim.network import NetworkModel

CHANGE_AT_S = 4.0  # after the start-up clock check (about 2.5 s) and the first election
END_S = 27.0


def cluster(protocol, size, seed):
    members = tuple(Member(f"n{i}", i) for i in range(1, size + 1))
    settings = [Settings("sim", m.name, members) for m in members]
    net = NetworkModel(base_delay_s=0.0005, jitter_mean_s=0.001, max_delay_s=0.02)
    return Cluster(settings, protocol, invariants_for(protocol), random.Random(seed), network=net)


def run(protocol, rate, at_leader, size=3, seed=1):
    c = cluster(protocol, size, seed)
    for i in range(size):
        c.boot(i)
    c.run_until(CHANGE_AT_S, stop_on_violation=False)
    leaders = c.leaders()
    assert len(leaders) == 1
    x = leaders[0] if at_leader else next(i for i in range(size) if i not in leaders)
    assert not c.checker.violations
    c.set_clock_rate(x, rate)
    seen = {"detected": None, "led_after": []}

    def watch(t):
        node = c.hosts[x].node
        if seen["detected"] is None and "clock" in node.blockers:
            seen["detected"] = t
        if seen["detected"] is not None and node.is_leader(c.local_now(x)):
            seen["led_after"].append(t)

    c.after_event = watch
    c.run_until(END_S, stop_on_violation=False)
    return c, x, seen


@pytest.mark.parametrize("protocol", ["quorum-lease", "bully"])
@pytest.mark.parametrize("at_leader", [False, True], ids=["follower", "leader"])
@pytest.mark.parametrize("rate", [0.5, 2.0])
def test_a_clock_beyond_its_bound_is_noticed_and_never_leads(protocol, rate, at_leader):
    c, x, seen = run(protocol, rate, at_leader)
    detected = seen["detected"]
    assert detected is not None and detected - CHANGE_AT_S <= 10.0, detected
    assert seen["led_after"] == []
    leaders = c.leaders()
    assert len(leaders) == 1 and leaders[0] != x
    assert "clock" in c.hosts[x].node.blockers
    for i, h in enumerate(c.hosts):
        if i != x:
            assert h.node.blockers == {}
            assert c.names[x] in h.node.clock_status()["beyond"]
    late = [v for v in c.checker.violations if v.t >= detected]
    assert late == [], late[:3]
    assert all(v.rule == "lease-uncovered" for v in c.checker.violations)


def test_a_slow_follower_keeps_granting_so_two_of_three_still_elect():
    """x0.5 on a follower: its promises outlast their time (safe), so it still
    votes; with the leader dead, the third node wins with that vote."""
    c, x, seen = run("quorum-lease", 0.5, at_leader=False)
    leader = c.leaders()[0]
    c.crash(leader)
    c.run_until(END_S + 5.0, stop_on_violation=False)
    leaders = c.leaders()
    assert len(leaders) == 1 and leaders[0] not in (x, leader)
    assert not c.checker.violations


def test_a_fast_follower_withholds_its_grants():
    """x2 on a follower: its promises would end early in real time, so once
    it blames its clock no lease counts on it; with the leader dead the
    remaining good node cannot win (safe, not live), and nothing overlaps."""
    c, x, seen = run("quorum-lease", 2.0, at_leader=False)
    leader = c.leaders()[0]
    c.crash(leader)
    c.run_until(END_S + 5.0, stop_on_violation=False)
    assert c.leaders() == []
    assert [v for v in c.checker.violations if v.t >= seen["detected"]] == []


@pytest.mark.parametrize("seed", [1, 2, 3])
@pytest.mark.parametrize("size,x", [(3, 2), (3, 0), (5, 4)], ids=["3-top", "3-bottom", "5-top"])
@pytest.mark.parametrize("rate", [0.5, 2.0])
def test_a_clock_off_from_the_start_never_leads_and_nothing_is_reported(rate, size, x, seed):
    """The stronger property: no violation at all (no uncovered lease even in
    the first seconds), the node never leads, the others elect one leader.
    Equal priorities: the top id stands first, so x = size - 1 would lead."""
    c = cluster("quorum-lease", size, seed)
    c.set_clock_rate(x, rate)
    for i in range(size):
        c.boot(i)
    led = []
    first_leader = []

    def watch(t):
        if c.hosts[x].node.is_leader(c.local_now(x)):
            led.append(t)
        if not first_leader and c.leaders():
            first_leader.append(t)

    c.after_event = watch
    c.run_until(END_S, stop_on_violation=False)
    assert c.checker.violations == [], c.checker.violations[:3]
    assert led == []
    assert first_leader and first_leader[0] <= 6.0, first_leader
    leaders = c.leaders()
    assert len(leaders) == 1 and leaders[0] != x
    node = c.hosts[x].node
    assert "clock" in node.blockers and "clock_check" not in node.blockers
    assert node.clock_checked_at is not None  # ended by finding the fault, not passed
    assert "check-passed" not in [h.detail.get("kind") for h in node.history if h.event == "clock"]
