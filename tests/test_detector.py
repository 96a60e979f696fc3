"""The failure detector, driven with synthetic heartbeat arrival times."""

from __future__ import annotations

import math
import random
from statistics import NormalDist

import pytest
from hypothesis import given, settings as hsettings
from hypothesis import strategies as st

from electiond import detector as det
from electiond.detector import Backoff, LeaderWatch, RttEstimator
from electiond.protocols.base import Member, Message, Settings, Send
from electiond.protocols.bully import HEARTBEAT, Bully

IV = 0.05  # heartbeat interval of the default settings


def make_settings(**kw) -> Settings:
    return Settings(cluster="t", node_name="f", members=(Member("f", 1), Member("L", 2)), **kw)


def make_watch(seed: int = 1, window: int = det.WINDOW_SIZE, **kw) -> LeaderWatch:
    w = LeaderWatch(make_settings(**kw), random.Random(seed), window=window)
    w.reset(0.0, "L")
    return w


class Shell:
    """Delivers arrivals in order and wakes the watch at its deadline, like the runtime."""

    def __init__(self, watch: LeaderWatch) -> None:
        self.watch = watch
        self.suspicions: list[float] = []

    def feed(self, arrivals) -> None:
        for t in arrivals:
            while self.watch.deadline() < t:
                at = self.watch.deadline()
                if self.watch.suspects(at):
                    self.suspicions.append(at)
                    # bully: the same leader is re-followed on its next heartbeat
                    self.watch.reset(t, "L")
                    break
            self.watch.heartbeat(t)


def steady(start: float, n: int, gap: float = IV):
    return [start + gap * (i + 1) for i in range(n)]


# ---- fallback before enough samples ------------------------------------------------


def test_fallback_is_the_randomized_election_timeout_until_enough_samples():
    timeouts = set()
    for seed in range(20):
        w = make_watch(seed)
        assert not w.adaptive()
        assert 0.15 <= w.timeout_s() <= 0.30
        assert w.deadline() == pytest.approx(w.timeout_s())
        timeouts.add(round(w.timeout_s(), 6))
        # MIN_SAMPLES gaps need MIN_SAMPLES + 1 heartbeats
        for t in steady(0.0, det.MIN_SAMPLES):
            w.heartbeat(t)
        assert not w.adaptive() and 0.15 <= w.timeout_s() <= 0.30
        w.heartbeat(0.05 * (det.MIN_SAMPLES + 1))
        assert w.adaptive() and w.timeout_s() < 0.15
    assert len(timeouts) > 10  # drawn from the injected rng, not fixed


def test_fallback_phi_is_linear_and_reaches_threshold_at_deadline():
    w = make_watch()
    assert w.phi(0.0) == 0.0
    assert w.phi(w.deadline() / 2) == pytest.approx(4.0)
    assert w.phi(w.deadline()) == pytest.approx(8.0)


# ---- steady and jittery streams ------------------------------------------------------


def test_steady_stream_suspects_at_the_floor_within_the_spread():
    w = make_watch()
    Shell(w).feed(steady(0.0, 200))
    floor = det.FLOOR_INTERVALS * IV  # 110 ms beats min_suspicion_timeout 100 ms
    assert w.floor_s() == pytest.approx(floor)
    assert floor <= w.timeout_s() <= floor * (1 + det.SPREAD_FRACTION)
    last = 200 * IV
    assert not w.suspects(last + floor - 1e-6)
    assert w.suspects(w.deadline())
    # a dead leader on a quiet LAN is suspected within 2.5 intervals of its last heartbeat
    assert w.deadline() - last <= 2.5 * IV


def test_phi_crosses_threshold_exactly_at_deadline_and_is_monotone():
    w = make_watch()
    # alternating 20/80 ms: the normal model, not the floor, sets the timeout
    t = 0.0
    for i in range(400):
        t += 0.02 if i % 2 else 0.08
        w.heartbeat(t)
    std = 0.03
    z = -NormalDist().inv_cdf(1e-8)
    phi_timeout = 0.05 + z * std
    assert phi_timeout > det.SURVIVED_GAP_MARGIN * 0.08 and phi_timeout > w.floor_s()
    assert phi_timeout <= w.timeout_s() <= phi_timeout * (1 + det.SPREAD_FRACTION) + 1e-9
    assert w.phi(w.deadline()) == pytest.approx(8.0, rel=1e-6)
    assert w.phi(w.deadline() - 0.01) < 8.0 < w.phi(w.deadline() + 0.01)
    values = [w.phi(t + k * 0.005) for k in range(100)]
    assert values == sorted(values)
    assert values[0] < 0.01


