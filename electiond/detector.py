"""Failure detection and retry policy (pure): DESIGN §4.

``LeaderWatch`` is a phi-accrual detector (Hayashibara et al.; the variant
Akka uses) for the heartbeats of one peer. It keeps a bounded window of
heartbeat inter-arrival times, models them as a normal distribution and
reports phi = -log10(P(the next heartbeat is still coming)). Suspicion starts
when phi reaches ``settings.suspicion_threshold``. Because phi is monotonic in
the time since the last heartbeat, that instant can be computed in advance by
inverting phi, so the shell sleeps until ``deadline()`` instead of polling.

A normal model alone underestimates rare long gaps (a GC pause, a lost
heartbeat): one gap of 5 x the interval among 1000 samples barely moves the
standard deviation. So the timeout is also never shorter than the largest gap
in the window times a margin (Akka's "acceptable heartbeat pause", but learned
rather than configured): a gap the leader has already survived is not proof of
death. Then the timeout is clamped between a floor (quiet LAN: fast detection,
but a single lost heartbeat never condemns) and a ceiling (a loaded network
may widen the timeout, never without bound).

Until the window holds enough samples (after start or a change of leader) the
watch falls back to the configured randomized election timeout, as Raft does.
"""

from __future__ import annotations

import math
import random
from collections import deque
from typing import Any, ClassVar, Final

from electiond.protocols.base import Settings

# 1000 heartbeats: 50 s at the default 50 ms, long enough to remember a
# periodic stall (GC, cron, backup) that recurs every few tens of seconds
WINDOW_SIZE: Final = 1000
# below this many samples the mean and deviation mean little: use the
# configured randomized election timeout instead
MIN_SAMPLES: Final = 8
# a perfectly regular LAN has a deviation near zero, which would make phi a
# step function; Akka uses the same kind of lower bound
MIN_STD_INTERVALS: Final = 0.1
# one lost heartbeat plus a 10 % late next one must not condemn a leader
FLOOR_INTERVALS: Final = 2.2
# margin over the largest inter-arrival gap still in the window. 1.5 is what
# the measurement (sim/DETECTOR.md) chose: one lost heartbeat in the window
# (a 2-interval gap) then tolerates two in a row; larger margins buy few more
# false-alarm reductions under heavy-tailed delay at a clear latency cost
SURVIVED_GAP_MARGIN: Final = 1.5
# each timeout is stretched by U(0, SPREAD) so that followers watching the same
# leader do not all suspect it, and start elections, at the same instant
SPREAD_FRACTION: Final = 0.1
# the shell sleeps until deadline(); waking later than that by more than this
# many timeouts means this node itself was frozen (SIGSTOP, VM pause, a starved
# event loop), so the silence it measured says nothing about the peer
LOCAL_PAUSE_TIMEOUTS: Final = 1.0
# phi for elapsed times so far in the tail that the float survival is 0
_PHI_MAX: Final = 1e6

def _normal_phi(z: float) -> float:
    """-log10(P(X > z)) for a standard normal X, accurate far into the tail."""
    survival = 0.5 * math.erfc(z / math.sqrt(2.0))
    if survival > 0.0:
        return -math.log10(survival)
    # asymptotic: log Q(z) ~ -z^2/2 - log(z * sqrt(2 pi))
    log_q = -0.5 * z * z - math.log(z * math.sqrt(2.0 * math.pi))
    return min(_PHI_MAX, -log_q / math.log(10.0))


def _z_for_phi(phi: float) -> float:
    """The z at which _normal_phi(z) == phi (the inverse of the survival).

    Bisection on the survival rather than statistics.NormalDist: computed
    once per watch, and importing statistics (fractions, decimal) costs the
    daemon about 1 MiB of RSS it needs for nothing else."""
    target = 10.0 ** (-phi)
    lo, hi = -40.0, 40.0  # survival(-40) = 1, survival(40) underflows to 0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if 0.5 * math.erfc(mid / math.sqrt(2.0)) > target:
            lo = mid
        else:
            hi = mid
        if hi - lo < 1e-12:
            break
    return 0.5 * (lo + hi)


