"""Maintenance mode, failing promote hooks and sticky transfers on the pure
core (Node and the protocols), driven with made-up times."""

import random

from electiond.node import PAUSED, PRESENCE, PROMOTE_BACKOFF, PROMOTE_FAULT, Node
from electiond.protocols.base import Demote, Member, Message, Promote, Send, Settings
from electiond.protocols.bully import HEARTBEAT as BULLY_HEARTBEAT, Bully
from lease_harness import Cluster

ONE = (Member("n1", 1),)
THREE = tuple(Member(f"n{i}", i) for i in range(1, 4))


def node(members=ONE, name="n1", protocol="quorum-lease", **kw):
    s = Settings(cluster="c", node_name=name, members=members)
    return Node(s, protocol, random.Random(7), 0.0, **kw)


def run(n, start, end, on_promote=None):
    """Tick n at its deadlines from start to end; returns (time, effect) of
    every Promote and Demote, calling on_promote(term, now) for each Promote."""
    seen = []
    now = start
    for _ in range(200_000):
        if now > end:
            break
        effects = n.on_tick(now)
        for e in effects:
            if isinstance(e, (Promote, Demote)):
                seen.append((now, e))
            if isinstance(e, Promote) and on_promote is not None:
                for more in on_promote(e.term, now):
                    if isinstance(more, (Promote, Demote)):
                        seen.append((now, more))
        now = max(now + 1e-4, min(n.deadline(), now + 0.5))
    return seen


def test_pause_demotes_a_leader_stands_for_nothing_and_resume_stands_again():
    n = node()
    promotes = [e for _, e in run(n, 0.0, 2.0) if isinstance(e, Promote)]
    assert promotes and n.is_leader(2.0)
    effects = n.pause(2.0)
    assert any(isinstance(e, Demote) and e.reason == PAUSED for e in effects)
    assert n.paused and PAUSED in n.blockers
    assert n.pause(2.0) == [], "pausing twice is one pause"
    n.demote_hooks_done(2.01)
    assert not [e for _, e in run(n, 2.01, 20.0) if isinstance(e, Promote)], "a paused node never stands"
    n.resume(20.0)
    assert not n.paused
    assert [e for _, e in run(n, 20.0, 22.0) if isinstance(e, Promote)]


def test_presence_says_paused_and_peers_show_it():
    a, b = node(THREE, "n1"), node(THREE, "n2")
    a.pause(0.0)
    beacon = a.announce(0.0)
    assert beacon.kind == PRESENCE and beacon.body == {"paused": True, "fault": False, "served_term": -1, "clock_ms": 0}
    b.on_message(Message(PRESENCE, "n1", beacon.term, beacon.body), 0.1)
    row = next(m for m in b.status(0.1)["members"] if m["name"] == "n1")
    assert row["paused"] is True and row["fault"] is False
    # wrong types from a peer are ignored, not shown
    b.on_message(Message(PRESENCE, "n1", 0, {"paused": "yes", "served_term": True}), 0.2)
    row = next(m for m in b.status(0.2)["members"] if m["name"] == "n1")
    assert "paused" not in row and "served_term" not in row


def test_failing_promote_hooks_back_off_growing_then_fault_until_resumed():
    n = node(max_promote_failures=3)
    fail = lambda term, now: n.promote_hooks_done(False, term, now, "exit 127")  # noqa: E731
    seen = run(n, 0.0, 600.0, on_promote=fail)
    promote_times = [t for t, e in seen if isinstance(e, Promote)]
    assert len(promote_times) == 3, promote_times
    gaps = [b - a for a, b in zip(promote_times, promote_times[1:])]
    # base 1.2s (4 x the 300ms election timeout), doubling, up to +50% jitter
    assert 1.2 <= gaps[0] <= 1.9 and 2.4 <= gaps[1] <= 3.7 and gaps[1] > gaps[0], gaps
    assert PROMOTE_FAULT in n.blockers and PROMOTE_BACKOFF not in n.blockers
    assert n.status(600.0)["promote_failures"] == 3
    assert n.announce(600.0).body["fault"] is True
    n.resume(600.0)
    assert not n.blockers and n.promote_backoff.failures == 0
    ok = lambda term, now: n.promote_hooks_done(True, term, now)  # noqa: E731
    assert [e for _, e in run(n, 600.0, 603.0, on_promote=ok) if isinstance(e, Promote)]
    assert n.served_term == n.protocol.term


def test_a_success_resets_the_count_and_health_forgives_a_fault():
    n = node(max_promote_failures=2)
    n.promote_hooks_done(False, 1, 1.0)
    n.promote_hooks_done(True, 2, 5.0)
    assert n.promote_backoff.failures == 0
    n.promote_hooks_done(False, 3, 6.0)
    n.promote_hooks_done(False, 4, 9.0)
    assert PROMOTE_FAULT in n.blockers
    n.forgive_promote_failures(10.0, "health rose")
    assert not n.blockers
    assert any(h.event == "promote_failures_cleared" for h in n.history)