def test_jittery_stream_raises_no_false_suspicion():
    rng = random.Random(7)
    arrivals, t = [], 0.0
    for _ in range(5000):
        t += IV * rng.uniform(0.9, 1.1)
        arrivals.append(t)
    w = make_watch()
    shell = Shell(w)
    shell.feed(arrivals)
    assert shell.suspicions == []
    assert w.timeout_s() <= 2.5 * IV  # still fast: +-10 % jitter does not widen past the floor much


def test_bursty_stream_widens_instead_of_suspecting():
    # heartbeats queued and delivered three at a time, every 150 ms
    arrivals = []
    for k in range(300):
        base = 0.15 * (k + 1)
        arrivals += [base, base + 0.0005, base + 0.001]
    w = make_watch()
    shell = Shell(w)
    shell.feed(arrivals)
    assert shell.suspicions[:1] == shell.suspicions  # at most the first burst, before learning
    assert w.timeout_s() >= det.SURVIVED_GAP_MARGIN * 0.149
    # and a real death is still caught within the ceiling
    assert w.deadline() - arrivals[-1] <= w._settings.max_suspicion_timeout_s


# ---- gaps, recovery and leader changes ----------------------------------------------


def test_gap_then_recovery_is_learned_and_forgotten_when_it_leaves_the_window():
    w = make_watch(window=100)
    shell = Shell(w)
    shell.feed(steady(0.0, 200))
    t = 200 * IV
    fast = w.timeout_s()
    # the leader stalls for 300 ms: suspected once, then re-followed
    shell.feed([t + 0.3])
    assert len(shell.suspicions) == 1
    assert w.timeout_s() >= det.SURVIVED_GAP_MARGIN * 0.3
    t += 0.3
    # the same stall again is now tolerated
    shell.feed(steady(t, 20) + [t + 20 * IV + 0.3])
    assert len(shell.suspicions) == 1
    t += 20 * IV + 0.3
    # after 100 regular heartbeats both stalls have left the window
    shell.feed(steady(t, 100))
    assert w.timeout_s() == pytest.approx(fast, rel=det.SPREAD_FRACTION + 0.01)


def test_a_new_leader_starts_from_the_fallback():
    w = make_watch()
    Shell(w).feed(steady(0.0, 50))
    assert w.adaptive()
    w.reset(3.0, "M")
    assert not w.adaptive() and 0.15 <= w.timeout_s() <= 0.30
    assert w.deadline() == pytest.approx(3.0 + w.timeout_s())
    # without a peer name, reset forgets too (the interface main had)
    Shell(w).feed(steady(3.0, 50))
    w.reset(10.0)
    assert not w.adaptive()


def test_a_gap_longer_than_the_ceiling_is_an_outage_not_a_sample():
    w = make_watch()
    shell = Shell(w)
    shell.feed(steady(0.0, 50))
    n = w.suspicion_snapshot(2.5)["samples"]
    shell.feed([2.5 + 5.0])  # the leader was gone 5 s (> 1 s ceiling), then came back
    assert len(shell.suspicions) == 1
    assert w.suspicion_snapshot(7.5)["samples"] == n
    assert w.timeout_s() <= 2.5 * IV


# ---- local pauses --------------------------------------------------------------------


def test_local_pause_grants_a_grace_period_instead_of_condemning():
    w = make_watch()
    Shell(w).feed(steady(0.0, 100))
    samples = w.suspicion_snapshot(5.0)["samples"]
    timeout = w.timeout_s()
    woke = w.deadline() + 3 * timeout  # this node was frozen well past its deadline
    assert not w.suspects(woke)
    assert w.local_pauses == 1
    assert w.deadline() == pytest.approx(woke + timeout)
    # the leader's heartbeats, queued in our socket buffer, are not a 400 ms gap
    w.heartbeat(woke + 0.001)
    assert w.suspicion_snapshot(woke)["samples"] == samples
    # a leader that really died is still suspected one timeout later
    assert w.suspects(w.deadline())


