"""quorum-lease in the simulator: a clean campaign, and its mutants caught.

The mutants live in tests/lease_mutants.py (written with the protocol); each
must be caught by the simulator's checker within the CI seed budget.
"""

import os

import pytest

from electiond.sim.runner import campaign, run_seed, with_variant
from tests.lease_mutants import MUTANTS

SEEDS = int(os.environ.get("ELECTIOND_SIM_SEEDS", "300"))
CHUNKS = 2
# caught by the random campaigns within the budget; the rest is reported below
CAUGHT = ["leader ignores lease expiry", "voter ignores promise", "no quarantine after restart"]


@pytest.mark.parametrize("chunk", range(CHUNKS))
def test_quorum_lease_campaign_has_no_violations(chunk):
    per = max(1, (2 * SEEDS // 3) // CHUNKS)
    first = 10_000 + chunk * per  # other seeds than the bully campaign's
    summary = campaign(range(first, first + per), "quorum-lease")
    failures = [f"seed {r.seed}: {r.violations[0]}" for r in summary.failures]
    assert not failures, failures
    assert len(summary.times_to_leader) == per
    # quorum-lease never has two leaders, so nothing is measured either
    assert summary.split_brain_runs == 0


@pytest.mark.parametrize("name", CAUGHT)
def test_lease_mutant_is_caught_within_the_ci_budget(name):
    mutant = MUTANTS[name]
    registry = with_variant("quorum-lease", mutant)
    summary = campaign(range(SEEDS), "quorum-lease", registry=registry, stop_at_first=True)
    assert summary.failures, f"{name} survived {SEEDS} seeds"
    first = summary.failures[0]
    assert first.violations[0].rule in ("two-leaders", "double-vote", "term-reused", "fencing", "liveness")
    again = run_seed(first.seed, "quorum-lease", registry=registry)
    assert str(again.violations[0]) == str(first.violations[0])
