"""quorum-lease's adaptive lease (issue 17), driven with made-up times.

A leader that saw its heartbeats fire late or its quorum acks come back slow
announces a longer lease (up to lease_max) in its heartbeats; a follower
promises for the announced lease within its own bounds and says in its ack
which one it promised for; the leader counts each grant for no more than
both. A restarted node sits out a promise for the longest lease.
"""

from __future__ import annotations

import math
import random

import pytest

from electiond.protocols.base import Demote, Message, Promote, Send
from electiond.protocols.lease import HEARTBEAT, HEARTBEAT_ACK, PREVOTE, PREVOTE_REPLY, REQUEST_VOTE, VOTE, QuorumLease
from electiond.protocols import lease as lease_mod
from lease_harness import Cluster, settings_for

L = 0.15
HB = 0.05
GUARD = 0.02
L_MAX = 0.5


def make(name: str = "n1", n: int = 3, now: float = 0.0, **overrides) -> QuorumLease:
    return QuorumLease(settings_for(n, name, **overrides), random.Random(1), now)


def m(kind: str, sender: str, term: int, **body) -> Message:
    return Message(kind, sender, term, body)


def sends(effects, kind: str) -> list[Send]:
    return [e for e in effects if isinstance(e, Send) and e.kind == kind]


def lead(p: QuorumLease) -> tuple[float, int]:
    """Through pre-vote and vote with n2; returns (now, term)."""
    now = p.deadline()
    for _ in range(1000):
        effects = p.on_tick(now)
        if sends(effects, PREVOTE):
            break
        now = p.deadline()
    rnd = sends(effects, PREVOTE)[0].body["round"]
    effects = p.on_message(m(PREVOTE_REPLY, "n2", 1, round=rnd, granted=True, retry_ms=0), now)
    req = sends(effects, REQUEST_VOTE)[0]
    effects = p.on_message(m(VOTE, "n2", 1, round=req.body["round"], granted=True, retry_ms=0), now)
    assert any(isinstance(e, Promote) for e in effects)
    return now, req.term


def ack(p: QuorumLease, hb: Send, at: float, **extra) -> None:
    p.on_message(m(HEARTBEAT_ACK, "n2", hb.term, round=hb.body["round"], ok=True, priority=0, **extra), at)


def beat(p: QuorumLease, at: float) -> Send:
    effects = p.on_tick(at)
    return sends(effects, HEARTBEAT)[0]


def test_off_by_default_nothing_new_on_the_wire():
    p = make()
    now, term = lead(p)
    hb = beat(p, p.deadline())
    assert "lease_s" not in hb.body
    f = make("n2")
    effects = f.on_message(m(HEARTBEAT, "n1", 1, round=1, priority=0, sticky=False), 1.0)
    assert "lease_s" not in sends(effects, HEARTBEAT_ACK)[0].body
    assert f.settings.follower_promise_s() == pytest.approx(f.settings.follower_promise_for_s(L))


def test_a_quiet_leader_announces_the_configured_lease():
    p = make(lease_max_s=L_MAX)
    now, _ = lead(p)
    t = p.deadline()
    for _ in range(20):
        hb = beat(p, t)
        assert hb.body["lease_s"] == pytest.approx(L)
        ack(p, hb, t + 0.002, lease_s=hb.body["lease_s"])
        t = p.deadline()
    assert p.lease_until == pytest.approx(t - HB + L, abs=HB)


def test_a_late_heartbeat_lengthens_the_next_announced_lease_up_to_lease_max():
    p = make(lease_max_s=L_MAX)
    lead(p)
    due = p.deadline()
    hb = beat(p, due + 0.06)  # the timer fired 60 ms late (a stall)
    ack(p, hb, due + 0.062, lease_s=hb.body["lease_s"])
    nxt = beat(p, p.deadline())
    assert nxt.body["lease_s"] == pytest.approx(GUARD + HB + 2 * 0.06, abs=1e-3)
    assert p.extra_status(p.deadline())["lease_strain_ms"] == pytest.approx(60.0, abs=0.5)
    # a stall longer than lease_max allows is capped
    p._strain.note(p.deadline(), 1.0)
    assert p.announced_lease_s(p.deadline()) == pytest.approx(L_MAX)


def test_slow_quorum_acks_lengthen_it_too():
    p = make(lease_max_s=L_MAX)
    lead(p)
    t = p.deadline()
    hb = beat(p, t)
    ack(p, hb, t + 0.07, lease_s=hb.body["lease_s"])  # the majority's ack took 70 ms
    assert p.announced_lease_s(t + 0.08) == pytest.approx(GUARD + HB + 2 * 0.07, abs=1e-6)


def test_the_strain_is_forgotten_after_its_window():
    p = make(lease_max_s=L_MAX)
    lead(p)
    due = p.deadline()
    beat(p, due + 0.06)
    assert p.announced_lease_s(due + 1.0) > L
    assert p.announced_lease_s(due + 2 * lease_mod.STRAIN_WINDOW_S + 1.0) == pytest.approx(L)


