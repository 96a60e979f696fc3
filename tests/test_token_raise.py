"""A sitting leader's fencing token (issue #12): raised once per new rival
token, never per message, and never with a second Promote. Bully and ring
share the rule (protocols/epoch.py); driven here with made-up times."""

import random

from electiond.node import Node
from electiond.protocols.base import (
    ROLE_FOLLOWER, ROLE_LEADER, LeaderChanged, Member, Message, Persist, Promote, Send, Settings, SplitBrain,
    TokenRaised,
)
from electiond.protocols.bully import COORDINATOR, HEARTBEAT, Bully
from electiond.protocols.ring import ELECTION, Ring

MEMBERS3 = tuple(Member(f"n{i}", i) for i in range(1, 4))
MEMBERS5 = tuple(Member(f"n{i}", i) for i in range(1, 6))
HB_S = 0.05


def of(effects, cls):
    return [e for e in effects if isinstance(e, cls)]


def sends(effects, kind=None):
    return [e for e in effects if isinstance(e, Send) and (kind is None or e.kind == kind)]


def bully_leader(name="n3") -> Bully:
    b = Bully(Settings("c", name, MEMBERS3), random.Random(1), 0.0)
    b.on_tick(b.deadline())  # the highest id crowns itself at once
    assert b.role == ROLE_LEADER and b.term == 1
    return b


def ring_leader(name="n5") -> Ring:
    r = Ring(Settings("c", name, MEMBERS5, answer_timeout_s=0.125), random.Random(7), 0.0)
    r.on_message(Message(COORDINATOR, "n1", 1, {"leader": name, "origin": "n1", "ids": [1, 5], "hop": None}), 0.1)
    assert r.role == ROLE_LEADER and r.term == 1
    return r


def claim(sender: str, term: int) -> Message:
    return Message(HEARTBEAT, sender, term, {}, None)


# ---- the rule, on both protocols ------------------------------------------------------


def _first_claim_at_our_epoch_raises_once_then_echoes_do_not(leader, rival: str) -> None:
    effects = leader.on_message(claim(rival, 1), 5.0)
    # it may have handed out token 1 too: fence above it, without a second Promote
    assert of(effects, TokenRaised) == [TokenRaised(2, "split_brain")]
    assert of(effects, Promote) == [] and of(effects, LeaderChanged) == []
    assert of(effects, SplitBrain) == [SplitBrain(rival, 2, yielded=False)]
    persisted = [i for i, e in enumerate(effects) if isinstance(e, Persist)]
    announced = [i for i, e in enumerate(effects) if isinstance(e, Send) and e.kind == COORDINATOR]
    assert persisted and announced and persisted[0] < announced[0] and effects[persisted[0]].state.term == 2
    # the rival cannot hear us: it goes on claiming, first with its own token, then
    # with ours once it learns it second-hand. Ten seconds of heartbeats cost nothing
    t = 5.0
    for i in range(200):
        t += HB_S
        assert leader.on_message(claim(rival, 1 if i < 100 else 2), t) == []
    assert leader.role == ROLE_LEADER and leader.term == 2


def test_bully_raises_once_per_rival_token_not_per_heartbeat():
    _first_claim_at_our_epoch_raises_once_then_echoes_do_not(bully_leader("n3"), "n2")


def test_ring_raises_once_per_rival_token_not_per_heartbeat():
    _first_claim_at_our_epoch_raises_once_then_echoes_do_not(ring_leader("n5"), "n4")


def _a_rival_token_above_our_raise_raises_again(leader, rival: str) -> None:
    leader.on_message(claim(rival, 1), 5.0)
    assert leader.term == 2
    # the rival took a newer token of its own (it was re-elected on its side): fence above it
    effects = leader.on_message(claim(rival, 3), 5.05)
    assert of(effects, TokenRaised) == [TokenRaised(4, "split_brain")]
    assert of(effects, SplitBrain) == []  # the same episode: reported once
    assert leader.on_message(claim(rival, 4), 5.1) == []  # and our new token relayed back


def test_bully_a_newer_rival_token_raises_again():
    _a_rival_token_above_our_raise_raises_again(bully_leader("n3"), "n2")


def test_ring_a_newer_rival_token_raises_again():
    _a_rival_token_above_our_raise_raises_again(ring_leader("n5"), "n4")


