"""Bully rules, driven on the pure core with made-up times."""

import random

import pytest

from electiond.protocols.base import (
    CommandError, Demote, LeaderChanged, Member, Message, Persist, PersistedState, Promote, Send, Settings,
    SplitBrain, TokenRaised,
)
from electiond.protocols.bully import ANSWER, COORDINATOR, ELECTION, HEARTBEAT, Bully

MEMBERS = tuple(Member(f"n{i}", i) for i in range(1, 4))


def bully(name, now=0.0, preempt=True, persisted=None, seed=1):
    s = Settings(cluster="c", node_name=name, members=MEMBERS, preempt=preempt)
    return Bully(s, random.Random(seed), now, persisted)


def sends(effects, kind=None):
    return [e for e in effects if isinstance(e, Send) and (kind is None or e.kind == kind)]


def of(effects, cls):
    return [e for e in effects if isinstance(e, cls)]


def msg(kind, sender, term=0, to=None):
    return Message(kind, sender, term, {}, to)


def test_nothing_happens_before_the_listen_period_and_the_election_timeout():
    b = bully("n1")
    assert b.on_tick(0.1) == []
    assert b.on_tick(0.3) == []
    # a start-up listen period of election_timeout_max, then the randomized timeout
    assert 0.30 + 0.15 <= b.deadline() <= 0.30 + 0.30


def test_suspecting_sends_election_to_higher_ids_only():
    b = bully("n1")
    effects = b.on_tick(b.deadline())
    assert [(e.kind, e.to) for e in sends(effects)] == [(ELECTION, "n2"), (ELECTION, "n3")]
    assert b.role == "candidate"


def test_no_answer_in_time_makes_coordinator_with_a_new_epoch_persisted_first():
    b = bully("n2", persisted=PersistedState(4, None))
    t = b.deadline()
    b.on_tick(t)
    effects = b.on_tick(t + b.settings.answer_timeout_s)
    assert isinstance(effects[0], Persist) and effects[0].state.term == 5
    assert [e.kind for e in sends(effects)] == [COORDINATOR]
    assert of(effects, Promote) == [Promote(5, "elected")]
    assert b.role == "leader" and b.term == 5
    assert effects.index(effects[0]) < effects.index(sends(effects)[0])


def test_highest_id_becomes_leader_at_once():
    b = bully("n3")
    effects = b.on_tick(b.deadline())
    assert of(effects, Promote) and b.role == "leader"


def test_answer_waits_for_coordinator_then_retries_with_backoff():
    b = bully("n1")
    t = b.deadline()
    b.on_tick(t)
    b.on_message(msg(ANSWER, "n3", to="n1"), t + 0.01)
    assert b.on_tick(t + 0.01 + b.settings.answer_timeout_s) == []  # answered: no self-promotion
    wait_end = t + 0.01 + b.settings.election_timeout_max_s
    assert b.on_tick(wait_end) == [] and b.role == "follower"
    first_retry = b.deadline() - wait_end
    effects = b.on_tick(b.deadline())
    assert sends(effects, ELECTION)
    assert first_retry >= b.settings.backoff_base_s


def test_backoff_grows_exponentially():
    b = bully("n1")
    delays = []
    t = b.deadline()
    for _ in range(4):
        b.on_tick(t)
        b.on_message(msg(ANSWER, "n3"), t)
        t += b.settings.election_timeout_max_s
        b.on_tick(t)
        delays.append(b.deadline() - t)
        t = b.deadline()
    s = b.settings
    for attempt, d in enumerate(delays):
        base = min(s.backoff_max_s, s.backoff_base_s * 2 ** attempt)
        assert base <= d <= base + s.backoff_jitter_s


def test_election_from_lower_is_answered_and_starts_own():
    b = bully("n2")
    # after its start-up listen period (election_timeout_max = 0.30 s)
    effects = b.on_message(msg(ELECTION, "n1", to="n2"), 0.35)
    assert sends(effects)[0] == Send(ANSWER, 0, {}, to="n1")
    assert [(e.kind, e.to) for e in sends(effects)[1:]] == [(ELECTION, "n3")]


