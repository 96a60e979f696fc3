"""The clock-rate estimator and its verdicts, on made-up beacons with jitter and stalls."""

import random

import pytest

from electiond.clockrate import (
    BEYOND,
    UNKNOWN,
    WITHIN,
    ClockBounds,
    PeerClock,
    lower_envelope_rate,
    self_blame,
)

BEACON_S = 0.5  # the default presence interval
DRIFT_PPM = 1000.0


def bounds():
    return ClockBounds(DRIFT_PPM, BEACON_S)


def delays_loopback(rng):
    """Loopback on a busy 2-core box: ~1 ms, now and then a 100-300 ms stall."""
    def draw():
        d = 0.0002 + rng.expovariate(1 / 0.001)
        if rng.random() < 0.03:
            d += rng.uniform(0.1, 0.3)
        return d
    return draw


def feed(peer, rate, delay, until_s, start_s=0.0, offset_s=1000.0, period_s=BEACON_S, rng=None,
         their_start=None):
    """The peer beacons every period_s of ITS clock; its clock runs at ``rate``
    seconds per second of ours. Yields (arrival on our clock, verdict)."""
    rng = rng or random.Random(0)
    t_send = start_s
    base = offset_s if their_start is None else their_start
    arrivals = []
    while t_send < until_s:
        c = base + (t_send - start_s) * rate
        arrivals.append((t_send + delay(), c))
        t_send += period_s / rate * rng.uniform(0.98, 1.02)
    out = []
    last = -1.0
    for t, c in sorted(arrivals):
        t = max(t, last)  # our loop hands them over in arrival order
        last = t
        peer.observe(t, round(c * 1000) / 1000)  # clock_ms: the wire's resolution
        out.append((t, peer.verdict))
    return out


def first_beyond(trace):
    return next((t for t, v in trace if v == BEYOND), None)


def test_a_straight_line_gives_its_slope():
    ts = [0.5 * i for i in range(20)]
    ds = [t - (100 + 1.01 * t) for t in ts]
    est = lower_envelope_rate(ts, ds)
    assert est.rate == pytest.approx(1.01, abs=1e-9)
    assert est.jitter_s == 0.005 and est.margin == pytest.approx(4 * 0.005 / ts[-1])


def test_late_points_cannot_pull_the_envelope():
    """Half the points arrive late by up to 300 ms: least squares would be off
    by percent, the lower envelope is exact while on-time points remain."""
    rng = random.Random(4)
    ts = [0.5 * i for i in range(60)]
    late = [rng.random() < 0.5 for _ in ts]
    ds = [t * 0.0005 + (rng.uniform(0.05, 0.3) if k else 0.0) for t, k in zip(ts, late)]
    est = lower_envelope_rate(ts, ds)
    assert est.rate == pytest.approx(1 - 0.0005, abs=1e-6)


@pytest.mark.parametrize("rate,within_s", [(2.0, 5.0), (0.5, 8.0), (1.01, 10.0), (0.99, 10.0)])
def test_beyond_the_bound_is_flagged_within_seconds(rate, within_s):
    peer = PeerClock(bounds())
    trace = feed(peer, rate, delays_loopback(random.Random(1)), until_s=30.0)
    at = first_beyond(trace)
    assert at is not None and at <= within_s, at
    assert all(v == BEYOND for t, v in trace if t > at)  # and it stays flagged


@pytest.mark.parametrize("seed", range(40))
def test_no_false_alarm_within_the_bound_under_jitter_and_stalls(seed):
    rng = random.Random(seed)
    rho = DRIFT_PPM / 1e6
    # the two clocks each within rho of true time: the worst ratio is (1+rho)/(1-rho)
    rate = (1 + rng.uniform(-rho, rho)) / (1 + rng.uniform(-rho, rho))
    peer = PeerClock(bounds())
    trace = feed(peer, rate, delays_loopback(rng), until_s=300.0, rng=rng)
    assert first_beyond(trace) is None
    assert trace[-1][1] == WITHIN
    assert abs(peer.rate() - rate) <= peer.estimate.margin


def test_no_false_alarm_at_the_edge_of_the_bound():
    hi = bounds().rate_high
    for rate in (hi * 0.9999, 1 / hi * 1.0001):
        peer = PeerClock(bounds())
        assert first_beyond(feed(peer, rate, delays_loopback(random.Random(7)), until_s=200.0)) is None