def _an_older_rival_token_is_reminded_not_raised(leader, rival: str) -> None:
    leader.on_message(claim("n1", 1), 4.0)  # an earlier rival: we raised to 2
    effects = leader.on_message(claim(rival, 1), 5.0)
    assert of(effects, TokenRaised) == [] and leader.term == 2
    assert of(effects, SplitBrain) == [SplitBrain(rival, 2, yielded=False)]
    assert [e.term for e in sends(effects, COORDINATOR)] == [2]


def test_bully_an_older_rival_token_is_only_reminded():
    _an_older_rival_token_is_reminded_not_raised(bully_leader("n3"), "n2")


def test_ring_an_older_rival_token_is_only_reminded():
    _an_older_rival_token_is_reminded_not_raised(ring_leader("n5"), "n4")


def _a_rival_back_after_a_quiet_spell_is_a_new_episode(leader, rival: str) -> None:
    leader.on_message(claim(rival, 1), 5.0)
    quiet_s = leader.settings.max_suspicion_timeout_s
    assert leader.on_message(claim(rival, 2), 5.0 + quiet_s / 2) == []
    effects = leader.on_message(claim(rival, 2), 5.0 + quiet_s / 2 + quiet_s + 0.01)
    # reported and reminded again, but our token is already above its: no raise
    assert of(effects, SplitBrain) == [SplitBrain(rival, 2, yielded=False)]
    assert sends(effects, COORDINATOR) and of(effects, TokenRaised) == [] and leader.term == 2


def test_bully_a_rival_back_after_a_quiet_spell_is_reported_again():
    _a_rival_back_after_a_quiet_spell_is_a_new_episode(bully_leader("n3"), "n2")


def test_ring_a_rival_back_after_a_quiet_spell_is_reported_again():
    _a_rival_back_after_a_quiet_spell_is_a_new_episode(ring_leader("n5"), "n4")


def test_bully_a_new_term_of_office_starts_the_bookkeeping_afresh():
    b = bully_leader("n3")
    b.on_message(claim("n2", 1), 5.0)
    b.stepdown(6.0)
    t = b.deadline()
    b.on_tick(t)
    assert b.role == ROLE_LEADER and b.term == 3
    # a real change of leader happened (and its Promote ran the hooks); the first claim
    # at the new token may be a reused one again: one raise per change of leader
    effects = b.on_message(claim("n2", 3), t + 1.0)
    assert of(effects, TokenRaised) == [TokenRaised(4, "split_brain")]


def test_node_records_a_raise_in_the_history_but_not_as_a_leader_change():
    node = Node(Settings("c", "n3", MEMBERS3), "bully", random.Random(1), 0.0)
    node.on_tick(node.protocol.deadline())
    assert node.is_leader(1.0)
    changes = len(node.leader_changes)
    node.on_message(claim("n2", 1), 5.0)
    assert len(node.leader_changes) == changes
    raised = [h for h in node.history if h.event == "token_raised"]
    assert len(raised) == 1 and raised[0].term == 2 and raised[0].detail == {"reason": "split_brain"}


# ---- ring: a follower that hears its leader but cannot reach it -------------------


def _ring_follower(name: str, leader: str, ids: list[int]) -> Ring:
    r = Ring(Settings("c", name, MEMBERS5, answer_timeout_s=0.125), random.Random(7), 0.0)
    r.on_message(Message(COORDINATOR, "n1", 1, {"leader": leader, "origin": "n1", "ids": ids, "hop": None}), 0.1)
    assert r.role == ROLE_FOLLOWER and r.leader == leader
    return r


def _run(r: Ring, leader: str, start_s: float, end_s: float, heartbeats: bool) -> list:
    """Tick every 10 ms; with ``heartbeats``, the leader's arrive every 50 ms."""
    effects = []
    t = start_s
    next_hb = start_s
    while t < end_s:
        if heartbeats and t >= next_hb:
            effects += r.on_message(Message(HEARTBEAT, leader, 1, {}, None), t)
            next_hb += HB_S
        effects += r.on_tick(t)
        t += 0.01
    return effects


def _election_from(initiator: str, path: list[int], sender: str) -> Message:
    body = {"initiator": initiator, "nonce": 9, "ids": list(path), "path": list(path), "hop": 1}
    return Message(ELECTION, sender, 1, body, None)


def test_ring_does_not_skip_a_leader_it_still_hears():
    n3 = _ring_follower("n3", "n4", [1, 2, 3, 4])
    # n2 lost n4 (the link n4 -> n2 is down); its election reaches n3, whose hop to n4 is lost
    effects = n3.on_message(_election_from("n2", [2], "n2"), 1.0)
    assert [e.to for e in sends(effects, ELECTION)] == ["n4"]
    effects = _run(n3, "n4", 1.0, 2.0, heartbeats=True)
    # no skip past the leader, no new winner: a reminder of who leads
    assert not [e for e in sends(effects, ELECTION) if e.to != "n4"]
    assert [e.body["leader"] for e in sends(effects, COORDINATOR)] == ["n4"]
    assert "n4" not in n3.extra_status(2.0)["suspects"] and n3.leader == "n4"