class _Window:
    """Bounded window of inter-arrival times with O(1) mean, deviation and max."""

    # running sums drift; recompute them exactly this often
    _RESUM_EVERY: Final = 4096

    def __init__(self, size: int) -> None:
        self._size = size
        self._samples: deque[float] = deque()
        self._maxima: deque[float] = deque()  # non-increasing: sliding maximum
        self._sum = 0.0
        self._sum_sq = 0.0
        self._since_resum = 0

    def __len__(self) -> int:
        return len(self._samples)

    def add(self, gap_s: float) -> None:
        samples = self._samples
        maxima = self._maxima
        if len(samples) == self._size:
            old = samples.popleft()
            self._sum -= old
            self._sum_sq -= old * old
            if maxima[0] == old:
                maxima.popleft()
        samples.append(gap_s)
        self._sum += gap_s
        self._sum_sq += gap_s * gap_s
        while maxima and maxima[-1] < gap_s:
            maxima.pop()
        maxima.append(gap_s)
        self._since_resum += 1
        if self._since_resum >= self._RESUM_EVERY:
            self._sum = math.fsum(samples)
            self._sum_sq = math.fsum(x * x for x in samples)
            self._since_resum = 0

    def clear(self) -> None:
        self._samples.clear()
        self._maxima.clear()
        self._sum = 0.0
        self._sum_sq = 0.0
        self._since_resum = 0

    def mean(self) -> float:
        return self.stats()[1]

    def std(self) -> float:
        return self.stats()[2]

    def max(self) -> float:
        return self._maxima[0]

    def stats(self) -> tuple[int, float, float, float]:
        """(count, mean, deviation, max) in one call: the detector's hot path."""
        n = len(self._samples)
        if n == 0:
            return 0, 0.0, 0.0, 0.0
        mean = self._sum / n
        variance = self._sum_sq / n - mean * mean  # a hair below 0.0 from rounding when all gaps are equal
        return n, mean, math.sqrt(variance) if variance > 0.0 else 0.0, self._maxima[0]