def test_on_time_or_slightly_late_wakeups_still_suspect():
    w = make_watch()
    Shell(w).feed(steady(0.0, 100))
    slightly_late = w.deadline() + 0.5 * w.timeout_s()
    assert w.suspects(slightly_late)
    assert w.local_pauses == 0


def test_note_local_activity_measures_a_pause_from_the_last_wakeup():
    w = make_watch()
    Shell(w).feed(steady(0.0, 100))
    t = 100 * IV
    w.note_local_activity(t + 0.02)
    assert w.local_pauses == 0 and w.deadline() == pytest.approx(t + w.timeout_s())
    w.note_local_activity(t + 5.0)  # frozen 5 s
    assert w.local_pauses == 1
    assert not w.suspects(t + 5.0)


# ---- floor and ceiling ---------------------------------------------------------------


def test_floor_is_the_larger_of_the_setting_and_the_interval_multiple():
    assert make_watch(heartbeat_interval_s=0.01).floor_s() == pytest.approx(0.1)
    assert make_watch(heartbeat_interval_s=0.1).floor_s() == pytest.approx(0.22)
    w = make_watch(heartbeat_interval_s=0.01, min_suspicion_timeout_s=0.2)
    Shell(w).feed(steady(0.0, 100, gap=0.01))
    assert 0.2 <= w.timeout_s() <= 0.2 * (1 + det.SPREAD_FRACTION)


def test_ceiling_bounds_the_timeout_under_wild_jitter():
    rng = random.Random(3)
    w = make_watch(max_suspicion_timeout_s=0.5)
    t = 0.0
    for _ in range(300):
        t += rng.choice([0.001, 0.05, 0.45])
        w.heartbeat(t)
    assert w.timeout_s() == pytest.approx(0.5)
    assert w.suspects(t + 0.5)


def test_ceiling_below_floor_yields_the_floor():
    w = make_watch(heartbeat_interval_s=0.2, max_suspicion_timeout_s=0.3)
    Shell(w).feed(steady(0.0, 50, gap=0.2))
    assert w.timeout_s() == pytest.approx(0.44)


# ---- spread and determinism --------------------------------------------------------------


def test_followers_with_different_rngs_do_not_suspect_at_the_same_instant():
    arrivals = steady(0.0, 100)
    deadlines = []
    for seed in range(10):
        w = make_watch(seed)
        Shell(w).feed(arrivals)
        deadlines.append(w.deadline())
        # same seed, same answer
        w2 = make_watch(seed)
        Shell(w2).feed(arrivals)
        assert w2.deadline() == w.deadline()
    assert len(set(deadlines)) == 10
    assert max(deadlines) - min(deadlines) <= det.SPREAD_FRACTION * det.FLOOR_INTERVALS * IV


@hsettings(max_examples=60, deadline=None)
@given(st.lists(st.floats(min_value=0.0, max_value=0.4), min_size=0, max_size=60), st.integers(0, 1000))
def test_suspects_iff_past_deadline_and_phi_agrees(gaps, seed):
    w = make_watch(seed)
    t = 0.0
    for g in gaps:
        t += g
        w.heartbeat(t)
    d = w.deadline()
    assert not w.suspects(max(t, d - 1e-6)) or d - 1e-6 < t
    assert w.phi(d) == pytest.approx(8.0, rel=1e-6)
    assert w.phi(d - 0.001 * w.timeout_s()) <= 8.0
    assert w.floor_s() <= w.timeout_s() or not w.adaptive()
    assert w.timeout_s() <= max(w._settings.max_suspicion_timeout_s, w.floor_s()) + 1e-12
    assert w.suspects(d)


def test_window_statistics_match_a_direct_computation():
    rng = random.Random(11)
    win = det._Window(50)
    values = []
    for _ in range(10_000):
        x = rng.expovariate(20)
        win.add(x)
        values.append(x)
    tail = values[-50:]
    mean = sum(tail) / 50
    assert win.mean() == pytest.approx(mean)
    assert win.std() == pytest.approx(math.sqrt(sum((v - mean) ** 2 for v in tail) / 50))
    assert win.max() == max(tail)
    assert len(win) == 50


