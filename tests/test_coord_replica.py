"""The embedded config register's rules, driven by hand with made-up times."""

from __future__ import annotations

import random
import sys
from pathlib import Path

import pytest

import electiond.coord.replica as replica_mod
from electiond.coord.replica import (
    COORD_ACK,
    COORD_APPEND,
    COORD_REPLY,
    COORD_REQUEST,
    ERR_COMPACTED,
    ERR_UNAVAILABLE,
    ERR_VERSION,
    OP_CAS,
    OP_DELETE,
    OP_GET,
    OP_NOOP,
    OP_SET,
    ConfigReplica,
    Entry,
    Reply,
    StorePersist,
    StoreState,
    View,
)
from electiond.protocols.base import Message, Send
from electiond.protocols.lease import PREVOTE, PREVOTE_REPLY, REQUEST_VOTE, VOTE, QuorumLease

sys.path.insert(0, str(Path(__file__).parent))
from lease_harness import settings_for  # noqa: E402

NAMES = ("n1", "n2", "n3")
HB = 0.05


def rep(name: str, store: StoreState | None = None) -> ConfigReplica:
    return ConfigReplica(name, NAMES, HB, store)


def lead_view(term: int, name: str = "n1") -> View:
    return View(name, term, True)


def follow_view(term: int, leader: str | None = "n1") -> View:
    return View(leader, term, False)


def sends(effects, kind=None) -> list[Send]:
    return [e for e in effects if type(e) is Send and (kind is None or e.kind == kind)]


def replies(effects) -> list[Reply]:
    return [e for e in effects if type(e) is Reply]


def deliver(to: ConfigReplica, view: View, sender: str, s: Send, now: float) -> list:
    return to.on_message(view, s.kind, sender, s.term, s.body, now)


def elected(term: int = 1):
    """n1 leads ``term``; n2 acked the no-op: committed, ready."""
    a, b, c = rep("n1"), rep("n2"), rep("n3")
    fx = a.sync(lead_view(term), 0.0)
    app = [s for s in sends(fx, COORD_APPEND) if s.to == "n2"][0]
    ack = sends(deliver(b, follow_view(term), "n1", app, 0.001), COORD_ACK)[0]
    deliver(a, lead_view(term), "n2", ack, 0.002)
    assert a.ready(lead_view(term))
    return a, b, c


def test_new_leader_appends_a_noop_persists_it_before_sending_and_serves_only_once_committed():
    a = rep("n1")
    fx = a.sync(lead_view(1), 0.0)
    assert type(fx[0]) is StorePersist and fx[0].state.log[-1].op == OP_NOOP
    assert [s.to for s in sends(fx, COORD_APPEND)] == ["n2", "n3"]
    assert not a.ready(lead_view(1))
    r = replies(a.request(lead_view(1), "r1", OP_GET, "k", None, 0, 0.01))
    assert r[0].error == ERR_UNAVAILABLE
    b = rep("n2")
    ack = sends(deliver(b, follow_view(1), "n1", sends(fx)[0], 0.01), COORD_ACK)[0]
    assert ack.body == {"ok": True, "match": 1}
    deliver(a, lead_view(1), "n2", ack, 0.02)
    assert a.ready(lead_view(1)) and a.commit == 1


def test_a_write_is_acknowledged_only_after_a_majority_persisted_it():
    a, b, c = elected()
    fx = a.request(lead_view(1), "w1", OP_SET, "k", "x", 0, 1.0)
    assert type(fx[0]) is StorePersist  # the leader's own copy first
    assert not replies(fx)  # one of three persisted: not yet
    app = [s for s in sends(fx, COORD_APPEND) if s.to == "n2"][0]
    fol = deliver(b, follow_view(1), "n1", app, 1.001)
    assert type(fol[0]) is StorePersist and fol[0].state.log[-1].value == "x"  # persist, then ack
    assert sends(fol)[-1].kind == COORD_ACK
    done = replies(deliver(a, lead_view(1), "n2", sends(fol)[-1], 1.002))
    assert done == [Reply("w1", True, "", "k", "x", 2)]
    assert a.committed_get("k") == ("x", 2)


def test_a_leader_that_loses_its_lease_answers_pending_writes_unavailable_and_serves_no_reads():
    a, b, c = elected()
    a.request(lead_view(1), "w1", OP_SET, "k", "x", 0, 1.0)
    fx = a.on_tick(View("n1", 1, False), 1.2)  # lease ran out before a majority acked
    assert replies(fx) == [Reply("w1", False, ERR_UNAVAILABLE, "k", None, 0)]
    r = replies(a.request(View("n1", 1, False), "r2", OP_GET, "k", None, 0, 1.3))
    assert r[0].error == ERR_UNAVAILABLE


def test_cas_compares_the_version_and_a_retried_request_id_is_not_applied_twice():
    a, b, c = elected()
    fx = a.request(lead_view(1), "w1", OP_SET, "k", "x", 0, 1.0)
    ack = sends(deliver(b, follow_view(1), "n1", sends(fx)[0], 1.0), COORD_ACK)[0]
    assert replies(deliver(a, lead_view(1), "n2", ack, 1.0))[0].version == 2
    assert replies(a.request(lead_view(1), "w2", OP_CAS, "k", "y", 1, 1.1)) == [
        Reply("w2", False, ERR_VERSION, "k", None, 2)]
    again = a.request(lead_view(1), "w1", OP_SET, "k", "x", 0, 1.2)  # the client's retry
    assert replies(again) == [Reply("w1", True, "", "k", "x", 2)] and a.last == (1, 2)
    fx = a.request(lead_view(1), "w3", OP_CAS, "k", "y", 2, 1.3)
    assert a.last == (1, 3) and not replies(fx)


def test_delete_then_cas_from_zero_recreates_the_key():
    a, b, c = elected()
    for i, (op, val, ver) in enumerate([(OP_SET, "x", 0), (OP_DELETE, None, 0), (OP_CAS, "z", 0)]):
        fx = a.request(lead_view(1), f"w{i}", op, "k", val, ver, 1.0 + i)
        ack = sends(deliver(b, follow_view(1), "n1", sends(fx)[0], 1.0 + i), COORD_ACK)[0]
        r = replies(deliver(a, lead_view(1), "n2", ack, 1.0 + i))
        assert r and r[0].ok, r
    assert a.committed_get("k") == ("z", 4)