class LeaderWatch:
    """Watches the heartbeats of one peer (the current leader).

    Protocols call ``reset`` when the watched peer changes, ``heartbeat`` on
    each heartbeat from it, ``suspects`` when the shell wakes them at
    ``deadline()``. ``note_local_activity`` is optional (see there).
    """

    def __init__(
        self,
        settings: Settings,
        rng: random.Random,
        window: int = WINDOW_SIZE,
        survived_gap_margin: float = SURVIVED_GAP_MARGIN,
        detect_local_pauses: bool = True,
    ) -> None:
        self._settings = settings
        # off for watches nobody wakes at their deadline (status-only views):
        # there a late call says nothing about this node having been frozen
        self._detect_local_pauses = detect_local_pauses
        self._survived_gap_margin = survived_gap_margin
        self._rng = rng
        self._window = _Window(window)
        self._peer: str | None = None
        self._incarnation = -1  # the watched peer's term of office
        self._last_arrival: float | None = None  # last heartbeat from the peer
        # where the next inter-arrival gap is measured from; None after a local
        # pause, since a gap that spans our own freeze is not the peer's
        self._gap_from: float | None = None
        self._anchor = 0.0  # suspicion counts from here (last heartbeat or grace start)
        self._last_local = 0.0  # last time this node was seen running
        self._fallback_s = self._random_election_timeout()
        self._spread = 1.0
        self._timeout_s = self._fallback_s
        self._z_threshold = _z_for_phi(settings.suspicion_threshold)
        # fixed by the settings; computed once, used on every heartbeat
        self._floor_s = max(settings.min_suspicion_timeout_s, FLOOR_INTERVALS * settings.heartbeat_interval_s)
        self._ceiling_s = max(settings.max_suspicion_timeout_s, self._floor_s)
        self._min_std_s = MIN_STD_INTERVALS * settings.heartbeat_interval_s
        self.local_pauses = 0  # how many times a local freeze earned a grace period

    # ---- inputs -------------------------------------------------------------

    def reset(self, now: float, peer: str | None = None, incarnation: int = -1) -> None:
        """A new leader (or none): wait a fresh timeout from ``now``.

        The window describes one peer's heartbeats over one path during one
        term of office (``incarnation``: the term the peer leads in). If the
        same peer comes back in the same term (it kept leading through our
        false alarm), its history is kept, so the gap that caused the alarm is
        learned when its next heartbeat comes. Any other return (it crashed
        and restarted, it was deposed and re-won, we led meanwhile) starts a
        new term: the silence in between was its absence, not a gap it
        survived, and learning it would inflate the timeout for the next
        WINDOW_SIZE heartbeats. So the window is forgotten then.
        """
        if peer is None or peer != self._peer or incarnation != self._incarnation:
            self._window.clear()
            self._last_arrival = None
            self._gap_from = None
        self._peer = peer
        self._incarnation = incarnation
        self._anchor = now
        self._last_local = now
        self._fallback_s = self._random_election_timeout()
        self._spread = 1.0 + self._rng.uniform(0.0, SPREAD_FRACTION)
        self._timeout_s = self._compute_timeout_s()

    def heartbeat(self, now: float) -> None:
        if self._detect_local_pauses:
            self._locally_paused(now)
        self._learn(now)
        self._timeout_s = self._compute_timeout_s()

    def heartbeats(self, arrivals: list[float]) -> None:
        """Several heartbeats at once, for a watch that does not detect local
        pauses (status views): the same state as one heartbeat() each, with
        the timeout computed once at the end."""
        if self._detect_local_pauses:
            raise ValueError("batched heartbeats would hide local pauses")
        for now in arrivals:
            self._learn(now)
        self._timeout_s = self._compute_timeout_s()

    def _learn(self, now: float) -> None:
        previous = self._gap_from
        if previous is not None:
            gap_s = now - previous
            # longer than the ceiling is an outage, not jitter: learning it
            # would only pin the timeout at the ceiling
            if 0.0 <= gap_s <= self._settings.max_suspicion_timeout_s:
                self._window.add(gap_s)
        self._last_arrival = now
        self._gap_from = now
        self._anchor = now
        self._last_local = now

    def note_local_activity(self, now: float) -> None:
        """Optional: tell the watch this node is running at ``now``.

        ``suspects`` and ``heartbeat`` already do this; a protocol that wakes
        often without consulting the watch may call it so that a pause is
        measured from its last wake-up rather than its last consultation.
        """
        self._locally_paused(now)
        self._last_local = max(self._last_local, now)

    # ---- queries ------------------------------------------------------------

    def timeout_s(self) -> float:
        """How long after the last heartbeat suspicion starts."""
        return self._timeout_s

    def silence_s(self, now: float) -> float:
        """Seconds since the peer's last heartbeat (or since reset, before one)."""
        return now - self._anchor if self._last_arrival is None else now - self._last_arrival

    def deadline(self) -> float:
        """Local time at which phi reaches the threshold if no heartbeat comes."""
        return self._anchor + self._timeout_s

    def suspects(self, now: float) -> bool:
        self._locally_paused(now)
        self._last_local = max(self._last_local, now)
        return now >= self.deadline()

    def phi(self, now: float) -> float:
        """Suspicion level; reaches ``suspicion_threshold`` at ``deadline()``."""
        elapsed_s = max(0.0, now - self._anchor)
        threshold = self._settings.suspicion_threshold
        if not self.adaptive():
            return threshold * elapsed_s / self._timeout_s
        std_s = self._std_s()
        # the normal curve shifted so that it crosses the threshold exactly at
        # the (floored, capped, spread) timeout: phi and deadline() agree
        mean_s = self._timeout_s - self._z_threshold * std_s
        return max(0.0, _normal_phi((elapsed_s - mean_s) / std_s))

    def adaptive(self) -> bool:
        """True once the window holds enough samples to replace the fallback."""
        return len(self._window) >= MIN_SAMPLES

    def suspicion_snapshot(self, now: float) -> dict[str, Any]:
        """What `electionctl status` shows about this peer (read-only)."""
        n = len(self._window)
        return {
            "peer": self._peer,
            "phi": round(self.phi(now), 3),
            "threshold": self._settings.suspicion_threshold,
            "timeout_ms": round(self._timeout_s * 1000, 1),
            "mode": "adaptive" if self.adaptive() else "fallback",
            "samples": n,
            "mean_interval_ms": round(self._window.mean() * 1000, 2) if n else None,
            "std_interval_ms": round(self._window.std() * 1000, 2) if n else None,
            "max_interval_ms": round(self._window.max() * 1000, 1) if n else None,
            "since_heartbeat_ms": (
                None if self._last_arrival is None else round((now - self._last_arrival) * 1000, 1)
            ),
            "local_pauses": self.local_pauses,
        }

    # ---- internals ----------------------------------------------------------

    def floor_s(self) -> float:
        return self._floor_s

    def _random_election_timeout(self) -> float:
        s = self._settings
        return self._rng.uniform(s.election_timeout_min_s, s.election_timeout_max_s)

    def _std_s(self) -> float:
        return max(self._window.std(), self._min_std_s)

    def _compute_timeout_s(self) -> float:
        n, mean_s, std_s, max_s = self._window.stats()
        if n < MIN_SAMPLES:
            return self._fallback_s
        phi_timeout_s = mean_s + self._z_threshold * (std_s if std_s > self._min_std_s else self._min_std_s)
        # comparisons, not max(): compiled, max() boxes every float
        survived_s = self._survived_gap_margin * max_s
        timeout_s = phi_timeout_s if phi_timeout_s >= survived_s else survived_s
        if self._floor_s > timeout_s:
            timeout_s = self._floor_s
        timeout_s *= self._spread
        return timeout_s if timeout_s < self._ceiling_s else self._ceiling_s

    def _locally_paused(self, now: float) -> bool:
        """Detect that this node itself was frozen, and grant a grace period.

        The shell wakes the protocol at deadline(); a wake-up far later than
        that means this node did not run, so the silence says nothing about
        the peer (its heartbeats may be sitting in our socket buffer).
        """
        if not self._detect_local_pauses:
            return False
        late_s = now - max(self._last_local, self.deadline())
        if late_s <= LOCAL_PAUSE_TIMEOUTS * self._timeout_s:
            return False
        self.local_pauses += 1
        self._anchor = now
        self._last_local = now
        self._gap_from = None
        return True


