"""PRESENCE beacons scale with the cluster (issue 16): no member hears more
than PRESENCE_HEARD_PER_S beacons a second, so beacon work per member stays
flat and the cluster's total grows with n, not n^2. Made-up times throughout."""

import random

from electiond.node import PRESENCE, PRESENCE_HEARD_PER_S, Node, presence_interval_s
from electiond.protocols.base import Member, Message, Send, Settings


def settings(n: int, heartbeat_s: float = 0.1, name: str = "n1") -> Settings:
    return Settings(cluster="c", node_name=name, members=tuple(Member(f"n{i}", i) for i in range(1, n + 1)),
                    heartbeat_interval_s=heartbeat_s)


def beacon_times(node: Node, until_s: float) -> list[float]:
    """When the node sends PRESENCE, woken at each of its deadlines."""
    sent, t = [], 0.0
    while t < until_s:
        if any(isinstance(e, Send) and e.kind == PRESENCE for e in node.on_tick(t)):
            sent.append(t)
        t = max(t + 1e-3, node.deadline())
    return sent


def test_small_clusters_keep_ten_heartbeats_or_half_a_second():
    assert presence_interval_s(settings(5, 0.1)) == 1.0
    assert presence_interval_s(settings(33, 0.1)) == 1.0
    assert presence_interval_s(settings(9, 0.02)) == 0.5


def test_a_large_cluster_beacons_less_often_so_each_member_hears_a_bounded_rate():
    for n in (34, 65, 129):
        period_s = presence_interval_s(settings(n, 0.1))
        assert period_s > 1.0
        assert (n - 1) / period_s <= PRESENCE_HEARD_PER_S + 1e-9
    assert presence_interval_s(settings(65, 0.1)) == 2.0


def test_a_65_member_node_sends_its_beacon_every_two_seconds():
    node = Node(settings(65), "bully", random.Random(1), 0.0)
    sent = beacon_times(node, 20.0)
    gaps = [b - a for a, b in zip(sent, sent[1:])]
    assert len(sent) >= 9 and all(abs(g - 2.0) < 0.05 for g in gaps), gaps


def test_liveness_window_follows_the_longer_period():
    node = Node(settings(65), "quorum-lease", random.Random(1), 0.0)
    node.on_message(Message(PRESENCE, "n2", 0, {"clock_ms": 0}), 0.0)
    # three periods of 2 s: a peer heard 5 s ago (two beacons missed at most) is alive
    assert node.membership.alive("n2", 5.0)
    assert not node.membership.alive("n2", 6.1)
