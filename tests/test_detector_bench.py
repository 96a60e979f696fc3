"""A small budget of the detector measurement (sim/detection.py) and its goals.

The full table is in electiond/sim/DETECTOR.md (scripts/bench-detector).
Seeded, so deterministic; the margins are generous so that a retune of the
detector that keeps the qualitative result keeps passing.
"""

from __future__ import annotations

import random

import pytest

from electiond.sim import detection as m

IV = 0.05


def _row(rows, profile, detector):
    return next(r for r in rows if r.profile == profile and r.detector == detector)


@pytest.fixture(scope="module")
def rows():
    return m.measure(
        ["quiet", "uniform10", "heavy-tail", "gc-stalls", "loss1"], [1], duration_s=1800.0, crashes=80,
        detectors=["adaptive", "fixed-3x"],
    )


def test_quiet_lan_detects_a_dead_leader_within_two_intervals(rows):
    adaptive = _row(rows, "quiet", "adaptive")
    assert adaptive.median_ms <= 2 * IV * 1000
    assert adaptive.false_suspicions == 0
    # the baseline behaves as a 150 ms timeout must: median 150 - 25 ms
    fixed = _row(rows, "quiet", "fixed-3x")
    assert 115 <= fixed.median_ms <= 135
    assert adaptive.median_ms < fixed.median_ms


def test_adaptive_raises_no_more_false_alarms_than_fixed_under_jitter(rows):
    for profile in ("uniform10", "heavy-tail", "gc-stalls", "loss1"):
        adaptive = _row(rows, profile, "adaptive")
        fixed = _row(rows, profile, "fixed-3x")
        assert adaptive.false_suspicions <= fixed.false_suspicions, profile


def test_adaptive_is_much_quieter_when_the_leader_stalls_or_loses_packets(rows):
    for profile in ("heavy-tail", "gc-stalls"):
        fixed = _row(rows, profile, "fixed-3x")
        assert fixed.false_suspicions >= 10, profile  # the profile does hurt a fixed timeout
        assert _row(rows, profile, "adaptive").false_suspicions <= fixed.false_suspicions / 2, profile


def test_every_crash_is_detected_within_the_ceiling(rows):
    for r in rows:
        assert r.crashes == 80
        assert r.p99_ms <= 1000 * 1.0 + 1, (r.profile, r.detector)


def test_uniform10_stream_spans_interval_plus_minus_ten_percent():
    s = m.heartbeat_stream(m.PROFILES["uniform10"], random.Random(4), IV, 60.0)
    gaps = [b - a for a, b in zip(s.arrivals, s.arrivals[1:])]
    assert min(gaps) >= 0.9 * IV - 1e-9 and max(gaps) <= 1.1 * IV + 1e-9
    assert min(gaps) < 0.92 * IV and max(gaps) > 1.08 * IV


def test_loss_and_stall_profiles_do_what_they_say():
    lossy = m.heartbeat_stream(m.PROFILES["loss1"], random.Random(4), IV, 600.0)
    assert 0.005 <= 1 - len(lossy.arrivals) / (600.0 / IV) <= 0.015
    gc = m.heartbeat_stream(m.PROFILES["gc-stalls"], random.Random(4), IV, 600.0)
    long_gaps = [b - a for a, b in zip(gc.arrivals, gc.arrivals[1:]) if b - a > 0.15]
    assert 50 <= len(long_gaps) <= 70  # one per ~10 s
    assert max(long_gaps) <= 0.30 + IV + 0.01


def test_fixed_timeout_detector_baseline():
    f = m.FixedTimeout(0.15)
    f.reset(1.0)
    assert f.deadline() == pytest.approx(1.15)
    f.heartbeat(1.05)
    assert not f.suspects(1.19) and f.suspects(1.2)
