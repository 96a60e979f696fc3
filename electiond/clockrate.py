"""How fast each peer's clock runs against ours, and whether that breaks the bound (sans-IO).

quorum-lease is safe only while any two members' clocks run at rates whose
ratio stays within (1+rho)/(1-rho) (rho = ``clock_drift_ppm``; see the top of
protocols/lease.py): a follower's promise must outlast the leader's lease.
Every member's PRESENCE beacon carries its monotonic reading ``c`` (ms); we
note it with our own reading ``t`` when it arrives.

The estimator. For one peer, d = t - c. If the peer's clock runs at rate r
against ours, d = d0 + (1 - r)*t + delay, and a delay is never negative: a
late delivery (a queue, our own loop stalled, a GC pause) only pushes a
point UP. So the estimate is a line *under* every point: the one that sits
as high as possible at the window's middle t_mid (the linear program of
Moon, Skelly and Towsley, 1999, for clock skew from one-way delays). It is
the edge of the points' lower convex hull that spans t_mid; r = 1 - slope.
Late points, any number of them, cannot pull it down, and a point can only
lift the line by being early, which no delay can make it.

Its error. Let every point sit e >= 0 above the true line (its delay beyond
the smallest), and suppose each outer quarter of the window holds a point
with e <= E ("on time"). The fitted line is below those two points and, at
t_mid, not below the true line (the true line is a candidate and the fit
is the highest one there). A line through at least 0 at t_mid and at most
E at a distance >= span/4 on either side has a slope error of at most
4E/span. E is estimated as max(5 ms, 4 x the median height of the points
above the fitted line), so a noisy path widens the margin by itself.

The decision, per peer, with r^ the estimate and m = 4E/span:
  * no verdict until the window (the last 30 s, or 60 beacon periods)
    spans ``min_span_s`` (4 beacon periods);
  * a set of points is *excess* when r^ - m > (1+rho)/(1-rho) or
    r^ + m < (1-rho)/(1+rho), i.e. beyond the bound even at the error
    bound's most favourable end, on the whole set AND on its older and
    newer halves fitted apart (each with at least 3 points and its own
    margin), in the same direction. A true rate shows in every part of the
    set; a burst of late points (a delay spike, a lone early point before a
    partition's gap) fools one part at most. In the simulator's fault
    campaigns the whole-set test alone was fooled about once a run by such
    sparse, gapped windows; the halves never were. Too few points for the
    halves is no news: the verdict waits;
  * the sets tested are the whole window and, when the newest point sits
    more than E above the fitted line or r^ is outside the bound (a rate
    that changed lately bends the line, and the whole window's margin grows
    with the bend), also the last min_span_s, 2*min_span_s, 4*...; any
    excess set counts;
  * BEYOND once every estimate has been excess for ``persist_s`` (2 beacon
    periods, at least three estimates);
  * back to WITHIN only after the whole window's r^ stayed inside the
    bound for ``clear_s`` (20 beacon periods); the old points must first
    leave the window, so a clock put right clears within window + clear_s;
  * a reading more than 5 s older than the newest (the peer's host
    rebooted) restarts the peer's window; its verdict stays until new data
    decides. A reading older by less (reordered, duplicated) is skipped, and
    of a burst handed over at one instant only the newest counts;
  * cost: while WITHIN, a point that lands 0..E above the last fit (whose
    r^ was within the bound widened by half its margin) is taken without
    refitting, for up to ``refit_s`` (4 beacon periods); any other point
    refits at once.
With rates inside the bound, a false alarm needs, in both halves of a set
at once, each outer quarter to hold no point within E of the lower
envelope, for ``persist_s`` on end. On loopback (E = 5 ms, deliveries within
a ms, the odd 100-300 ms stall) the tests see none over hours of beacons,
nor do the simulator's campaigns (tests/test_sim_campaign.py, every seed: a
clock verdict there is the violation ``clock-false-alarm``). At x0.5 or x2
the excess is 0.5-1 against margins of a few percent; 1.01 is 0.8 % beyond
a 2000 ppm bound. With beacons every 0.5 s of our clock, x2 is flagged 3-4 s
after the first beacon, 1.01 after 7-9 s, x0.5 (whose beacons come once a
second) after 6-7 s. A node whose own clock runs at x0.5 sees its peers at
x2, so it blames itself after about 3-4 s of its own clock (6-8 s of real
time); a rate that changes while running is seen about as fast.

Who is wrong is a vote (``self_blame``): a node whose clock is beyond the
bound against a strict majority of the live peers it has verdicts for, and
against at least two of them when it has two or more peers, concludes the
fault is its own. With a single verdict it cannot tell which of the two
clocks is off: it flags the peer and leaves the call to the others.
"""

from __future__ import annotations

from typing import Final

UNKNOWN: Final = "unknown"  # not enough data yet
WITHIN: Final = "within"
BEYOND: Final = "beyond"

