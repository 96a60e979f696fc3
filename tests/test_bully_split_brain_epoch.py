"""Bully: after a split brain heals, the surviving leader's epoch (fencing
token) must exceed every epoch issued during the split (found by the
simulator's isolated-leader scenario)."""

import random

from electiond.protocols.base import ROLE_FOLLOWER, ROLE_LEADER, Member, Message, Send, Settings
from electiond.protocols.bully import COORDINATOR, HEARTBEAT, Bully

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
