"""quorum-lease rules, each driven through the pure core with made-up times.

Single-node tests feed one QuorumLease instance hand-written messages; the
cluster tests use tests/lease_harness.py, whose invariant checks (durable
before sent, heartbeat only under a valid lease, never two leaders at an
event instant, one promotion per term) run on every step.
"""

from __future__ import annotations

import random

import msgpack
import pytest

from electiond.node import PROTOCOLS, Node
from electiond.protocols.base import (
    CommandError,
    Demote,
    LeaderChanged,
    Message,
    Persist,
    PersistedState,
    Promote,
    Send,
)
from electiond.protocols.lease import (
    HEARTBEAT,
    HEARTBEAT_ACK,
    NO_HINT_MS,
    PREVOTE,
    PREVOTE_REPLY,
    RELEASE,
    REQUEST_VOTE,
    TIMEOUT_NOW,
    TRANSFER_REQUEST,
    VOTE,
    QuorumLease,
)
from lease_harness import Cluster, random_faults, settings_for

L = 0.15  # default lease_s
GUARD = 0.02  # default lease_guard_s


# ---- helpers ---------------------------------------------------------------------


def make(name: str = "n1", n: int = 3, now: float = 0.0, persisted=None, seed: int = 1, **overrides) -> QuorumLease:
    return QuorumLease(settings_for(n, name, **overrides), random.Random(seed), now, persisted)


def m(kind: str, sender: str, term: int, **body) -> Message:
    return Message(kind, sender, term, body)


def sends(effects, kind: str | None = None) -> list[Send]:
    return [e for e in effects if isinstance(e, Send) and (kind is None or e.kind == kind)]


def of_type(effects, cls) -> list:
    return [e for e in effects if isinstance(e, cls)]


def tick_until(p: QuorumLease, kind: str, limit_s: float = 10.0) -> tuple[float, list]:
    """Tick at each deadline until a Send of ``kind`` comes out."""
    now = p.deadline()
    for _ in range(1000):
        if now > limit_s:
            break
        effects = p.on_tick(now)
        if sends(effects, kind):
            return now, effects
        now = p.deadline()
    raise AssertionError(f"no {kind} before {limit_s}s")


def become_leader(p: QuorumLease, voter: str = "n2") -> tuple[float, int]:
    """Drive ``p`` through pre-vote and vote with one cooperative voter."""
    now, effects = tick_until(p, PREVOTE)
    prevote = sends(effects, PREVOTE)[0]
    effects = p.on_message(m(PREVOTE_REPLY, voter, prevote.term, round=prevote.body["round"], granted=True, retry_ms=0), now + 0.001)
    request = sends(effects, REQUEST_VOTE)[0]
    effects = p.on_message(m(VOTE, voter, request.term, round=request.body["round"], granted=True, retry_ms=0), now + 0.002)
    assert of_type(effects, Promote), effects
    return now + 0.001, request.term  # the request's send time, the term


def follow(p: QuorumLease, leader: str, term: int, now: float, rnd: int = 1) -> list:
    return p.on_message(m(HEARTBEAT, leader, term, round=rnd, priority=0), now)


# ---- registration, schemas ------------------------------------------------------


def test_registered_for_the_node_glue():
    assert PROTOCOLS["quorum-lease"] is QuorumLease
    node = Node(settings_for(3, "n1"), "quorum-lease", random.Random(0), 0.0)
    assert node.status(0.0)["protocol"] == "quorum-lease"
    assert node.protocol.phase(0.0) == "quarantine"
    assert node.status(0.0)["phase"] == "clock-check"  # the node glue says why it waits longer


def _conforms(kind: str, body: dict) -> None:
    schema = QuorumLease.MESSAGE_SCHEMAS[kind]
    assert set(body) == set(schema), (kind, body)
    for field, typ in schema.items():
        assert isinstance(body[field], typ), (kind, field, body[field])
        if typ is int:
            assert not isinstance(body[field], bool), (kind, field)
    assert msgpack.unpackb(msgpack.packb(body)) == body


def test_every_message_sent_matches_its_schema_and_packs():
    c = Cluster(5, seed=3, priorities={"n2": 200}, preempt_delay_s=0.5)
    first = c.elect()
    c.apply(first, c.nodes[first].transfer(None, c.local(first)))
    c.run(0.5)
    c.crash(c.leader())
    c.run(2.0)
    kinds = set()
    for _t, _n, e in c.log:
        if isinstance(e, Send):
            _conforms(e.kind, e.body)
            kinds.add(e.kind)
    expected = {PREVOTE, PREVOTE_REPLY, REQUEST_VOTE, VOTE, HEARTBEAT, HEARTBEAT_ACK, RELEASE, TIMEOUT_NOW}
    assert expected <= kinds, expected - kinds


# ---- persistence ordering --------------------------------------------------------


def test_vote_reply_comes_after_the_persist_that_records_it():
    p = make("n2")
    effects = p.on_message(m(REQUEST_VOTE, "n1", 4, round=7, priority=0), 1.0)
    kinds = [type(e).__name__ for e in effects]
    assert kinds == ["Persist", "Send"], effects
    assert effects[0] == Persist(PersistedState(4, "n1"))
    assert effects[1] == Send(VOTE, 4, {"round": 7, "granted": True, "retry_ms": 0}, to="n1")


