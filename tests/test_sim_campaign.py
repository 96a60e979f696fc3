"""Seeded campaigns: determinism, a clean bully campaign, mutants caught, CLI.

CI budget: ELECTIOND_SIM_SEEDS (default 2000) seeds per protocol's campaign,
split in chunks so xdist spreads them over the cores (about 4 CPU-minutes in
all on the 2-core CI machine). The mutants stop at their first violation.
"""

import os
import subprocess
import sys

import pytest

from electiond.sim.checker import LEASE_INVARIANTS
from electiond.sim.runner import campaign, run_seed, with_variant
from tests.sim_mutants import MUTANTS

SEEDS = int(os.environ.get("ELECTIOND_SIM_SEEDS", "2000"))
CHUNKS = 8
# a chunk's child is bounded at 300 s; under load a chunk took 97 s
pytestmark = pytest.mark.timeout_s(900)
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _cli(*args, hashseed="0"):
    env = {**os.environ, "PYTHONPATH": ROOT, "PYTHONHASHSEED": hashseed}
    return subprocess.run([sys.executable, "-m", "electiond.sim", *args], capture_output=True, text=True,
                          env=env, cwd=ROOT, timeout=300)


@pytest.mark.parametrize("seed", [3, 11, 42])
def test_same_seed_gives_the_same_trace(seed):
    a = run_seed(seed, "bully", trace=True).trace
    b = run_seed(seed, "bully", trace=True).trace
    assert len(a) > 100
    assert a == b


def test_trace_is_byte_identical_across_processes_and_hash_seeds():
    # string hashing differs per process: anything iterating a set of names
    # in a run would show up here
    one = _cli("--protocol", "bully", "--seed", "5", "--trace", hashseed="1")
    two = _cli("--protocol", "bully", "--seed", "5", "--trace", hashseed="2")
    assert one.returncode == 0, one.stdout + one.stderr
    strip = lambda out: "\n".join(l for l in out.splitlines() if not l.startswith("protocol="))  # wall time
    assert strip(one.stdout) == strip(two.stdout)
    assert "→" in one.stdout and "PROMOTE" in one.stdout


def test_different_seeds_give_different_runs():
    assert run_seed(1, trace=True).trace != run_seed(2, trace=True).trace


# protocol -> whether its campaign must see split brain. Partitions are real
# faults, so bully and ring (which cannot prevent it) must show some, measured;
# quorum-lease never has two leaders, partitions or not.
CAMPAIGNS = {"bully": True, "ring": True, "quorum-lease": False}


@pytest.mark.parametrize("chunk", range(CHUNKS))
@pytest.mark.parametrize("protocol", sorted(CAMPAIGNS))
def test_campaign_has_no_violations(protocol, chunk):
    """Partitions, one-way cuts, loss, spikes, crashes with and without the
    disk, pauses and clock drift, judged by the protocol's row of INVARIANTS
    (ring by bully's), then a leader after every heal."""
    per = max(1, SEEDS // CHUNKS)
    summary = campaign(range(chunk * per, (chunk + 1) * per), protocol)
    assert summary.runs == per
    failures = [f"seed {r.seed}: {r.violations[0]}" for r in summary.failures]
    assert not failures, failures
    # the liveness phase really ran and elected someone in every run
    assert len(summary.times_to_leader) == per
    assert (summary.split_brain_runs > 0) == CAMPAIGNS[protocol]


@pytest.mark.parametrize("protocol,mutant,rules", MUTANTS, ids=[m[1].__name__ for m in MUTANTS])
def test_mutant_is_caught_within_the_ci_budget(protocol, mutant, rules):
    summary = campaign(range(SEEDS), protocol, registry=with_variant(protocol, mutant), stop_at_first=True)
    assert summary.failures, f"{mutant.__name__} survived {SEEDS} seeds"
    violation = summary.failures[0].violations[0]
    assert violation.rule in rules, str(violation)
    # and the failing seed replays to the same violation
    again = run_seed(summary.failures[0].seed, protocol, registry=with_variant(protocol, mutant))
    assert str(again.violations[0]) == str(violation)


def test_lease_invariants_see_bully_split_brain():
    """Checker self-test for the quorum-lease row: bully cannot keep leases
    apart under partitions, so judged as quorum-lease it must fail."""
    summary = campaign(range(SEEDS), "bully", invariants=LEASE_INVARIANTS, stop_at_first=True)
    assert summary.failures
    assert summary.failures[0].violations[0].rule in ("two-leaders", "term-reused", "fencing")


def test_cli_reports_violation_trace_and_reproduce_line():
    out = _cli("--protocol", "bully", "--seeds", "40", "--variant", "tests.sim_mutants:NeverYieldBully")
    assert out.returncode == 1, out.stdout + out.stderr
    assert "violations=" in out.stdout and "VIOLATION" in out.stdout
    line = next(l for l in out.stdout.splitlines() if l.startswith("reproduce with: "))
    assert "--seed " in line and "--variant tests.sim_mutants:NeverYieldBully" in line
    seed = line.split("--seed ")[1].split()[0]
    replay = _cli("--protocol", "bully", "--seed", seed, "--variant", "tests.sim_mutants:NeverYieldBully")
    assert replay.returncode == 1
    assert "VIOLATION" in replay.stdout


def test_cli_clean_campaign_exits_zero_with_summary():
    out = _cli("--protocol", "bully", "--seeds", "10", "--nodes", "5")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "runs=10 violations=0" in out.stdout
    assert "mean_time_to_leader=" in out.stdout and "x real time" in out.stdout


def test_cli_rejects_unknown_protocol():
    assert _cli("--protocol", "paxos", "--seeds", "1").returncode == 2


def test_campaign_in_worker_processes_gives_the_same_summary():
    serial = campaign(range(10), "ring")
    parallel = campaign(range(10), "ring", jobs=2)
    assert parallel.runs == serial.runs == 10
    assert parallel.events == serial.events
    assert parallel.times_to_leader == serial.times_to_leader
    assert parallel.split_brain_runs == serial.split_brain_runs
    assert parallel.sim_s == pytest.approx(serial.sim_s)
    assert parallel.run_s > 0 and parallel.speedup_per_process() > 0


def test_cli_with_jobs_reports_a_mutant_with_its_seed():
    out = _cli("--protocol", "bully", "--seeds", "40", "--jobs", "2", "--variant", "tests.sim_mutants:NeverYieldBully")
    assert out.returncode == 1, out.stdout + out.stderr
    assert "with 2 jobs" in out.stdout
    assert "reproduce with: python -m electiond.sim --protocol bully --seed" in out.stdout
    assert _cli("--protocol", "bully", "--seeds", "2", "--jobs", "0").returncode == 2
