"""Measure the failure detector against a fixed timeout (DESIGN §4, issue 5).

A discrete-event model of one leader's heartbeat stream as one follower sees
it. The leader sends a heartbeat every ``interval`` after its previous one
(its timer is re-armed when it fires, so a late send delays every later one);
the profile adds scheduling lateness to sends, network delay and loss to
deliveries. The follower processes arrivals in time order and is woken at its
detector's ``deadline()``, exactly as the daemon's shell does.

Two numbers per profile and detector, from the same seeds:

* **false suspicions per hour** in steady state (the leader is alive; the
  first ``warmup_s`` are not counted). After each false alarm the follower
  re-follows the same leader at its next heartbeat, as bully does
  (``reset(now, leader)`` then ``heartbeat(now)``).
* **detection latency**: the leader crashes at a random instant; latency is
  from the crash to the moment the follower suspects it (heartbeats already in
  flight still arrive). If the follower happened to be suspecting the leader
  already at the crash, latency is 0.

Run: ``PYTHONPATH=. python3 -m electiond.sim.detection --help`` or
``scripts/bench-detector``.
"""

from __future__ import annotations

import argparse
import bisect
import copy
import random
import statistics
import sys
from dataclasses import dataclass
from typing import Callable, Protocol, Sequence

from electiond.detector import SURVIVED_GAP_MARGIN, WINDOW_SIZE, LeaderWatch
from electiond.protocols.base import Member, Settings

LEADER = "leader"


# ---- heartbeat streams --------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Profile:
    name: str
    description: str
    # extra delay of the leader's timer firing (scheduling, load), seconds
    lateness_s: Callable[[random.Random, float], float]
    # network delay of one datagram, seconds
    delay_s: Callable[[random.Random, float], float]
    loss: float = 0.0
    # (period_s, min_stall_s, max_stall_s): the leader freezes periodically
    stalls: tuple[float, float, float] | None = None


def _zero(rng: random.Random, interval_s: float) -> float:
    return 0.0


def _lan_delay(rng: random.Random, interval_s: float) -> float:
    return 0.0001 + rng.uniform(0.0, 0.00005)


def _uniform10_delay(rng: random.Random, interval_s: float) -> float:
    # each heartbeat is late by U(0, 10 % of the interval), so inter-arrival
    # times span interval +- 10 %
    return 0.0001 + rng.uniform(0.0, 0.1 * interval_s)


def _pareto_lateness(rng: random.Random, interval_s: float) -> float:
    # scheduling delay of a loaded leader: Pareto, alpha 1.5, scale 1 ms
    # (median 1.6 ms; 1 in 1000 sends is late by more than 100 ms)
    return 0.001 * (rng.paretovariate(1.5) - 1.0)


def _lognormal_delay(rng: random.Random, interval_s: float) -> float:
    return 0.0001 + rng.lognormvariate(-8.5, 1.0)  # median 0.2 ms


def _gc_lateness(rng: random.Random, interval_s: float) -> float:
    return rng.uniform(0.0, 0.002)


PROFILES: dict[str, Profile] = {
    p.name: p
    for p in (
        Profile("quiet", "quiet LAN: 0.10-0.15 ms delay, no loss", _zero, _lan_delay),
        Profile("uniform10", "each heartbeat late by U(0, 10 % of interval)", _zero, _uniform10_delay),
        Profile(
            "heavy-tail",
            "leader's timer late by Pareto(a=1.5, 1 ms); lognormal network delay",
            _pareto_lateness,
            _lognormal_delay,
        ),
        Profile(
            "gc-stalls",
            "leader freezes 150-300 ms every 10 s (+-1 s); timer late by U(0, 2 ms)",
            _gc_lateness,
            _lan_delay,
            stalls=(10.0, 0.15, 0.30),
        ),
        Profile("loss1", "quiet LAN with 1 % of heartbeats lost", _zero, _lan_delay, loss=0.01),
    )
}


@dataclass(frozen=True, slots=True)
class Stream:
    arrivals: list[float]  # sorted
    sent: list[float]  # send time of arrivals[i]


