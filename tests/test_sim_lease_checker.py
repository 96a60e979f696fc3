"""The simulator checker's quorum-lease rules, driven with stand-in protocols."""

from __future__ import annotations

import random

from electiond.protocols.base import ROLE_FOLLOWER, ROLE_LEADER, Member, Settings
from electiond.protocols.lease import QuorumLease
from electiond.sim.checker import BULLY_INVARIANTS, LEASE_INVARIANTS, Checker

NAMES = ["n1", "n2", "n3"]
SETTINGS = Settings(cluster="c", node_name="n1", members=tuple(Member(n, i) for i, n in enumerate(NAMES, 1)))


class Stub(QuorumLease):
    """A quorum-lease node whose views (what the checker reads) the test sets.

    The checker judges QuorumLease instances only, so the stand-in is one,
    with the views shadowed by plain attributes."""

    promise = (None, float("-inf"))
    quarantine_until = float("-inf")
    lease_until = float("-inf")
    role = ROLE_FOLLOWER

    def __init__(self, promise=(None, float("-inf")), quarantine_until=float("-inf"), lease_until=float("-inf"),
                 role=ROLE_FOLLOWER):
        super().__init__(SETTINGS, random.Random(0), 0.0)
        self.promise = promise
        self.quarantine_until = quarantine_until
        self.lease_until = lease_until
        self.role = role

    def is_leader(self, now: float) -> bool:
        return self.role == ROLE_LEADER and now < self.lease_until - self.settings.lease_guard_s


def make(nodes: dict, invariants=LEASE_INVARIANTS, offsets=None):
    offsets = offsets or {}
    return Checker(
        invariants, SETTINGS, NAMES,
        local_now=lambda i, t: t + offsets.get(i, 0.0),
        running=lambda i: nodes.get(i) is not None,
        protocol_of=lambda i: nodes.get(i),
        true_time_of=lambda i, local: local - offsets.get(i, 0.0),
    )


def leader_with(promises: dict[int, tuple], lease_until=10.0):
    nodes = {0: Stub(promise=("n1", 10.1), lease_until=lease_until, role=ROLE_LEADER)}
    for i, p in promises.items():
        nodes[i] = Stub(promise=p)
    return nodes


def test_a_lease_backed_by_a_majority_of_promises_passes():
    nodes = leader_with({1: ("n1", 10.2), 2: ("n3", 99.0)})
    c = make(nodes)
    c.after_event(9.0, 0)
    c.check_coverage(9.0, 0)
    assert c.violations == []


def test_a_lease_outliving_the_promises_is_reported_at_once():
    nodes = leader_with({1: ("n1", 9.9), 2: ("n3", 99.0)})  # n2's promise ends before the lease
    c = make(nodes)
    c.after_event(9.0, 0)
    c.check_coverage(9.0, 0)
    assert [v.rule for v in c.violations] == ["lease-uncovered"]


def test_a_voter_switching_its_promise_is_seen_at_its_own_event():
    nodes = leader_with({1: ("n1", 10.2), 2: (None, float("-inf"))})
    c = make(nodes)
    c.after_event(9.0, 0)
    c.check_coverage(9.0, 0)
    assert c.violations == []
    nodes[1].promise = ("n3", 10.2)  # n2 voted for n3 while promised to n1
    c.check_coverage(9.1, 1)
    assert [v.rule for v in c.violations] == ["lease-uncovered"]


def test_quarantine_and_crashed_nodes_count_as_bound_and_clocks_are_converted():
    # n2 is down, n3 is quarantined; n3's clock runs 5 s ahead
    nodes = leader_with({2: (None, float("-inf"))})
    nodes[2].quarantine_until = 15.05  # 10.05 in true time
    nodes[1] = None
    c = make(nodes, offsets={2: 5.0})
    c.after_event(9.0, 0)
    c.check_coverage(9.0, 0)
    assert c.violations == []
    nodes[2].quarantine_until = 14.9  # 9.9 true: ends before the lease
    nodes[1] = Stub()  # n2 restarted with nothing promised
    c.check_coverage(9.2, 2)
    c.check_coverage(9.2, 1)
    assert [v.rule for v in c.violations] == ["lease-uncovered"]


def test_a_restart_must_keep_what_was_promised_before_the_crash():
    nodes = leader_with({1: ("n1", 10.2), 2: ("n1", 10.2)})
    c = make(nodes)
    c.crashing(9.0, 1)
    nodes[1] = Stub(quarantine_until=10.3)  # quarantined past the old promise: fine
    c.booted(9.0, 1)
    assert c.violations == []
    c.crashing(9.1, 2)
    nodes[2] = Stub(quarantine_until=9.1)  # free to vote at once: the promise is forgotten
    c.booted(9.1, 2)
    assert [v.rule for v in c.violations] == ["promise-forgotten"]


def test_protocols_without_lease_views_are_not_judged_by_coverage():
    class NoViews:
        role = ROLE_LEADER

        def is_leader(self, now):
            return True

    nodes = {0: NoViews(), 1: NoViews(), 2: NoViews()}
    c = make(nodes)
    c.role_leaders = [0]
    c.check_coverage(1.0, 0)
    c.crashing(1.0, 1)
    assert c.violations == []
    assert BULLY_INVARIANTS.lease_coverage is False and LEASE_INVARIANTS.lease_coverage is True