def test_a_follower_refuses_an_older_term_and_a_log_that_does_not_match():
    b = rep("n2", StoreState(term=3, commit=0, log=(Entry(1, 3, OP_NOOP, "", None, ""),)))
    stale = Send(COORD_APPEND, 2, {"prev_v": 1, "prev_t": 3, "commit": 0, "has": True, "t": 2, "ttl_ms": 0, "op": OP_SET,
                                   "key": "k", "value": "x", "req": "r"})
    fx = deliver(b, follow_view(2), "n1", stale, 0.0)
    assert sends(fx)[0].body["ok"] is False and b.last == (3, 1)
    gap = Send(COORD_APPEND, 4, {"prev_v": 5, "prev_t": 4, "commit": 0, "has": True, "t": 4, "ttl_ms": 0, "op": OP_SET,
                                 "key": "k", "value": "x", "req": "r"})
    fx = deliver(b, follow_view(4), "n1", gap, 0.1)
    assert sends(fx, COORD_ACK)[0].body == {"ok": False, "match": 1} and b.last == (3, 1)


def test_a_follower_cuts_a_conflicting_uncommitted_tail():
    log = (Entry(1, 1, OP_NOOP, "", None, ""), Entry(2, 1, OP_SET, "k", "old", "r0"))
    b = rep("n2", StoreState(term=1, commit=1, log=log))
    app = Send(COORD_APPEND, 2, {"prev_v": 1, "prev_t": 1, "commit": 1, "has": True, "t": 2, "ttl_ms": 0, "op": OP_NOOP,
                                 "key": "", "value": None, "req": ""})
    fx = deliver(b, follow_view(2), "n3", app, 0.0)
    assert b.last == (2, 2) and type(fx[0]) is StorePersist
    assert all(e.value != "old" for e in fx[0].state.log)


def test_an_older_terms_entry_is_committed_only_by_an_entry_of_the_leaders_own_term():
    # n1 leads term 3 holding term 2's entry 2 that n2 also holds: a majority,
    # but committing it by counting is Raft's figure-8 mistake
    log = (Entry(1, 1, OP_NOOP, "", None, ""), Entry(2, 2, OP_SET, "k", "x", "r1"))
    a = rep("n1", StoreState(term=2, commit=1, log=log))
    a.sync(lead_view(3), 0.0)  # appends its no-op (3, 3)
    lead = a._lead
    assert lead is not None
    deliver(a, lead_view(3), "n2", Send(COORD_ACK, 3, {"ok": True, "match": 2}), 0.1)
    assert a.commit == 1
    deliver(a, lead_view(3), "n2", Send(COORD_ACK, 3, {"ok": True, "match": 3}), 0.2)
    assert a.commit == 3 and a.committed_get("k") == ("x", 2)


def test_a_follower_forwards_its_clients_request_and_relays_the_answer():
    a, b, c = elected()
    fx = b.request(follow_view(1), "q1", OP_GET, "k", None, 0, 1.0)
    fwd = sends(fx, COORD_REQUEST)[0]
    assert fwd.to == "n1"
    ans = sends(deliver(a, lead_view(1), "n2", fwd, 1.001), COORD_REPLY)[0]
    assert ans.to == "n2"
    assert replies(deliver(b, follow_view(1), "n1", ans, 1.002)) == [Reply("q1", True, "", "k", None, 0)]
    # no leader known: an explicit unavailable, the client retries
    assert replies(b.request(follow_view(1, None), "q2", OP_GET, "k", None, 0, 1.1))[0].error == ERR_UNAVAILABLE


def test_unacked_entries_are_retransmitted_on_the_tick():
    a, b, c = elected()
    a.request(lead_view(1), "w1", OP_SET, "k", "x", 0, 1.0)
    assert a.deadline() < float("inf")
    fx = a.on_tick(lead_view(1), a.deadline())
    assert {s.to for s in sends(fx, COORD_APPEND)} == {"n2", "n3"}


def test_watch_is_gap_free_from_a_version_and_says_compacted_for_an_older_one(monkeypatch):
    monkeypatch.setattr(replica_mod, "LOG_KEEP", 3)
    a = ConfigReplica("n1", ("n1",), HB)
    a.sync(lead_view(1), 0.0)  # a cluster of one commits alone
    for i in range(6):
        assert replies(a.request(lead_view(1), f"w{i}", OP_SET, "k", str(i), 0, 1.0 + i))[0].ok
    got = a.changes_since(4)
    assert [e.version for e in got] == [5, 6, 7]
    assert a.changes_since(1) == ERR_COMPACTED
    assert a.committed_get("k") == ("5", 7)
    # what was folded into the base survives a restart from the persisted state
    b = ConfigReplica("n1", ("n1",), HB, a.state())
    assert b.committed_get("k") == ("5", 7) and b.last == a.last


def test_requests_beyond_the_bounds_are_refused():
    a, b, c = elected()
    assert replies(a.request(lead_view(1), "w", OP_SET, "k" * 200, "x", 0, 1.0))[0].error == "too_big"
    assert replies(a.request(lead_view(1), "w", OP_SET, "k", "x" * 2000, 0, 1.0))[0].error == "too_big"


# ---- the one rule in quorum-lease: votes carry the store's last (term, version) ----


def lease(name: str) -> QuorumLease:
    return QuorumLease(settings_for(3, name), random.Random(1), 0.0)


@pytest.mark.parametrize("kind,reply", [(REQUEST_VOTE, VOTE), (PREVOTE, PREVOTE_REPLY)])
def test_a_voter_refuses_a_candidate_whose_store_is_behind_its_own(kind, reply):
    p = lease("n2")
    p.coord_last = (2, 10)
    now = 10.0  # past the start-up quarantine
    behind = Message(kind, "n1", 3, {"round": 1, "priority": 0, "coord_term": 2, "coord_version": 9})
    out = [s for s in p.on_message(behind, now) if type(s) is Send and s.kind == reply]
    assert out[0].body["granted"] is False
    older_term = Message(kind, "n3", 3, {"round": 1, "priority": 0, "coord_term": 1, "coord_version": 50})
    out = [s for s in p.on_message(older_term, now) if type(s) is Send and s.kind == reply]
    assert out[0].body["granted"] is False
    absent = Message(kind, "n3", 3, {"round": 1, "priority": 0})
    out = [s for s in p.on_message(absent, now) if type(s) is Send and s.kind == reply]
    assert out[0].body["granted"] is False
    same = Message(kind, "n1", 3, {"round": 2, "priority": 0, "coord_term": 2, "coord_version": 10})
    out = [s for s in p.on_message(same, now) if type(s) is Send and s.kind == reply]
    assert out[0].body["granted"] is True