JITTER_FLOOR_S: Final = 0.005
JITTER_FACTOR: Final = 4.0
# further back than any reordering: the peer's host rebooted
REBOOT_STEP_S: Final = 5.0
MAX_SAMPLES: Final = 512  # a beacon faster than configured cannot grow the window without end
MIN_HALF_POINTS: Final = 3
UNDECIDED: Final = 2  # _excess: beyond on the whole, too few points to check the halves


class ClockBounds:
    """The timing of the decision, derived from the beacon period and rho."""

    __slots__ = ("rate_high", "rate_low", "window_s", "min_span_s", "persist_s", "clear_s", "refit_s")

    def __init__(self, clock_drift_ppm: float, beacon_interval_s: float) -> None:
        rho = clock_drift_ppm / 1e6
        self.rate_high: float = (1.0 + rho) / (1.0 - rho)
        self.rate_low: float = 1.0 / self.rate_high
        self.window_s: float = max(30.0, 60.0 * beacon_interval_s)
        self.min_span_s: float = 4.0 * beacon_interval_s
        self.persist_s: float = 2.0 * beacon_interval_s
        self.clear_s: float = 20.0 * beacon_interval_s
        self.refit_s: float = 4.0 * beacon_interval_s


class RateEstimate:
    __slots__ = ("rate", "margin", "span_s", "jitter_s", "newest_height_s", "base", "slope")

    def __init__(self, rate: float, margin: float, span_s: float, jitter_s: float, newest_height_s: float,
                 base: float, slope: float) -> None:
        self.rate = rate  # the peer's clock seconds per second of ours
        self.margin = margin  # the error bound 4E/span on ``rate``
        self.span_s = span_s
        self.jitter_s = jitter_s  # E
        self.newest_height_s = newest_height_s  # how far the newest point sits above the line
        self.base = base  # the line: d = base + slope * t
        self.slope = slope

    def height_s(self, t: float, d: float) -> float:
        return d - (self.base + self.slope * t)


