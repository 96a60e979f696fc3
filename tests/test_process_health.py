"""Health tracking in real daemons: a leader whose check fails steps down and
runs its fault hooks, refuses to stand while unhealthy, and rejoins after
``rise`` good checks."""

from __future__ import annotations

import signal
from pathlib import Path

from cluster import Cluster


def test_unhealthy_leader_steps_down_runs_fault_and_rejoins(tmp_path: Path) -> None:
    check = tmp_path / "check"
    # each daemon checks its own flag file; ELECTIOND_NODE comes from the daemon
    check.write_text(f'#!/bin/sh\n[ ! -e "{tmp_path}/$ELECTIOND_NODE.sick" ] || {{ echo "$ELECTIOND_NODE is sick"; exit 1; }}\n')
    check.chmod(0o755)
    # a lease long enough not to lapse on a loaded test machine
    with Cluster(tmp_path, 3, protocol="quorum-lease", node_options={"preempt": "no"},
                 timing={"lease": "600ms"}) as c:
        c.config_text += f"\n[health]\ntrack_script = {check}\ninterval = 100ms\ntimeout = 5s\nrise = 2\nfall = 2\n"
        c.start_all()
        sick = c.wait_leader(20.0)
        assert c.status(sick)["healthy"] is True

        (tmp_path / f"{sick}.sick").touch()
        successor = c.wait_for(lambda: (lead := c.agreed_leader()) not in (None, sick) and lead, 20,
                               "leadership to leave the unhealthy node")
        c.wait_for(lambda: any(e[1] == "fault" and e[2] == sick for e in c.hook_events()), 10, "the fault hook")
        events = [e for e in c.hook_events() if e[2] == sick]
        kinds = [e[1] for e in events]
        # it had been promoted, then demoted before its fault hooks ran
        last_promote = max(i for i, k in enumerate(kinds) if k == "promote")
        assert kinds[last_promote + 1 :][:2] == ["demote", "fault"], events
        assert events[-1][4] == "fault"
        status = c.status(sick)
        assert status["healthy"] is False and status["role"] != "leader"
        (check_status,) = status["health"]
        assert check_status["kind"] == "script" and check_status["healthy"] is False
        assert check_status["detail"] == f"exit 1: {sick} is sick"

        # while unhealthy it never stands: stop the new leader, the third node takes over
        third = next(n for n in c.names if n not in (sick, successor))
        c.signal(successor, signal.SIGTERM)
        assert c.procs[successor].wait(15) == 0
        c.wait_for(lambda: c.agreed_leader([sick, third]) == third, 20, f"{third} (not the sick node) to lead")

        (tmp_path / f"{sick}.sick").unlink()
        c.wait_for(lambda: c.status(sick)["healthy"] is True, 10, "the node to recover")
        assert c.status(sick)["health"][0]["consecutive_ok"] >= 2
        # eligible again: with the leader gone it can now be elected
        c.signal(third, signal.SIGTERM)
        assert c.procs[third].wait(15) == 0
        c.start(successor)
        c.wait_for(lambda: c.agreed_leader() in (sick, successor), 20, "a leader among the healthy nodes")