def test_candidacy_request_comes_after_the_persist_of_term_and_own_vote():
    p = make("n1", persisted=PersistedState(6, "n3"))
    now, effects = tick_until(p, PREVOTE)
    assert not of_type(effects, Persist), "a pre-vote must not change or persist anything"
    assert sends(effects, PREVOTE)[0].term == 7 and p.term == 6
    effects = p.on_message(m(PREVOTE_REPLY, "n2", 7, round=sends(effects, PREVOTE)[0].body["round"], granted=True, retry_ms=0), now)
    i_persist = next(i for i, e in enumerate(effects) if isinstance(e, Persist))
    i_request = next(i for i, e in enumerate(effects) if isinstance(e, Send) and e.kind == REQUEST_VOTE)
    assert i_persist < i_request
    assert effects[i_persist] == Persist(PersistedState(7, "n1"))


def test_a_higher_term_is_persisted_before_the_ack_that_carries_it():
    p = make("n2")
    effects = follow(p, "n1", 9, 1.0)
    i_persist = next(i for i, e in enumerate(effects) if isinstance(e, Persist))
    i_ack = next(i for i, e in enumerate(effects) if isinstance(e, Send))
    assert i_persist < i_ack and effects[i_persist].state == PersistedState(9, None)


def test_retransmitted_request_is_granted_again_without_a_second_persist():
    p = make("n2")
    p.on_message(m(REQUEST_VOTE, "n1", 4, round=1, priority=0), 1.0)
    effects = p.on_message(m(REQUEST_VOTE, "n1", 4, round=2, priority=0), 1.05)
    assert not of_type(effects, Persist)
    assert sends(effects, VOTE)[0].body["granted"] is True


def test_durable_state_precedes_every_message_in_randomized_runs():
    # the harness raises if any vote/candidacy/ack leaves before its Persist
    for seed in range(10):
        c = Cluster(5, seed=seed, loss=0.05, duplicate=0.05, delay_s=(0.0005, 0.01))
        c.elect()
        c.crash(c.leader())
        c.run(1.5)
        assert c.leader() is not None


# ---- pre-vote --------------------------------------------------------------------


def test_prevote_refused_while_promised_to_a_live_leader_and_granted_after():
    p = make("n2")
    follow(p, "n1", 3, 1.0)
    promise_s = p.settings.follower_promise_s()
    effects = p.on_message(m(PREVOTE, "n3", 4, round=1, priority=0), 1.0 + promise_s - 0.01)
    reply = sends(effects, PREVOTE_REPLY)[0]
    assert reply.body["granted"] is False and reply.body["retry_ms"] == 10
    assert p.term == 3
    effects = p.on_message(m(PREVOTE, "n3", 4, round=2, priority=0), 1.0 + promise_s)
    assert sends(effects, PREVOTE_REPLY)[0].body["granted"] is True
    assert p.term == 3 and not of_type(effects, Persist)


def test_prevote_refused_when_the_candidate_term_is_behind():
    p = make("n2", persisted=PersistedState(8, None))
    effects = p.on_message(m(PREVOTE, "n3", 8, round=1, priority=0), 5.0)  # would take term 8: behind us
    reply = sends(effects, PREVOTE_REPLY)[0]
    assert reply.body == {"round": 1, "granted": False, "retry_ms": NO_HINT_MS} and reply.term == 8


def test_candidate_behind_adopts_the_term_it_hears_in_a_refusal():
    p = make("n1")
    now, effects = tick_until(p, PREVOTE)
    rnd = sends(effects, PREVOTE)[0].body["round"]
    effects = p.on_message(m(PREVOTE_REPLY, "n2", 12, round=rnd, granted=False, retry_ms=NO_HINT_MS), now)
    assert p.term == 12 and Persist(PersistedState(12, None)) in effects


def test_partitioned_node_does_not_inflate_terms_or_depose_the_leader():
    c = Cluster(5, seed=11)
    leader = c.elect()
    term = c.nodes[leader].term
    loner = next(n for n in c.names if n != leader)
    c.partition([loner], [n for n in c.names if n != loner])
    c.run(3.0)
    assert c.nodes[loner].term == term, "pre-vote must keep an isolated node's term"
    assert c.log and any(isinstance(e, Send) and e.kind == PREVOTE for _t, n, e in c.log if n == loner)
    c.heal()
    c.run(1.0)
    assert c.leader() == leader and c.nodes[leader].term == term


# ---- leases measured from the send ------------------------------------------------


def test_lease_from_votes_counts_from_the_request_send_time():
    p = make("n1")
    now, effects = tick_until(p, PREVOTE)
    rnd = sends(effects, PREVOTE)[0].body["round"]
    sent_at = now + 0.001
    effects = p.on_message(m(PREVOTE_REPLY, "n2", 1, round=rnd, granted=True, retry_ms=0), sent_at)
    request = sends(effects, REQUEST_VOTE)[0]
    p.on_message(m(VOTE, "n2", 1, round=request.body["round"], granted=True, retry_ms=0), sent_at + 0.04)
    assert p.is_leader(sent_at + 0.04)
    assert p.lease_until == pytest.approx(sent_at + L)