def heartbeat_stream(profile: Profile, rng: random.Random, interval_s: float, duration_s: float) -> Stream:
    """The arrivals (and their send times) of one leader's heartbeats."""
    stall_windows: list[tuple[float, float]] = []
    if profile.stalls:
        period_s, lo_s, hi_s = profile.stalls
        t = rng.uniform(0.5, 1.5) * period_s
        while t < duration_s:
            stall_windows.append((t, t + rng.uniform(lo_s, hi_s)))
            t += period_s + rng.uniform(-0.1, 0.1) * period_s
    pairs: list[tuple[float, float]] = []
    send_s = 0.0
    stall = 0
    while send_s < duration_s:
        send_s += interval_s + profile.lateness_s(rng, interval_s)
        while stall < len(stall_windows) and stall_windows[stall][1] <= send_s:
            stall += 1
        if stall < len(stall_windows) and stall_windows[stall][0] <= send_s:
            send_s = stall_windows[stall][1]  # the timer fires when the stall ends
        if profile.loss and rng.random() < profile.loss:
            continue
        pairs.append((send_s + profile.delay_s(rng, interval_s), send_s))
    pairs.sort()
    return Stream([a for a, _ in pairs], [s for _, s in pairs])


# ---- detectors ------------------------------------------------------------------


class Detector(Protocol):
    def reset(self, now: float, peer: str | None = None, incarnation: int = -1) -> None: ...
    def heartbeat(self, now: float) -> None: ...
    def deadline(self) -> float: ...
    def suspects(self, now: float) -> bool: ...


class FixedTimeout:
    """keepalived-style baseline: suspect after a fixed multiple of the interval."""

    def __init__(self, timeout_s: float) -> None:
        self._timeout_s = timeout_s
        self._anchor = 0.0

    def reset(self, now: float, peer: str | None = None, incarnation: int = -1) -> None:
        self._anchor = now

    def heartbeat(self, now: float) -> None:
        self._anchor = now

    def deadline(self) -> float:
        return self._anchor + self._timeout_s

    def suspects(self, now: float) -> bool:
        return now >= self.deadline()


def bench_settings(interval_s: float) -> Settings:
    return Settings(
        cluster="bench",
        node_name="follower",
        members=(Member("follower", 1), Member(LEADER, 2)),
        heartbeat_interval_s=interval_s,
    )


def adaptive_factory(interval_s: float, seed: int) -> Detector:
    return LeaderWatch(bench_settings(interval_s), random.Random(seed))


def phi_only_factory(interval_s: float, seed: int) -> Detector:
    """Ablation: the normal phi model with floor and ceiling, no survived-gap rule."""
    return LeaderWatch(bench_settings(interval_s), random.Random(seed), survived_gap_margin=0.0)


def fixed_factory(interval_s: float, seed: int) -> Detector:
    return FixedTimeout(3 * interval_s)


DETECTORS: dict[str, Callable[[float, int], Detector]] = {
    "adaptive": adaptive_factory,
    "phi-only": phi_only_factory,
    "fixed-3x": fixed_factory,
}


# ---- the follower's event loop ----------------------------------------------------


class _Follower:
    """Feeds arrivals and deadline wake-ups to one detector, like the shell."""

    def __init__(self, detector: Detector) -> None:
        self.detector = detector
        self.suspecting = False
        self.suspicions: list[float] = []
        self.incarnation = 0  # the leader's term of office, as its messages show it
        detector.reset(0.0, LEADER, self.incarnation)

    def run_until(self, arrivals: Sequence[float], start: int, end_s: float) -> int:
        """Process arrivals from index ``start`` up to ``end_s``; returns the next index."""
        i = start
        n = len(arrivals)
        while True:
            arrival_s = arrivals[i] if i < n else float("inf")
            if not self.suspecting:
                deadline_s = self.detector.deadline()
                if deadline_s < arrival_s and deadline_s < end_s:
                    if self.detector.suspects(deadline_s):
                        self.suspecting = True
                        self.suspicions.append(deadline_s)
                    continue
            if arrival_s >= end_s:
                return i
            if self.suspecting:
                # bully re-follows the same leader on its next heartbeat
                self.detector.reset(arrival_s, LEADER, self.incarnation)
                self.suspecting = False
            self.detector.heartbeat(arrival_s)
            i += 1

    def detect_after_crash(self, stream: Stream, start: int, crash_s: float, limit_s: float) -> float:
        """Latency from ``crash_s`` to suspicion, given only in-flight heartbeats."""
        if self.suspecting:
            return 0.0
        # network delays in every profile are far below a second
        stop = bisect.bisect_left(stream.arrivals, crash_s + 1.0, lo=start)
        in_flight = [a for a, s in zip(stream.arrivals[start:stop], stream.sent[start:stop]) if s < crash_s]
        i = 0
        while True:
            deadline_s = self.detector.deadline()
            if i < len(in_flight) and in_flight[i] <= deadline_s:
                self.detector.heartbeat(in_flight[i])
                i += 1
                continue
            if deadline_s > crash_s + limit_s:
                return float("inf")
            if self.detector.suspects(deadline_s):
                return max(0.0, deadline_s - crash_s)


