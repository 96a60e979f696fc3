"""RefreshSchedule: when the leader's refresh hook is due (pure, made-up times)."""

from electiond.refresh import RefreshSchedule


def test_no_refresh_before_a_promote_or_after_a_demote():
    r = RefreshSchedule(2.0)
    assert r.due(100.0) is None and r.at_once(100.0) is None
    r.promoted(7, 10.0)
    r.demoted()
    assert r.due(1000.0) is None and r.next_at == float("inf")


def test_one_interval_after_the_promote_then_every_interval_without_catching_up():
    r = RefreshSchedule(2.0)
    r.promoted(7, 10.0)
    assert r.due(11.9) is None
    assert r.due(12.0) == 7
    assert r.due(12.5) is None
    # the shell was busy for three periods: one refresh, not three
    assert r.due(19.0) == 7
    assert r.due(20.9) is None and r.next_at == 21.0


def test_at_once_refreshes_now_and_restarts_the_period():
    r = RefreshSchedule(2.0)
    r.promoted(3, 0.0)
    assert r.at_once(1.5) == 3
    assert r.due(2.0) is None and r.due(3.5) == 3


def test_a_new_promote_takes_the_new_term():
    r = RefreshSchedule(1.0)
    r.promoted(3, 0.0)
    r.promoted(5, 0.5)
    assert r.due(1.5) == 5