def test_a_late_heartbeat_ack_does_not_extend_the_lease_beyond_send_plus_lease():
    p = make("n1")
    become_leader(p)
    s = p.deadline()
    effects = p.on_tick(s)
    hb = sends(effects, HEARTBEAT)[0]
    before = p.lease_until
    late = s + 0.06  # the reply took 60 ms; the lease is still running
    p.on_message(m(HEARTBEAT_ACK, "n2", hb.term, round=hb.body["round"], ok=True, priority=0), late)
    assert p.lease_until == pytest.approx(s + L)
    assert p.lease_until > before
    assert p.lease_until < late + L


def test_ack_for_an_unknown_or_stale_round_grants_nothing():
    p = make("n1")
    _, term = become_leader(p)
    before = p.lease_until
    p.on_message(m(HEARTBEAT_ACK, "n2", term, round=999, ok=True, priority=0), before - 0.05)
    p.on_message(m(HEARTBEAT_ACK, "n2", term - 1, round=1, ok=True, priority=0), before - 0.05)
    assert p.lease_until == before


def test_lease_needs_a_majority_and_takes_the_quorum_th_freshest_grant():
    p = make("n1", n=5)
    now, effects = tick_until(p, PREVOTE)
    rnd = sends(effects, PREVOTE)[0].body["round"]
    for voter in ("n2", "n3"):
        effects = p.on_message(m(PREVOTE_REPLY, voter, 1, round=rnd, granted=True, retry_ms=0), now)
    req = sends(effects, REQUEST_VOTE)[0]
    t_req = now
    effects = p.on_message(m(VOTE, "n2", 1, round=req.body["round"], granted=True, retry_ms=0), now + 0.001)
    assert not p.is_leader(now + 0.001), "2 of 5 is no majority"
    # a retransmission goes out later; n3 answers only that one
    t_re = p.deadline()
    effects = p.on_tick(t_re)
    req2 = sends(effects, REQUEST_VOTE)[0]
    p.on_message(m(VOTE, "n3", 1, round=req2.body["round"], granted=True, retry_ms=0), t_re + 0.001)
    assert p.is_leader(t_re + 0.001)
    # majority {n1@t_re, n3@t_re, n2@t_req}: the third freshest is n2's
    assert p.lease_until == pytest.approx(t_req + L)


def test_majority_of_stale_grants_is_not_a_win():
    p = make("n1", election_timeout_min_s=1.0, election_timeout_max_s=1.0)
    now, effects = tick_until(p, PREVOTE)
    rnd = sends(effects, PREVOTE)[0].body["round"]
    effects = p.on_message(m(PREVOTE_REPLY, "n2", 1, round=rnd, granted=True, retry_ms=0), now)
    req = sends(effects, REQUEST_VOTE)[0]
    # the vote for the first request arrives after its lease would have ended
    effects = p.on_message(m(VOTE, "n2", 1, round=req.body["round"], granted=True, retry_ms=0), now + L)
    assert not of_type(effects, Promote) and not p.is_leader(now + L)


# ---- promises ------------------------------------------------------------------


def test_vote_promises_no_other_vote_until_r_plus_lf():
    p = make("n2")
    r = 1.0
    p.on_message(m(REQUEST_VOTE, "n1", 2, round=1, priority=0), r)
    lf = p.settings.follower_promise_s()
    effects = p.on_message(m(REQUEST_VOTE, "n3", 3, round=1, priority=0), r + lf - 0.005)
    vote = sends(effects, VOTE)[0]
    assert vote.body["granted"] is False and vote.body["retry_ms"] == 5
    assert p.term == 2, "a bound voter keeps its term"
    effects = p.on_message(m(REQUEST_VOTE, "n3", 3, round=2, priority=0), r + lf)
    assert sends(effects, VOTE)[0].body["granted"] is True and p.term == 3


def test_heartbeat_ack_promises_no_other_vote_until_r_plus_lf():
    p = make("n2")
    r = 2.0
    follow(p, "n1", 1, r)
    lf = p.settings.follower_promise_s()
    assert lf >= L * (1 + 1e-3) / (1 - 1e-3)
    refused = p.on_message(m(REQUEST_VOTE, "n3", 2, round=1, priority=0), r + lf - 1e-6)
    assert sends(refused, VOTE)[0].body["granted"] is False
    granted = p.on_message(m(REQUEST_VOTE, "n3", 2, round=2, priority=0), r + lf)
    assert sends(granted, VOTE)[0].body["granted"] is True


def test_one_vote_per_term():
    p = make("n3")
    p.on_message(m(REQUEST_VOTE, "n1", 5, round=1, priority=0), 1.0)
    # even once the promise lapsed, n3 already voted in term 5
    effects = p.on_message(m(REQUEST_VOTE, "n2", 5, round=1, priority=0), 3.0)
    assert sends(effects, VOTE)[0].body == {"round": 1, "granted": False, "retry_ms": NO_HINT_MS}


def test_promise_to_the_candidate_itself_does_not_block_its_next_term():
    p = make("n2")
    follow(p, "n1", 1, 1.0)
    effects = p.on_message(m(REQUEST_VOTE, "n1", 2, round=3, priority=0), 1.01)
    assert sends(effects, VOTE)[0].body["granted"] is True


# ---- quorum intersection ------------------------------------------------------------