def test_a_candidate_carries_its_store_position_and_nothing_without_a_store():
    p = lease("n1")
    fx = p.on_tick(p.deadline())
    pv = [s for s in fx if type(s) is Send and s.kind == PREVOTE]
    assert pv and "coord_term" not in pv[0].body
    q = lease("n1")
    q.coord_last = (4, 7)
    fx = q.on_tick(q.deadline())
    pv = [s for s in fx if type(s) is Send and s.kind == PREVOTE]
    assert pv[0].body["coord_term"] == 4 and pv[0].body["coord_version"] == 7


# ---- locks ----------------------------------------------------------------------

from electiond.coord.replica import ERR_LOCK_LOST, ERR_NOT_ACQUIRED, OP_LOCK, OP_RENEW, OP_UNLOCK  # noqa: E402


def grant(a: ConfigReplica, b: ConfigReplica, req: str, owner: str, now: float, ttl_ms: int = 1000) -> list[Reply]:
    fx = a.request(lead_view(1), req, OP_LOCK, "job", owner, 0, now, ttl_ms=ttl_ms)
    out = replies(fx)
    for s in sends(fx, COORD_APPEND):
        if s.to == "n2":
            ack = sends(deliver(b, follow_view(1), "n1", s, now), COORD_ACK)[0]
            out += replies(deliver(a, lead_view(1), "n2", ack, now))
    return out


def test_a_grant_is_a_replicated_entry_whose_version_is_the_token_and_blocks_others_for_w():
    a, b, c = elected()
    fx = a.request(lead_view(1), "g1", OP_LOCK, "job", "alice", 0, 1.0, ttl_ms=1000)
    assert not replies(fx)  # not before a majority holds the grant
    ack = sends(deliver(b, follow_view(1), "n1", sends(fx, COORD_APPEND)[0], 1.0), COORD_ACK)[0]
    r = replies(deliver(a, lead_view(1), "n2", ack, 1.01))
    assert r == [Reply("g1", True, "", "job", "alice", 2)]
    w = a.hold_s(1000)
    assert w > 1.0 * (1 + a.rho) / (1 - a.rho)
    # W counts from when the request arrived (1.0), not from the commit
    assert grant(a, b, "g2", "bob", 1.0 + w - 0.002)[0].error == ERR_NOT_ACQUIRED
    later = grant(a, b, "g3", "bob", 1.0 + w + 0.001)
    assert later[0].ok and later[0].version > 2


def test_renew_extends_from_its_arrival_wrong_tokens_are_lost_and_release_frees():
    a, b, c = elected()
    tok = grant(a, b, "g1", "alice", 1.0)[0].version
    w = a.hold_s(1000)
    assert replies(a.request(lead_view(1), "r1", OP_RENEW, "job", None, tok, 1.5, ttl_ms=1000))[0].ok
    assert grant(a, b, "g2", "bob", 1.0 + w + 0.1)[0].error == ERR_NOT_ACQUIRED  # renewed at 1.5
    assert replies(a.request(lead_view(1), "r2", OP_RENEW, "job", None, tok + 1, 1.6, ttl_ms=1000))[0].error == \
        ERR_LOCK_LOST
    assert replies(a.request(lead_view(1), "u1", OP_UNLOCK, "job", None, tok, 1.7))[0].ok
    assert grant(a, b, "g3", "bob", 1.71)[0].ok
    # a renewal after the hold ran out is refused: the holder has stopped by then
    a2, b2, _ = elected()
    t2 = grant(a2, b2, "g1", "alice", 1.0)[0].version
    late = a2.request(lead_view(1), "r3", OP_RENEW, "job", None, t2, 1.0 + a2.hold_s(1000) + 0.01, ttl_ms=1000)
    assert replies(late)[0].error == ERR_LOCK_LOST


def test_a_new_leader_keeps_every_grant_in_its_log_held_for_w_from_when_it_started_leading():
    log = (Entry(1, 1, OP_NOOP, "", None, ""), Entry(2, 1, OP_LOCK, "job", "alice", "g1", 500))
    a = rep("n1", StoreState(term=1, commit=2, log=log))
    fx = a.sync(lead_view(2), 10.0)
    b = rep("n2", StoreState(term=1, commit=2, log=log))
    ack = sends(deliver(b, follow_view(2), "n1", sends(fx, COORD_APPEND)[0], 10.0), COORD_ACK)[0]
    deliver(a, lead_view(2), "n2", ack, 10.0)
    assert a.ready(lead_view(2))
    assert a.lock_holder("job", 10.0 + a.hold_s(500) - 0.001) == (2, "alice")
    assert a.lock_holder("job", 10.0 + a.hold_s(500)) is None
    # the next token is above the old leader's, whatever the clocks say
    r = replies(a.request(lead_view(2), "g2", OP_LOCK, "job", "bob", 0, 10.1, ttl_ms=500))
    assert r and r[0].error == ERR_NOT_ACQUIRED and r[0].version == 2


def test_a_retried_acquire_gets_its_first_grant_not_a_second_token():
    a, b, c = elected()
    first = grant(a, b, "g1", "alice", 1.0)[0]
    again = replies(a.request(lead_view(1), "g1", OP_LOCK, "job", "alice", 0, 1.2, ttl_ms=1000))
    assert again == [first]


# ---- barriers ----------------------------------------------------------------------------

from electiond.coord.replica import BARRIER_LEASE_S, OP_BARRIER  # noqa: E402


def poll(a: ConfigReplica, b: ConfigReplica, who: str, count: int, now: float, view: View | None = None) -> Reply:
    view = view or lead_view(1)
    fx = a.request(view, f"p-{who}-{now}", OP_BARRIER, "start", who, count, now)
    out = replies(fx)
    for s in sends(fx, COORD_APPEND):
        if s.to == "n2":
            ack = sends(deliver(b, follow_view(view.term), "n1", s, now), COORD_ACK)[0]
            out += replies(deliver(a, view, "n2", ack, now))
    return [r for r in out if r.req.startswith("p-")][0]


def test_a_barrier_passes_once_count_live_participants_polled_and_a_dead_one_is_not_counted():
    a, b, c = elected()
    assert poll(a, b, "x", 3, 1.0).value == "waiting"
    # y polls, then dies: by the time z arrives its poll has lapsed
    assert poll(a, b, "y", 3, 1.1).version == 2
    assert poll(a, b, "x", 3, 1.0 + BARRIER_LEASE_S * 0.9).version == 2
    r = poll(a, b, "z", 3, 1.1 + BARRIER_LEASE_S + 0.01)
    assert r.value == "waiting" and r.version == 2  # x and z: y is no longer counted
    # a participant polling twice is one participant
    assert poll(a, b, "z", 3, 1.1 + BARRIER_LEASE_S + 0.02).version == 2
    assert poll(a, b, "w", 3, 1.1 + BARRIER_LEASE_S + 0.03).value == "waiting"  # trips: the record is written
    assert poll(a, b, "x", 3, 2.2).value == "done" and poll(a, b, "w", 3, 2.2).version == 3
    assert poll(a, b, "y", 3, 2.3).value == "waiting"  # y was not among those that passed