def lower_envelope_rate(ts: list[float], ds: list[float]) -> RateEstimate | None:
    """The rate from points (t, d = t - c) sorted by t, as the module says."""
    n = len(ts)
    if n < 2 or ts[-1] <= ts[0]:
        return None
    # lower hull, monotone chain: keep turning counter-clockwise
    hull: list[int] = []
    for i in range(n):
        while len(hull) >= 2:
            a = hull[-2]
            b = hull[-1]
            cross = (ts[b] - ts[a]) * (ds[i] - ds[a]) - (ds[b] - ds[a]) * (ts[i] - ts[a])
            if cross <= 0.0:
                hull.pop()
            else:
                break
        hull.append(i)
    t_mid = 0.5 * (ts[0] + ts[-1])
    k = 0
    while k < len(hull) - 2 and ts[hull[k + 1]] <= t_mid:
        k += 1
    a = hull[k]
    b = hull[k + 1]
    slope = (ds[b] - ds[a]) / (ts[b] - ts[a])
    base = ds[a] - slope * ts[a]
    heights = [ds[i] - (base + slope * ts[i]) for i in range(n)]
    newest_height_s = heights[-1]
    heights.sort()
    median = heights[n // 2] if n % 2 else 0.5 * (heights[n // 2 - 1] + heights[n // 2])
    jitter_s = max(JITTER_FLOOR_S, JITTER_FACTOR * median)
    span_s = ts[-1] - ts[0]
    return RateEstimate(1.0 - slope, 4.0 * jitter_s / span_s, span_s, jitter_s, newest_height_s, base, slope)


class PeerClock:
    """One peer's window of (our time, their reading) and its verdict."""

    __slots__ = ("bounds", "ts", "ds", "last_clock_s", "verdict", "estimate", "excess_since", "inside_since",
                 "resets", "fitted_at")

    def __init__(self, bounds: ClockBounds) -> None:
        self.bounds = bounds
        self.ts: list[float] = []
        self.ds: list[float] = []
        self.last_clock_s: float = -1.0
        self.verdict: str = UNKNOWN
        self.estimate: RateEstimate | None = None
        self.excess_since: float = -1.0  # start of the current run of excess estimates; -1: none
        self.inside_since: float = -1.0  # start of the current run of in-bound estimates
        self.resets = 0
        self.fitted_at = -1e300

    def observe(self, now: float, clock_s: float) -> bool:
        """One beacon read ``clock_s`` on the peer and arrived at our ``now``.
        Returns whether the verdict changed."""
        if clock_s < self.last_clock_s - REBOOT_STEP_S:
            # a monotonic clock went far back: a reboot, not a rate
            self.ts.clear()
            self.ds.clear()
            self.estimate = None
            self.resets += 1
        elif clock_s <= self.last_clock_s or (self.ts and now < self.ts[-1]):
            # a duplicate, or overtaken by a newer beacon: late, so above the
            # envelope anyway
            return False
        self.last_clock_s = clock_s
        if self.ts and now == self.ts[-1]:
            # a burst handed over at one instant (our loop was frozen): the
            # newest reading is the least late; one point per instant keeps
            # the hull's edges from standing upright
            self.ds[-1] = now - clock_s
            return False
        self.ts.append(now)
        self.ds.append(now - clock_s)
        b = self.bounds
        drop = 0
        while drop < len(self.ts) - 1 and (now - self.ts[drop] > b.window_s or len(self.ts) - drop > MAX_SAMPLES):
            drop += 1
        if drop:
            del self.ts[:drop]
            del self.ds[:drop]
        if now - self.ts[0] < b.min_span_s:
            if self.verdict == WITHIN:  # a reset: old evidence is gone
                self.verdict = UNKNOWN
                return True
            return False
        old_est = self.estimate
        if (self.verdict == WITHIN and old_est is not None and now - self.fitted_at < b.refit_s
                and b.rate_low - 0.5 * old_est.margin <= old_est.rate <= b.rate_high + 0.5 * old_est.margin
                and 0.0 <= old_est.height_s(now, now - clock_s) <= old_est.jitter_s):
            # within, the last fit well short of an excess, and the point
            # lands where that fit expects it: the common case, refitted only
            # every refit_s (the simulator's campaigns spend far less here)
            return False
        est = lower_envelope_rate(self.ts, self.ds)
        if est is None:
            return False
        self.estimate = est
        self.fitted_at = now
        excess = _excess(self.ts, self.ds, est, b)
        # a rate that changed lately shows in the recent points first (the
        # whole window's line bends there and its margin grows): look at the
        # last min_span_s, then twice that, ... too. Only when there is a
        # sign of it, the newest point off the line or the line off the bound
        # (a bend either way shows as one of them); most beacons show neither
        bent = est.newest_height_s > est.jitter_s or not b.rate_low <= est.rate <= b.rate_high
        span_s = b.min_span_s
        start = len(self.ts) - 1
        undecided = excess == UNDECIDED
        while bent and (excess == 0 or excess == UNDECIDED) and span_s < now - self.ts[0]:
            excess = 0
            while start > 0 and now - self.ts[start - 1] <= span_s:
                start -= 1
            if now - self.ts[start] >= 0.5 * span_s:
                recent = lower_envelope_rate(self.ts[start:], self.ds[start:])
                if recent is not None:
                    excess = _excess(self.ts[start:], self.ds[start:], recent, b)
                    undecided = undecided or excess == UNDECIDED
            span_s *= 2.0
        if excess == 0 and undecided:
            excess = UNDECIDED
        return self._judge(now, est, excess)

    def _judge(self, now: float, est: RateEstimate, excess_sign: int) -> bool:
        b = self.bounds
        if excess_sign == UNDECIDED:
            return False  # no news: wait for the points that can say
        excess = excess_sign != 0
        inside = b.rate_low <= est.rate <= b.rate_high
        if excess:
            if self.excess_since < 0.0:
                self.excess_since = now
        else:
            self.excess_since = -1.0
        if inside:
            if self.inside_since < 0.0:
                self.inside_since = now
        else:
            self.inside_since = -1.0
        old = self.verdict
        if old != BEYOND:
            if excess and now - self.excess_since >= b.persist_s:
                self.verdict = BEYOND
            elif not excess:
                self.verdict = WITHIN
        elif inside and now - self.inside_since >= b.clear_s:
            self.verdict = WITHIN
        return self.verdict != old

    def rate(self) -> float | None:
        return None if self.estimate is None else self.estimate.rate


def _beyond(est: RateEstimate, b: ClockBounds) -> int:
    if est.rate - est.margin > b.rate_high:
        return 1
    if est.rate + est.margin < b.rate_low:
        return -1
    return 0


def _excess(ts: list[float], ds: list[float], est: RateEstimate, b: ClockBounds) -> int:
    """+1 (-1) when the points' rate ``est`` and that of their older and
    newer halves, fitted apart, are each above (below) the bound by more
    than their own margin; UNDECIDED when the halves are too thin to say;
    else 0."""
    sign = _beyond(est, b)
    if sign == 0:
        return 0  # the halves cost two more fits: only when it matters
    t_mid = 0.5 * (ts[0] + ts[-1])
    m = 0
    while ts[m] < t_mid:
        m += 1
    if m < MIN_HALF_POINTS or len(ts) - m < MIN_HALF_POINTS:
        return UNDECIDED
    older = lower_envelope_rate(ts[:m], ds[:m])
    newer = lower_envelope_rate(ts[m:], ds[m:])
    if older is None or newer is None or _beyond(older, b) != sign or _beyond(newer, b) != sign:
        return 0
    return sign


def self_blame(beyond: int, known: int, peers: int) -> bool:
    """Whether our own clock is the odd one out: beyond the bound against a
    strict majority of the ``known`` live peers with a verdict, and against
    at least two when there are two or more ``peers`` (with one verdict
    against one it cannot say whose clock is off)."""
    need = 2 if peers >= 2 else 1
    return beyond >= need and 2 * beyond > known