def test_our_own_long_stall_is_not_a_rate():
    """Our loop froze 3 s (SIGSTOP, a VM pause): the queued beacons arrive at
    once, late, followed by fresh ones."""
    peer = PeerClock(bounds())
    stall = (10.0, 13.0)

    def arrival(t):
        return stall[1] if stall[0] <= t < stall[1] else t

    t = 0.0
    while t < 40.0:
        peer.observe(arrival(t) + 0.001, 500.0 + t)
        assert peer.verdict != BEYOND, t
        t += BEACON_S


def test_a_delay_spike_at_the_end_of_the_window_is_not_enough():
    """2 s of every beacon 0-400 ms late, just after the first verdict."""
    rng = random.Random(3)
    peer = PeerClock(bounds())

    def delay_at(t):
        return rng.uniform(0.0, 0.4) if 3.0 <= t < 5.0 else 0.0005

    t = 0.0
    while t < 30.0:
        peer.observe(t + delay_at(t), 77.0 + t)
        assert peer.verdict != BEYOND, t
        t += BEACON_S


def test_a_lone_early_point_and_a_gap_are_not_a_rate():
    """What the simulator showed: a few beacons, all late (a delay spike),
    then a partition's silence, then on-time beacons again. The whole window
    fitted at once looks like x0.85; its halves cannot both agree."""
    peer = PeerClock(bounds())
    for t, late_s in [(0.0, 0.0), (1.25, 0.0), (3.5, 0.35), (4.35, 0.56)]:
        peer.observe(t + late_s, 40.0 + t)
    for k in range(40):
        t = 12.0 + 0.5 * k
        peer.observe(t + 0.001, 40.0 + t)
        assert peer.verdict != BEYOND, t
    assert peer.verdict == WITHIN


def test_a_burst_at_one_instant_keeps_the_newest_reading():
    peer = PeerClock(bounds())
    for k in range(5):  # queued while we were frozen, handed over at t=3
        peer.observe(3.0, 10.0 + 0.5 * k)
    assert peer.ts == [3.0] and peer.ds == [3.0 - 12.0]
    assert not peer.observe(3.1, 11.0)  # older than the newest: skipped
    assert peer.ts == [3.0]


def test_verdict_needs_data_then_clears_only_after_a_sustained_return():
    b = bounds()
    peer = PeerClock(b)
    t, c = 0.0, 0.0
    history = []
    while t < 120.0:
        rate = 0.5 if t < 30.0 else 1.0  # the bad clock is fixed at t=30
        peer.observe(t + 0.001, c)
        history.append((t, peer.verdict))
        t += BEACON_S
        c += BEACON_S * rate
    assert history[0][1] == UNKNOWN
    assert first_beyond(history) <= b.min_span_s + b.persist_s + BEACON_S
    cleared = next(t for t, v in history if t > 30.0 and v == WITHIN)
    # old points leave the window first, then clear_s of in-bound estimates
    assert 30.0 + b.clear_s <= cleared <= 30.0 + b.window_s + b.clear_s


def test_a_reading_that_goes_back_restarts_the_window():
    """The peer's host rebooted: its monotonic clock starts again near 0."""
    peer = PeerClock(bounds())
    trace = feed(peer, 1.0, lambda: 0.001, until_s=20.0, their_start=5000.0)
    assert trace[-1][1] == WITHIN
    feed(peer, 1.0, lambda: 0.001, start_s=25.0, until_s=60.0, their_start=3.0)
    assert peer.resets == 1 and peer.verdict == WITHIN
    assert peer.rate() == pytest.approx(1.0, abs=0.002)


def test_a_slower_beacon_scales_the_timing():
    b = ClockBounds(DRIFT_PPM, 1.0)
    assert (b.min_span_s, b.persist_s, b.clear_s, b.window_s, b.refit_s) == (4.0, 2.0, 20.0, 60.0, 4.0)
    assert b.rate_high == pytest.approx(1.001 / 0.999) and b.rate_low == pytest.approx(0.999 / 1.001)


@pytest.mark.parametrize("beyond,known,peers,blame", [
    (2, 2, 2, True),    # 3 nodes: both peers disagree with us
    (1, 2, 2, False),   # 3 nodes: one peer disagrees: it is the odd one
    (1, 1, 2, False),   # 3 nodes, one peer silent: cannot tell whose clock is off
    (1, 1, 1, True),    # 2 nodes: nobody else to ask
    (2, 4, 4, False),   # 5 nodes: a tie is no majority
    (3, 4, 4, True),
    (2, 3, 4, True),    # one peer has no verdict yet
    (0, 0, 4, False),
])
def test_self_blame_is_a_strict_majority_of_at_least_two(beyond, known, peers, blame):
    assert self_blame(beyond, known, peers) is blame