def test_a_new_leader_knows_a_tripped_barrier_from_the_replicated_record():
    a, b, c = elected()
    for who in ("x", "y"):
        poll(a, b, who, 2, 1.0)
    # n2 takes over in term 2 with the committed record in its log
    b.sync(View("n2", 2, True), 5.0)
    r = replies(b.request(View("n2", 2, True), "late", OP_BARRIER, "start", "y", 2, 5.1))
    assert r[0].error == ERR_UNAVAILABLE  # not before its no-op committed
    noop = [s for s in sends(b.on_tick(View("n2", 2, True), 6.0), COORD_APPEND) if s.to == "n1"]
    ack = sends(deliver(a, View("n2", 2, False), "n2", noop[0], 6.0), COORD_ACK)
    deliver(b, View("n2", 2, True), "n1", ack[0], 6.0)
    r = replies(b.request(View("n2", 2, True), "late2", OP_BARRIER, "start", "y", 2, 6.1))
    assert r[0].value == "done"


# ---- the double barrier's leave ------------------------------------------------------------

from electiond.coord.replica import OP_BARRIER_LEAVE  # noqa: E402


def leave(a: ConfigReplica, b: ConfigReplica, who: str, now: float, view: View | None = None,
          ack: bool = True) -> Reply:
    """One leave poll at the leader ``a``; ``ack``: ``b`` persists and acks what it was sent."""
    view = view or lead_view(1)
    fx = a.request(view, f"l-{who}-{now}", OP_BARRIER_LEAVE, "start", who, 0, now)
    out = replies(fx)
    for s in sends(fx, COORD_APPEND):
        if s.to == "n2" and ack:
            got = sends(deliver(b, follow_view(view.term), "n1", s, now), COORD_ACK)[0]
            out += replies(deliver(a, view, "n2", got, now))
    return [r for r in out if r.req.startswith("l-")][0]


def test_leave_is_done_only_once_every_participant_that_passed_has_left():
    a, b, c = elected()
    for who in ("x", "y", "z"):
        poll(a, b, who, 3, 1.0)
    assert poll(a, b, "x", 3, 1.1).value == "done"
    r = leave(a, b, "x", 2.0)
    assert r.value == "waiting" and r.version == 3  # the answer is judged before x's removal committed
    assert leave(a, b, "x", 2.1).version == 2  # removed once, polled again: still two inside
    assert leave(a, b, "y", 2.2).version == 2 and leave(a, b, "y", 2.3).version == 1
    assert leave(a, b, "x", 2.4).value == "waiting"
    assert leave(a, b, "z", 2.5).version == 1
    # the record is gone once z's removal committed: everyone's next poll is let out
    assert [leave(a, b, w, 2.6).value for w in ("x", "y", "z")] == ["done"] * 3
    assert a.committed_get("_coord/barrier/start")[0] is None
    # one who never passed (or a repeat) does not remove anyone
    assert leave(a, b, "q", 2.7).value == "done"


def test_a_second_poll_before_the_removal_committed_does_not_write_it_again():
    a, b, c = elected()
    for who in ("x", "y"):
        poll(a, b, who, 2, 1.0)
    before = a.last[1]
    leave(a, b, "x", 2.0, ack=False)  # n2 does not ack: the removal stays uncommitted
    leave(a, b, "x", 2.1, ack=False)
    assert a.last[1] == before + 1
    assert a.current("_coord/barrier/start")[0] == "y"


def test_a_new_leader_keeps_committed_leaves_and_a_lost_one_is_written_again():
    a, b, c = elected()
    for who in ("x", "y", "z"):
        poll(a, b, who, 3, 1.0)
    leave(a, b, "x", 2.0)  # committed (n1 and n2)
    leave(a, b, "y", 2.1, ack=False)  # only on n1: lost when n1 dies
    new = View("n2", 2, True)
    fx = b.sync(new, 5.0)
    noop = [s for s in sends(fx, COORD_APPEND) if s.to == "n3"][0]
    # n3 was behind: it catches up through acks (one entry per round trip)
    for _ in range(20):
        got = sends(deliver(c, View("n2", 2, False), "n2", noop, 5.1), COORD_ACK)
        nxt = sends(deliver(b, new, "n3", got[0], 5.1), COORD_APPEND)
        if not nxt:
            break
        noop = nxt[0]
    assert b.ready(new)
    assert b.committed_get("_coord/barrier/start")[0] == "y,z"  # x's leave kept, y's lost
    for who, when in (("y", 6.0), ("z", 6.1)):
        fx = b.request(new, f"l-{who}", OP_BARRIER_LEAVE, "start", who, 0, when)
        for s in sends(fx, COORD_APPEND):
            if s.to == "n3":
                got = sends(deliver(c, View("n2", 2, False), "n2", s, when), COORD_ACK)
                deliver(b, new, "n3", got[0], when)
    assert b.committed_get("_coord/barrier/start")[0] is None
    r = replies(b.request(new, "l-x-again", OP_BARRIER_LEAVE, "start", "x", 0, 6.2))
    assert r[0].value == "done"


# ---- snapshot catch-up ------------------------------------------------------------------------

from electiond.coord.replica import COORD_SNAP, COORD_SNAP_ACK, OP_LOCK  # noqa: E402


def pump(a: ConfigReplica, others: dict[str, ConfigReplica], fx: list, now: float, view: View,
         drop=lambda s: False, limit: int = 500) -> int:
    """Deliver ``fx``'s sends (and everything they cause) between the leader
    ``a`` and ``others``; returns how many messages went; ``drop`` loses some."""
    queue = [(a.name, s) for s in sends(fx)]
    went = 0
    while queue and went < limit:
        frm, s = queue.pop(0)
        went += 1
        if drop(s):
            continue
        if frm == a.name:
            if s.to not in others:
                continue
            queue += [(s.to, x) for x in sends(deliver(others[s.to], follow_view(view.term), a.name, s, now))]
        else:
            queue += [(a.name, x) for x in sends(deliver(a, view, frm, s, now))]
    assert went < limit
    return went


BIG = "x" * 300  # a snapshot message then carries two items (SNAP_BATCH_BYTES): a stream of several