def test_election_from_lower_during_the_listen_period_is_only_answered():
    # daemons started in ascending order: n2 is up, n3 not yet; taking n1's
    # election over, n2 would crown itself before n3 (or a leader) was heard
    b = bully("n2")
    effects = b.on_message(msg(ELECTION, "n1", to="n2"), 0.05)
    assert [(e.kind, e.to) for e in sends(effects)] == [(ANSWER, "n1")]
    assert b.role == "follower"
    # it campaigns itself when the listen ends (nobody led meanwhile)
    effects = b.on_tick(b.deadline())
    assert [(e.kind, e.to) for e in sends(effects)] == [(ELECTION, "n3")]


def test_leader_answers_election_and_reasserts():
    b = bully("n3")
    b.on_tick(b.deadline())
    effects = b.on_message(msg(ELECTION, "n1"), 1.0)
    assert [e.kind for e in sends(effects)] == [ANSWER, COORDINATOR]


def test_follower_accepts_coordinator_and_heartbeats_keep_it():
    b = bully("n1")
    effects = b.on_message(msg(COORDINATOR, "n3", term=2), 0.05)
    assert LeaderChanged("n3", 2) in effects and b.leader == "n3" and b.term == 2
    t = 0.05
    for _ in range(20):
        t += 0.05
        b.on_message(msg(HEARTBEAT, "n3", term=2), t)
        assert b.on_tick(t) == []
    assert b.leader == "n3"


def test_silent_leader_is_suspected():
    b = bully("n1")
    b.on_message(msg(COORDINATOR, "n3", term=2), 0.0)
    effects = b.on_tick(b.deadline())
    assert LeaderChanged(None, 2) in effects and sends(effects, ELECTION)


@pytest.mark.parametrize("preempt", [True, False])
def test_preempt(preempt):
    s = Settings(cluster="c", node_name="n3", members=MEMBERS, preempt=preempt, preempt_delay_s=0.0)
    b = Bully(s, random.Random(1), 0.0)
    # during its start-up listen period (election_timeout_max = 0.30 s) it
    # follows n2 but does not preempt yet: a higher node may show itself
    for i in range(1, 6):
        effects = b.on_message(msg(HEARTBEAT, "n2", term=3), 0.05 * i)
        assert not of(effects, Promote) and b.leader == "n2"
    if preempt:
        assert b.deadline() <= 0.30  # woken when the listen period ends
    effects = b.on_tick(0.30)
    if preempt:
        assert of(effects, Promote) == [Promote(4, "elected")] and b.role == "leader"
    else:
        assert effects == [] and b.leader == "n2"
        effects = b.on_message(msg(HEARTBEAT, "n2", term=3), 0.35)
        assert not of(effects, Promote) and b.leader == "n2"


def test_a_starting_node_preempts_only_after_preempt_delay():
    # keepalived's preempt_delay: daemons booting together come up one after
    # another; each new highest one taking over at once made a promote storm
    s = Settings(cluster="c", node_name="n3", members=MEMBERS, preempt_delay_s=2.0)
    b = Bully(s, random.Random(1), 0.0)
    t = 0.0
    while t < 1.95:
        t += 0.05
        effects = b.on_message(msg(HEARTBEAT, "n2", term=3), t) + b.on_tick(t)
        assert not of(effects, Promote) and not sends(effects, ELECTION) and b.leader == "n2"
    assert b.deadline() <= 2.0  # woken when the delay ends
    effects = b.on_tick(2.0)
    assert of(effects, Promote) == [Promote(4, "elected")] and b.role == "leader"


def test_split_brain_lower_yields():
    b = bully("n2")
    b.on_tick(b.deadline())
    b.on_tick(b.deadline())  # no answer: leader
    assert b.role == "leader"
    effects = b.on_message(msg(HEARTBEAT, "n3", term=1), 5.0)
    assert of(effects, SplitBrain) == [SplitBrain("n3", b.term, yielded=True)]
    assert of(effects, Demote) and b.role == "follower" and b.leader == "n3"


