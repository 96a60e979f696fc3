"""Persist-then-send as a checked contract (issue #12), on the pure core with made-up times.

``shell`` below plays the daemon's runtime: it carries out an effect list in
order, and when a Persist fails it keeps only the local facts of the rest
(``local_facts``), then feeds ``persist_done`` back, as runtime.py does.
"""

from __future__ import annotations

import random

import pytest

from electiond.node import Node
from electiond.protocols.base import (
    DISK_RETRY_FIRST_S,
    DISK_RETRY_MAX_S,
    VOTE_WITHHELD,
    Demote,
    LeaderChanged,
    Member,
    Message,
    Persist,
    PersistedState,
    Promote,
    Send,
    Settings,
    local_facts,
)
from electiond.protocols.bully import ANSWER, COORDINATOR, ELECTION, Bully
from electiond.protocols.lease import (
    HEARTBEAT,
    HEARTBEAT_ACK,
    PREVOTE,
    PREVOTE_REPLY,
    REQUEST_VOTE,
    VOTE,
    QuorumLease,
)
from lease_harness import settings_for


def lease(name="n1", n=3, now=0.0, persisted=None, seed=1) -> QuorumLease:
    return QuorumLease(settings_for(n, name), random.Random(seed), now, persisted)


def m(kind, sender, term, **body) -> Message:
    return Message(kind, sender, term, body)


def sends(effects, kind=None) -> list[Send]:
    return [e for e in effects if isinstance(e, Send) and (kind is None or e.kind == kind)]


def of(effects, cls) -> list:
    return [e for e in effects if isinstance(e, cls)]


def shell(p, effects, now, disk_ok=True, error="ENOSPC: No space left on device"):
    """Carry out ``effects`` like the runtime: (what was carried out, in order; what persist_done returned)."""
    done, wrote = [], False
    for k, e in enumerate(effects):
        if isinstance(e, Persist):
            wrote = True
            if not disk_ok:
                done += local_facts(effects[k + 1:])
                return done, p.persist_done(False, now, error)
        done.append(e)
    return done, (p.persist_done(True, now) if wrote else [])


def vote_request(p, candidate, term, now, rnd=1):
    return p.on_message(m(REQUEST_VOTE, candidate, term, round=rnd, priority=0), now)


AFTER_QUARANTINE = 1.0  # past L_f at the default settings


# ---- quorum-lease -------------------------------------------------------------------


def test_failed_persist_sends_no_vote_and_a_retransmit_waits_for_the_write():
    p = lease("n1")
    t = AFTER_QUARANTINE
    effects = vote_request(p, "n2", 1, t)
    assert of(effects, Persist) == [Persist(PersistedState(1, "n2"))]
    done, more = shell(p, effects, t, disk_ok=False)
    assert not sends(done, VOTE) and more == []
    assert p.disk.ok is False and p.disk.failures == 1
    # the original bug: the retransmitted request was granted with no Persist at all
    retry = vote_request(p, "n2", 1, t + 0.05, rnd=2)
    assert not of(retry, Persist)
    assert [v.body["granted"] for v in sends(retry, VOTE)] == [False]
    assert sends(retry, VOTE)[0].body["retry_ms"] > 0
    # the protocol asks for the write again itself, and the deadline says when
    assert p.deadline() <= t + DISK_RETRY_FIRST_S + 1e-9
    rewrite = p.on_tick(p.deadline())
    assert of(rewrite, Persist) == [Persist(PersistedState(1, "n2"))]  # the same state, written again
    shell(p, rewrite, p.deadline(), disk_ok=True)
    assert p.disk.ok
    granted = vote_request(p, "n2", 1, t + 0.3, rnd=3)
    assert not of(granted, Persist)  # durable now: nothing to write first
    assert [v.body["granted"] for v in sends(granted, VOTE)] == [True]


def test_a_failed_write_is_written_again_even_if_the_state_repeats():
    p = lease("n1")
    t = AFTER_QUARANTINE
    shell(p, vote_request(p, "n2", 1, t), t, disk_ok=False)
    now = p.deadline()
    shell(p, p.on_tick(now), now, disk_ok=True)
    # a later, different state goes through the normal path again
    effects = vote_request(p, "n2", 2, now + 0.01)
    assert of(effects, Persist) == [Persist(PersistedState(2, "n2"))]