def n3_behind_a_kept_log_of_two():
    """n1 leads with n2 and commits 8 writes of 300-byte values while n3 is
    away: n3 is behind the leader's kept log (2 entries) and needs a snapshot
    of 6 keys, streamed two per message."""
    a = ConfigReplica("n1", NAMES, HB, log_keep=2)
    b = ConfigReplica("n2", NAMES, HB, log_keep=2)
    c = ConfigReplica("n3", NAMES, HB, log_keep=2)
    view = lead_view(1)
    pump(a, {"n2": b}, a.sync(view, 0.0), 0.0, view)
    for i in range(8):
        pump(a, {"n2": b}, a.request(view, f"w{i}", OP_SET, f"k{i}", f"v{i}{BIG}", 0, 1.0), 1.0, view)
    return a, b, c, view


def test_a_follower_behind_the_kept_log_catches_up_from_a_snapshot_and_then_the_log():
    a = ConfigReplica("n1", NAMES, HB, log_keep=4)
    b = ConfigReplica("n2", NAMES, HB, log_keep=4)
    c = ConfigReplica("n3", NAMES, HB, log_keep=4)
    view = lead_view(1)
    pump(a, {"n2": b}, a.sync(view, 0.0), 0.0, view)  # n3 is down from the start
    for i in range(12):
        fx = a.request(view, f"w{i}", OP_SET, f"k{i % 3}", f"v{i}", 0, 1.0 + i * 0.01)
        pump(a, {"n2": b}, fx, 1.0, view)
    fx = a.request(view, "g1", OP_LOCK, "job", "owner-x", 0, 1.5, ttl_ms=500)
    pump(a, {"n2": b}, fx, 1.5, view)
    for i in range(5):
        pump(a, {"n2": b}, a.request(view, f"x{i}", OP_SET, "k9", f"x{i}", 0, 1.6), 1.6, view)
    assert a.status()["oldest_watchable"] > 0 and c.commit == 0
    kinds: list[str] = []
    # n3 is back: its log is too far behind; a snapshot then the log's tail
    went = pump(a, {"n2": b, "n3": c}, a.on_tick(view, 10.0), 10.0, view,
                drop=lambda s: kinds.append(s.kind) or False)
    assert COORD_SNAP in kinds and went > 4  # small items: the whole snapshot in one message
    assert c.snapshots_installed == 1 and c.commit == a.commit and c.last == a.last
    for key in ("k0", "k1", "k2", "k9"):
        assert c.committed_get(key) == a.committed_get(key)
    assert c.state().locks == a.state().locks  # the lock's grant came along (a new leader holds it for W)
    # what it persisted is the snapshot: a restart keeps it
    again = ConfigReplica("n3", NAMES, HB, c.state(), log_keep=4)
    assert again.committed_get("k9") == a.committed_get("k9") and again.last == a.last
    # a watch from before the snapshot gets the documented error, one from its base works
    assert c.changes_since(0) == ERR_COMPACTED
    assert [e.version for e in c.changes_since(c.status()["oldest_watchable"])][-1] == a.commit


def test_a_snapshot_half_received_is_neither_installed_nor_persisted_and_lost_items_are_resent():
    a, b, c, view = n3_behind_a_kept_log_of_two()
    first = [s for s in sends(a.on_tick(view, 5.0)) if s.to == "n3"][0]
    assert first.kind == COORD_SNAP and first.body["i"] == 0 and first.body["n"] >= 6
    fx = deliver(c, follow_view(1), "n1", first, 5.0)
    assert not [e for e in fx if type(e) is StorePersist] or c.commit == 0
    assert sends(fx)[0].kind == COORD_SNAP_ACK and sends(fx)[0].body["next"] == 2  # two items per message
    # the ack is lost: the tick resends items 0 and 1 (the leader did not hear), a duplicate
    again = [s for s in sends(a.on_tick(view, 6.0)) if s.to == "n3"][0]
    assert again.body["i"] == 0
    dup = sends(deliver(c, follow_view(1), "n1", again, 6.0))
    assert dup[0].body["next"] == 2 and c.snapshots_installed == 0 and c.commit == 0
    # from here on, a third of all messages are lost: the stream still completes
    rng = random.Random(7)

    def lossy(s: Send) -> bool:
        return rng.random() < 0.33

    for t in range(200):
        pump(a, {"n2": b, "n3": c}, a.on_tick(view, 7.0 + t), 7.0 + t, view, drop=lossy)
        if c.commit == a.commit:
            break
    assert c.snapshots_installed == 1 and c.commit == a.commit
    assert all(c.committed_get(f"k{i}") == a.committed_get(f"k{i}") for i in range(8))


def test_a_stale_snapshot_does_not_roll_a_follower_back():
    a = ConfigReplica("n1", NAMES, HB, log_keep=2)
    b = ConfigReplica("n2", NAMES, HB, log_keep=2)
    view = lead_view(1)
    pump(a, {"n2": b}, a.sync(view, 0.0), 0.0, view)
    for i in range(6):
        pump(a, {"n2": b}, a.request(view, f"w{i}", OP_SET, "k", f"v{i}", 0, 1.0), 1.0, view)
    before = b.state()
    old = Send(COORD_SNAP, 1, {"v": 2, "t": 1, "i": 0, "n": 0, "kind": "", "key": "", "value": None, "ver": 0,
                               "ttl_ms": 0}, to="n2")
    fx = deliver(b, follow_view(1), "n1", old, 2.0)
    # unchanged, and it says its log matches up to that version (committed: the same everywhere),
    # so a leader whose ack of the install was lost moves on instead of resending the snapshot
    assert b.state() == before and sends(fx)[0].kind == COORD_ACK and sends(fx)[0].body == {"ok": True, "match": 2}


def test_a_lost_ack_of_the_install_does_not_make_the_leader_resend_the_snapshot_for_ever():
    a, b, c, view = n3_behind_a_kept_log_of_two()
    # n3 gets the whole snapshot, but its ack of the install is lost
    pump(a, {"n2": b, "n3": c}, a.on_tick(view, 5.0), 5.0, view,
         drop=lambda s: s.kind == COORD_ACK and s.to == "n1" and s.body.get("match") == a.status()["oldest_watchable"])
    assert c.snapshots_installed == 1
    for t in range(10):
        pump(a, {"n2": b, "n3": c}, a.on_tick(view, 6.0 + t), 6.0 + t, view)
    assert c.snapshots_installed == 1 and c.commit == a.commit and a.status()["match"]["n3"] == a.last[1]


# ---- the member view: joined, suspected, left ------------------------------------------------

from electiond.coord.host import MEMBERS_KEY, CoordHost, decode_view, encode_view, member_changes, suspect_after_s  # noqa: E402
from electiond.node import Node  # noqa: E402
from electiond.protocols.base import Member, Settings  # noqa: E402


