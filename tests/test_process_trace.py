"""Real daemons with ELECTIOND_TRACE_DIR (electiond/trace.py): the failover
forensics that scripts/bench-failover --trace and scripts/failover_timeline.py
rely on, across a leader kill while a restarted member is still in its clock
check (the case behind quorum-lease's slow mode, issue 17)."""

from __future__ import annotations

import json
import os
import time

from cluster import Cluster


def _trace(c: Cluster, name: str) -> list[dict]:
    path = c.workdir / f"{name}.trace"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_traced_failover_with_a_member_in_its_clock_check(tmp_path, monkeypatch):
    monkeypatch.setitem(os.environ, "ELECTIOND_TRACE_DIR", str(tmp_path))
    with Cluster(tmp_path, 5, protocol="quorum-lease") as c:
        c.start_all()
        # settled first: a leader elected while some members were still in their
        # own start-up clock check (they ack nothing) can lose its lease to the
        # follower kill below, and the node killed as "the leader" is then none
        c.wait_for(lambda: c.agreed_leader() and all((c.status(n) or {}).get("phase") in ("leader", "follower")
                                                     for n in c.names), 20.0, "a settled cluster")
        old = c.wait_leader(15.0)
        follower = next(n for n in c.names if n != old)
        c.kill(follower)
        c.start(follower)  # back in its start-up clock check (2 s or more)
        time.sleep(1.0)  # past its quarantine, not past its clock check
        c.wait_for(lambda: (c.status(follower) or {}).get("phase") == "clock-check", 5.0, "the clock check")
        # the leader now, the one to kill (normally still the same one)
        old = c.wait_for(lambda: c.agreed_leader(among=[n for n in c.names if n != follower]), 5.0,
                         "the leader the others agree on")
        killed_at = time.time()
        c.kill(old)
        new = c.wait_leader(5.0, among=[n for n in c.names if n != old])
        assert new != old
        hook = c.wait_for(lambda: [e for e in c.hook_events() if e[1] == "promote" and e[2] == new
                                   and e[0] >= killed_at], 5.0, "the promote hook")[0]
        assert hook[0] - killed_at < 5.0
        events = _trace(c, new)
        # the winner's own record: its vote requests, the grants, its promotion
        assert any(e["ev"] == "tx" and e["kind"] == "REQUEST_VOTE" and e["t"] >= killed_at for e in events)
        assert any(e["ev"] == "rx" and e["kind"] == "VOTE" and e["body"]["granted"] for e in events)
        assert any(e["ev"] == "state" and e["phase"] == "leader" and e["t"] >= killed_at for e in events)
        # every survivor saw the dead leader's heartbeats, with their announced lease
        for name in c.names:
            if name != old:
                assert any(e["ev"] == "rx" and e["kind"] == "LEASE_HEARTBEAT" and e["peer"] == old
                           for e in _trace(c, name)), name
        # nothing the member in its clock check sent was a grant
        grants = [e for e in _trace(c, follower) if e["ev"] == "tx" and e["t"] >= killed_at
                  and e["kind"] in ("VOTE", "PREVOTE_REPLY") and e["body"]["granted"]]
        assert grants == []
