"""Promote hooks that always fail must not churn a cluster: each failure
backs off longer, and after [hooks] max_promote_failures (3) the node is in
FAULT and stands no more. Real daemons on loopback; generous bounds."""

import time

import pytest

from cluster import Cluster

from electiond.cli import request


@pytest.mark.parametrize("protocol", ["quorum-lease", "bully"])
def test_every_promote_hook_failing_decays_to_no_changes(tmp_path, protocol):
    with Cluster(tmp_path, 3, protocol=protocol, hooks={"promote": "/bin/false"}) as c:
        c.start_all()
        started = time.time()
        # every node: 3 failures, waits of ~1.2-1.8 s and ~2.4-3.6 s between them
        c.wait_for(lambda: all("promote_failed" in ((c.status(n) or {}).get("blocked_by") or {}) for n in c.names),
                   45, "every node in promote-failure FAULT")
        settled = time.time()
        time.sleep(8.0)
        times = sorted(t for n in c.names for t in c.history_wall(n, "promote"))
        assert 3 <= len(times) <= 3 * 3 + 1, times  # at most max_promote_failures per node (+ one in flight)
        late = [t for t in times if t > settled + 0.5]
        assert late == [], f"promotes after every node was in FAULT: {late}"
        for n in c.names:
            st = c.status(n)
            assert st["role"] != "leader" and st["promote_failures"] == 3
        print(f"{protocol}: {len(times)} promotes in {settled - started:.1f}s, then none for 8s")


def test_one_node_backs_off_growing_then_faults_and_resume_retries(tmp_path):
    with Cluster(tmp_path, 1, protocol="quorum-lease", hooks={"promote": "/bin/false"}) as c:
        c.start_all()
        c.wait_for(lambda: "promote_failed" in ((c.status("n1") or {}).get("blocked_by") or {}), 30,
                   "n1 in promote-failure FAULT")
        times = c.history_wall("n1", "promote")
        assert len(times) == 3, times
        gaps = [b - a for a, b in zip(times, times[1:])]
        assert gaps[0] >= 1.0 and gaps[1] > gaps[0], gaps  # it was 330 ms, for ever
        time.sleep(3.0)
        assert len(c.history_wall("n1", "promote")) == 3
        request(c.socket("n1"), "resume")
        c.wait_for(lambda: len(c.history_wall("n1", "promote")) >= 4, 10, "a new try after resume")
