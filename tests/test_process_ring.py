"""Real electiond processes on loopback multicast, ring protocol."""

import time

import pytest

from cluster import Cluster


@pytest.mark.parametrize("preempt", ["no", "yes"])
def test_leader_and_its_successor_killed_together(tmp_path, preempt):
    with Cluster(tmp_path, 5, protocol="ring", node_options={"preempt": preempt}) as c:
        c.start_all()
        if preempt == "yes":
            # n5 takes over once it is up, so its successor is n1: the kill wraps the ring
            c.wait_for(lambda: c.agreed_leader() == "n5", 5.0, "n5 to lead")
        # daemons start one after another, so without preempt an early one may keep leading
        leader = c.wait_leader(5.0)
        successor = c.status(leader)["successor"]
        ring_order = c.names[c.names.index(leader) + 1 :] + c.names[: c.names.index(leader)]
        assert successor == ring_order[0]
        c.kill(leader)
        c.kill(successor)
        killed_at = time.monotonic()
        new_leader = c.wait_leader(5.0)
        took_s = time.monotonic() - killed_at
        assert took_s < 5.0
        survivors = c.running()
        # the election collected every live node, and the highest id won
        assert new_leader == max(survivors, key=lambda n: int(n[1:]))
        statuses = [c.status(n) for n in survivors]
        assert {s["leader"] for s in statuses} == {new_leader}
        assert len({s["term"] for s in statuses}) == 1
        print(f"ring: leader {leader} and successor {successor} killed; {new_leader} agreed in {took_s:.2f}s")