def test_the_leader_counts_a_grant_for_no_more_than_the_follower_promised():
    p = make(lease_max_s=L_MAX)
    lead(p)
    p._strain.note(p.deadline(), 0.2)
    s = p.deadline()
    hb = beat(p, s)
    asked = hb.body["lease_s"]
    assert asked == pytest.approx(GUARD + HB + 0.4)
    # an older follower promises the configured lease and says nothing
    ack(p, hb, s + 0.001)
    assert p.lease_until == pytest.approx(s + L)
    # one whose own lease_max is lower promised for less: that is what counts
    ack(p, hb, s + 0.002, lease_s=0.3)
    assert p.lease_until == pytest.approx(s + 0.3)
    # a follower claiming more than was asked adds nothing beyond the ask
    ack(p, hb, s + 0.003, lease_s=5.0)
    assert p.lease_until == pytest.approx(s + asked)


def test_a_follower_promises_for_the_announced_lease_within_its_own_bounds():
    f = make("n2", lease_max_s=L_MAX)
    r = 1.0
    effects = f.on_message(m(HEARTBEAT, "n1", 1, round=1, priority=0, sticky=False, lease_s=0.3), r)
    assert sends(effects, HEARTBEAT_ACK)[0].body["lease_s"] == pytest.approx(0.3)
    assert f.promise == ("n1", pytest.approx(r + f.settings.follower_promise_for_s(0.3)))
    # above its own ceiling: it promises for the ceiling and says so
    effects = f.on_message(m(HEARTBEAT, "n1", 1, round=2, priority=0, sticky=False, lease_s=9.0), r + 0.05)
    assert sends(effects, HEARTBEAT_ACK)[0].body["lease_s"] == pytest.approx(L_MAX)
    assert f.promise[1] == pytest.approx(r + 0.05 + f.settings.follower_promise_for_s(L_MAX))


@pytest.mark.parametrize("bad", [0.01, 7, True, "0.3", math.nan, -1.0, None])
def test_a_malformed_or_short_announcement_is_the_configured_lease(bad):
    f = make("n2", lease_max_s=L_MAX)
    effects = f.on_message(m(HEARTBEAT, "n1", 1, round=1, priority=0, sticky=False, lease_s=bad), 1.0)
    assert sends(effects, HEARTBEAT_ACK)[0].body["lease_s"] == L
    assert f.promise[1] == pytest.approx(1.0 + f.settings.follower_promise_for_s(L))


def test_a_promise_to_the_same_leader_never_shrinks():
    f = make("n2", lease_max_s=L_MAX)
    f.on_message(m(HEARTBEAT, "n1", 1, round=1, priority=0, sticky=False, lease_s=0.45), 1.0)
    long_until = f.promise[1]
    f.on_message(m(HEARTBEAT, "n1", 1, round=2, priority=0, sticky=False, lease_s=L), 1.05)
    assert f.promise[1] == long_until  # 1.05 + L_f(L) ends earlier: the longer one stands
    # and it binds: no vote for another candidate before it ends
    refused = f.on_message(m(REQUEST_VOTE, "n3", 2, round=1, priority=0), long_until - 0.001)
    assert sends(refused, VOTE)[0].body["granted"] is False
    granted = f.on_message(m(REQUEST_VOTE, "n3", 2, round=2, priority=0), long_until)
    assert sends(granted, VOTE)[0].body["granted"] is True


def test_a_restarted_node_sits_out_a_promise_for_the_longest_lease():
    f = make("n2", now=10.0, lease_max_s=L_MAX)
    assert f.quarantine_until == pytest.approx(10.0 + f.settings.follower_promise_for_s(L_MAX))
    assert f.settings.follower_promise_s() > f.settings.follower_promise_for_s(L)


def test_a_lost_lease_makes_the_next_term_ask_for_more():
    p = make(lease_max_s=L_MAX)
    lead(p)
    t = p.deadline()
    for _ in range(50):  # no acks: the lease runs out
        effects = p.on_tick(t)
        if any(isinstance(e, Demote) for e in effects):
            break
        t = p.deadline()
    assert any(isinstance(e, Demote) and e.reason == "lease_lost" for e in effects)
    assert p.announced_lease_s(t) > L


def test_votes_back_only_the_configured_lease():
    p = make(lease_max_s=L_MAX)
    p._strain.note(0.0, 0.2)
    now, _ = lead(p)
    assert p.lease_until == pytest.approx(now + L)


@pytest.mark.parametrize("seed", range(6))
def test_no_overlap_in_a_cluster_with_adaptive_leases_and_slow_delivery(seed):
    # the harness checks at every step: never two valid leases, every lease
    # covered by a majority's promises; acks up to 90 ms make leaders
    # lengthen their leases
    c = Cluster(5, seed=seed, delay_s=(0.001, 0.045), loss=0.02, lease_max_s=L_MAX)
    rng = random.Random(seed)
    for _ in range(8):
        c.run(rng.uniform(0.3, 1.0))
        live = [x for x in c.names if x not in c.down]
        if rng.random() < 0.5 and len(live) > 3:
            c.crash(rng.choice(live))
        elif c.down:
            c.restart(rng.choice(sorted(c.down)))
    for x in sorted(c.down):
        c.restart(x)
    c.run(5.0)
    leaders = c.leaders()
    assert len(leaders) == 1
    assert c.nodes[leaders[0]].announced_lease_s(c.local(leaders[0])) > L