def test_member_changes_tell_joined_suspected_and_left_apart():
    assert decode_view(encode_view(("n1", "n2"), ("n3",))) == (("n1", "n2"), ("n3",))
    assert decode_view("n1,n2") == (("n1", "n2"), ())  # the format without suspects is the old one
    assert member_changes(None, "n1") == [("n1", "joined")]
    assert member_changes("n1,n2,n3", "n1,n2;n3") == [("n3", "suspected")]
    assert member_changes("n1,n2;n3", "n1,n2,n3") == [("n3", "joined")]  # heard again
    assert member_changes("n1,n2;n3", "n1,n2") == [("n3", "left")]
    assert member_changes("n1,n2,n3", "n1;n2") == [("n2", "suspected"), ("n3", "left")]
    assert member_changes("n1;n2", "n1;n2") == []


def test_the_leader_records_a_silent_peer_as_suspected_then_left_under_new_versions():
    members = tuple(Member(f"n{i}", i) for i in (1, 2, 3))
    s = Settings(cluster="t", node_name="n1", members=members, clock_check_s=0.0)
    node = Node(s, "quorum-lease", random.Random(1), 0.0)
    host = CoordHost(node)
    # everyone heard at t=1.0; then n3 falls silent while n2 keeps answering
    for name in ("n2", "n3"):
        node.membership.saw(name, 1.0)
    assert host.live_members(1.0) == "n1,n2,n3"
    quiet = suspect_after_s(s)
    for name in ("n2",):
        node.membership.saw(name, 1.0 + quiet + 0.05)
    assert host.live_members(1.0 + quiet + 0.1) == "n1,n2;n3"
    gone = 1.0 + node.membership.liveness_window_s() + 0.01
    node.membership.saw("n2", gone)
    assert host.live_members(gone) == "n1,n2"
    assert quiet < node.membership.liveness_window_s()
    # a serving leader of one writes each view as one committed version (a cluster of one commits alone)
    solo = Node(Settings(cluster="t", node_name="n1", members=members[:1], clock_check_s=0.0), "quorum-lease",
                random.Random(1), 0.0)
    h1 = CoordHost(solo)
    t = 0.0
    for _ in range(200):
        t += 0.05
        solo.on_tick(t)
        h1.after_node_event(t)
        if h1.replica.committed_get(MEMBERS_KEY)[0]:
            break
    assert h1.replica.committed_get(MEMBERS_KEY)[0] == "n1"


def test_a_late_poll_while_the_trip_record_commits_is_not_counted_in_the_names_next_round():
    a, b, c = elected()
    view = lead_view(1)
    a.request(view, "e-x", OP_BARRIER, "start", "x", 2, 1.0)
    fx = a.request(view, "e-y", OP_BARRIER, "start", "y", 2, 1.01)  # trips: the record is written, not committed
    trip = [s for s in sends(fx, COORD_APPEND) if s.to == "n2"]
    late = replies(a.request(view, "e-x-dup", OP_BARRIER, "start", "x", 2, 1.02))[0]  # a duplicated poll of x
    assert late.value == "waiting" and late.version == 2
    ack = sends(deliver(b, follow_view(1), "n1", trip[0], 1.03), COORD_ACK)[0]
    deliver(a, view, "n2", ack, 1.03)
    for who in ("x", "y"):
        leave(a, b, who, 1.1)
    assert a.committed_get("_coord/barrier/start")[0] is None
    # the name's next round, within x's old poll lease: z is alone
    r = poll(a, b, "z", 2, 1.2)
    assert r.value == "waiting" and r.version == 1


def test_a_follower_that_lost_its_partial_snapshot_gets_it_again_from_where_it_is():
    a, b, c, view = n3_behind_a_kept_log_of_two()
    s0 = [s for s in sends(a.on_tick(view, 5.0)) if s.to == "n3"][0]
    acks = sends(deliver(c, follow_view(1), "n1", s0, 5.0))
    s1 = sends(deliver(a, view, "n3", acks[0], 5.0))[0]
    assert s1.body["i"] == 2
    c2 = ConfigReplica("n3", NAMES, HB, c.state(), log_keep=2)  # n3 restarts: its partial snapshot is gone
    acks = sends(deliver(c2, follow_view(1), "n1", s1, 5.1))
    assert acks[0].kind == COORD_SNAP_ACK and acks[0].body["next"] == 0
    again = sends(deliver(a, view, "n3", acks[0], 5.1))
    assert again and again[0].body["i"] == 0  # the leader goes back to item 0
    got = sends(deliver(c2, follow_view(1), "n1", again[0], 5.2))
    assert got[0].body["next"] == 2
    # a late item of an older snapshot does not throw away the one being received
    stale = Send(COORD_SNAP, 1, {**s1.body, "v": s1.body["v"] - 1}, to="n3")
    assert deliver(c2, follow_view(1), "n1", stale, 5.3) == []
    assert sends(deliver(c2, follow_view(1), "n1", s1, 5.4))[0].body["next"] == 4
    pump(a, {"n2": b, "n3": c2}, a.on_tick(view, 6.0), 6.0, view)
    assert c2.snapshots_installed == 1 and c2.commit == a.commit


@pytest.mark.parametrize("kind", [COORD_APPEND, "COORD_SNAP"])
def test_append_and_snapshot_share_one_stale_term_check(kind):
    """An older term, or another node's message in the term we lead, is refused
    the same way by both: ok False, match = our last version; a newer term is
    adopted (and persisted before any answer)."""
    if kind == COORD_APPEND:
        body = {"prev_v": 0, "prev_t": 0, "commit": 0, "has": False, "t": 0, "ttl_ms": 0, "op": "", "key": "",
                "value": None, "req": ""}
    else:
        body = {"v": 7, "t": 2, "i": 0, "n": 3, "kind": "k", "key": "a", "value": "x", "ver": 7, "ttl_ms": 0}
    b = rep("n2", StoreState(term=3, commit=1, log=(Entry(1, 3, OP_NOOP, "", None, ""),)))
    fx = b.on_message(follow_view(3), kind, "n1", 2, body, 0.0)
    assert [(s.kind, s.body) for s in sends(fx)] == [(COORD_ACK, {"ok": False, "match": 1})]
    # n2 leads term 4: n3 claiming term 4 too is refused
    b.sync(View("n2", 4, True), 1.0)
    fx = b.on_message(View("n2", 4, True), kind, "n3", 4, body, 1.1)
    assert [(s.kind, s.body) for s in sends(fx)] == [(COORD_ACK, {"ok": False, "match": 2})]
    # a newer term (than the protocol's view has yet) is adopted and persisted
    fx = b.on_message(follow_view(4, "n3"), kind, "n3", 5, body, 2.0)
    assert [e for e in fx if type(e) is StorePersist][0].state.term == 5