def test_split_brain_higher_reasserts_with_a_higher_epoch():
    b = bully("n3")
    b.on_tick(b.deadline())
    epoch = b.term
    effects = b.on_message(msg(HEARTBEAT, "n2", term=epoch), 5.0)
    assert of(effects, SplitBrain)[0].yielded is False
    assert sends(effects, COORDINATOR)[0].term == epoch + 1 and b.role == "leader"
    # the same leader under a new token: no second Promote (hooks stay off the hot path)
    assert of(effects, Promote) == [] and of(effects, TokenRaised) == [TokenRaised(epoch + 1, "split_brain")]


def test_epoch_learned_from_others_is_persisted_and_grows():
    b = bully("n1", persisted=PersistedState(2, None))
    effects = b.on_message(msg(HEARTBEAT, "n3", term=9), 0.05)
    assert Persist(PersistedState(9, None)) in effects


def test_stepdown_demotes_and_holds_back():
    b = bully("n3")
    b.on_tick(b.deadline())
    effects = b.stepdown(1.0)
    assert of(effects, Demote) and b.role == "follower"
    # during the hold it neither answers elections nor stands
    assert b.on_message(msg(ELECTION, "n1"), 1.01) == []
    with pytest.raises(CommandError):
        b.stepdown(1.02)


def test_ineligible_node_never_stands_and_leader_steps_down():
    b = bully("n3")
    b.on_tick(b.deadline())
    effects = b.set_eligible(False, 1.0, "fault")
    assert of(effects, Demote) == [Demote(b.term, "fault")]
    for t in (2.0, 5.0, 10.0):
        assert not of(b.on_tick(t), Promote)
    b.set_eligible(True, 11.0, "recovered")
    assert of(b.on_tick(b.deadline()), Promote)


def test_messages_from_self_ignored():
    b = bully("n1")
    assert b.on_message(msg(COORDINATOR, "n1", term=4), 0.1) == []


# ---- issue 17: faster failover --------------------------------------------------------

MEMBERS5 = tuple(Member(f"n{i}", i) for i in range(1, 6))


def bully5(name, now=0.0, preempt=True):
    s = Settings(cluster="c", node_name=name, members=MEMBERS5, preempt=preempt)
    return Bully(s, random.Random(1), now)


def following(name, leader, term=1, n=60, preempt=True):
    """A node past its listen period following ``leader`` with ``n`` heartbeats."""
    b = bully5(name, preempt=preempt)
    t = 0.5
    b.on_message(msg(COORDINATOR, leader, term=term), t)
    for _ in range(n):
        t += 0.05
        b.on_message(msg(HEARTBEAT, leader, term=term), t)
    assert b.leader == leader and b.role == "follower"
    return b, t


def test_election_from_below_is_answered_and_taken_over_at_once():
    # n4 still trusts n5 (its detector has not fired), but n5's heartbeat is
    # overdue by more than half an interval, and n3 already lost it
    b, t = following("n4", "n5")
    assert b.deadline() > t + 0.08
    effects = b.on_message(msg(ELECTION, "n3", term=1), t + 0.08)
    assert [(e.kind, e.to) for e in sends(effects)] == [(ANSWER, "n3"), (ELECTION, "n5")]
    assert b.role == "candidate"
    # n5 is really dead: after the answer wait n4 wins
    effects = b.on_tick(b.deadline())
    assert of(effects, Promote) and b.role == "leader"


def test_election_from_below_is_only_answered_while_the_leader_heartbeats_on_time():
    # n3 may simply not hear n5 (a one-way cut): its retries must not set off
    # elections all the way up while n5's heartbeats reach us on time
    b, t = following("n4", "n5")
    effects = b.on_message(msg(ELECTION, "n3", term=1), t + 0.03)
    assert [(e.kind, e.to) for e in sends(effects)] == [(ANSWER, "n3")]
    assert b.role == "follower" and b.leader == "n5"