def test_elections_are_counted():
    n = node()
    run(n, 0.0, 2.0)
    st = n.status(2.0)["elections"]
    assert st["started"] >= 1 and st["won"] == 1


# ---- sticky transfers (quorum-lease) ---------------------------------------------


def test_an_operators_transfer_is_not_preempted_until_an_unasked_change():
    c = Cluster(3, seed=3, priorities={"n1": 200, "n2": 100, "n3": 50}, preempt_delay_s=0.3)
    assert c.elect() == "n1"
    c.run(0.5)
    c.apply("n1", c.nodes["n1"].transfer("n3", c.local("n1")))
    c.run_until(lambda: c.leader() == "n3", 2.0)
    assert c.leader() == "n3"
    c.run(4.0)  # many preempt delays
    assert c.leader() == "n3", "n1 and n2 rank higher but must not take an operator's choice back"
    assert c.nodes["n1"].extra_status(c.local("n1"))["operator_chosen"] is True
    # a change nobody asked for ends it: the best node leads again
    c.crash("n3")
    c.run_until(lambda: c.leader() == "n1", 5.0)
    assert c.leader() == "n1"


def test_a_preempting_hand_over_is_not_sticky():
    c = Cluster(3, seed=4, priorities={"n1": 50, "n2": 100, "n3": 200}, preempt_delay_s=0.3,
                start_times={"n3": 1.0})
    first = c.elect()
    assert first in ("n1", "n2")
    c.run_until(lambda: c.leader() == "n3", 5.0)
    assert c.leader() == "n3"
    assert c.nodes["n3"].extra_status(c.local("n3"))["operator_chosen"] is False


# ---- sticky stepdown (bully, ring share the rule in epoch.py) ------------------


def test_bully_stepdown_is_not_undone_by_the_node_that_stepped_down():
    s = Settings(cluster="c", node_name="n3", members=THREE)
    b = Bully(s, random.Random(1), 0.0)
    b.on_tick(b.deadline())
    assert b.role == "leader"
    b.stepdown(1.0)
    # n2 wins meanwhile; long after the hold, its heartbeats do not make us preempt
    for t in (1.5, 3.0, 6.0):
        effects = b.on_message(Message(BULLY_HEARTBEAT, "n2", b.term + 1, {}), t)
        assert not [e for e in effects if isinstance(e, Promote)] and b.leader == "n2"
    # n2 falls silent (a change nobody asked for): we stand again as before
    t, promoted = 6.0, []
    for _ in range(1000):
        if promoted:
            break
        t = max(t + 0.01, b.deadline())
        promoted = [e for e in b.on_tick(t) if isinstance(e, Promote)]
    assert promoted and b.role == "leader" and t < 10.0
    # and after that, the stepdown's truce is over: a lower leader is preempted
    b2 = Bully(s, random.Random(2), 0.0)
    b2.on_tick(b2.deadline())
    b2.stepdown(1.0)
    b2.on_message(Message(BULLY_HEARTBEAT, "n2", b2.term + 1, {}), 1.5)
    b2._preempt_suppressed("n1")  # n1 leads now: the truce was with n2 only
    assert not b2._preempt_suppressed("n1") and not b2._preempt_suppressed("n2")


# ---- the member table ----------------------------------------------------------------


def test_a_leader_timed_out_by_the_protocol_is_shown_dead_until_heard_again():
    from electiond.protocols.lease import HEARTBEAT

    n = node(THREE, "n2")
    now = 2.0
    for k in range(20):
        now += 0.05
        n.on_tick(now)
        n.on_message(Message(HEARTBEAT, "n1", 1, {"round": k, "priority": 100, "sticky": False}), now)
    row = lambda: next(m for m in n.status(now)["members"] if m["name"] == "n1")  # noqa: E731
    assert n.protocol.leader == "n1" and row()["alive"]
    last_heard = now
    for _ in range(100):  # silence: tick until the protocol gives up on it
        now = max(now + 0.01, min(n.deadline(), now + 0.05))
        n.on_tick(now)
        if n.protocol.leader is None:
            break
    assert n.protocol.leader is None and now - last_heard < n.membership.liveness_window_s()
    assert row()["alive"] is False, "dead once suspected, not only after the slow presence window"
    n.on_message(Message(PRESENCE, "n1", 1, {}), now + 0.01)
    assert row()["alive"] is True


# ---- the pause file ------------------------------------------------------------------


def test_pause_file_round_trip_and_strictness(tmp_path):
    import pytest

    from electiond import pausefile
    from electiond.state import StateError

    assert pausefile.load(str(tmp_path)) is False
    pausefile.save(str(tmp_path))
    assert pausefile.load(str(tmp_path)) is True
    pausefile.clear(str(tmp_path))
    pausefile.clear(str(tmp_path))  # twice is fine
    assert pausefile.load(str(tmp_path)) is False
    for junk in (b"", b"yes\n", b'{"paused": false, "since": 1}', b'{"paused": true, "since": 1, "x": 2}'):
        (tmp_path / "paused").write_bytes(junk)
        with pytest.raises(StateError, match="paused"):
            pausefile.load(str(tmp_path))
