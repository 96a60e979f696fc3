"""Real electiond processes on loopback multicast, bully protocol."""

import time

import pytest

from cluster import Cluster


@pytest.mark.parametrize("size", [3, 5])
def test_one_leader_then_failover(tmp_path, size):
    with Cluster(tmp_path, size, protocol="bully") as c:
        c.start_all()
        leader = c.wait_leader(5.0)
        assert leader == f"n{size}"  # bully: the highest id wins
        statuses = [c.status(n) for n in c.names]
        assert {s["leader"] for s in statuses} == {leader}
        assert {s["term"] for s in statuses} == {statuses[0]["term"]}
        c.kill(leader)
        new_leader = c.wait_leader(5.0)
        assert new_leader != leader
        assert new_leader == f"n{size - 1}"


def test_restarted_higher_id_takes_over_with_preempt(tmp_path):
    with Cluster(tmp_path, 3, protocol="bully", node_options={"preempt": "yes"}) as c:
        c.start_all()
        c.wait_for(lambda: c.agreed_leader() == "n3", 5.0, "n3 to lead")
        c.kill("n3")
        assert c.wait_leader(5.0) == "n2"
        c.start("n3")
        # it takes over preempt_delay (5 s, the default) after its start
        c.wait_for(lambda: c.agreed_leader() == "n3", 15.0, "n3 to take over")


def test_restarted_node_does_not_take_over_without_preempt(tmp_path):
    # slower timing than the default: on a loaded test machine a missed 50 ms
    # heartbeat is a (legitimate) bully failover, which is not what this tests
    with Cluster(tmp_path, 3, protocol="bully", node_options={"preempt": "no"},
                 timing={"heartbeat_interval": "100ms", "election_timeout": "600ms-900ms"}) as c:
        c.start_all()
        first = c.wait_leader(5.0)  # whoever came up first may keep it: that is nopreempt
        c.kill(first)
        second = c.wait_leader(5.0)
        assert second != first
        c.start(first)
        # give the returning node well over an election timeout to (wrongly) take over
        deadline = time.monotonic() + 2.0
        while time.monotonic() < deadline:
            assert c.status(second)["role"] == "leader"
            time.sleep(0.1)
        assert c.wait_leader(5.0) == second


def test_hooks_run_with_the_fencing_token(tmp_path):
    with Cluster(tmp_path, 3, protocol="bully") as c:
        c.start_all()
        c.wait_for(lambda: c.agreed_leader() == "n3", 5.0, "n3 to lead")
        term = c.status("n3")["term"]
        c.wait_for(lambda: any(e[1:4] == ("promote", "n3", term) for e in c.hook_events()), 5.0,
                   f"n3's promote hook with term {term}")
        # every daemon first gave up whatever a crashed predecessor held
        c.wait_for(lambda: {e[2] for e in c.hook_events() if e[1] == "demote" and e[4] == "startup"} == set(c.names),
                   5.0, "every node's startup demote")
