import random

from electiond.node import PRESENCE, Node
from electiond.protocols.base import Demote, Member, Message, Send, Settings

MEMBERS = tuple(Member(f"n{i}", i) for i in range(1, 4))


def node(name="n1", now=0.0):
    return Node(Settings(cluster="c", node_name=name, members=MEMBERS), "bully", random.Random(1), now)


def test_presence_beacon_marks_members_alive():
    n = node()
    assert any(isinstance(e, Send) and e.kind == PRESENCE for e in n.on_tick(0.0))
    assert n.deadline() <= n.membership.presence_interval_s()
    n.on_message(Message(PRESENCE, "n2", 0), 1.0)
    members = {m["name"]: m for m in n.status(1.2)["members"]}
    assert members["n2"]["alive"] and members["n2"]["last_seen_ms"] == 200.0
    assert not members["n3"]["alive"] and members["n3"]["last_seen_ms"] is None
    later = 1.0 + n.membership.liveness_window_s() + 0.1
    assert not {m["name"]: m for m in n.status(later)["members"]}["n2"]["alive"]


def test_flapping_counts_leader_changes_in_the_last_hour():
    n = node()
    n.on_tick(10.0)
    n.on_message(Message("COORDINATOR", "n3", 10), 10.01)
    for k in range(1, 3):
        # the leader is silent: suspected when the shell wakes the node at the
        # detector's deadline (a wake-up long after it would be a local pause)
        t = n.protocol.deadline()
        n.on_tick(t)
        assert n.protocol.leader is None
        n.on_message(Message("COORDINATOR", "n3", 10 + k), t + 0.01)
    assert n.status(30.0)["leader_changes_last_hour"] == 3
    assert n.flapping(30.0) and n.status(30.0)["flapping"]
    assert not n.flapping(30.0 + 3601)


def test_history_records_promotions():
    n = node("n3")
    t = n.protocol.deadline()
    n.on_tick(t)
    assert [h.event for h in n.history][:2] == ["promote", "leader"]


def test_status_shows_each_members_suspicion_from_presence_beacons():
    n = node()
    t = 0.0
    for _ in range(12):
        n.on_message(Message(PRESENCE, "n2", 0), t)
        t += n.membership.presence_interval_s()
    members = {m["name"]: m for m in n.status(t)["members"]}
    watch = members["n2"]["suspicion"]
    assert watch["mode"] == "adaptive" and watch["samples"] >= 8
    assert watch["phi"] >= 0 and watch["timeout_ms"] > 0
    assert members["n3"]["suspicion"] is None  # never heard from


def test_a_member_heard_on_time_is_not_suspected_before_the_detector_has_samples():
    n = node()
    period = n.membership.presence_interval_s()
    n.on_message(Message(PRESENCE, "n2", 0), 0.0)
    n.on_message(Message(PRESENCE, "n2", 0), period)
    watch = {m["name"]: m for m in n.status(period * 1.9)["members"]}["n2"]["suspicion"]
    assert watch["mode"] == "fallback"
    assert watch["phi"] < watch["threshold"]  # calibrated to the beacon, not the 50 ms heartbeat


def test_blockers_combine_one_eligibility_for_the_protocol():
    # n3 is the top id: with no leader it elects itself at once in bully
    n = Node(Settings(cluster="c", node_name="n3", members=MEMBERS), "bully", random.Random(1), 0.0)
    n.on_tick(n.protocol.deadline())
    assert n.is_leader(1.0)
    effects = n.set_blocker("clock", True, 1.0, "clock runs 2x fast")
    assert any(isinstance(e, Demote) and e.reason == "clock" for e in effects)
    assert n.status(1.0)["blocked_by"] == {"clock": "clock runs 2x fast"}
    # a second blocker, then clearing the first: still ineligible, the protocol hears nothing
    assert n.set_eligible(False, 1.1, "check failed") == []
    assert n.set_blocker("clock", False, 1.2) == []
    assert not n.protocol._eligible
    assert n.status(1.2)["blocked_by"] == {"fault": "check failed"}
    # the last one cleared: eligible again
    n.set_eligible(True, 1.3, "recovered")
    assert n.protocol._eligible and n.blockers == {}


# ---- another process under our name -------------------------------------------

from electiond.node import DUPLICATE_NAME, DUPLICATE_QUIET_PRESENCES  # noqa: E402


def lease_node(name="n1", now=0.0):
    # these drive elections by hand, without beacons: no start-up clock check
    return Node(Settings(cluster="c", node_name=name, members=MEMBERS, clock_check_s=0.0), "quorum-lease",
                random.Random(1), now)


