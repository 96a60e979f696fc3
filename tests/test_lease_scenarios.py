"""Fault scenarios for quorum-lease in the hand-driven harness.

Each scenario runs the real protocol (the harness checks safety at every
event and the test checks that a leader comes back) and the mutant that
lacks the rule the scenario exercises (which the harness must catch).
"""

from __future__ import annotations

import pytest

from electiond.protocols.base import CommandError, Demote, Promote, Send
from electiond.protocols.lease import REQUEST_VOTE, VOTE, QuorumLease
from lease_harness import Cluster, InvariantViolation, random_faults
from lease_mutants import (
    MUTANTS,
    LeaderIgnoresLeaseExpiry,
    LeaseMeasuredFromReply,
    NoQuarantineAfterRestart,
    VoterIgnoresPromise,
)

# deterministic detection so that the timing of each scenario is exact
FIXED_DETECTION = {"election_timeout_min_s": 0.15, "election_timeout_max_s": 0.15}


def _leader_isolated_in_minority(protocol, seed: int) -> Cluster:
    c = Cluster(5, seed=seed, protocol=protocol, priorities={"n5": 250, "n4": 200})
    old = c.elect()
    c.run(0.3)
    c.partition([old, "n1"], [x for x in c.names if x not in (old, "n1")])
    c.run(1.5)
    new = c.leader()
    assert new is not None and new != old
    assert [d.reason for _t, d in c.demotes(old)] == ["lease_lost"]
    c.heal()
    c.run(1.0)
    assert c.leader() == new, "the healed minority must not depose the majority's leader"
    return c


def _follower_cut_from_leader_only(protocol, seed: int) -> Cluster:
    # n3 leads; n1 cannot hear it (nor it n1) but n1 and n2 talk: n2's
    # promise to n3 is all that stops n1 from winning beside a live lease
    c = Cluster(3, seed=seed, protocol=protocol, priorities={"n3": 250, "n1": 200}, **FIXED_DETECTION)
    assert c.elect() == "n3"
    c.run(0.3)
    c.block("n3", "n1")
    c.block("n1", "n3")
    c.run(2.0)
    assert c.leader() == "n3", "a healthy majority leader stays"
    return c


def _voter_restarts_right_after_promising(protocol, seed: int) -> Cluster:
    c = Cluster(3, seed=seed, protocol=protocol, priorities={"n3": 250, "n1": 200}, **FIXED_DETECTION)
    assert c.elect() == "n3"
    c.run(0.3)
    c.block("n3", "n1")
    c.block("n1", "n3")
    c.run(0.1)  # n2 keeps acking n3: n3's lease rests on n2's promises
    c.crash("n2")
    c.restart("n2")  # forgets its promise to n3
    c.partition(["n3"], ["n1", "n2"])
    c.run(2.0)
    assert c.leader() in ("n1", "n2")
    return c


def _slow_acks(protocol, seed: int) -> Cluster:
    # acks take 40 ms to reach the leader; heartbeats and votes are fast
    c = Cluster(3, seed=seed, protocol=protocol, priorities={"n3": 250, "n2": 200}, **FIXED_DETECTION)
    assert c.elect() == "n3"
    c.link_delay_s[("n1", "n3")] = 0.04
    c.link_delay_s[("n2", "n3")] = 0.04
    c.run(0.5)
    assert c.leader() == "n3"
    # the leader's heartbeats stop arriving; acks already sent still land
    c.block("n3", "n1")
    c.block("n3", "n2")
    c.run(1.0)
    assert c.leader() == "n2"
    return c


def _pause_past_lease(protocol, seed: int) -> Cluster:
    c = Cluster(3, seed=seed, protocol=protocol)
    old = c.elect()
    term = c.nodes[old].term
    c.run(0.2)
    wake_at = c.t + 0.8
    c.pause(old, 0.8)
    c.run(1.5)
    first_after = next(e for t, n, e in c.log if n == old and t >= wake_at)
    assert first_after == Demote(term, "lease_lost"), first_after
    assert c.leader() not in (None, old)
    return c


SCENARIOS = {
    "leader isolated in a minority": (_leader_isolated_in_minority, LeaderIgnoresLeaseExpiry),
    "follower cut from the leader only": (_follower_cut_from_leader_only, VoterIgnoresPromise),
    "voter restarts right after promising": (_voter_restarts_right_after_promising, NoQuarantineAfterRestart),
    "slow acks": (_slow_acks, LeaseMeasuredFromReply),
    "pause past the lease then resume": (_pause_past_lease, LeaderIgnoresLeaseExpiry),
}


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_scenario_is_safe_and_recovers(name):
    scenario, _mutant = SCENARIOS[name]
    for seed in range(5):
        c = scenario(QuorumLease, seed)
        assert c.max_leaders_seen == 1


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_scenario_catches_its_mutant_as_an_actual_overlap(name, monkeypatch):
    monkeypatch.setattr(Cluster, "CHECK_COVERAGE", False)
    scenario, mutant = SCENARIOS[name]
    with pytest.raises(InvariantViolation, match="two leaders"):
        scenario(mutant, 0)


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_lease_coverage_catches_the_mutant_before_any_overlap(name):
    scenario, mutant = SCENARIOS[name]
    with pytest.raises(InvariantViolation, match="lease-uncovered"):
        scenario(mutant, 0)