def _ack_all(a: ConfigReplica, b: ConfigReplica, fx, now: float, view: View) -> None:
    for s in sends(fx, COORD_APPEND):
        if s.to == "n2":
            got = sends(deliver(b, follow_view(view.term), "n1", s, now), COORD_ACK)[0]
            deliver(a, view, "n2", got, now)


def test_a_participant_whose_node_departed_is_pruned_and_the_others_leave_at_once():
    a, b, c = elected()
    view = lead_view(1)
    for who in ("n1/w", "n2/w", "n3/w"):
        poll(a, b, who, 3, 1.0)
    assert poll(a, b, "n3/w", 3, 1.1).value == "done"
    assert a.barrier_records() == ["start"]
    assert leave(a, b, "n1/w", 2.0).version == 3 and leave(a, b, "n2/w", 2.1).value == "waiting"
    # n3 (with its participant) is gone: nothing departed yet changes nothing
    assert a.barrier_prune(view, (), 3.0) == []
    fx = a.barrier_prune(view, ("n3",), 3.0)
    assert [e for e in fx if type(e) is StorePersist] and not replies(fx)
    # called again before the removal committed: no second write
    last = a.last
    assert a.barrier_prune(view, ("n3",), 3.05) == [] and a.last == last
    _ack_all(a, b, fx, 3.1, view)
    assert a.committed_get("_coord/barrier/start")[0] is None and a.barrier_records() == []
    assert [leave(a, b, w, 3.2).value for w in ("n1/w", "n2/w")] == ["done", "done"]
    # replicated: the follower persisted the removal (a new leader does not bring n3/w back)
    assert b.current("_coord/barrier/start") == a.committed_get("_coord/barrier/start")


def test_pruning_keeps_live_nodes_and_ids_without_a_node_and_needs_a_serving_leader():
    a, b, c = elected()
    view = lead_view(1)
    for who in ("n2/w", "n3/w", "plain"):
        poll(a, b, who, 3, 1.0)
    assert b.barrier_prune(follow_view(1), ("n3",), 2.0) == []  # only the serving leader prunes
    _ack_all(a, b, a.barrier_prune(view, ("n3",), 2.0), 2.0, view)
    assert a.committed_get("_coord/barrier/start")[0] == "n2/w,plain"


def test_the_host_prunes_only_after_serving_a_whole_presence_window_and_only_departed_nodes():
    members = tuple(Member(f"n{i}", i) for i in (1, 2, 3))
    s = Settings(cluster="t", node_name="n1", members=members, clock_check_s=0.0)
    node = Node(s, "quorum-lease", random.Random(1), 0.0)
    host = CoordHost(node)
    node.membership.saw("n2", 1.0)
    node.membership.saw("n3", 1.0)
    window = node.membership.liveness_window_s()
    assert host.departed(1.0) == ()
    node.membership.saw("n2", 1.0 + window)
    assert host.departed(1.0 + window + 0.01) == ("n3",)  # n2 heard again; n1 itself never departs
    calls: list[tuple[tuple[str, ...], float]] = []
    host.replica.barrier_prune = lambda view, departed, now: calls.append((departed, now)) or []  # type: ignore
    host.replica.ready = lambda view: True  # type: ignore
    hb = s.heartbeat_interval_s
    t = 10.0
    host.after_node_event(t)  # starts serving now: nobody pruned yet (a new leader has heard few)
    t += window * 0.5
    host.after_node_event(t)
    assert calls == []
    t = 10.0 + window + 0.01
    host.after_node_event(t)
    assert calls and calls[-1][0] == ("n2", "n3") and calls[-1][1] == t
    host.after_node_event(t + hb)  # at most one scan every 4 heartbeats
    assert len(calls) == 1


def test_deletes_below_the_watermark_leave_no_tombstone_and_a_watch_from_under_it_is_refused():
    """The compaction watermark is the kept log's start (base_version): a
    delete folded below it is dropped, not kept forever; the key then reads
    absent at version 0, and a watch from under the watermark gets
    compacted, never a silent gap."""
    a = ConfigReplica("n1", ("n1",), HB, log_keep=2)
    view = lead_view(1)
    a.sync(view, 0.0)  # a cluster of one commits alone

    def do(req, op, key, value=None, version=0):
        r = replies(a.request(view, req, op, key, value, version, 1.0))[0]
        assert r.ok, r
        return r

    do("s1", OP_SET, "gone", "x")
    d = do("d1", OP_DELETE, "gone")
    do("s2", OP_SET, "kept", "y")
    # the delete is still in the kept log: read gives the delete's version
    assert a.committed_get("gone") == (None, d.version)
    assert replies(a.request(view, "g0", OP_GET, "gone", None, 0, 1.0))[0].version == d.version
    for i in range(4):
        do(f"f{i}", OP_SET, "filler", str(i))
    assert a.status()["oldest_watchable"] > d.version
    # folded below the watermark: no tombstone left anywhere (memory, disk, snapshot)
    assert a.committed_get("gone") == (None, 0)
    assert "gone" not in [k for k, _, _ in a.state().base]
    assert "gone" not in [k for _, k, _, _, _ in a._snapshot_items()]
    assert a.committed_get("kept")[0] == "y"
    assert a.changes_since(d.version) == ERR_COMPACTED
    # cas from 0 re-creates it, as before compaction
    assert do("c1", OP_CAS, "gone", "again", 0).value == "again"
    # a store written before compaction dropped tombstones: they are dropped on load
    old = StoreState(term=1, commit=5, base_version=5, base_term=1, base=(("old", None, 3), ("live", "v", 4)))
    b = ConfigReplica("n1", ("n1",), HB, old)
    assert b.committed_get("old") == (None, 0) and b.committed_get("live") == ("v", 4)
    assert [k for k, _, _ in b.state().base] == ["live"]


def test_a_snapshot_from_an_older_leader_with_tombstones_installs_without_them():
    c = ConfigReplica("n3", NAMES, HB)
    body = {"v": 9, "t": 1, "n": 2, "ttl_ms": 0}
    fx = c.on_message(follow_view(1), "COORD_SNAP", "n1", 1, {**body, "i": 0, "kind": "k", "key": "dead",
                                                                "value": None, "ver": 5}, 1.0)
    fx = c.on_message(follow_view(1), "COORD_SNAP", "n1", 1, {**body, "i": 1, "kind": "k", "key": "live",
                                                                "value": "v", "ver": 7}, 1.1)
    assert c.snapshots_installed == 1
    assert c.committed_get("dead") == (None, 0) and c.committed_get("live") == ("v", 7)