def test_own_name_from_another_process_blocks_and_clears_after_quiet_presences():
    n = Node(Settings(cluster="c", node_name="n3", members=MEMBERS), "bully", random.Random(1), 0.0)
    n.on_tick(n.protocol.deadline())
    assert n.is_leader(1.0)
    effects = n.heard_own_name(1.0, "another process uses our name n3 from 10.0.0.9:4000")
    assert any(isinstance(e, Demote) and e.reason == DUPLICATE_NAME for e in effects)
    assert n.status(1.0)["blocked_by"] == {DUPLICATE_NAME: "another process uses our name n3 from 10.0.0.9:4000"}
    assert {m["name"]: m for m in n.status(1.0)["members"]}["n3"]["duplicate"]
    quiet_s = DUPLICATE_QUIET_PRESENCES * n.membership.presence_interval_s()
    # the copy keeps beaconing: each datagram renews the fault, nothing new is emitted
    assert n.heard_own_name(1.0 + quiet_s / 2, "again") == []
    n.on_tick(1.0 + quiet_s)  # only quiet_s/2 since the last one
    assert DUPLICATE_NAME in n.blockers
    clears = 1.0 + quiet_s / 2 + quiet_s
    assert n.deadline() <= clears
    n.on_tick(clears - 0.01)
    assert DUPLICATE_NAME in n.blockers
    n.on_tick(clears)
    assert n.blockers == {} and n.protocol._eligible
    assert [h.event for h in n.history][-1] == "duplicate_name_cleared"
    assert DUPLICATE_NAME in [h.event for h in n.history]
    assert not {m["name"]: m for m in n.status(clears)["members"]}["n3"]["duplicate"]


def test_duplicate_name_and_health_fault_are_independent():
    n = node()
    n.heard_own_name(1.0, "copy")
    n.set_eligible(False, 1.1, "check failed")
    n.on_tick(100.0)  # the copy went quiet long ago
    assert n.blockers == {"fault": "check failed"} and not n.protocol._eligible


def test_quorum_lease_grants_nothing_while_our_name_is_ambiguous():
    n = lease_node("n1")
    t = n.protocol.quarantine_until + 0.01  # past the start-up quarantine: it would vote now
    n.heard_own_name(t, "copy")
    for kind, body in (("PREVOTE", {"round": 1, "priority": 100}), ("REQUEST_VOTE", {"round": 1, "priority": 100}),
                       ("LEASE_HEARTBEAT", {"round": 1, "priority": 100})):
        assert n.on_message(Message(kind, "n2", 5, body), t) == []
    assert n.protocol.promise == (None, float("-inf")) and n.protocol.term == 0
    # presence still counts: the member table stays truthful
    n.on_message(Message(PRESENCE, "n2", 0), t)
    assert {m["name"]: m for m in n.status(t)["members"]}["n2"]["alive"]
    # once the copy is quiet the node takes part again
    later = t + DUPLICATE_QUIET_PRESENCES * n.membership.presence_interval_s()
    n.on_tick(later)
    replies = n.on_message(Message("REQUEST_VOTE", "n2", 5, {"round": 1, "priority": 100}), later)
    assert any(isinstance(e, Send) and e.kind == "VOTE" and e.body["granted"] for e in replies)


def test_a_quorum_lease_leader_hearing_its_name_steps_down():
    n = lease_node("n3")
    t = n.protocol.quarantine_until
    effects = []
    for _ in range(40):  # let it stand: pre-vote, candidacy, win with two grants
        t = max(t, n.deadline())
        for e in n.on_tick(t):
            effects.append(e)
            if isinstance(e, Send) and e.kind in ("PREVOTE", "REQUEST_VOTE"):
                reply = "PREVOTE_REPLY" if e.kind == "PREVOTE" else "VOTE"
                for peer in ("n1", "n2"):
                    effects += n.on_message(Message(reply, peer, e.term, {"round": e.body["round"], "granted": True,
                                                                         "retry_ms": 0}), t)
        if n.is_leader(t):
            break
    assert n.is_leader(t)
    out = n.heard_own_name(t, "copy")
    assert not n.is_leader(t) and any(isinstance(e, Demote) and e.reason == DUPLICATE_NAME for e in out)


def test_member_heard_from_two_processes_shows_in_the_table_for_a_while():
    n = node()
    n.saw_duplicate_peer("n2", 1.0)
    assert n.duplicate_peer("n2", 1.0)
    members = {m["name"]: m for m in n.status(1.0)["members"]}
    assert members["n2"]["duplicate"] and not members["n3"]["duplicate"] and not members["n1"]["duplicate"]
    assert not n.duplicate_peer("n2", 1.0 + n.membership.liveness_window_s() + 0.01)
    n.saw_duplicate_peer("mallory", 1.0)  # not a member: ignored
    assert n.blockers == {}
