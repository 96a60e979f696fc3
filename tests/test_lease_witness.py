"""quorum-lease witnesses ([node] role = witness): they vote and acknowledge
heartbeats but never stand, never lead and are never a transfer target.
Driven through the pure core with made-up times."""

from __future__ import annotations

import random

import pytest

from electiond.protocols.base import CommandError, Message, Promote, Send
from electiond.protocols.lease import (
    HEARTBEAT,
    HEARTBEAT_ACK,
    PREVOTE,
    REQUEST_VOTE,
    TIMEOUT_NOW,
    TRANSFER_REQUEST,
    VOTE,
    QuorumLease,
)
from lease_harness import Cluster, settings_for

WITNESS = ("n3",)


def witness(now: float = 0.0, seed: int = 1) -> QuorumLease:
    return QuorumLease(settings_for(3, "n3", witnesses=WITNESS), random.Random(seed), now)


def sends(effects, kind=None) -> list[Send]:
    return [e for e in effects if isinstance(e, Send) and (kind is None or e.kind == kind)]


def test_settings_refuse_a_witness_that_is_not_a_member():
    with pytest.raises(ValueError, match="not a member"):
        settings_for(3, "n1", witnesses=("n9",))


def test_a_witness_with_no_leader_never_stands():
    p = witness()
    now = 0.0
    out = []
    # no leader ever shows up: a voter would pre-vote within a second
    for step in range(2000):
        now = step * 0.01
        out += p.on_tick(now)
    assert not sends(out, PREVOTE) and not sends(out, REQUEST_VOTE) and not sends(out, TRANSFER_REQUEST)
    assert p.deadline() == float("inf")  # nothing to wake up for: no busy ticking
    assert p.phase(now) == "witness"
    assert p.extra_status(now)["eligible"] is False


def test_a_witness_stays_ineligible_when_its_blockers_clear():
    p = witness()
    p.set_eligible(False, 1.0, "fault")
    p.set_eligible(True, 2.0, "recovered")
    out = []
    for step in range(300, 1000):
        out += p.on_tick(step * 0.01)
    assert not sends(out, PREVOTE) and not sends(out, REQUEST_VOTE)


def test_a_witness_votes_and_acknowledges_heartbeats():
    p = witness()
    now = 1.0  # past the start-up quarantine (one follower promise, ~0.16 s)
    effects = p.on_message(Message(REQUEST_VOTE, "n1", 1, {"round": 1}), now)
    votes = sends(effects, VOTE)
    assert votes and votes[0].body["granted"] is True and votes[0].to == "n1"
    effects = p.on_message(Message(HEARTBEAT, "n1", 1, {"round": 2, "priority": 0}), now + 0.05)
    acks = sends(effects, HEARTBEAT_ACK)
    assert acks and acks[0].body["ok"] is True and p.leader == "n1"


def test_a_witness_ignores_timeout_now():
    p = witness()
    p.on_message(Message(HEARTBEAT, "n1", 1, {"round": 1, "priority": 0}), 1.0)
    effects = p.on_message(Message(TIMEOUT_NOW, "n1", 1, {"operator": True}), 1.01)
    assert not sends(effects, REQUEST_VOTE) and not sends(effects, PREVOTE)
    out = []
    for step in range(102, 600):
        out += p.on_tick(step * 0.01)
    assert not sends(out, REQUEST_VOTE) and not [e for e in out if isinstance(e, Promote)]


def test_a_witness_with_top_priority_never_asks_to_preempt():
    s = settings_for(3, "n3", witnesses=WITNESS, priority=255, preempt_delay_s=0.1)
    p = QuorumLease(s, random.Random(2), 0.0)
    out = []
    for k in range(100):
        now = 1.0 + k * 0.05
        out += p.on_message(Message(HEARTBEAT, "n1", 1, {"round": k + 1, "priority": 0}), now)
        out += p.on_tick(now + 0.01)
    assert not sends(out, TRANSFER_REQUEST)


def test_transfer_to_a_witness_is_refused_and_stepdown_skips_it():
    c = Cluster(3, seed=4, witnesses=WITNESS)
    leader = c.elect()
    assert leader != "n3"
    node = c.nodes[leader]
    with pytest.raises(CommandError, match="witness"):
        node.transfer("n3", c.local(leader))
    c.run(0.2)
    other = "n2" if leader == "n1" else "n1"
    c.apply(leader, node.stepdown(c.local(leader)))
    assert c.run_until(lambda: c.leader() == other, 5.0)
    assert c.nodes["n3"].role != "leader"


def test_transfer_with_only_the_witness_alive_finds_no_target():
    c = Cluster(3, seed=5, witnesses=WITNESS)
    leader = c.elect()
    other = "n2" if leader == "n1" else "n1"
    c.crash(other)
    c.run(0.5)
    assert c.leader() == leader  # the witness keeps it at 2 of 3
    with pytest.raises(CommandError, match="no live member"):
        c.nodes[leader].transfer(None, c.local(leader))


@pytest.mark.parametrize("seed", range(8))
def test_two_voters_and_a_witness_fail_over_safely(seed):
    """Crash either voter: the other leads. Crash the witness: the leader
    stays. Isolate the leader: the other voter takes over, never overlapping
    (the harness raises on two leaders or a lease without quorum cover)."""
    c = Cluster(3, seed=seed, witnesses=WITNESS, drift_ppm={"n1": 1000.0, "n2": -1000.0}, loss=0.02)
    first = c.elect()
    assert first in ("n1", "n2")
    other = "n2" if first == "n1" else "n1"
    c.crash("n3")
    c.run(2.0)
    assert c.leader() == first
    c.restart("n3")
    c.run(0.5)
    c.partition([first], [other, "n3"])
    assert c.run_until(lambda: c.leader() == other, 5.0)
    c.heal()
    c.run(0.5)
    c.crash(other)
    assert c.run_until(lambda: c.leader() == first, 5.0)
    assert "n3" not in c.promotions.values()