def test_snapshot_shows_suspicion_and_adaptive_timeout():
    w = make_watch()
    Shell(w).feed(steady(0.0, 40))
    snap = w.suspicion_snapshot(2.0 + 0.06)
    assert snap["peer"] == "L" and snap["mode"] == "adaptive"
    assert snap["samples"] == 39
    assert snap["mean_interval_ms"] == pytest.approx(50.0)
    assert snap["timeout_ms"] == pytest.approx(w.timeout_s() * 1000, abs=0.1)
    assert snap["since_heartbeat_ms"] == pytest.approx(60.0)
    assert 0.0 <= snap["phi"] < snap["threshold"]


# ---- bully uses it --------------------------------------------------------------------------


def test_bully_follower_detects_a_dead_leader_within_the_adaptive_timeout():
    s = make_settings()
    b = Bully(s, random.Random(5), 0.0)
    t = 0.0
    for _ in range(100):
        t += IV
        b.on_message(Message(HEARTBEAT, "L", 1), t)
        assert b.on_tick(t) == [] or b.leader == "L"
    assert b.leader == "L"
    watch = b.extra_status(t)["leader_watch"]
    assert watch["mode"] == "adaptive"
    assert b.deadline() - t <= 2.5 * IV
    effects = b.on_tick(b.deadline())
    assert b.leader != "L"
    assert any(isinstance(e, Send) for e in effects) or b.role == "leader"


def test_bully_keeps_the_window_when_it_re_follows_the_same_leader():
    # a third member that answers our ELECTION, so that we do not lead
    # meanwhile (a gap spanning our own leadership is never learned)
    s = Settings(cluster="t", node_name="f", members=(Member("f", 1), Member("M", 2), Member("L", 3)))
    b = Bully(s, random.Random(5), 0.0)
    t = 0.0
    for _ in range(100):
        t += IV
        b.on_message(Message(HEARTBEAT, "L", 1), t)
    b.on_tick(b.deadline())  # a false alarm: the leader stalled
    b.on_message(Message("ANSWER", "M", 1), b.deadline() - 0.01)
    assert b.role == "candidate"
    t += 0.3
    b.on_message(Message(HEARTBEAT, "L", 1), t)
    assert b.leader == "L"
    watch = b.extra_status(t)["leader_watch"]
    assert watch["mode"] == "adaptive" and watch["max_interval_ms"] == pytest.approx(300.0)


def test_same_peer_in_a_new_term_starts_from_the_fallback():
    # killed, restarted, re-won: the outage is its absence, not a gap it survived
    w = make_watch()
    w.reset(0.0, "L", 3)
    Shell(w).feed(steady(0.0, 100))
    assert w.adaptive()
    w.reset(5.5, "L", 4)
    assert not w.adaptive()
    w.heartbeat(5.5)
    Shell(w).feed(steady(5.5, 100))
    assert w.adaptive() and w.suspicion_snapshot(10.5)["max_interval_ms"] < 1.2 * IV * 1000
    assert w.timeout_s() <= det.FLOOR_INTERVALS * IV * (1 + det.SPREAD_FRACTION) + 1e-9


def test_same_peer_in_the_same_term_keeps_its_window():
    w = make_watch()
    w.reset(0.0, "L", 3)
    Shell(w).feed(steady(0.0, 100))
    w.reset(5.3, "L", 3)  # a false alarm: it kept leading in term 3
    w.heartbeat(5.3)
    assert w.adaptive() and w.suspicion_snapshot(5.3)["max_interval_ms"] == pytest.approx(300.0)


def test_bully_forgets_the_window_when_the_same_leader_returns_in_a_new_term():
    s = make_settings()
    b = Bully(s, random.Random(5), 0.0)
    t = 0.0
    for _ in range(100):
        t += IV
        b.on_message(Message(HEARTBEAT, "L", 1), t)
    b.on_tick(b.deadline())  # the leader was killed: we suspect it
    t += 0.47  # it restarted and preempts with a new epoch
    b.on_message(Message("COORDINATOR", "L", 3), t)
    assert b.leader == "L"
    for _ in range(100):
        t += IV
        b.on_message(Message(HEARTBEAT, "L", 3), t)
    watch = b.extra_status(t)["leader_watch"]
    assert watch["mode"] == "adaptive" and watch["max_interval_ms"] < 60.0
    # killed again: detected at the floor, not at 1.5 x the outage
    assert b.deadline() - t <= det.FLOOR_INTERVALS * IV * (1 + det.SPREAD_FRACTION) + 1e-9