def test_retries_back_off_exponentially_to_the_cap_and_status_says_why():
    p = lease("n1")
    t = AFTER_QUARANTINE
    shell(p, vote_request(p, "n2", 1, t), t, disk_ok=False, error="EROFS: Read-only file system")
    gaps, now = [], t
    for _ in range(9):
        due = p.deadline()
        gaps.append(round(due - now, 6))
        now = due
        effects = p.on_tick(now)
        assert of(effects, Persist)
        assert not sends(effects, PREVOTE) and not sends(effects, REQUEST_VOTE)
        shell(p, effects, now, disk_ok=False, error="EROFS: Read-only file system")
    assert gaps[:4] == [0.1, 0.2, 0.4, 0.8]
    assert max(gaps) == DISK_RETRY_MAX_S and gaps[-1] == DISK_RETRY_MAX_S
    node_status = p.disk.snapshot(now + 1.0)
    assert node_status["ok"] is False and node_status["error"].startswith("EROFS")
    assert node_status["failures"] == 10 and node_status["retry_in_ms"] == pytest.approx(4000.0, abs=1.0)


def test_faulted_node_refuses_prevotes_acks_and_standing():
    p = lease("n1")
    t = AFTER_QUARANTINE
    follow = p.on_message(m(HEARTBEAT, "n2", 1, round=1, priority=0), t)
    shell(p, follow, t, disk_ok=False)
    assert p.disk.ok is False
    promised_until = p.promise[1]  # made in memory with the ack the shell dropped: harmless
    # still follows the leader, but acknowledges nothing (an ack is a lease grant)
    beat = p.on_message(m(HEARTBEAT, "n2", 1, round=2, priority=0), t + 0.05)
    assert not sends(beat, HEARTBEAT_ACK) and p.leader == "n2"
    assert p.promise[1] == promised_until  # and promises nothing new
    reply = p.on_message(m(PREVOTE, "n3", 2, round=1, priority=0), t + 0.06)
    assert [r.body["granted"] for r in sends(reply, PREVOTE_REPLY)] == [False]
    # with the leader silent it never stands while writes fail
    now = t + 0.06
    for _ in range(60):
        now = max(p.deadline(), now + 1e-6)
        effects = p.on_tick(now)
        assert not sends(effects, PREVOTE) and not sends(effects, REQUEST_VOTE)
        shell(p, effects, now, disk_ok=False)
    assert p.leader is None and p.role == "follower"


def test_disk_that_heals_is_noticed_and_the_node_votes_and_stands_again():
    p = lease("n1")
    t = AFTER_QUARANTINE
    shell(p, vote_request(p, "n2", 1, t), t, disk_ok=False)
    now = p.deadline()
    shell(p, p.on_tick(now), now, disk_ok=True)
    assert p.disk.ok and p.disk.episodes == 1
    reply = p.on_message(m(PREVOTE, "n3", 3, round=1, priority=0), now + 1.0)
    assert [r.body["granted"] for r in sends(reply, PREVOTE_REPLY)] == [True]
    now += 1.0
    for _ in range(50):
        now = max(p.deadline(), now)
        effects = p.on_tick(now)
        if sends(effects, PREVOTE):
            break
    else:
        raise AssertionError("never stood again")


def _start_candidacy(p, now):
    for _ in range(50):
        now = p.deadline()
        effects = p.on_tick(now)
        if sends(effects, PREVOTE):
            break
    prevote = sends(effects, PREVOTE)[0]
    effects = p.on_message(m(PREVOTE_REPLY, "n2", prevote.term, round=prevote.body["round"], granted=True,
                             retry_ms=0), now + 0.001)
    return effects, now + 0.001


def test_failed_candidacy_write_undoes_the_candidacy():
    p = lease("n1")
    effects, now = _start_candidacy(p, 0.0)
    assert [type(e) for e in effects] == [Persist, Send]
    assert p.role == "candidate"
    done, more = shell(p, effects, now, disk_ok=False)
    assert not sends(done, REQUEST_VOTE)
    assert p.role == "follower" and p.promise[0] is None  # its own vote was never cast
    # a vote arriving for the void candidacy does not crown it
    late = p.on_message(m(VOTE, "n2", p.term, round=p._round, granted=True, retry_ms=0), now + 0.002)
    assert not of(late, Promote)
    # no retransmission of the request it never sent
    tick = p.on_tick(now + 0.06)
    assert not sends(tick, REQUEST_VOTE)