@dataclass(frozen=True, slots=True)
class RunResult:
    profile: str
    detector: str
    seed: int
    steady_hours: float
    false_suspicions: int
    latencies_s: tuple[float, ...]


def run_one(
    profile: Profile,
    detector: str,
    seed: int,
    *,
    interval_s: float = 0.05,
    duration_s: float = 3600.0,
    warmup_s: float = 60.0,
    crashes: int = 200,
) -> RunResult:
    """One seed: a steady run counting false alarms, with crash probes forked off it."""
    stream = heartbeat_stream(profile, random.Random(seed), interval_s, duration_s)
    follower = _Follower(DETECTORS[detector](interval_s, seed + 1))
    probe_rng = random.Random(seed + 2)
    crash_times = sorted(probe_rng.uniform(warmup_s, duration_s) for _ in range(crashes))
    i = follower.run_until(stream.arrivals, 0, warmup_s)
    warm_alarms = len(follower.suspicions)
    latencies: list[float] = []
    for crash_s in crash_times:
        i = follower.run_until(stream.arrivals, i, crash_s)
        probe = copy.deepcopy(follower)
        latencies.append(probe.detect_after_crash(stream, i, crash_s, limit_s=60.0))
    follower.run_until(stream.arrivals, i, duration_s)
    return RunResult(
        profile=profile.name,
        detector=detector,
        seed=seed,
        steady_hours=(duration_s - warmup_s) / 3600.0,
        false_suspicions=len(follower.suspicions) - warm_alarms,
        latencies_s=tuple(latencies),
    )


def restart_probe(
    profile: Profile,
    detector: str,
    seed: int,
    *,
    term_aware: bool = True,
    interval_s: float = 0.05,
    warmup_s: float = 60.0,
    outage_s: float = 0.47,
    second_life_s: float = 5.0,
) -> tuple[float, float]:
    """Killed, restarted, preempted, killed again (issue 17): latencies of the
    first and the second kill.

    The leader is killed after ``warmup_s``; the follower detects it (and, in
    a cluster, leads meanwhile); the leader comes back ``outage_s`` after the
    crash and preempts, so the follower follows the same peer again, in a new
    term of office (``incarnation`` + 1). It is killed again ``second_life_s``
    later (at a random phase). ``term_aware=False`` re-follows it under the
    same incarnation: what the watch did before it knew terms, keeping the
    old window so that the outage was learnt as a survived gap.
    """
    rng = random.Random(seed)
    first = heartbeat_stream(profile, random.Random(seed), interval_s, warmup_s + 2.0)
    follower = _Follower(DETECTORS[detector](interval_s, seed + 1))
    crash1_s = warmup_s + rng.uniform(0.0, interval_s)
    i = follower.run_until(first.arrivals, 0, crash1_s)
    latency1_s = follower.detect_after_crash(first, i, crash1_s, limit_s=60.0)
    follower.suspecting = True
    restart_s = crash1_s + outage_s
    life = heartbeat_stream(profile, random.Random(seed + 3), interval_s, second_life_s + 1.0)
    second = Stream([restart_s + a for a in life.arrivals], [restart_s + x for x in life.sent])
    if term_aware:
        follower.incarnation += 1
    crash2_s = restart_s + second_life_s - rng.uniform(0.0, interval_s)
    i = follower.run_until(second.arrivals, 0, crash2_s)
    latency2_s = follower.detect_after_crash(second, i, crash2_s, limit_s=60.0)
    return latency1_s, latency2_s


def restart_table(profiles: Sequence[str], seeds: Sequence[int], *, interval_s: float = 0.05) -> str:
    """Median second-kill latency, before (window kept) and after (window reset per term)."""
    iv = interval_s * 1000
    lines = [
        "| profile | watch on return | first kill median ms | second kill median ms (intervals) | second kill max ms |",
        "|---|---|---:|---:|---:|",
    ]
    for name in profiles:
        for aware, label in ((False, "kept (before)"), (True, "reset per term (after)")):
            pairs = [restart_probe(PROFILES[name], "adaptive", s, term_aware=aware, interval_s=interval_s) for s in seeds]
            first_ms = statistics.median(p[0] for p in pairs) * 1000
            second = [p[1] * 1000 for p in pairs]
            med = statistics.median(second)
            lines.append(f"| {name} | {label} | {first_ms:.0f} | {med:.0f} ({med / iv:.2f}) | {max(second):.0f} |")
    return "\n".join(lines)


# ---- aggregation ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Row:
    profile: str
    detector: str
    median_ms: float
    p99_ms: float
    false_per_hour: float
    false_suspicions: int
    steady_hours: float
    crashes: int