def test_restart_case_of_the_detector_bench_no_longer_learns_the_outage():
    from electiond.sim.detection import PROFILES, restart_probe

    before = [restart_probe(PROFILES["quiet"], "adaptive", s, term_aware=False)[1] for s in range(1, 6)]
    after = [restart_probe(PROFILES["quiet"], "adaptive", s, term_aware=True)[1] for s in range(1, 6)]
    assert min(before) > 0.6  # 1.5 x the 470 ms outage learnt as a gap
    assert max(after) < 3 * IV


# ---- backoff ---------------------------------------------------------------------------------


def test_backoff_doubles_with_jitter_caps_and_resets():
    s = make_settings(backoff_base_s=0.05, backoff_max_s=0.5, backoff_jitter_s=0.02)
    b = Backoff(s)
    rng = random.Random(2)
    delays = [b.next_delay_s(rng) for _ in range(8)]
    expected = [0.05, 0.1, 0.2, 0.4, 0.5, 0.5, 0.5, 0.5]
    for got, base in zip(delays, expected):
        assert base <= got <= base + 0.02
    assert len({round(d, 9) for d in delays[4:]}) == 4  # capped retries still spread
    b.reset()
    assert 0.05 <= b.next_delay_s(rng) <= 0.07
    for _ in range(100):
        b.next_delay_s(rng)  # no overflow after many attempts
    assert b.attempt == 30


# ---- RTT estimator -------------------------------------------------------------------------------


def test_rtt_initial_and_first_sample():
    r = RttEstimator(initial_s=0.1, min_s=0.001, max_s=1.0)
    assert r.rto_s() == 0.1
    r.sample(0.01)
    assert r.srtt_s == 0.01 and r.rttvar_s == 0.005
    assert r.rto_s() == pytest.approx(0.03)  # srtt + 4 * rttvar


def test_rtt_follows_jacobson_karels_and_clamps():
    r = RttEstimator(initial_s=0.1, min_s=0.002, max_s=0.5)
    r.sample(0.01)
    r.sample(0.02)
    # rttvar = 3/4 * 0.005 + 1/4 * |0.01 - 0.02|; srtt = 7/8 * 0.01 + 1/8 * 0.02
    assert r.rttvar_s == pytest.approx(0.00625)
    assert r.srtt_s == pytest.approx(0.01125)
    assert r.rto_s() == pytest.approx(0.01125 + 4 * 0.00625)
    for _ in range(200):
        r.sample(0.0001)  # a steady loopback: rto falls to the floor
    assert r.rto_s() == 0.002
    r.sample(5.0)
    assert r.rto_s() == 0.5  # and never above the ceiling


def test_rtt_timeouts_back_off_until_the_next_sample():
    r = RttEstimator(initial_s=0.05, min_s=0.01, max_s=1.0)
    r.timed_out()
    assert r.rto_s() == pytest.approx(0.1)
    r.timed_out()
    assert r.rto_s() == pytest.approx(0.2)
    for _ in range(20):
        r.timed_out()
    assert r.rto_s() == 1.0
    r.sample(0.01)
    assert r.rto_s() == pytest.approx(0.03)


def test_rtt_for_settings_and_validation():
    s = make_settings()
    r = RttEstimator.for_settings(s)
    assert r.rto_s() == s.answer_timeout_s
    r.sample(0.0002)
    assert r.rto_s() == s.heartbeat_interval_s  # never below one interval
    with pytest.raises(ValueError):
        RttEstimator(0.1, 0.0, 1.0)
    with pytest.raises(ValueError):
        RttEstimator(0.1, 0.5, 0.1)


def _start_bully_election(b: Bully, now: float) -> float:
    at = max(now, b.deadline())
    effects = b.on_tick(at)
    assert [e.to for e in effects if isinstance(e, Send)] == ["L"]
    return at