def test_cluster_of_one_promotion_is_undone_and_history_says_so():
    s = Settings(cluster="c", node_name="solo", members=(Member("solo", 1),))
    node = Node(s, "quorum-lease", random.Random(1), 0.0)
    now = 0.0
    for _ in range(50):
        now = node.deadline()
        effects = node.on_tick(now)
        if of(effects, Promote):
            break
    assert [type(e) for e in effects if not (isinstance(e, Send) and e.kind == "PRESENCE")][:3] == [Persist, Send, Promote]
    done = local_facts(effects[1:])
    more = node.persist_done(False, now, "ENOSPC: No space left on device")
    assert not of(done, Promote)
    assert of(more, Demote) and of(more, LeaderChanged)[-1].leader is None
    assert not node.is_leader(now)
    entry = node.history[-3]
    assert entry.event == "persist_failed"
    assert entry.detail["cancelled_promote"] == entry.term and entry.detail["error"].startswith("ENOSPC")
    assert node.status(now)["disk"]["ok"] is False
    # once a write lands it leads again
    for _ in range(200):
        now = node.deadline()
        effects = node.on_tick(now)
        if of(effects, Persist):
            node.persist_done(True, now)
        if node.is_leader(now):
            break
    assert node.is_leader(now) and node.status(now)["disk"]["ok"]
    assert "persist_recovered" in [h.event for h in node.history]


# ---- recovering a lost state file ------------------------------------------------------


def test_recovering_node_needs_a_quorum_of_distinct_peers_then_withholds_its_vote_in_m():
    p = lease("n1", n=5, persisted=PersistedState(0, None, recovering=True))  # quorum 3
    t = AFTER_QUARANTINE
    assert p.extra_status(t)["recovering"] is True
    # one peer, however often it speaks, is not a quorum of distinct peers
    for k in range(4):
        effects = vote_request(p, "n2", 7, t + 0.01 * k, rnd=k)
        assert [v.body["granted"] for v in sends(effects, VOTE)] == [False]
        assert not of(effects, Persist)
    p.on_message(m(HEARTBEAT, "n3", 4, round=1, priority=0), t + 0.1)
    # a pre-vote names a term its sender does not hold yet: 9 counts as 8
    effects = p.on_message(m(PREVOTE, "n4", 9, round=1, priority=0), t + 0.11)
    assert of(effects, Persist) == [Persist(PersistedState(8, VOTE_WITHHELD, False))]
    assert [r.body["granted"] for r in sends(effects, PREVOTE_REPLY)] == [False]
    # not durable yet: still no vote
    assert [v.body["granted"] for v in sends(vote_request(p, "n4", 9, t + 0.12), VOTE)] == [False]
    shell(p, effects, t + 0.11, disk_ok=True)
    assert p.extra_status(t + 0.12)["recovering"] is False
    in_m = vote_request(p, "n2", 8, t + 0.2, rnd=9)
    assert [v.body["granted"] for v in sends(in_m, VOTE)] == [False]
    above = vote_request(p, "n2", 9, t + 0.3, rnd=10)
    assert of(above, Persist) == [Persist(PersistedState(9, "n2"))]
    assert [v.body["granted"] for v in sends(above, VOTE)] == [True]


def test_recovering_node_does_not_stand_before_it_recovered():
    p = lease("n1", n=3, persisted=PersistedState(0, None, recovering=True))
    now = 0.0
    for _ in range(100):
        now = max(p.deadline(), now + 0.01)
        assert not sends(p.on_tick(now), PREVOTE)
    # a write of the recovery that fails keeps it recovering; the retry carries the flag cleared
    p.on_message(m(HEARTBEAT, "n2", 3, round=1, priority=0), now)
    effects = p.on_message(m(HEARTBEAT, "n3", 3, round=1, priority=0), now + 0.01)
    assert of(effects, Persist) == [Persist(PersistedState(3, VOTE_WITHHELD, False))]
    shell(p, effects, now + 0.01, disk_ok=False)
    retry_at = p.deadline()
    retry = p.on_tick(retry_at)
    assert of(retry, Persist) == [Persist(PersistedState(3, VOTE_WITHHELD, False))]
    shell(p, retry, retry_at, disk_ok=True)
    assert p.extra_status(retry_at)["recovering"] is False


