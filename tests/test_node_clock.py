"""Node: PRESENCE carries our clock; a clock beyond its bound raises the `clock` blocker (made-up times)."""

import random

import pytest

from electiond.node import PRESENCE, Node
from electiond.protocols.base import Demote, Member, Message, Promote, Send, Settings
from electiond.protocols.lease import HEARTBEAT, HEARTBEAT_ACK, REQUEST_VOTE, VOTE

MEMBERS3 = tuple(Member(f"n{i}", i) for i in range(1, 4))
MEMBERS5 = tuple(Member(f"n{i}", i) for i in range(1, 6))
PERIOD_S = 0.5  # presence interval at the default heartbeat


def node(name="n1", members=MEMBERS3, protocol="quorum-lease"):
    return Node(Settings(cluster="c", node_name=name, members=members), protocol, random.Random(1), 0.0)


def beacon(n, sender, now, their_s):
    return n.on_message(Message(PRESENCE, sender, 0, {"clock_ms": int(their_s * 1000)}), now)


def run(n, rates, until_s, start_s=0.0, jitter=None):
    """Every peer in ``rates`` beacons every PERIOD_S of our time; its clock
    reads rate * (our time) + an offset. Returns every effect, with its time."""
    out = []
    t = start_s
    k = 0
    while t < until_s:
        for i, (peer, rate) in enumerate(sorted(rates.items())):
            delay = jitter() if jitter else 0.0005
            now = t + delay + 0.01 * i
            out += [(now, e) for e in n.on_tick(now)]
            out += [(now, e) for e in beacon(n, peer, now, 100.0 * (i + 1) + rate(t) if callable(rate) else
                                             100.0 * (i + 1) + rate * t)]
        k += 1
        t = start_s + k * PERIOD_S
    return out


def blocked_at(n, rates, until_s, step_s=0.1):
    """When ``clock`` first shows in blocked_by, feeding in small runs."""
    t = 0.0
    while t < until_s:
        run(n, rates, t + step_s, start_s=t)
        if "clock" in n.status(t + step_s)["blocked_by"]:
            return t + step_s
        t += step_s
    return None


def test_presence_carries_our_clock_in_ms():
    n = node()
    sends = [e for e in n.on_tick(12.3456) if isinstance(e, Send) and e.kind == PRESENCE]
    assert sends and sends[0].body["clock_ms"] == 12345
    assert n.message_schemas()[PRESENCE] == {"clock_ms": int}


def test_a_beacon_without_clock_ms_still_marks_the_member_alive():
    n = node()
    assert n.on_message(Message(PRESENCE, "n2", 0), 1.0) == []
    assert n.membership.alive("n2", 1.0)
    assert n.status(1.0)["clock"]["rate_vs_peers"] == {}


def test_our_slow_clock_disagrees_with_both_peers_and_blocks_us():
    """Our clock at x0.5: every peer's clock runs twice as fast as ours."""
    n = node()
    # the peers' clocks as functions of OUR time
    rates = {"n2": lambda t: 2 * t, "n3": lambda t: 2 * t}
    out = run(n, rates, 8.0)
    st = n.status(8.0)
    assert "clock" in st["blocked_by"] and "n2" in st["blocked_by"]["clock"]
    assert st["clock"]["ok"] is False and st["clock"]["episodes"] == 1
    assert st["clock"]["rate_vs_peers"] == {"n2": pytest.approx(0.5, abs=1e-3), "n3": pytest.approx(0.5, abs=1e-3)}
    assert st["clock"]["beyond"] == ["n2", "n3"]
    assert [e.kind for e in n.clock_events if not e.kind.startswith("check-")].count("self-beyond") == 1
    assert any(h.event == "clock" and h.detail["kind"] == "self-beyond" for h in n.history)
    assert n.protocol.extra_status(8.0)["phase"] == "ineligible"
    # it never stands while blocked, and the episode is reported once
    out += run(n, rates, 40.0, start_s=8.0)
    assert not any(isinstance(e, Promote) for _, e in out)
    assert [e.kind for e in n.clock_events if not e.kind.startswith("check-")].count("self-beyond") == 1


def test_detection_takes_seconds():
    for rate in (2.0, 0.5, 1.01):
        n = node()
        at = blocked_at(n, {"n2": rate, "n3": rate}, 20.0)
        assert at is not None and at <= 7.0, (rate, at)


def test_one_odd_peer_is_flagged_and_counted_but_we_stand():
    n = node()
    run(n, {"n2": 0.5, "n3": 1.0}, 15.0)
    st = n.status(15.0)
    assert "clock" not in st["blocked_by"] and st["clock"]["ok"]
    assert st["clock"]["beyond"] == ["n2"] and st["clock"]["peer_alarms"] == 1
    members = {m["name"]: m for m in st["members"]}
    assert members["n2"]["clock"] == "beyond" and members["n3"]["clock"] == "within"
    assert [e.kind for e in n.clock_events if not e.kind.startswith("check-")] == ["peer-beyond"]
    beyond = next(e for e in n.clock_events if e.kind == "peer-beyond")
    assert "n2" in beyond.text and "x0.5" in beyond.text


def test_three_nodes_one_silent_cannot_tell_whose_clock_is_off():
    n = node()
    run(n, {"n2": 2.0}, 15.0)
    st = n.status(15.0)
    assert st["clock"]["beyond"] == ["n2"] and "clock" not in st["blocked_by"]