class PeerWatches:
    """One LeaderWatch per peer that sends periodic traffic, for status only.

    A protocol watches just its leader; an operator wants to see every
    member. The node feeds this from each periodic message (heartbeats, lease
    acks), keyed by sender; members that never sent one show nothing.
    """

    def __init__(self, settings: Settings, rng: random.Random) -> None:
        self._settings = settings
        self._rng = rng
        self._names = {m.name for m in settings.peers()}
        self._watches: dict[str, LeaderWatch] = {}
        # arrivals noted but not yet fed to the watches: beacons come all the
        # time, status is asked for rarely, and a batch computes the timeout
        # once; bounded so that a daemon nobody queries does not grow
        self._pending: dict[str, list[float]] = {}

    def observe(self, peer: str, now: float) -> None:
        if peer not in self._names:
            return
        arrivals = self._pending.get(peer)
        if arrivals is None:
            self._pending[peer] = [now]
            if peer not in self._watches:
                # created now, in arrival order, so the random spreads are
                # drawn in the same order as if fed one by one
                watch = LeaderWatch(self._settings, self._rng, detect_local_pauses=False)
                self._watches[peer] = watch
                watch.reset(now, peer)
        else:
            arrivals.append(now)
            if len(arrivals) >= WINDOW_SIZE:
                self._feed(peer)

    def forget(self, peer: str, now: float) -> None:
        """The peer stopped sending periodically on purpose (it stepped down)."""
        self._pending.pop(peer, None)
        self._watches.pop(peer, None)

    def snapshot(self, now: float) -> dict[str, dict[str, Any]]:
        """peer name -> LeaderWatch.suspicion_snapshot(now), for peers heard from."""
        for peer in list(self._pending):
            self._feed(peer)
        return {name: w.suspicion_snapshot(now) for name, w in sorted(self._watches.items())}

    def _feed(self, peer: str) -> None:
        self._watches[peer].heartbeats(self._pending.pop(peer))