# ---- bully and ring -------------------------------------------------------------------------


BULLY_MEMBERS = tuple(Member(f"n{i}", i) for i in range(1, 4))


def bully(name, now=0.0):
    return Bully(Settings(cluster="c", node_name=name, members=BULLY_MEMBERS), random.Random(1), now)


def test_bully_leader_whose_epoch_did_not_land_is_undone_and_answers_no_election():
    b = bully("n3")
    now = b.deadline()
    effects = b.on_tick(now)
    assert [type(e) for e in effects] == [Persist, Send, Promote, LeaderChanged]
    done, more = shell(b, effects, now, disk_ok=False)
    assert [type(e) for e in done] == [LeaderChanged]  # no COORDINATOR, no promote hooks
    assert of(more, Demote) and b.role == "follower" and b.leader is None
    # it cannot stand: a lower node's ELECTION gets no ANSWER, so that node can lead
    reply = b.on_message(Message(ELECTION, "n1", b.term, {}, "n3"), now + 0.01)
    assert not sends(reply, ANSWER)
    assert not sends(b.on_tick(now + 0.05), COORDINATOR)
    # the retry writes the epoch; once it lands the node stands again
    retry_at = b.deadline()
    assert retry_at <= now + DISK_RETRY_FIRST_S + 1e-9
    retry = b.on_tick(retry_at)
    assert of(retry, Persist)
    shell(b, retry, retry_at, disk_ok=True)
    assert b.disk.ok
    t = retry_at
    for _ in range(20):
        t = b.deadline()
        effects = b.on_tick(t)
        if of(effects, Promote):
            break
    assert of(effects, Promote)[0].term == 2  # above the token that never left


def test_bully_follower_that_cannot_write_an_epoch_keeps_following():
    b = bully("n1")
    effects = b.on_message(Message(COORDINATOR, "n3", 5, {}), 0.01)
    assert of(effects, Persist)
    shell(b, effects, 0.01, disk_ok=False)
    assert b.leader == "n3" and b.role == "follower" and not b.disk.ok


def test_ring_winner_whose_epoch_did_not_land_is_undone_and_its_coordinator_never_goes_round():
    from electiond.protocols.ring import ELECTION as RING_ELECTION, Ring

    r = Ring(Settings(cluster="c", node_name="n3", members=BULLY_MEMBERS), random.Random(1), 0.0)
    now = 0.0
    for _ in range(50):
        now = r.deadline()
        effects = r.on_tick(now)
        if sends(effects, RING_ELECTION):
            break
    election = sends(effects, RING_ELECTION)[0]
    body = {**election.body, "ids": [3, 1, 2], "path": [3, 1, 2]}
    back = r.on_message(Message(RING_ELECTION, "n2", election.term, body, "n3"), now + 0.01)
    assert of(back, Promote) and [type(e) for e in back][1] is Persist  # after the HOP_ACK
    done, more = shell(r, back, now + 0.01, disk_ok=False)
    assert not sends(done, COORDINATOR) and not of(done, Promote)
    assert of(more, Demote) and r.role == "follower" and r.leader is None
    # a faulted ring node puts up no id in an election going round
    other = Message(RING_ELECTION, "n2", r.term, {"initiator": "n1", "nonce": 7, "ids": [1, 2], "path": [1, 2],
                                                 "hop": 1}, "n3")
    forwarded = sends(r.on_message(other, now + 0.02), RING_ELECTION)
    assert forwarded and 3 not in forwarded[0].body["ids"]
    # the lap's COORDINATOR hop was never sent: it must not be retransmitted either
    assert not any(h.kind == COORDINATOR for h in r._pending.values())
    later = now + 0.02
    for _ in range(10):
        later = max(r.deadline(), later + 0.01)
        assert not [x for x in sends(r.on_tick(later), COORDINATOR) if x.body["leader"] == "n3"]