def test_five_nodes_need_a_strict_majority():
    n = node(members=MEMBERS5)
    run(n, {"n2": 2.0, "n3": 2.0, "n4": 1.0, "n5": 1.0}, 15.0)
    assert "clock" not in n.blockers  # 2 of 4: a tie
    n = node(members=MEMBERS5)
    run(n, {"n2": 2.0, "n3": 2.0, "n4": 2.0, "n5": 1.0}, 15.0)
    assert "clock" in n.blockers


def test_within_the_bound_under_jitter_never_blocks():
    rng = random.Random(5)
    n = node(members=MEMBERS5)
    jitter = lambda: 0.0002 + rng.expovariate(1000) + (rng.uniform(0.1, 0.3) if rng.random() < 0.03 else 0.0)
    run(n, {"n2": 1.0019, "n3": 0.9981, "n4": 1.0, "n5": 1.001}, 200.0, jitter=jitter)
    st = n.status(200.0)
    assert st["blocked_by"] == {} and st["clock"]["beyond"] == [] and st["clock"]["peer_alarms"] == 0


def test_the_blocker_clears_after_a_sustained_return_not_before():
    n = node()
    fixed_at = 10.0

    def peer(t):  # our clock ran at x0.5 until fixed_at, then at the right rate
        return 2 * t if t < fixed_at else 2 * fixed_at + (t - fixed_at)

    run(n, {"n2": peer, "n3": peer}, fixed_at)
    assert "clock" in n.blockers
    t = fixed_at
    while "clock" in n.blockers and t < 120.0:
        run(n, {"n2": peer, "n3": peer}, t + 1.0, start_s=t)
        t += 1.0
    assert "clock" not in n.blockers
    assert t >= fixed_at + n.clock_bounds.clear_s
    assert t <= fixed_at + n.clock_bounds.window_s + n.clock_bounds.clear_s + 1.0
    assert "self-cleared" in [e.kind for e in n.clock_events if not e.kind.startswith("check-")]
    assert n.protocol.extra_status(t)["phase"] != "ineligible"


def test_silence_of_the_peers_does_not_clear_it():
    n = node()
    run(n, {"n2": 2.0, "n3": 2.0}, 8.0)
    assert "clock" in n.blockers
    for t in range(9, 200):
        n.on_tick(float(t))
    assert "clock" in n.blockers


def test_a_leader_whose_clock_goes_off_steps_down():
    n = node("n3", protocol="bully")
    out = []
    t = 0.0
    while not n.is_leader(t):
        t = n.deadline()
        out += n.on_tick(t)
    assert any(isinstance(e, Promote) for e in out)
    start = t
    effects = run(n, {"n1": lambda u: 2 * (u - start), "n2": lambda u: 2 * (u - start)}, start + 8.0, start_s=start)
    demotes = [(at, e) for at, e in effects if isinstance(e, Demote)]
    assert demotes and demotes[0][1].reason == "clock"
    assert not n.is_leader(start + 8.0)


def _acks(effects):
    return [e for e in effects if isinstance(e, Send) and e.kind == HEARTBEAT_ACK]


@pytest.mark.parametrize("peer_rate,withheld", [(0.5, True), (2.0, False)])
def test_only_a_fast_clock_withholds_lease_grants(peer_rate, withheld):
    """Peers at x0.5 against us: OUR clock is fast, our promises would end
    early in real time, so no ok LEASE_ACK or granted VOTE leaves. A slow
    clock's promises last longer than they must: once found slow, the
    start-up check's hold on its grants ends and it grants."""
    n = node()
    heartbeat = lambda t, r: n.on_message(Message(HEARTBEAT, "n2", 1, {"round": r, "priority": 0}), t)
    assert _acks(heartbeat(0.2, 1)) == []  # the start-up clock check: no grant yet
    run(n, {"n2": peer_rate, "n3": peer_rate}, 10.0)
    assert "clock" in n.blockers
    acks = _acks(heartbeat(10.1, 2))
    assert (acks == []) is withheld
    if not withheld:
        assert acks[0].body["ok"] is True
    vote = n.on_message(Message(REQUEST_VOTE, "n2", 5, {"round": 1, "priority": 0}), 10.2)  # bound to n2 only
    granted = [e for e in vote if isinstance(e, Send) and e.kind == VOTE and e.body["granted"]]
    assert (granted == []) is withheld


def test_electionctl_status_says_which_clock_is_off(capsys):
    from electiond.cli import print_status

    bad = node()
    run(bad, {"n2": 2.0, "n3": 2.0}, 8.0)
    print_status({**bad.status(8.0), "authenticated": True})
    out = capsys.readouterr().out
    assert "CLOCK     our clock runs at x0.5000 of n2's, x0.5000 of n3's" in out

    good = node()
    run(good, {"n2": 0.5, "n3": 1.0}, 15.0)
    print_status({**good.status(15.0), "authenticated": True})
    assert "clock     beyond the bound: n2 (ours x2.0000 of its)" in capsys.readouterr().out


def test_the_wire_carries_clock_ms_and_drops_a_beacon_without_it():
    from electiond import wire

    n1, n2 = node("n1"), node("n2")
    codec = lambda name, schemas: wire.Codec("c", name, {"n1", "n2", "n3"}, None, schemas, 1, unicast_port=4000)
    tx, rx = codec("n2", n2.message_schemas()), codec("n1", n1.message_schemas())
    beacon = next(e for e in n2.on_tick(7.25) if isinstance(e, Send) and e.kind == PRESENCE)
    got = rx.decode(tx.encode(beacon))
    assert got.message.body["clock_ms"] == 7250
    # an older daemon's bare beacon is refused (a rolling upgrade loses presence, not elections)
    old = codec("n3", {PRESENCE: {}})
    assert rx.decode(old.encode(Send(PRESENCE, 0))) is None and rx.dropped["bad_schema"] == 1
