"""quorum-lease, issue 17: the rules that keep a failover from splitting the
vote, or that end a split at once (made-up times).

Found by tracing single failovers of scripts/bench-failover (--trace): two
or three candidates stood in one term, voters answered the loser with a wait
hint instead of "final", a restarted node in its clock check answered
nothing, so every candidate kept asking for its whole election round.
"""

from __future__ import annotations

import random

from electiond.node import Node
from electiond.protocols.base import Member, Message, Send, Settings
from electiond.protocols.lease import (
    HEARTBEAT,
    NO_HINT_MS,
    PREVOTE,
    PREVOTE_REPLY,
    REQUEST_VOTE,
    VOTE,
    QuorumLease,
)
from lease_harness import settings_for


def make(name: str, n: int = 5, now: float = 0.0, seed: int = 1, **overrides) -> QuorumLease:
    return QuorumLease(settings_for(n, name, **overrides), random.Random(seed), now, None)


def m(kind: str, sender: str, term: int, **body) -> Message:
    return Message(kind, sender, term, body)


def sends(effects, kind: str) -> list[Send]:
    return [e for e in effects if isinstance(e, Send) and e.kind == kind]


def test_a_vote_cast_in_this_term_is_refused_as_final_even_while_the_promise_runs():
    p = make("n2")
    p.on_message(m(REQUEST_VOTE, "n3", 5, round=1, priority=0), 1.0)
    # 10 ms later: the promise to n3 runs for L_f yet; before, this refusal
    # carried a ~150 ms wait hint, and n5 went on asking all round
    effects = p.on_message(m(REQUEST_VOTE, "n5", 5, round=1, priority=0), 1.01)
    assert sends(effects, VOTE)[0].body == {"round": 1, "granted": False, "retry_ms": NO_HINT_MS}
    # a higher term still gets the wait hint: waiting does cure that
    effects = p.on_message(m(REQUEST_VOTE, "n5", 6, round=2, priority=0), 1.02)
    vote = sends(effects, VOTE)[0]
    assert vote.body["granted"] is False and vote.body["retry_ms"] > 0 and p.term == 5


def test_a_rival_candidate_refuses_as_final_in_its_own_term():
    p = make("n3")
    p._term = 4
    p._start_candidacy(2.0)
    assert p.role == "candidate" and p.term == 5
    effects = p.on_message(m(REQUEST_VOTE, "n5", 5, round=1, priority=0), 2.001)
    assert sends(effects, VOTE)[0].body["retry_ms"] == NO_HINT_MS


def _follower_that_timed_out(name: str = "n1", leader: str = "n5") -> tuple[QuorumLease, float]:
    p = make(name)
    p._quarantine_until = 0.0
    p.on_message(m(HEARTBEAT, leader, 3, round=1, priority=0, sticky=False), 1.0)
    now = 1.0
    for _ in range(100):  # tick until the silent leader is given up
        now = max(now, p.deadline())
        p.on_tick(now)
        if p.leader is None:
            break
    assert p.leader is None
    return p, now


def test_the_timed_out_leader_counts_as_lost_when_judging_a_split():
    p, now = _follower_that_timed_out()
    p._start_candidacy(now)
    assert p.role == "candidate"
    rnd = p._round
    # n2 and n3 voted for a rival; n5, the dead leader, will never answer:
    # 5 - 2 lost - 1 silent = 2 < 3, so give up now, not at the round's end
    p.on_message(m(VOTE, "n2", p.term, round=rnd, granted=False, retry_ms=NO_HINT_MS), now + 0.001)
    assert p.role == "candidate"
    p.on_message(m(VOTE, "n3", p.term, round=rnd, granted=False, retry_ms=NO_HINT_MS), now + 0.002)
    assert p.role == "follower" and p.promise[0] is None


def test_a_leader_heard_again_counts_as_reachable():
    p, now = _follower_that_timed_out()
    p._start_candidacy(now)
    rnd = p._round
    # the old leader speaks up (a refusal carrying a wait hint): not silent
    p.on_message(m(VOTE, "n5", p.term, round=rnd, granted=False, retry_ms=30), now + 0.001)
    p.on_message(m(VOTE, "n2", p.term, round=rnd, granted=False, retry_ms=NO_HINT_MS), now + 0.002)
    p.on_message(m(VOTE, "n3", p.term, round=rnd, granted=False, retry_ms=NO_HINT_MS), now + 0.003)
    assert p.role == "candidate", "5 - 2 lost = 3: n5 and n4 could still make it"