def test_bully_answer_wait_lengthens_after_slow_answers_but_never_shortens():
    from electiond.protocols.bully import ANSWER

    b = Bully(make_settings(), random.Random(5), 0.0)
    assert b.answer_wait_s() == 0.1  # answer_timeout_s before any round trip
    t = _start_bully_election(b, 0.0)
    assert b.deadline() == pytest.approx(t + 0.1)
    b.on_message(Message(ANSWER, "L", 0, recipient="f"), t + 0.09)  # a loaded higher node
    assert b.answer_wait_s() == pytest.approx(0.09 + 4 * 0.045)
    b.on_tick(b.deadline())  # no COORDINATOR came: back off and retry
    t = _start_bully_election(b, b.deadline())
    assert b.deadline() == pytest.approx(t + 0.27)
    # fast answers bring it back down, but not below answer_timeout_s
    for _ in range(40):
        b.on_message(Message(ANSWER, "L", 0, recipient="f"), t + 0.0005)
        b.on_tick(b.deadline())
        t = _start_bully_election(b, b.deadline())
    assert b.answer_wait_s() == 0.1


def test_peer_watches_show_each_periodic_sender():
    s = Settings(cluster="t", node_name="f", members=(Member("f", 1), Member("a", 2), Member("b", 3)))
    pw = det.PeerWatches(s, random.Random(1))
    for k in range(1, 41):
        pw.observe("a", k * IV)
        if k <= 20:
            pw.observe("b", k * IV)
    pw.observe("f", 1.0)  # ourselves: ignored
    pw.observe("stranger", 1.0)  # not a member: ignored
    snap = pw.snapshot(2.0 + 0.02)
    assert set(snap) == {"a", "b"}
    assert snap["a"]["phi"] < 1.0 and snap["a"]["mode"] == "adaptive"
    assert snap["b"]["since_heartbeat_ms"] == pytest.approx(1020.0)
    assert snap["b"]["phi"] > snap["b"]["threshold"]  # b went quiet a second ago
    pw.observe("b", 4.0)  # back after 2 s: an outage of b, not a pause of ours
    assert pw.snapshot(4.0)["b"]["local_pauses"] == 0
    pw.forget("b", 2.1)
    assert set(pw.snapshot(2.1)) == {"a"}


def test_batched_heartbeats_leave_the_same_state_as_one_at_a_time():
    # PeerWatches notes beacon arrivals and feeds them in batches: the status
    # it shows must be what feeding them one by one would show, outages included
    s = make_settings()
    arrivals = [0.0]
    rng = random.Random(7)
    for _ in range(2500):
        gap = rng.choice([IV, IV, IV * 1.1, IV * 0.9, IV * 3, 2.5])  # 2.5 s: longer than the ceiling
        arrivals.append(arrivals[-1] + gap)
    one = det.LeaderWatch(s, random.Random(1), detect_local_pauses=False)
    batch = det.LeaderWatch(s, random.Random(1), detect_local_pauses=False)
    one.reset(0.0, "L")
    batch.reset(0.0, "L")
    for t in arrivals:
        one.heartbeat(t)
    batch.heartbeats(arrivals[:1000])
    batch.heartbeats(arrivals[1000:])
    now = arrivals[-1] + 0.07
    assert batch.suspicion_snapshot(now) == one.suspicion_snapshot(now)
    assert batch.deadline() == one.deadline()
    with pytest.raises(ValueError):
        det.LeaderWatch(s, random.Random(1)).heartbeats([1.0])


def test_peer_watches_batch_beacons_until_asked():
    s = Settings(cluster="t", node_name="f", members=(Member("f", 1), Member("a", 2)))
    lazy = det.PeerWatches(s, random.Random(3))
    direct = det.LeaderWatch(s, random.Random(3), detect_local_pauses=False)
    direct.reset(IV, "a")
    for k in range(1, 2 * det.WINDOW_SIZE + 10):  # past the bound: fed in between
        lazy.observe("a", k * IV)
        direct.heartbeat(k * IV)
    now = (2 * det.WINDOW_SIZE + 10) * IV
    assert lazy.snapshot(now)["a"] == direct.suspicion_snapshot(now)


@pytest.mark.parametrize("phi", [0.5, 1.0, 3.0, 8.0, 12.0, 16.0])
def test_z_for_phi_inverts_the_normal_survival_like_normaldist(phi):
    assert det._z_for_phi(phi) == pytest.approx(-NormalDist().inv_cdf(10.0 ** -phi), abs=1e-7)