@pytest.mark.parametrize("mutant", sorted(MUTANTS), ids=sorted(MUTANTS))
def test_randomized_faults_catch_every_mutant_within_a_few_seeds(mutant):
    """No hand-made scenario: the randomized fault schedule alone finds each."""
    cls = MUTANTS[mutant]
    for seed in range(30):
        try:
            random_faults(cls, seed, 3)
        except InvariantViolation:
            return
    raise AssertionError(f"{mutant} survived 30 randomized runs")


def test_randomized_faults_never_violate_the_real_protocol():
    for n in (3, 5):
        for seed in range(15):
            c = random_faults(QuorumLease, seed, n)
            assert c.max_leaders_seen == 1


def test_every_mutant_has_a_scenario_that_catches_it():
    assert set(MUTANTS.values()) == {mutant for _s, mutant in SCENARIOS.values()}


def test_partition_that_heals_mid_election():
    for seed in range(8):
        c = Cluster(5, seed=seed, delay_s=(0.001, 0.005))
        old = c.elect()
        c.crash(old)
        # split the survivors 2/2: nobody can win until the partition heals
        rest = [x for x in c.names if x != old]
        c.partition(rest[:2], rest[2:])
        c.run_until(lambda: any(isinstance(e, Send) and e.kind == REQUEST_VOTE for _t, _n, e in c.log[-20:]), 3.0)
        c.run(0.3)
        assert c.leader() is None, "no majority on either side"
        c.heal()  # heals while candidates are mid-round
        healed = c.t
        c.restart(old)
        new = c.elect(timeout_s=3.0)
        assert new is not None and c.t - healed < 2.5
        c.run(0.5)
        assert c.leader() == new


def test_restart_right_after_voting_keeps_the_vote_and_stays_safe():
    for seed in range(8):
        c = Cluster(5, seed=seed, delay_s=(0.001, 0.004))
        old = c.elect()
        c.crash(old)
        n_log = len(c.log)

        def granted():
            return any(
                isinstance(e, Send) and e.kind == VOTE and e.body["granted"] for _t, _n, e in c.log[n_log:]
            )

        assert c.run_until(granted, 3.0)
        t, voter, vote = next(
            (t, n, e) for t, n, e in c.log[n_log:] if isinstance(e, Send) and e.kind == VOTE and e.body["granted"]
        )
        c.crash(voter)
        c.restart(voter)
        assert c.durable[voter].term == vote.term and c.durable[voter].voted_for == vote.to
        assert c.nodes[voter].term == vote.term
        c.restart(old)
        new = c.elect(timeout_s=3.0)
        c.run(0.5)
        assert c.leader() == new
        promoted = [e.term for _t, e in c.effects_of(new, Promote)]
        assert promoted



# ---- hypothesis: shrinkable fault schedules ---------------------------------------------

from hypothesis import HealthCheck, given, settings as hsettings, strategies as st  # noqa: E402

_ACTION = st.one_of(
    st.tuples(st.just("run"), st.floats(0.01, 0.5)),
    st.tuples(st.just("partition"), st.permutations(["n1", "n2", "n3", "n4", "n5"]), st.integers(1, 4)),
    st.tuples(st.just("cut"), st.sampled_from(["n1", "n2", "n3", "n4", "n5"]), st.sampled_from(["n1", "n2", "n3", "n4", "n5"])),
    st.tuples(st.just("heal")),
    st.tuples(st.just("crash"), st.sampled_from(["n1", "n2", "n3", "n4", "n5"])),
    st.tuples(st.just("restart"), st.sampled_from(["n1", "n2", "n3", "n4", "n5"])),
    st.tuples(st.just("pause"), st.sampled_from(["n1", "n2", "n3", "n4", "n5"]), st.floats(0.01, 0.4)),
    st.tuples(st.just("transfer")),
)


@hsettings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**16), actions=st.lists(_ACTION, min_size=1, max_size=14),
       drift=st.lists(st.sampled_from([-1000.0, 0.0, 1000.0]), min_size=5, max_size=5))
def test_hypothesis_schedules_keep_leases_apart_and_recover(seed, actions, drift):
    run_schedule(QuorumLease, seed, actions, drift)


def run_schedule(protocol, seed, actions, drift):
    c = Cluster(5, seed=seed, protocol=protocol, drift_ppm={f"n{i + 1}": d for i, d in enumerate(drift)}, delay_s=(0.0002, 0.015), loss=0.03)
    for action in actions:
        kind = action[0]
        if kind == "run":
            c.run(action[1])
        elif kind == "partition":
            names, k = action[1], action[2]
            c.partition(list(names[:k]), list(names[k:]))
        elif kind == "cut" and action[1] != action[2]:
            c.block(action[1], action[2])
        elif kind == "heal":
            c.heal()
        elif kind == "crash" and action[1] not in c.down:
            c.crash(action[1])
        elif kind == "restart" and action[1] in c.down:
            c.restart(action[1])
        elif kind == "pause" and action[1] not in c.down and action[1] not in c.paused_until:
            c.pause(action[1], action[2])
        elif kind == "transfer" and c.leader() is not None:
            leader = c.leader()
            try:
                c.apply(leader, c.nodes[leader].transfer(None, c.local(leader)))
            except CommandError:
                pass  # no live member to hand over to
    c.heal()
    for name in sorted(c.down):
        c.restart(name)
    c.run(0.5)
    assert c.elect(timeout_s=5.0)
