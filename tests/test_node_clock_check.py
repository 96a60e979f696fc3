"""quorum-lease's start-up clock check: no standing or grant until our clock agreed with quorum - 1 peers (made-up times)."""

import random

import pytest

from electiond.node import CLOCK_CHECK, PHASE_CLOCK_CHECK, PRESENCE, Node
from electiond.protocols.base import Member, Message, Promote, Send, Settings
from electiond.protocols.lease import HEARTBEAT, HEARTBEAT_ACK, PREVOTE, PREVOTE_REPLY, REQUEST_VOTE, VOTE

MEMBERS3 = tuple(Member(f"n{i}", i) for i in range(1, 4))
MEMBERS5 = tuple(Member(f"n{i}", i) for i in range(1, 6))
PERIOD_S = 0.5  # presence interval at the default heartbeat
GRANTS = {(VOTE, "granted"), (PREVOTE_REPLY, "granted"), (HEARTBEAT_ACK, "ok")}


def node(name="n1", members=MEMBERS3, protocol="quorum-lease", **kw):
    return Node(Settings(cluster="c", node_name=name, members=members, priority=200, **kw), protocol,
                random.Random(1), 0.0)


def grants(effects):
    return [e for e in effects if isinstance(e, Send) and any(e.kind == k and e.body.get(f) is True for k, f in GRANTS)]


def stands(effects):
    return [e for e in effects if isinstance(e, Send) and e.kind in (PREVOTE, REQUEST_VOTE)]


def drive(n, rates, until_s, start_s=0.0, jitter=None, offset_s=0.0, requests=True):
    """Every peer in ``rates`` beacons every PERIOD_S of OUR time with a clock
    reading rate * t; between beacons n2 asks for a pre-vote and a vote and
    heartbeats (as a leader would), so any grant or candidacy shows.
    Returns (time, effect) pairs."""
    out = []
    k = 0
    t = start_s
    r = 0
    while t < until_s:
        for i, (peer, rate) in enumerate(sorted(rates.items())):
            now = t + offset_s + (jitter() if jitter else 0.0005) + 0.01 * i
            out += [(now, e) for e in n.on_tick(now)]
            body = {"clock_ms": int((100.0 * (i + 1) + rate * now) * 1000)}
            out += [(now, e) for e in n.on_message(Message(PRESENCE, peer, 0, body), now)]
        if requests:
            now = t + offset_s + 0.2
            r += 1
            term = n.protocol.term
            for kind, body in ((PREVOTE, {"round": r, "priority": 0}), (HEARTBEAT, {"round": r, "priority": 0})):
                out += [(now, e) for e in n.on_message(Message(kind, "n2", term + 1, body), now)]
            out += [(now, e) for e in n.on_tick(now)]
        k += 1
        t = start_s + k * PERIOD_S
    return out


def first(out, pick):
    hits = [at for at, e in out if pick([e])]
    return hits[0] if hits else None


def test_a_new_node_waits_one_span_of_beacons_then_stands_and_grants():
    n = node()
    st = n.status(0.0)
    assert CLOCK_CHECK in st["blocked_by"] and "not standing or granting" in st["blocked_by"][CLOCK_CHECK]
    assert st["phase"] == PHASE_CLOCK_CHECK and st["clock"]["checked"] is False
    assert [e.kind for e in n.clock_events] == ["check-started"]
    out = drive(n, {"n2": 1.0, "n3": 1.0}, 6.0)
    passed = n.clock_checked_at
    # the estimator's minimum span is 4 beacons: the 5th beacon after the first
    assert passed is not None and 2.0 <= passed <= 2.5, passed
    assert first(out, grants) > passed and first(out, stands) is None or first(out, stands) > passed
    assert not [e for at, e in out if at < passed and (grants([e]) or stands([e]))]
    assert grants([e for at, e in out if at > passed])
    st = n.status(6.0)
    assert CLOCK_CHECK not in st["blocked_by"] and st["clock"]["checked"] is True
    assert st["clock"]["checked_after_s"] == pytest.approx(passed, abs=1e-3)
    assert st["phase"] != PHASE_CLOCK_CHECK
    assert [e.kind for e in n.clock_events] == ["check-started", "check-passed"]
    assert "agrees with n2's" in n.clock_events[-1].text


def test_it_stands_once_the_check_passes():
    n = node("n3")
    t = 0.0
    out = []
    while t < 4.0:  # beacons only: no leader around
        for i, peer in enumerate(("n1", "n2")):
            now = t + 0.001 * (i + 1)
            out += [(now, e) for e in n.on_tick(now)]
            out += [(now, e) for e in n.on_message(Message(PRESENCE, peer, 0, {"clock_ms": int(now * 1000)}), now)]
        t = min(t + PERIOD_S, max(t + 0.001, n.deadline()))
    assert n.clock_checked_at is not None
    at = first(out, stands)
    assert at is not None and n.clock_checked_at < at < n.clock_checked_at + 0.5