def test_ring_skips_a_leader_whose_heartbeats_stopped():
    n3 = _ring_follower("n3", "n4", [1, 2, 3, 4])
    n3.on_message(Message(HEARTBEAT, "n4", 1, {}, None), 0.95)
    n3.on_message(_election_from("n2", [2], "n2"), 1.0)
    effects = _run(n3, "n4", 1.0, 2.0, heartbeats=False)
    assert "n5" in [e.to for e in sends(effects, ELECTION)]  # ring repair, as before


def test_ring_does_not_crown_a_lower_winner_over_a_live_leader_for_a_dead_initiator():
    # n3 lost n4 and skipped it; its election came round n1 to n2, whose hop back
    # to n3 is lost: n2 finishes it for n3, but it still hears n4 lead
    n2 = _ring_follower("n2", "n4", [1, 2, 3, 4])
    effects = n2.on_message(_election_from("n3", [3, 1], "n1"), 1.0)
    assert [e.to for e in sends(effects, ELECTION)] == ["n3"]
    effects = _run(n2, "n4", 1.0, 2.0, heartbeats=True)
    assert of(effects, Promote) == [] and n2.role == ROLE_FOLLOWER and n2.leader == "n4"
    assert [e.body["leader"] for e in sends(effects, COORDINATOR)] == ["n4"] and n2.term == 1


def test_ring_with_preempt_a_higher_winner_still_takes_over_from_a_live_leader():
    # n5 rejoins with preempt on; the leader n4 cannot ack, but n5 outranks it
    n3 = _ring_follower("n3", "n4", [1, 2, 3, 4])
    n3.on_message(_election_from("n5", [5, 1, 2], "n2"), 1.0)
    effects = _run(n3, "n4", 1.0, 2.0, heartbeats=True)
    assert {e.to for e in sends(effects, ELECTION) if e.to != "n4"} == {"n5"}  # skipped n4, on to n5


# ---- what status shows as the token held --------------------------------------------


def test_status_shows_the_token_held_which_a_learnt_epoch_does_not_move():
    b = bully_leader("n3")
    assert b.extra_status(1.0)["fencing_token"] == 1
    b.on_message(claim("n2", 1), 5.0)
    assert b.extra_status(5.0)["fencing_token"] == 2 == b.term
    # a follower's election message carries a newer epoch: taken up, but not a token we hold
    b.on_message(Message("ELECTION", "n1", 7, {}, None), 5.1)
    assert b.term == 7 and b.extra_status(5.1)["fencing_token"] == 2
    b.stepdown(6.0)
    assert b.extra_status(6.0)["fencing_token"] is None


def test_ring_status_shows_the_token_held():
    r = ring_leader("n5")
    r.on_message(claim("n4", 1), 5.0)
    node_status = r.extra_status(5.0)
    assert node_status["fencing_token"] == 2 == r.term


def test_ring_a_sitting_leader_finishing_a_dead_initiators_election_does_not_re_crown_itself():
    # n3 leads; n4 (higher, preempt on) cannot hear it and runs an election, which n3
    # forwards back towards n4, but that hop is lost: n3 finds n4 dead and finishes the
    # election for it, which n3 itself wins. Nothing changed: no Promote, no new epoch
    r = Ring(Settings("c", "n3", MEMBERS5, answer_timeout_s=0.125), random.Random(7), 0.0)
    r.on_message(Message(COORDINATOR, "n1", 1, {"leader": "n3", "origin": "n1", "ids": [1, 3], "hop": None}), 0.1)
    assert r.role == ROLE_LEADER
    effects = r.on_message(_election_from("n4", [4, 1, 2], "n2"), 1.0)
    assert [e.to for e in sends(effects, ELECTION)] == ["n4"]
    t = 1.0
    effects = []
    while t < 2.0:
        effects += r.on_tick(t)
        t += 0.01
    assert of(effects, Promote) == [] and of(effects, TokenRaised) == []
    assert r.role == ROLE_LEADER and r.term == 1
    assert [e.body["leader"] for e in sends(effects, COORDINATOR) if e.body.get("ids") == []] == ["n3"]
