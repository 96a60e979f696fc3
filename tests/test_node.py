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