@pytest.mark.parametrize("our_rate", [0.5, 2.0, 0.7, 1.4, 0.87, 1.15])
@pytest.mark.parametrize("offset_s", [0.0, 0.13, 0.37])
def test_a_gross_error_is_caught_before_the_check_can_pass(our_rate, offset_s):
    """Our clock at ``our_rate``: the peers' clocks run at 1/our_rate of ours.
    No grant and no candidacy ever leaves; the ``clock`` blocker takes over."""
    rng = random.Random(int(our_rate * 100 + offset_s * 1000))
    n = node()
    jitter = lambda: 0.0002 + rng.expovariate(2000)
    out = drive(n, {"n2": 1.0 / our_rate, "n3": 1.0 / our_rate}, 40.0, offset_s=offset_s, jitter=jitter)
    assert "clock" in n.blockers, n.status(40.0)["blocked_by"]
    assert [e.kind for e in n.clock_events if e.kind.startswith("check-")] == ["check-started", "check-ended"]
    fast = our_rate > 1.0
    granted = [at for at, e in out if grants([e])]
    if fast:  # a fast clock's promises end early: never any grant
        assert granted == []
    else:  # a slow one's outlast their time: granting resumes once that is known
        ended = next(h.at for h in n.history if h.event == "clock" and h.detail["kind"] == "check-ended")
        assert granted and min(granted) >= ended
    assert stands([e for _, e in out]) == []
    assert not any(isinstance(e, Promote) for _, e in out)


def test_one_odd_peer_does_not_hold_the_others():
    n = node()
    drive(n, {"n2": 2.0, "n3": 1.0}, 5.0)
    assert n.clock_checked_at is not None and CLOCK_CHECK not in n.blockers


def test_five_nodes_need_two_agreeing_peers():
    n = node(members=MEMBERS5)
    drive(n, {"n2": 1.0}, 8.0)
    assert CLOCK_CHECK in n.blockers and "1 of 4" not in n.status(8.0)["blocked_by"][CLOCK_CHECK]
    assert "agrees with 2 of 4 peers" in n.status(8.0)["blocked_by"][CLOCK_CHECK]
    drive(n, {"n2": 1.0, "n4": 1.0, "n5": 0.5}, 12.0, start_s=8.0)
    assert CLOCK_CHECK not in n.blockers


def test_with_its_peers_down_it_follows_but_grants_nothing_and_says_why():
    n = node()
    out = []
    for k in range(1, 400):  # a leader n2 heartbeats for 20 s, no beacon arrives
        t = 0.05 * k
        out += n.on_tick(t)
        out += n.on_message(Message(HEARTBEAT, "n2", 3, {"round": k, "priority": 0}), t)
    assert n.protocol.leader == "n2"
    assert grants(out) == [] and stands(out) == []
    st = n.status(20.0)
    assert st["phase"] == PHASE_CLOCK_CHECK
    assert "n2 not heard" in st["blocked_by"][CLOCK_CHECK] or "n2 0.0s of beacons" in st["blocked_by"][CLOCK_CHECK]
    assert [e.kind for e in n.clock_events].count("check-waiting") == 1
    # a peer's beacons return: the check completes one span later
    drive(n, {"n3": 1.0}, 24.0, start_s=20.0, requests=False)
    assert n.clock_checked_at is not None and n.clock_checked_at <= 22.6


@pytest.mark.parametrize("our_rate", [1.0, 0.5, 2.0])
def test_a_noisy_path_neither_holds_a_good_clock_long_nor_lets_a_gross_error_pass(our_rate):
    """Delays spread over 80 ms (far worse than a LAN)."""
    rng = random.Random(3)
    n = node()
    jitter = lambda: rng.uniform(0.0, 0.08)
    out = drive(n, {"n2": 1.0 / our_rate, "n3": 1.0 / our_rate}, 30.0, jitter=jitter)
    if our_rate == 1.0:
        assert n.clock_checked_at is not None and n.clock_checked_at <= 4.0
    else:
        assert "clock" in n.blockers and stands([e for _, e in out]) == []
        assert "check-passed" not in [e.kind for e in n.clock_events]


def test_bully_and_a_cluster_of_one_do_not_wait():
    assert CLOCK_CHECK not in node(protocol="bully").blockers
    assert CLOCK_CHECK not in node(members=(Member("n1", 1),)).blockers
    assert CLOCK_CHECK not in node(clock_check_s=0.0).blockers


def test_a_longer_span_knob_is_honoured():
    n = node(clock_check_s=5.0)
    drive(n, {"n2": 1.0, "n3": 1.0}, 8.0, requests=False)
    assert n.clock_checked_at is not None and 5.0 <= n.clock_checked_at <= 5.6
