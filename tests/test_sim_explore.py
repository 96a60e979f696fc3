"""The exhaustive explorer: bounded, deterministic, and it sees mutants."""

import os
import subprocess
import sys

from electiond.sim.checker import LEASE_INVARIANTS
from electiond.sim.explore import Explorer, state_key
from electiond.sim.runner import with_variant
from tests.sim_mutants import EagerBully, EagerRing

DEPTH = int(os.environ.get("ELECTIOND_SIM_EXPLORE_DEPTH", "7"))
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_bully_explores_clean_to_the_ci_depth():
    r = Explorer("bully", nodes=3).run(DEPTH, budget_s=60)
    assert r.violation is None, (r.violation, r.path)
    assert r.depth_done == DEPTH, r.stopped
    assert r.states > 50 and r.per_depth[-1] > 0


def test_quorum_lease_explores_clean_to_the_ci_depth():
    r = Explorer("quorum-lease", nodes=3).run(DEPTH, budget_s=60)
    assert r.violation is None, (r.violation, r.path)
    assert r.depth_done == DEPTH, r.stopped


def test_ring_explores_clean_to_the_ci_depth():
    r = Explorer("ring", nodes=3).run(DEPTH, budget_s=60)
    assert r.violation is None, (r.violation, r.path)
    assert r.depth_done == DEPTH, r.stopped
    assert r.states > 50 and r.per_depth[-1] > 0


def test_a_ring_node_that_skips_the_lap_is_caught():
    """A ring node that crowns itself at its timeout instead of running the
    ELECTION round the ring: two close timeouts give two leaders with one token."""
    seed = _seed_with_close_timeouts(0.05, "ring")
    ex = Explorer("ring", nodes=3, seed=seed, registry=with_variant("ring", EagerRing), max_delay_s=0.05,
                  invariants=LEASE_INVARIANTS)
    r = ex.run(8, budget_s=90)
    assert r.violation and ("two-leaders" in r.violation or "term-reused" in r.violation), r.violation
    honest = Explorer("ring", nodes=3, seed=seed, max_delay_s=0.05, invariants=LEASE_INVARIANTS).run(len(r.path) - 1,
                                                                                                   budget_s=90)
    assert honest.violation is None


def test_exploration_is_deterministic():
    a = Explorer("bully", nodes=3, seed=4).run(5, budget_s=60)
    b = Explorer("bully", nodes=3, seed=4).run(5, budget_s=60)
    assert (a.states, a.transitions, a.per_depth) == (b.states, b.transitions, b.per_depth)


def test_repeated_states_are_pruned():
    ex = Explorer("bully", nodes=3)
    r = ex.run(5, budget_s=60)
    # delivering two datagrams in either order, or dropping either of two
    # identical copies, leads to states already seen
    assert r.transitions > r.states - 1
    assert state_key(ex.start) == state_key(ex.start)


def _seed_with_close_timeouts(max_delay_s, protocol="bully"):
    """A seed whose two earliest election timeouts fall within one network
    delay of each other: the second node can time out before it hears the
    first one's announcement."""
    for seed in range(200):
        ex = Explorer(protocol, nodes=3, seed=seed)
        deadlines = sorted(n.protocol.deadline() for n in ex.start.nodes)
        if deadlines[1] - deadlines[0] < max_delay_s:
            return seed
    raise AssertionError("no such seed in 200")


def test_a_mutant_that_crowns_itself_is_caught_with_a_replayable_path():
    """Judged by quorum-lease rules (one leader at any instant), a node that
    crowns itself without asking is caught as soon as two such timeouts fall
    within one network delay."""
    seed = _seed_with_close_timeouts(0.05)
    ex = Explorer("bully", nodes=3, seed=seed, registry=with_variant("bully", EagerBully), max_delay_s=0.05,
                  invariants=LEASE_INVARIANTS)
    r = ex.run(8, budget_s=90)
    # two leaders at once, or (the same fault seen by the term check first,
    # since bully's start-up rules changed the order of events) two leaders
    # of one term
    assert r.violation and ("two-leaders" in r.violation or "term-reused" in r.violation), r.violation
    narrative = ex.describe(r.path)
    assert len(narrative) == len(r.path)
    assert sum("tick" in line for line in narrative) >= 2
    # real bully under the same rules and budget only fails later, if at all:
    # the mutant's failure is its own
    honest = Explorer("bully", nodes=3, seed=seed, max_delay_s=0.05, invariants=LEASE_INVARIANTS).run(len(r.path) - 1,
                                                                                                    budget_s=90)
    assert honest.violation is None


def test_cli_reports_rate_and_depth():
    env = {**os.environ, "PYTHONPATH": ROOT}
    out = subprocess.run([sys.executable, "-m", "electiond.sim", "explore", "--protocol", "bully", "--nodes", "3",
                          "--depth", "4", "--budget-s", "30"], capture_output=True, text=True, env=env, cwd=ROOT,
                         timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "depth_completed=4/4" in out.stdout and "states/s=" in out.stdout