class Backoff:
    """Election retries: base * 2**attempt + U(0, jitter), reset on success.

    The cap applies before the jitter, so that nodes that have all reached
    the cap still retry at different instants instead of storming together.
    """

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self.attempt = 0

    def next_delay_s(self, rng: random.Random) -> float:
        s = self._settings
        delay_s = min(s.backoff_max_s, s.backoff_base_s * (2 ** self.attempt))
        self.attempt = min(self.attempt + 1, 30)
        return delay_s + rng.uniform(0.0, s.backoff_jitter_s)

    def reset(self) -> None:
        self.attempt = 0


class RttEstimator:
    """Round-trip time estimate for directed request/ack pairs (Jacobson/Karels,
    RFC 6298): srtt and rttvar smoothed with gains 1/8 and 1/4, and
    rto = srtt + 4 * rttvar, clamped to [min_s, max_s].

    Karn's rule is the caller's: do not sample a reply to a request that was
    sent more than once, since it cannot tell which copy was answered.
    """

    ALPHA: ClassVar[float] = 1 / 8
    BETA: ClassVar[float] = 1 / 4
    K: ClassVar[float] = 4.0

    def __init__(self, initial_s: float, min_s: float, max_s: float) -> None:
        if not 0.0 < min_s <= max_s:
            raise ValueError("need 0 < min_s <= max_s")
        self._initial_s = initial_s
        self._min_s = min_s
        self._max_s = max_s
        self.srtt_s: float | None = None
        self.rttvar_s: float | None = None
        self._backoff = 1.0
        self.samples = 0

    @classmethod
    def for_settings(cls, settings: Settings) -> RttEstimator:
        """Directed-message timeouts in electiond: start at answer_timeout_s;
        never below one heartbeat interval (a busy peer's event loop may be
        late by that much, and a missed ANSWER makes a false coordinator);
        never above the suspicion ceiling."""
        min_s = settings.heartbeat_interval_s
        max_s = max(settings.max_suspicion_timeout_s, min_s)
        return cls(settings.answer_timeout_s, min_s, max_s)

    def sample(self, rtt_s: float) -> None:
        rtt_s = max(0.0, rtt_s)
        if self.srtt_s is None or self.rttvar_s is None:
            self.srtt_s = rtt_s
            self.rttvar_s = rtt_s / 2
        else:
            self.rttvar_s = (1 - self.BETA) * self.rttvar_s + self.BETA * abs(self.srtt_s - rtt_s)
            self.srtt_s = (1 - self.ALPHA) * self.srtt_s + self.ALPHA * rtt_s
        self._backoff = 1.0
        self.samples += 1

    def timed_out(self) -> None:
        """A request went unanswered: double the timeout until the next sample."""
        self._backoff = min(self._backoff * 2, 64.0)

    def rto_s(self) -> float:
        if self.srtt_s is None or self.rttvar_s is None:
            base_s = self._initial_s
        else:
            base_s = self.srtt_s + self.K * self.rttvar_s
        return min(self._max_s, max(self._min_s, base_s * self._backoff))
