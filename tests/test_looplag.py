"""The event loop's lag as the shell measures it, with made-up times, and in a real daemon."""

import pytest

from electiond.looplag import WINDOW_S, LoopLag


def test_lag_is_how_late_a_timer_fired_never_negative():
    lag = LoopLag(late_after_s=0.05)
    lag.fired(due=1.000, now=1.002)
    assert lag.last_s == pytest.approx(0.002)
    lag.fired(due=2.000, now=1.999)  # a timer that fired early is not negative lag
    assert lag.last_s == 0.0
    assert lag.wakeups == 2 and lag.late == 0


def test_wakeups_later_than_an_interval_are_counted():
    lag = LoopLag(late_after_s=0.05)
    lag.fired(1.0, 1.01)
    lag.fired(2.0, 2.08)
    lag.fired(3.0, 3.30)
    assert lag.late == 2
    assert lag.snapshot(3.3) == {"last_ms": 300.0, "max_ms_60s": 300.0, "late_wakeups": 2, "wakeups": 3}


def test_the_worst_lag_is_kept_for_a_minute_then_forgotten():
    lag = LoopLag(late_after_s=0.05)
    lag.fired(10.0, 10.4)  # a 400 ms stall
    for i in range(1, 50):
        lag.fired(10.0 + i, 10.0 + i + 0.001)
    assert lag.max_s(59.0) == pytest.approx(0.4)
    assert lag.max_s(10.4 + WINDOW_S + 0.01) == pytest.approx(0.001)
    lag.fired(200.0, 200.002)
    assert lag.max_s(200.002) == pytest.approx(0.002)


def test_a_running_daemon_reports_its_loop_lag(tmp_path):
    from cluster import Cluster

    with Cluster(tmp_path, 2, protocol="bully") as c:
        c.start_all()
        leader = c.wait_leader(10.0)
        c.wait_for(lambda: c.status(leader)["loop_lag"]["wakeups"] > 20, 10.0, "timer wake-ups")
        lag = c.status(leader)["loop_lag"]
        assert set(lag) == {"last_ms", "max_ms_60s", "late_wakeups", "wakeups"}
        # generous: the machine is shared; a second of lag would be a broken shell
        assert 0.0 <= lag["last_ms"] <= lag["max_ms_60s"] < 1000.0
