"""The simulator with quorum-lease witnesses: two voters and a witness under
the usual fault schedules (partitions, crashes, pauses, loss, drifting
clocks, lost state) stay at zero violations, and a witness never leads (the
cluster records any witness promotion as a "witness-led" violation)."""

from __future__ import annotations

import pytest

from electiond.sim.runner import campaign, run_seed


def test_two_voters_and_a_witness_campaign_has_no_violations():
    summary = campaign(range(1, 121), "quorum-lease", size=3, witnesses=1)
    assert summary.runs == 120
    assert summary.failures == [], [(r.seed, [str(v) for v in r.violations][:3]) for r in summary.failures[:3]]
    assert summary.times_to_leader  # the liveness phase elected leaders: the witness does not stall it


def test_a_witness_is_in_the_run_description_and_never_promotes():
    r = run_seed(7, "quorum-lease", 3, trace=True, witnesses=1)
    assert r.ok, r.violations
    assert "witnesses=['n3']" in r.trace[0]
    assert not [line for line in r.trace if line.startswith("n3 PROMOTE") or " n3 PROMOTE" in line]
    assert any("PROMOTE" in line for line in r.trace)


@pytest.mark.parametrize("size,witnesses", [(5, 2), (4, 1)])
def test_larger_clusters_with_witnesses(size, witnesses):
    summary = campaign(range(1, 31), "quorum-lease", size=size, witnesses=witnesses)
    assert summary.failures == [], [(r.seed, [str(v) for v in r.violations][:3]) for r in summary.failures[:3]]


def test_the_checker_catches_a_witness_that_leads():
    from electiond.protocols.lease import QuorumLease
    from electiond.sim.runner import with_variant

    class Mutant(QuorumLease):  # the witness forgets it is one and stands like a voter
        def __init__(self, settings, rng, now, persisted=None):
            super().__init__(settings, rng, now, persisted)
            self._witness = False
            self._eligible = True

    summary = campaign(range(1, 41), "quorum-lease", size=3, witnesses=2,
                       registry=with_variant("quorum-lease", Mutant))
    rules = {v.rule for r in summary.failures for v in r.violations}
    assert "witness-led" in rules