# ---- snapshot batches -----------------------------------------------------------------------

from electiond import wire  # noqa: E402
from electiond.coord.replica import (  # noqa: E402
    MAX_KEY_BYTES,
    MAX_VALUE_BYTES,
    MESSAGE_SCHEMAS,
    SNAP_BATCH_MAX,
    SNAP_KEY,
    snap_batch,
    snap_items_of,
)


def _snap_send(items, i: int = 0) -> Send:
    """The COORD_SNAP a leader sends for ``items`` from item ``i``."""
    a = ConfigReplica("n1", ("n1",), HB)
    a.sync(lead_view(1), 0.0)
    assert a._lead is not None
    a._base_version = 100  # as if 100 versions were folded and these items were their state
    a._lead.snaps["n2"] = (a._base_version, 1, tuple(items), i)
    a._lead.told_commit["n2"] = 0
    return a._send_snap("n2")[0]


@pytest.mark.parametrize("key_bytes, value_bytes", [(MAX_KEY_BYTES, MAX_VALUE_BYTES), (1, 0), (1, 1), (8, 20),
                                                    (MAX_KEY_BYTES, 0), (40, 200)])
def test_a_snapshot_batch_always_fits_a_datagram_with_room_to_spare(key_bytes, value_bytes):
    # multi-byte characters: the budget counts encoded bytes
    items = [(SNAP_KEY, ("é" * key_bytes)[: key_bytes // 2 or 1] + str(j), "é" * (value_bytes // 2), 2**40 + j, 0)
             for j in range(200)]
    s = _snap_send(items)
    got = snap_items_of(s.body)
    assert 1 <= len(got) <= SNAP_BATCH_MAX and got == items[:len(got)]
    name = "n" * 60
    codec = wire.Codec("c" * 60, name, {name, "n2"}, b"k" * 32, MESSAGE_SCHEMAS, 2**40, unicast_port=65535)
    datagram = codec.encode(Send(s.kind, 2**40, s.body, to="n2"))
    assert len(datagram) < wire.MAX_DATAGRAM_BYTES - 200, len(datagram)
    # and the receiving codec takes it (msgpack's array bound, the schema)
    rx = wire.Codec("c" * 60, "n2", {name, "n2"}, b"k" * 32, MESSAGE_SCHEMAS, 1, unicast_port=4000)
    assert rx.decode(datagram) is not None
    if key_bytes + value_bytes <= 30:
        assert len(got) >= 10  # small items travel many to a message


def test_a_batch_overlapping_what_the_follower_holds_adds_only_the_new_items():
    items = [(SNAP_KEY, f"k{j}", f"v{j}", j + 1, 0) for j in range(100)]
    c = ConfigReplica("n3", NAMES, HB)
    first = _snap_send(items, 0)
    held = len(snap_items_of(first.body))
    assert 10 <= held < 40
    c.on_message(follow_view(1), COORD_SNAP, "n1", 1, first.body, 1.0)
    # a resend starting earlier (its ack was late) overlaps what n3 holds
    overlap = _snap_send(items, held - 3)
    fx = c.on_message(follow_view(1), COORD_SNAP, "n1", 1, overlap.body, 1.1)
    nxt = held - 3 + len(snap_items_of(overlap.body))
    assert sends(fx)[0].body["next"] == nxt and c._snap_items == items[:nxt] and c.snapshots_installed == 0
    # one that starts beyond what it holds is not taken (a gap): it says where it is
    fx = c.on_message(follow_view(1), COORD_SNAP, "n1", 1, _snap_send(items, nxt + 5).body, 1.2)
    assert sends(fx)[0].body["next"] == nxt and c._snap_items == items[:nxt]


def test_malformed_batch_lists_count_only_the_first_item():
    body = _snap_send([(SNAP_KEY, f"k{j}", "v", j + 1, 0) for j in range(10)]).body
    assert len(snap_items_of(body)) == 10
    assert len(snap_items_of({**body, "more_vers": body["more_vers"][:-1]})) == 1  # lengths differ
    assert len(snap_items_of({**body, "more_vers": ["x"] * len(body["more_vers"])})) == 1
    old = {k: v for k, v in body.items() if not k.startswith("more_")}  # a sender without batches
    assert snap_items_of(old) == [(SNAP_KEY, "k0", "v", 1, 0)]
    assert snap_batch((), 1) == []


def test_a_follower_without_batches_still_gets_the_whole_snapshot_one_item_per_round_trip():
    a, b, c, view = n3_behind_a_kept_log_of_two()
    went = {"snap": 0}

    def old_follower(s: Send) -> bool:
        if s.kind == COORD_SNAP and s.to == "n3":
            went["snap"] += 1
            for k in [k for k in s.body if k.startswith("more_")]:
                del s.body[k]  # what an older follower reads of it
        return False
    for t in range(5):
        pump(a, {"n2": b, "n3": c}, a.on_tick(view, 5.0 + t), 5.0 + t, view, drop=old_follower)
    assert c.snapshots_installed == 1 and c.commit == a.commit and went["snap"] >= 6
    assert all(c.committed_get(f"k{i}") == a.committed_get(f"k{i}") for i in range(8))


def test_a_follower_behind_by_2000_writes_gets_the_snapshot_in_far_fewer_round_trips_than_items():
    """The catch-up measure (README): 2000 writes to 2000 keys while n3 is
    away; with the default kept log (512) n3 needs a snapshot of the 1488
    folded keys, then the log's 512 entries. One item per round trip took
    1488 round trips for the snapshot; batches take under a tenth of that."""
    a, b, c = rep("n1"), rep("n2"), rep("n3")
    view = lead_view(1)
    pump(a, {"n2": b}, a.sync(view, 0.0), 0.0, view)
    for i in range(2000):
        pump(a, {"n2": b}, a.request(view, f"w{i}", OP_SET, f"key/{i:05d}", f"value-{i:08d}", 0, 1.0), 1.0, view)
    snaps = []
    pump(a, {"n2": b, "n3": c}, a.on_tick(view, 10.0), 10.0, view,
         drop=lambda s: (s.kind == COORD_SNAP and snaps.append(s)) or False, limit=10_000)
    items = a._lead.snaps.get("n3", (0, 0, (), 0))[2] if a._lead and "n3" in a._lead.snaps else None
    assert c.snapshots_installed == 1 and c.commit == a.commit and c.last == a.last
    assert c.status()["oldest_watchable"] == a.status()["oldest_watchable"] and (items is None or len(items) > 1400)
    assert len(snaps) < 1488 // 10, len(snaps)
    for k in ("key/00000", "key/00999", "key/01999"):
        assert c.committed_get(k) == a.committed_get(k)