def test_on_a_loaded_host_a_late_heartbeat_alone_does_not_set_off_a_take_over():
    # the leader's heartbeats came with growing gaps, up to 0.6 s (a saturated
    # host; each gap short of the timeout of the moment, so it is learnt): the
    # detector widened, and a heartbeat 80 ms late is routine there
    b = bully5("n4")
    t = 0.5
    b.on_message(msg(COORDINATOR, "n5", term=1), t)
    for k in range(80):
        timeout_s = b.extra_status(t)["leader_timeout_ms"] / 1000
        t += min(0.6, 0.9 * timeout_s) if k % 8 == 7 else 0.05
        b.on_message(msg(HEARTBEAT, "n5", term=1), t)
    timeout_s = b.extra_status(t)["leader_timeout_ms"] / 1000
    assert timeout_s > 0.5
    effects = b.on_message(msg(ELECTION, "n3", term=1), t + 0.08)
    assert [(e.kind, e.to) for e in sends(effects)] == [(ANSWER, "n3")]
    assert b.role == "follower"
    # silent for half its timeout: that is corroborated, it takes over
    effects = b.on_message(msg(ELECTION, "n3", term=1), t + timeout_s / 2 + 0.001)
    assert [(e.kind, e.to) for e in sends(effects)] == [(ANSWER, "n3"), (ELECTION, "n5")]


def test_election_from_below_does_not_depose_a_live_lower_leader_without_preempt():
    b, t = following("n4", "n2", preempt=False)
    effects = b.on_message(msg(ELECTION, "n1", term=1), t + 0.01)
    assert [(e.kind, e.to) for e in sends(effects)] == [(ANSWER, "n1")]
    assert b.role == "follower" and b.leader == "n2"


def test_a_candidate_whose_higher_members_are_all_suspected_wins_at_once():
    b, t = following("n4", "n5")
    effects = b.on_tick(b.deadline())  # n5's heartbeats stopped
    assert not sends(effects, ELECTION)
    assert of(effects, Promote) and b.role == "leader"
    assert b.suspected("n5", b.deadline())


def test_a_candidate_waits_only_for_unsuspected_higher_members():
    b, t = following("n3", "n5")
    effects = b.on_tick(b.deadline())
    assert [(e.kind, e.to) for e in sends(effects)] == [(ELECTION, "n4")]
    assert b.role == "candidate"


def test_a_suspected_member_is_waited_for_again_once_it_speaks_or_its_suspicion_ages_out():
    b, t = following("n3", "n5")
    t = b.deadline()
    b.on_tick(t)
    assert b.suspected("n5", t)
    b.on_message(msg(ANSWER, "n5", term=1), t + 0.01)  # it spoke: alive
    assert not b.suspected("n5", t + 0.01)
    c, t = following("n3", "n5")
    t = c.deadline()
    c.on_tick(t)
    later = t + c.settings.max_suspicion_timeout_s
    assert c.suspected("n5", later - 0.001) and not c.suspected("n5", later)


def test_an_unanswered_election_suspects_nobody():
    # a late ANSWER on a loaded host is not death: the next election asks again
    b = bully5("n3")
    effects = b.on_tick(b.deadline())  # first campaign after the listen period
    assert [e.to for e in sends(effects, ELECTION)] == ["n4", "n5"]
    t = b.deadline()
    effects = b.on_tick(t)
    assert of(effects, Promote)
    assert not b.suspected("n4", t) and not b.suspected("n5", t)


def test_a_higher_node_heard_during_the_listen_period_prevents_any_preemption():
    # start-up: n3 hears n2 lead, then n5 takes over before n3's listen ends
    b = bully5("n3")
    assert not of(b.on_message(msg(HEARTBEAT, "n2", term=1), 0.05), Promote)
    assert not of(b.on_message(msg(COORDINATOR, "n5", term=2), 0.10), Promote)
    t = 0.10
    while t < 1.0:
        t += 0.05
        assert not of(b.on_message(msg(HEARTBEAT, "n5", term=2), t), Promote)
        assert not of(b.on_tick(t), Promote)
    assert b.leader == "n5" and b.role == "follower"