def _quantile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    k = min(len(ordered) - 1, max(0, int(round(q * (len(ordered) - 1)))))
    return ordered[k]


def measure(
    profiles: Sequence[str],
    seeds: Sequence[int],
    *,
    interval_s: float = 0.05,
    duration_s: float = 3600.0,
    crashes: int = 200,
    detectors: Sequence[str] = tuple(DETECTORS),
) -> list[Row]:
    rows = []
    for name in profiles:
        for detector in detectors:
            results = [
                run_one(PROFILES[name], detector, seed, interval_s=interval_s, duration_s=duration_s, crashes=crashes)
                for seed in seeds
            ]
            latencies = [x for r in results for x in r.latencies_s]
            hours = sum(r.steady_hours for r in results)
            false = sum(r.false_suspicions for r in results)
            rows.append(
                Row(
                    profile=name,
                    detector=detector,
                    median_ms=statistics.median(latencies) * 1000,
                    p99_ms=_quantile(latencies, 0.99) * 1000,
                    false_per_hour=false / hours,
                    false_suspicions=false,
                    steady_hours=hours,
                    crashes=len(latencies),
                )
            )
    return rows


def markdown_table(rows: Sequence[Row], interval_s: float) -> str:
    iv = interval_s * 1000
    lines = [
        "| profile | detector | detection median ms (intervals) | detection p99 ms (intervals) "
        "| false suspicions / hour (count / steady hours) |",
        "|---|---|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r.profile} | {r.detector} | {r.median_ms:.0f} ({r.median_ms / iv:.2f}) "
            f"| {r.p99_ms:.0f} ({r.p99_ms / iv:.2f}) "
            f"| {r.false_per_hour:.2f} ({r.false_suspicions} / {r.steady_hours:.2f}) |"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="bench-detector",
        description="Adaptive failure detector vs a fixed 3 x interval timeout, same seeds.",
    )
    parser.add_argument("--seeds", type=int, default=4, help="seeds per profile (default 4)")
    parser.add_argument("--first-seed", type=int, default=1)
    parser.add_argument("--hours", type=float, default=1.0, help="simulated hours per seed (default 1)")
    parser.add_argument("--crashes", type=int, default=250, help="crash probes per seed (default 250)")
    parser.add_argument("--interval-ms", type=float, default=50.0, help="heartbeat interval (default 50)")
    parser.add_argument(
        "--profile", action="append", choices=sorted(PROFILES), help="repeatable; default: all"
    )
    parser.add_argument("--window", type=int, default=None, help="adaptive: window size (sensitivity runs)")
    parser.add_argument("--margin", type=float, default=None, help="adaptive: survived-gap margin")
    parser.add_argument(
        "--detector", action="append", choices=list(DETECTORS), help="repeatable; default: all"
    )
    parser.add_argument(
        "--restart-case",
        action="store_true",
        help="only the killed, restarted, preempted, killed again case (seeds x 10 probes)",
    )
    args = parser.parse_args(argv)
    interval_s = args.interval_ms / 1000
    profiles = args.profile or list(PROFILES)
    seeds = range(args.first_seed, args.first_seed + args.seeds)
    if args.restart_case:
        probes = range(args.first_seed, args.first_seed + 10 * args.seeds)
        print(f"heartbeat interval {args.interval_ms:g} ms; killed, restarted 470 ms later, preempted, "
              f"killed again 5 s later; {len(probes)} probes per profile\n")
        print(restart_table(profiles, probes, interval_s=interval_s))
        return 0
    if args.window is not None or args.margin is not None:
        window = args.window or WINDOW_SIZE
        margin = SURVIVED_GAP_MARGIN if args.margin is None else args.margin

        def tuned(interval_s: float, seed: int) -> Detector:
            settings = bench_settings(interval_s)
            return LeaderWatch(settings, random.Random(seed), window=window, survived_gap_margin=margin)

        DETECTORS["adaptive"] = tuned
    detectors = args.detector or list(DETECTORS)
    rows = measure(
        profiles,
        seeds,
        interval_s=interval_s,
        duration_s=args.hours * 3600,
        crashes=args.crashes,
        detectors=detectors,
    )
    print(
        f"heartbeat interval {args.interval_ms:g} ms; seeds {seeds.start}..{seeds.stop - 1}; "
        f"{args.hours:g} simulated h and {args.crashes} crash probes per seed\n"
    )
    for name in profiles:
        print(f"- {name}: {PROFILES[name].description}")
    print()
    print(markdown_table(rows, interval_s))
    return 0


if __name__ == "__main__":
    sys.exit(main())
