"""Bully: after a split brain heals, the surviving leader's epoch (fencing
token) must exceed every epoch issued during the split (found by the
simulator's isolated-leader scenario)."""

import random

from electiond.protocols.base import (
    ROLE_FOLLOWER, ROLE_LEADER, Member, Message, Persist, PersistedState, Promote, Send, Settings, TokenRaised,
)
from electiond.protocols.bully import ANSWER, COORDINATOR, HEARTBEAT, Bully

MEMBERS = (Member("n1", 1), Member("n2", 2), Member("n3", 3))


def _leader(name: str, epoch: int) -> Bully:
    b = Bully(Settings("t", name, MEMBERS), random.Random(1), 0.0)
    b._epoch = epoch - 1
    b._become_leader(0.0, "elected")
    assert b.role == ROLE_LEADER and b.term == epoch
    return b


def test_lower_leader_yielding_to_a_stale_higher_leader_tells_it_its_epoch():
    n2 = _leader("n2", 2)
    effects = n2.on_message(Message(HEARTBEAT, "n3", 1), 1.0)
    assert n2.role == ROLE_FOLLOWER and n2.leader == "n3"
    assert Send(COORDINATOR, 2, to="n3") in effects


def test_stale_higher_leader_reasserts_above_the_yielders_epoch():
    n3 = _leader("n3", 1)
    effects = n3.on_message(Message(COORDINATOR, "n2", 2, recipient="n3"), 1.0)
    assert n3.role == ROLE_LEADER and n3.term == 3
    assert Send(COORDINATOR, 3) in effects


def test_no_extra_message_when_the_winner_is_already_newer():
    n2 = _leader("n2", 2)
    effects = n2.on_message(Message(HEARTBEAT, "n3", 5), 1.0)
    assert n2.role == ROLE_FOLLOWER
    assert not [e for e in effects if isinstance(e, Send)]


def _follower(name: str, epoch: int, leader: str) -> Bully:
    b = Bully(Settings("t", name, MEMBERS), random.Random(1), 0.0)
    b.on_message(Message(COORDINATOR, leader, epoch), 0.0)
    assert b.leader == leader and b.term == epoch
    return b


def test_follower_tells_a_new_leader_that_its_epoch_was_already_used():
    # found by the simulator (bully campaign, seed 143): a node restarted with
    # an old epoch from its disk and, hearing no leader, crowned itself with a
    # token another leader had already used; the followers knew and said nothing
    n1 = _follower("n1", 2, "n2")
    effects = n1.on_message(Message(COORDINATOR, "n3", 2), 5.0)
    assert n1.leader == "n3"
    assert Send(ANSWER, 2, to="n3") in effects


def test_follower_says_nothing_to_the_leader_of_its_epoch():
    n1 = _follower("n1", 2, "n3")  # n3 announced epoch 2 itself
    assert not [e for e in n1.on_message(Message(COORDINATOR, "n3", 2), 1.0) if isinstance(e, Send)]
    assert not [e for e in n1.on_message(Message(HEARTBEAT, "n3", 2), 1.1) if isinstance(e, Send)]
    assert not [e for e in n1.on_message(Message(COORDINATOR, "n3", 3), 1.2) if isinstance(e, Send)]


def test_leader_told_its_epoch_is_used_reasserts_with_a_new_token():
    n2 = _leader("n2", 2)
    effects = n2.on_message(Message(ANSWER, "n1", 2, recipient="n2"), 1.0)
    assert n2.role == ROLE_LEADER and n2.term == 3
    assert TokenRaised(3, "token_reused") in effects and Send(COORDINATOR, 3) in effects
    assert not [e for e in effects if isinstance(e, Promote)]  # still the same leader: no hooks
    # persisted before the announcement leaves
    kinds = [type(e).__name__ for e in effects]
    assert kinds.index("Persist") < kinds.index("Send")
    # an old ANSWER (to an election it ran before leading) changes nothing
    assert n2.on_message(Message(ANSWER, "n1", 1, recipient="n2"), 1.1) == []


def test_candidate_only_waits_for_answers_from_above():
    b = Bully(Settings("t", "n2", MEMBERS), random.Random(1), 0.0)
    b.on_tick(b.deadline())
    assert b.role == "candidate"
    b.on_message(Message(ANSWER, "n1", 0, recipient="n2"), b.deadline() - 0.01)
    assert b._phase == "electing"


def test_higher_leader_with_a_newer_token_only_reminds_a_lower_claimant():
    n3 = _leader("n3", 4)
    effects = n3.on_message(Message(HEARTBEAT, "n2", 3), 1.0)
    assert n3.term == 4
    assert Send(COORDINATOR, 4) in effects
    assert not [e for e in effects if isinstance(e, Promote)]


def test_a_restarted_follower_remembers_whose_epoch_it_saw():
    n1 = _follower("n1", 2, "n2")
    disk = PersistedState(n1.term, "n2")
    again = Bully(Settings("t", "n1", MEMBERS), random.Random(2), 10.0, disk)
    effects = again.on_message(Message(COORDINATOR, "n3", 2), 10.5)
    assert Send(ANSWER, 2, to="n3") in effects


def test_the_epoch_leader_is_persisted_when_learned():
    b = Bully(Settings("t", "n1", MEMBERS), random.Random(1), 0.0)
    effects = b.on_message(Message(COORDINATOR, "n3", 5), 0.1)
    persisted = [e.state for e in effects if isinstance(e, Persist)]
    assert persisted[-1] == PersistedState(5, "n3")
