"""The coordination store's simulator: random schedules pass, mutants are caught.

COORD_SIM_SEEDS sets how many seeds the clean run covers (default 600, in
CHUNKS tests; a long campaign: COORD_SIM_SEEDS=5000). The compiled
simulator runs 2000 more in CI (tests/test_sim_native.py)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from electiond.sim.coordsim import run_coord_seed
from electiond.sim.runner import with_variant

sys.path.insert(0, str(Path(__file__).parent))
from coord_mutants import AckBeforeMajority, VoteIgnoresStore  # noqa: E402

SEEDS = int(os.environ.get("COORD_SIM_SEEDS", "600"))
CHUNKS = 6  # separate tests, so that pytest-xdist spreads the seeds over the cores


@pytest.mark.parametrize("chunk", range(CHUNKS))
def test_random_schedules_keep_every_config_rule(chunk):
    seeds = range(chunk * SEEDS // CHUNKS, (chunk + 1) * SEEDS // CHUNKS)
    n = len(seeds)
    failed = []
    totals = [0, 0, 0, 0, 0, 0, 0, 0]
    for seed in seeds:
        r = run_coord_seed(seed)
        totals[0] += r.acks
        totals[1] += r.reads
        totals[2] += r.watch_events
        totals[3] += r.lock_grants
        totals[4] += r.barrier_passes
        totals[5] += r.barrier_leaves
        totals[6] += r.snapshots
        totals[7] += r.member_events
        if not r.ok:
            failed.append((seed, [str(v) for v in r.violations[:3]]))
    assert not failed, failed
    # the schedules did exercise the store: acknowledged writes, reads, watch events
    assert (totals[0] > 20 * n and totals[1] > 10 * n and totals[2] > 50 * n and totals[3] > 2 * n
            and totals[4] > 5 * n and totals[5] > 2 * n and totals[6] > n // 2 and totals[7] > 5 * n), totals


def _first_caught(seeds: int, **kw) -> tuple[int, list[str]] | None:
    for seed in range(seeds):
        r = run_coord_seed(seed, **kw)
        if not r.ok:
            return seed, sorted({v.rule for v in r.violations})
    return None


def test_a_leader_acknowledging_before_a_majority_persisted_is_caught():
    caught = _first_caught(20, replica_cls=AckBeforeMajority)
    assert caught is not None and {"lost-write", "two-values"} & set(caught[1]), caught


def test_votes_that_ignore_the_store_position_are_caught():
    # the full kept log: with a small one the voters' committed entries are folded into the base,
    # where a stale leader's appends cannot cut them, and the damage shows far less often
    caught = _first_caught(40, registry=with_variant("quorum-lease", VoteIgnoresStore), log_keep=512)
    assert caught is not None and {"lost-write", "two-values"} & set(caught[1]), caught


def test_a_holder_that_keeps_running_after_its_deadline_is_caught():
    caught = _first_caught(40, holder_ignores_deadline=True)
    assert caught is not None and "lock-overlap" in caught[1], caught


def test_a_barrier_that_passes_one_short_is_caught():
    from coord_mutants import BarrierOffByOne

    caught = _first_caught(20, replica_cls=BarrierOffByOne)
    assert caught is not None and "barrier-early" in caught[1], caught


def test_a_leave_that_waits_only_for_its_own_removal_is_caught():
    from coord_mutants import LeaveWhenSelfRemoved

    caught = _first_caught(20, replica_cls=LeaveWhenSelfRemoved)
    assert caught is not None and "leave-early" in caught[1], caught


def test_a_leader_that_never_sends_a_snapshot_leaves_a_follower_behind_and_is_caught():
    from coord_mutants import NoSnapshot

    caught = _first_caught(20, replica_cls=NoSnapshot)
    assert caught is not None and "behind" in caught[1], caught


def test_a_leader_that_reuses_a_member_view_version_is_caught():
    from coord_mutants import MemberViewInPlace

    caught = _first_caught(20, replica_cls=MemberViewInPlace)
    assert caught is not None and "member-view" in caught[1], caught


def test_the_member_stream_checks_judge_order_gaps_and_double_joins():
    from electiond.sim.coordsim import CoordChecker

    c = CoordChecker()
    c.member_stream_start("n1", None)
    c.member_view(1.0, "n1", 3, "n1,n2")
    c.member_view(1.1, "n1", 5, "n1,n2;n3")
    c.member_view(1.2, "n1", 9, "n1,n2,n3")
    c.member_stream_start("n2", "n1,n2")  # a watch from a later point knows the view there
    c.member_view(1.3, "n2", 5, "n1,n2;n3")
    c.member_view(1.4, "n2", 9, "n1,n2,n3")
    c.check_member_streams(2.0)
    assert c.violations == [] and c.member_events == 6
    c.member_view(2.1, "n2", 9, "n1,n2,n3")  # repeated
    c.member_view(2.2, "n2", 11, "n1,n3")  # n2 left
    c.member_stream_start("n3", "n1")
    c.member_view(2.3, "n3", 11, "n1,n2")  # version 11 with another view
    c.member_view(2.4, "n3", 12, "n1")
    c.member_view(2.5, "n3", 13, "n1,n2")
    c.member_stream_start("n1", "n1,n2")
    c.member_view(2.6, "n1", 14, "n1,n2,n3")
    c.member_stream_start("n2", "n1,n2,n3")
    c.member_view(2.7, "n2", 15, "n1,n2,n3,n4")
    c.member_view(2.8, "n2", 16, "n1,n2,n3,n4")  # no change: nothing reported twice
    c.member_stream_start("n1", None)
    c.member_view(3.0, "n1", 3, "n1,n2")
    c.member_view(3.1, "n1", 9, "n1,n2,n3")  # skipped 5, which others saw
    c.check_member_streams(4.0)
    rules = [v.rule for v in c.violations]
    assert rules.count("member-order") == 1 and rules.count("member-view") == 1 and "member-gap" in rules, rules
    # a stream that begins from a wrong view (none, at version 9) reports n1, n2 joined again
    c = CoordChecker()
    c.member_stream_start("n1", None)
    c.member_view(1.0, "n1", 3, "n1,n2")
    c.member_view(1.1, "n1", 9, "n1,n2,n3")
    c.member_stream_start("n2", None)
    c.member_view(1.2, "n2", 12, "n1,n2")
    c.check_member_streams(2.0)
    assert sorted(v.detail.split()[1] for v in c.violations if v.rule == "member-rejoin") == ["n1", "n2"], \
        c.violations