@pytest.mark.parametrize("n", [3, 5])
def test_leader_isolated_in_a_minority_demotes_before_the_majority_elects(n):
    for seed in range(6):
        c = Cluster(n, seed=seed)
        old = c.elect()
        minority = [old] + [x for x in c.names if x != old][: (n - 1) // 2 - 1]
        majority = [x for x in c.names if x not in minority]
        c.partition(minority, majority)
        t_cut = c.t
        new = None
        assert c.run_until(lambda: (new := c.leader()) not in (None, old), 3.0)
        new = c.leader()
        demote_t = [t for t, d in c.demotes(old) if t >= t_cut]
        assert demote_t and demote_t[0] <= c.t, "the old leader demoted itself on its own clock"
        promote_t = max(t for t, e in c.effects_of(new, Promote))
        assert demote_t[0] < promote_t


def test_lease_quorums_intersect_under_random_partitions_3_and_5_nodes():
    """Randomized schedule of partitions, crashes, restarts, pauses, drift,
    loss, duplication and 20 ms delays; then liveness on a healed cluster."""
    for n in (3, 5):
        for seed in range(25):
            c = random_faults(QuorumLease, seed, n)
            assert c.max_leaders_seen == 1


# ---- stepping down on the leader's own clock ---------------------------------------------------


def test_leader_steps_down_at_the_guard_before_lease_end():
    p = make("n1")
    become_leader(p)
    step_at = p.lease_until - GUARD
    now = p.deadline()
    while now < step_at:  # heartbeats go out, no ack comes back
        effects = p.on_tick(now)
        assert not of_type(effects, Demote)
        assert sends(effects, HEARTBEAT)
        now = p.deadline()
    assert now == pytest.approx(step_at), "the step-down instant is a deadline"
    effects = p.on_tick(step_at)
    assert effects[0] == Demote(1, "lease_lost")
    assert LeaderChanged(None, 1) in effects
    assert not sends(effects, HEARTBEAT)
    assert p.role == "follower"


def test_is_leader_is_false_after_expiry_without_a_tick():
    p = make("n1")
    become_leader(p)
    step_at = p.lease_until - GUARD
    assert p.is_leader(step_at - 1e-6)
    assert not p.is_leader(step_at)
    assert p.role == "leader"  # no tick has run yet
    node_view = Node(settings_for(3, "n1"), "quorum-lease", random.Random(0), 0.0)
    node_view.protocol = p
    assert node_view.status(step_at + 5.0)["role"] == "follower"


def test_woken_leader_checks_its_lease_before_anything_else():
    p = make("n1")
    _, term = become_leader(p)
    woke = p.lease_until + 3.0  # frozen for seconds
    # the first input after waking is a datagram that waited in the buffer
    effects = p.on_message(m(HEARTBEAT_ACK, "n2", term, round=1, ok=True, priority=0), woke)
    assert effects and effects[0] == Demote(term, "lease_lost")
    assert not sends(effects, HEARTBEAT)
    assert not p.is_leader(woke)


def test_pause_past_the_lease_then_resume_never_leads_again_in_that_term():
    for seed in range(5):
        c = Cluster(3, seed=seed)
        old = c.elect()
        term = c.nodes[old].term
        wake_at = c.t + 1.0
        c.pause(old, 1.0)
        c.run(2.0)
        after_wake = [(t, e) for t, n, e in c.log if n == old and t >= wake_at]
        assert after_wake[0][1] == Demote(term, "lease_lost"), after_wake[:3]
        assert after_wake[0][0] == pytest.approx(wake_at)
        assert not [e for _t, e in after_wake if isinstance(e, Send) and e.kind == HEARTBEAT and e.term == term]
        assert len([e for _t, e in c.effects_of(old, Promote) if e.term == term]) == 1
        assert c.leader() is not None


# ---- quarantine ------------------------------------------------------------------


def test_quarantine_refuses_votes_for_lf_after_start():
    start = 50.0
    p = make("n2", now=start, persisted=PersistedState(3, None))
    lf = p.settings.follower_promise_s()
    effects = p.on_message(m(REQUEST_VOTE, "n3", 4, round=1, priority=0), start + lf - 0.02)
    vote = sends(effects, VOTE)[0]
    assert vote.body["granted"] is False and vote.body["retry_ms"] == 20
    assert not of_type(effects, Persist)
    effects = p.on_message(m(PREVOTE, "n3", 4, round=2, priority=0), start + lf - 0.02)
    assert sends(effects, PREVOTE_REPLY)[0].body["granted"] is False
    effects = p.on_message(m(REQUEST_VOTE, "n3", 4, round=3, priority=0), start + lf)
    assert sends(effects, VOTE)[0].body["granted"] is True


def test_quarantined_node_does_not_stand_but_does_follow():
    start = 7.0
    p = make("n1", now=start)
    lf = p.settings.follower_promise_s()
    assert p.deadline() >= start + lf
    assert p.on_tick(start + lf - 0.001) == []
    effects = follow(p, "n3", 2, start + 0.01)
    assert sends(effects, HEARTBEAT_ACK)[0].body["ok"] is True


def test_cold_start_stalls_at_most_about_lf():
    # staggered starts: the first node asks while others are quarantined
    for seed in range(10):
        c = Cluster(5, seed=seed, start_times={"n1": 0.0, "n2": 0.05, "n3": 0.1, "n4": 0.12, "n5": 0.15})
        c.elect(timeout_s=2.0)
        lf = c.settings["n1"].follower_promise_s()
        # the last node started at 0.15; a leader follows within about Lf + a delay or two
        assert c.t <= 0.15 + lf + 0.12, (seed, c.t)


def test_restart_right_after_voting_honours_the_persisted_vote():
    p = make("n3")
    effects = p.on_message(m(REQUEST_VOTE, "n1", 5, round=1, priority=0), 1.0)
    durable = next(e.state for e in effects if isinstance(e, Persist))
    restarted = make("n3", now=1.01, persisted=durable)
    assert restarted.term == 5 and restarted.extra_status(1.01)["voted_for"] == "n1"
    later = 1.01 + restarted.settings.follower_promise_s() + 1.0
    refused = restarted.on_message(m(REQUEST_VOTE, "n2", 5, round=1, priority=0), later)
    assert sends(refused, VOTE)[0].body["granted"] is False
    again = restarted.on_message(m(REQUEST_VOTE, "n1", 5, round=2, priority=0), later)
    assert sends(again, VOTE)[0].body["granted"] is True


def test_restart_right_after_voting_in_a_cluster_stays_safe():
    for seed in range(15):
        c = Cluster(3, seed=seed, delay_s=(0.001, 0.004))
        old = c.elect()
        c.crash(old)
        # wait for the first granted vote, crash that voter at once, restart it
        def voted():
            return any(isinstance(e, Send) and e.kind == VOTE and e.body["granted"] and t > 0.0 for t, n, e in c.log[-8:])
        c.run_until(voted, 2.0)
        voter = next(n for t, n, e in reversed(c.log) if isinstance(e, Send) and e.kind == VOTE)
        c.crash(voter)
        c.restart(voter)
        c.restart(old)
        c.run(2.0)
        assert c.leader() is not None


# ---- priority, backoff ------------------------------------------------------------


def test_highest_priority_wins_the_cold_start():
    wins = 0
    for seed in range(20):
        c = Cluster(5, seed=seed, priorities={"n1": 250, "n2": 150, "n3": 50, "n4": 0, "n5": 0})
        wins += c.elect() == "n1"
    assert wins >= 19


def test_after_the_leader_dies_the_next_priority_takes_over():
    wins = 0
    for seed in range(20):
        # equal detection timeouts (as the adaptive detector gives once it has
        # samples): priority then decides who stands first
        c = Cluster(
            5, seed=seed, priorities={"n1": 250, "n2": 150, "n3": 50, "n4": 0, "n5": 0},
            election_timeout_min_s=0.15, election_timeout_max_s=0.15,
        )
        assert c.elect() == "n1"
        c.crash("n1")
        c.run_until(lambda: c.leader() not in (None, "n1"), 3.0)
        wins += c.leader() == "n2"
    assert wins >= 18


def test_equal_priorities_fall_back_to_id_order_in_the_delay():
    delays = {}
    for name in ("n1", "n2", "n3"):
        p = make(name, priority=10)
        delays[name] = [p._rank_delay_s() for _ in range(50)]
    assert max(delays["n3"]) < min(delays["n2"]) <= max(delays["n2"]) < min(delays["n1"])
    high = make("n1", priority=255)
    low = make("n3", priority=200)
    assert max(high._rank_delay_s() for _ in range(50)) < min(low._rank_delay_s() for _ in range(50))


def test_failed_rounds_back_off_exponentially_then_reset_on_success():
    p = make("n1", backoff_base_s=0.05, backoff_jitter_s=0.01, backoff_max_s=0.8)
    starts = []
    now = p.deadline()
    while len(starts) < 6:  # nobody ever answers
        effects = p.on_tick(now)
        if sends(effects, PREVOTE):
            starts.append(now)
        now = p.deadline()
    gaps = [b - a for a, b in zip(starts, starts[1:])]
    # each gap = round timeout (150 ms) + base*2^k + jitter + rank delay
    for k, gap in enumerate(gaps):
        backoff = min(0.8, 0.05 * 2 ** k)
        assert 0.15 + backoff <= gap <= 0.15 + backoff + 0.01 + 0.03 + 1e-9, (k, gaps)
    assert p.extra_status(now)["election_attempt"] == 5
    follow(p, "n2", 1, now)
    assert p.extra_status(now)["election_attempt"] == 0


def test_refusals_that_only_need_time_shorten_the_retry():
    p = make("n1", n=3, backoff_base_s=1.0, backoff_max_s=1.0, backoff_jitter_s=0.01)
    now, effects = tick_until(p, PREVOTE)
    rnd = sends(effects, PREVOTE)[0].body["round"]
    p.on_message(m(PREVOTE_REPLY, "n2", 0, round=rnd, granted=False, retry_ms=30), now + 0.001)
    p.on_message(m(PREVOTE_REPLY, "n3", 0, round=rnd, granted=False, retry_ms=40), now + 0.001)
    # n2 will be free in 30 ms, enough for a majority with ourselves: no 1 s backoff
    # 30 ms hint + backoff jitter (10 ms) + rank delay (< 28 ms at priority 0, id rank 2)
    assert now + 0.031 <= p.deadline() <= now + 0.001 + 0.030 + 0.010 + 0.028 + 1e-9


# ---- transfer -------------------------------------------------------------------


def test_transfer_demotes_at_once_and_hands_over_only_after_the_demote_hooks():
    p = make("n1")
    _, term = become_leader(p)
    now = p.lease_until - 0.05
    effects = p.transfer("n3", now)
    assert effects[0] == Demote(term, "transfer")
    assert not sends(effects), "nothing is released while the demote hooks may still run"
    assert not p.is_leader(now)
    # it stopped renewing: no heartbeat ever again in this term
    for t in (now + 0.01, now + 0.06):
        assert not sends(p.on_tick(t), HEARTBEAT)
    effects = p.demote_hooks_done(now + 0.08)
    assert [(e.kind, e.term, e.to) for e in effects] == [(RELEASE, term, None), (TIMEOUT_NOW, term, "n3")]
    assert p.demote_hooks_done(now + 0.09) == [], "handed over once"


def test_transfer_hooks_never_overlap_even_with_slow_demote_hooks():
    for hook_s in (0.0, 0.03, 0.12):
        c = Cluster(3, seed=1, hook_s=hook_s)
        old = c.elect()
        c.run(0.2)
        target = next(x for x in c.names if x != old)
        c.apply(old, c.nodes[old].transfer(target, c.local(old)))
        demoted = c.t
        c.run_until(lambda: c.leader() == target, 1.0)
        assert c.leader() == target
        # the new leader is promoted only after the old one's hooks finished
        assert c.t >= demoted + hook_s


def test_transfer_errors():
    p = make("n1")
    with pytest.raises(CommandError, match="not the leader"):
        p.transfer("n2", 5.0)
    become_leader(p)
    now = p.lease_until - 0.05
    with pytest.raises(CommandError, match="unknown node 'zz'"):
        p.transfer("zz", now)
    with pytest.raises(CommandError, match="itself"):
        p.transfer("n1", now)
    assert p.is_leader(now), "a refused transfer changes nothing"


def test_release_drops_the_promise_and_timeout_now_campaigns_at_once():
    follower = make("n2")
    follow(follower, "n1", 4, 1.0)
    effects = follower.on_message(m(RELEASE, "n1", 4), 1.01)
    assert LeaderChanged(None, 4) in effects
    granted = follower.on_message(m(REQUEST_VOTE, "n3", 5, round=1, priority=0), 1.02)
    assert sends(granted, VOTE)[0].body["granted"] is True
    target = make("n3")
    follow(target, "n1", 4, 1.0)
    effects = target.on_message(m(TIMEOUT_NOW, "n1", 4), 1.01)
    assert effects.index(Persist(PersistedState(5, "n3"))) < effects.index(sends(effects, REQUEST_VOTE)[0])
    assert target.role == "candidate"


def test_stale_timeout_now_is_ignored():
    p = make("n3")
    follow(p, "n1", 4, 1.0)
    assert p.on_message(m(TIMEOUT_NOW, "n2", 4), 1.01) == []  # we follow someone else
    assert p.on_message(m(TIMEOUT_NOW, "n1", 3), 1.01) == []  # an old term
    assert p.role == "follower"


def test_transfer_in_a_cluster_is_fast_and_never_overlaps():
    for seed in range(10):
        c = Cluster(5, seed=seed, priorities={"n5": 200})
        old = c.elect()
        target = next(x for x in c.names if x != old)
        t0 = c.t
        c.apply(old, c.nodes[old].transfer(target, c.local(old)))
        c.run_until(lambda: c.leader() == target, 1.0)
        assert c.leader() == target
        # a few round trips, far less than the promise a timeout would need
        assert c.t - t0 < 0.05, (seed, c.t - t0)


def test_transfer_to_best_live_member_by_priority_then_id():
    c = Cluster(5, seed=2, priorities={"n1": 250, "n2": 10, "n3": 90, "n4": 90, "n5": 0})
    assert c.elect() == "n1"
    c.run(0.3)  # the leader learns priorities from acks
    c.crash("n3")
    c.run(0.3)
    c.apply("n1", c.nodes["n1"].transfer(None, c.local("n1")))
    c.run(0.001)  # the demote hooks finish
    timeouts = [e for t, n, e in c.log if n == "n1" and isinstance(e, Send) and e.kind == TIMEOUT_NOW]
    assert timeouts[-1].to == "n4"  # n3 (also 90, lower id) is dead
    c.run_until(lambda: c.leader() == "n4", 1.0)
    assert c.leader() == "n4"


def test_stepdown_hands_over_and_set_eligible_false_never_stands():
    c = Cluster(3, seed=4, priorities={"n3": 200})
    assert c.elect() == "n3"
    c.run(0.2)
    c.apply("n3", c.nodes["n3"].stepdown(c.local("n3")))
    assert c.nodes["n3"].role == "follower"
    c.run_until(lambda: c.leader() not in (None, "n3"), 1.0)
    new = c.leader()
    assert new in ("n1", "n2")
    c.apply("n3", c.nodes["n3"].set_eligible(False, c.local("n3"), "health"))
    c.apply(new, c.nodes[new].set_eligible(False, c.local(new), "health"))
    assert c.nodes[new].role == "follower"
    assert [d.reason for _t, d in c.demotes(new)] == ["health"]
    c.run(2.0)
    assert c.leader() not in ("n3", new)
    ineligible = ("n3", new)
    assert not [1 for t, n, e in c.log if n in ineligible and isinstance(e, Send) and e.kind == PREVOTE and t > c.t - 1.9]
    with pytest.raises(CommandError):
        c.nodes["n3"].stepdown(c.local("n3"))


# ---- preempt ------------------------------------------------------------------


def test_returning_higher_priority_node_takes_over_after_preempt_delay():
    c = Cluster(3, seed=5, priorities={"n1": 250}, preempt=True, preempt_delay_s=1.0, start_times={"n1": 1.0})
    first = c.elect()
    assert first != "n1"
    c.run_until(lambda: "n1" in c.nodes and c.nodes["n1"].leader == first, 2.0)  # n1 starts and follows
    joined = c.t
    assert c.leader() == first
    c.run_until(lambda: c.leader() == "n1", 3.0)
    assert c.leader() == "n1"
    req_t = [t for t, n, e in c.log if n == "n1" and isinstance(e, Send) and e.kind == TRANSFER_REQUEST]
    assert req_t and req_t[0] >= joined + 1.0 - 0.05
    assert [d.reason for _t, d in c.demotes(first)] == ["preempted"]


def test_no_preempt_keeps_the_sitting_leader():
    c = Cluster(3, seed=5, priorities={"n1": 250}, preempt=False, preempt_delay_s=0.5, start_times={"n1": 1.0})
    first = c.elect()
    c.run(3.0)
    assert c.leader() == first != "n1"


def test_transfer_request_from_a_lower_priority_is_ignored():
    p = make("n1", priority=100)
    _, term = become_leader(p)
    now = p.lease_until - 0.05
    assert p.on_message(m(TRANSFER_REQUEST, "n2", term, priority=100), now) == []
    assert p.is_leader(now)


# ---- status ------------------------------------------------------------------


def test_extra_status_reports_lease_promise_and_phase():
    p = make("n1")
    sent_at, term = become_leader(p)
    st = p.extra_status(sent_at + 0.05)
    assert st["phase"] == "leader" and st["voted_for"] == "n1"
    assert st["lease_remaining_ms"] == pytest.approx(100.0, abs=0.2)
    f = make("n2")
    follow(f, "n1", 3, 1.0)
    st = f.extra_status(1.05)
    assert st["phase"] == "follower" and st["promised_to"] == "n1" and st["lease_remaining_ms"] is None
    assert st["promise_remaining_ms"] == pytest.approx((f.settings.follower_promise_s() - 0.05) * 1000, abs=0.2)


def test_transfer_without_a_hooks_report_falls_back_to_an_ordinary_election():
    # a shell that never reports finished hooks: promises lapse, someone wins
    c = Cluster(3, seed=2, hook_s=1e9)
    old = c.elect()
    c.run(0.2)
    c.apply(old, c.nodes[old].transfer(None, c.local(old)))
    t0 = c.t
    c.run_until(lambda: c.leader() not in (None, old), 2.0)
    assert c.leader() not in (None, old)
    assert c.t - t0 >= c.settings[old].follower_promise_s() - 0.05
    assert not [e for t, n, e in c.log if n == old and isinstance(e, Send) and e.kind == RELEASE]


def test_no_win_with_a_lease_too_short_to_renew_then_a_fresh_grant_wins():
    p = make("n1")
    now, effects = tick_until(p, PREVOTE)
    rnd = sends(effects, PREVOTE)[0].body["round"]
    effects = p.on_message(m(PREVOTE_REPLY, "n2", 1, round=rnd, granted=True, retry_ms=0), now)
    req = sends(effects, REQUEST_VOTE)[0]
    # 90 ms late: 60 ms of lease left, less than guard + one heartbeat interval
    effects = p.on_message(m(VOTE, "n2", 1, round=req.body["round"], granted=True, retry_ms=0), now + 0.09)
    assert not of_type(effects, Promote)
    t_re = p.deadline()
    assert t_re == pytest.approx(now + 0.05)  # the retransmission was due already
    req2 = sends(p.on_tick(now + 0.091), REQUEST_VOTE)[0]
    effects = p.on_message(m(VOTE, "n2", 1, round=req2.body["round"], granted=True, retry_ms=0), now + 0.092)
    assert of_type(effects, Promote) and p.lease_until == pytest.approx(now + 0.091 + L)


def test_a_vote_granted_during_our_own_prevote_cancels_it():
    p = make("n1", persisted=PersistedState(5, None))
    now, effects = tick_until(p, PREVOTE)
    rnd = sends(effects, PREVOTE)[0].body["round"]
    # a candidate of our current term asks (no term change cancels anything)
    granted = p.on_message(m(REQUEST_VOTE, "n3", 5, round=1, priority=0), now + 0.001)
    assert sends(granted, VOTE)[0].body["granted"] is True
    # a late pre-vote grant must not make us stand while promised to n3
    effects = p.on_message(m(PREVOTE_REPLY, "n2", 6, round=rnd, granted=True, retry_ms=0), now + 0.002)
    assert not sends(effects, REQUEST_VOTE) and p.role == "follower"
    assert p.promise[0] == "n3"


def test_a_granted_vote_reports_the_leader_it_stopped_following():
    p = make("n2")
    follow(p, "n1", 3, 1.0)
    later = 1.0 + p.settings.follower_promise_s() + 0.001  # n1 went quiet, promise lapsed
    effects = p.on_message(m(REQUEST_VOTE, "n3", 4, round=1, priority=0), later)
    assert LeaderChanged(None, 4) in effects
    assert effects.index(LeaderChanged(None, 4)) < effects.index(sends(effects, VOTE)[0])
    assert sends(effects, VOTE)[0].body["granted"] is True


def test_timeout_now_during_quarantine_campaigns_without_prevote_when_it_ends():
    start = 3.0
    target = make("n3", now=start)
    follow(target, "n1", 4, start + 0.01)
    assert target.on_message(m(TIMEOUT_NOW, "n1", 4), start + 0.02) == [LeaderChanged(None, 4)]
    quarantine_end = start + target.settings.follower_promise_s()
    assert target.deadline() == pytest.approx(quarantine_end)
    effects = target.on_tick(quarantine_end)
    assert not sends(effects, PREVOTE)
    assert effects[0] == Persist(PersistedState(5, "n3")) and sends(effects, REQUEST_VOTE)


def test_an_unwinnable_split_vote_is_abandoned_at_once():
    p = make("n1", n=5, backoff_base_s=0.05, backoff_jitter_s=0.01)
    now, effects = tick_until(p, PREVOTE)
    rnd = sends(effects, PREVOTE)[0].body["round"]
    for voter in ("n2", "n3"):
        effects = p.on_message(m(PREVOTE_REPLY, voter, 1, round=rnd, granted=True, retry_ms=0), now)
    req = sends(effects, REQUEST_VOTE)[0]
    # voters that already chose someone else in term 1 are lost for good
    p.on_message(m(VOTE, "n4", 1, round=req.body["round"], granted=False, retry_ms=NO_HINT_MS), now + 0.001)
    p.on_message(m(VOTE, "n5", 1, round=req.body["round"], granted=False, retry_ms=NO_HINT_MS), now + 0.001)
    assert p.role == "candidate", "5 - 2 lost = 3 could still make a majority"
    p.on_message(m(VOTE, "n3", 1, round=req.body["round"], granted=False, retry_ms=NO_HINT_MS), now + 0.002)
    assert p.role == "follower"
    assert p.promise[0] is None, "our own vote no longer binds us: this term can never be ours"
    assert p.deadline() >= now + 0.002 + 0.05


def test_preemption_hands_over_to_the_asker():
    p = make("n1", n=3, priority=10)
    _, term = become_leader(p)
    now = p.lease_until - 0.05
    # n2 (priority 250) is known and live but did not ask: it may be unable to stand
    p.on_message(m(HEARTBEAT_ACK, "n2", term, round=0, ok=True, priority=250), now - 0.01)
    effects = p.on_message(m(TRANSFER_REQUEST, "n3", term, priority=100), now)
    assert effects[0] == Demote(term, "preempted")
    assert [(e.kind, e.to) for e in p.demote_hooks_done(now + 0.01)] == [(RELEASE, None), (TIMEOUT_NOW, "n3")]


def test_a_rescue_heartbeat_goes_out_half_an_interval_before_the_step_down():
    p = make("n1")
    _, term = become_leader(p)
    hb = p.settings.heartbeat_interval_s
    t1 = p.deadline()
    hb1 = sends(p.on_tick(t1), HEARTBEAT)[0]
    p.on_message(m(HEARTBEAT_ACK, "n2", term, round=hb1.body["round"], ok=True, priority=0), t1 + 0.001)
    assert p.lease_until == pytest.approx(t1 + L)
    t2 = p.deadline()
    assert t2 == pytest.approx(t1 + hb)  # healthy: the regular interval
    p.on_tick(t2)  # this round's ack is lost
    t3 = p.deadline()
    assert t3 == pytest.approx(t2 + hb)
    p.on_tick(t3)  # and this one's
    # now the step-down (t1 + L - guard) is near: a rescue round half an
    # interval before it, but never sooner than a quarter interval after the last
    rescue = p.deadline()
    assert rescue == pytest.approx(max(t1 + L - GUARD - hb / 2, t3 + hb / 4))
    assert rescue < t3 + hb and rescue < t1 + L - GUARD
    assert sends(p.on_tick(rescue), HEARTBEAT)


# ---- issue 17: campaign when the promise ends ---------------------------------------


def test_a_follower_campaigns_when_its_promise_ends_not_when_its_slower_detector_fires():
    # a detector floor far above the promise (as a widened window would be)
    p = make("n2", min_suspicion_timeout_s=1.0)
    for i in range(20):
        follow(p, "n1", 3, 1.0 + 0.05 * i, rnd=i + 1)
    last = 1.0 + 0.05 * 19
    lf = p.settings.follower_promise_s()
    assert p.extra_status(last)["leader_timeout_ms"] >= 1000.0
    # woken when the promise ends: the leader is dropped, no later than that
    assert p.deadline() == pytest.approx(last + lf)
    effects = p.on_tick(p.deadline())
    assert of_type(effects, LeaderChanged) == [LeaderChanged(None, 3)]
    now, effects = tick_until(p, PREVOTE)
    # the rank stagger is a small fraction of the interval
    assert last + lf <= now <= last + lf + p.settings.heartbeat_interval_s
    assert sends(effects, PREVOTE)[0].term == 4


def test_a_renewed_promise_keeps_the_follower_with_its_leader():
    p = make("n2", min_suspicion_timeout_s=1.0)
    lf = p.settings.follower_promise_s()
    t = 1.0
    for i in range(40):
        follow(p, "n1", 3, t, rnd=i + 1)
        assert p.deadline() > t
        assert not sends(p.on_tick(t + 0.9 * 0.05), PREVOTE)
        t += 0.05
    assert p.leader == "n1"
    # each ack renewed the promise: it ends L_f after the last heartbeat
    assert p.deadline() == pytest.approx(t - 0.05 + lf)