def _about_to_stand(name: str) -> tuple[QuorumLease, float]:
    p = make(name, priority=100)
    now = p.deadline()
    effects = p.on_tick(now)  # quarantine over: the pre-vote leaves
    assert sends(effects, PREVOTE) and p.phase(now) == "prevote"
    return p, now


def test_a_pre_voting_node_yields_to_a_better_ranked_pre_vote():
    p, now = _about_to_stand("n3")
    effects = p.on_message(m(PREVOTE, "n5", p.term + 1, round=9, priority=100), now + 0.001)
    assert sends(effects, PREVOTE_REPLY)[0].body["granted"] is True
    assert p.phase(now + 0.001) != "prevote", "our own pre-vote is dropped"
    # it stands only if n5 neither won nor failed within a pre-vote phase
    assert p.deadline() >= now + 0.001 + p.settings.election_timeout_min_s
    # a grant from n1 for our dropped pre-vote does not make us a candidate
    p.on_message(m(PREVOTE_REPLY, "n1", p.term + 1, round=p._round, granted=True, retry_ms=0), now + 0.002)
    p.on_message(m(PREVOTE_REPLY, "n2", p.term + 1, round=p._round, granted=True, retry_ms=0), now + 0.002)
    assert p.role == "follower"


def test_priority_outranks_id_when_yielding():
    p, now = _about_to_stand("n3")
    # n5 has the higher id but a lower priority: n3 goes on
    p.on_message(m(PREVOTE, "n5", p.term + 1, round=9, priority=50), now + 0.001)
    assert p.phase(now + 0.001) == "prevote"
    # n1 has the lower id but a higher priority: n3 steps back
    p.on_message(m(PREVOTE, "n1", p.term + 1, round=9, priority=200), now + 0.002)
    assert p.phase(now + 0.002) != "prevote"


def test_a_worse_ranked_pre_vote_is_granted_without_yielding():
    p, now = _about_to_stand("n3")
    effects = p.on_message(m(PREVOTE, "n1", p.term + 1, round=9, priority=100), now + 0.001)
    assert sends(effects, PREVOTE_REPLY)[0].body["granted"] is True
    assert p.phase(now + 0.001) == "prevote"
    rnd = p._round
    p.on_message(m(PREVOTE_REPLY, "n1", p.term + 1, round=rnd, granted=True, retry_ms=0), now + 0.002)
    effects = p.on_message(m(PREVOTE_REPLY, "n2", p.term + 1, round=rnd, granted=True, retry_ms=0), now + 0.002)
    assert sends(effects, REQUEST_VOTE) and p.role == "candidate"


def test_a_node_in_its_clock_check_refuses_as_final_instead_of_staying_silent():
    members = tuple(Member(f"n{i}", i) for i in range(1, 6))
    node = Node(Settings(cluster="c", node_name="n2", members=members), "quorum-lease", random.Random(1), 0.0)
    assert node.status(0.0)["blocked_by"], "in its start-up clock check"
    now = node.protocol.quarantine_until + 0.01
    node.on_tick(now)
    effects = node.on_message(Message(PREVOTE, "n3", 1, {"round": 4, "priority": 0}), now)
    reply = [e for e in effects if isinstance(e, Send) and e.kind == PREVOTE_REPLY][0]
    # in our term (0), not the proposed one: a refusal must not raise the asker's term
    assert reply.term == 0 and reply.body == {"round": 4, "granted": False, "retry_ms": NO_HINT_MS}
    effects = node.on_message(Message(REQUEST_VOTE, "n3", 1, {"round": 5, "priority": 0}), now + 0.001)
    vote = [e for e in effects if isinstance(e, Send) and e.kind == VOTE][0]
    assert vote.term == 1 and vote.body == {"round": 5, "granted": False, "retry_ms": NO_HINT_MS}
    # the promise it made stands all the same (it refuses a rival in term 1)
    assert node.protocol.promise[0] == "n3"
