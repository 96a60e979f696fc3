"""The coordination surface on a protocol that cannot coordinate (bully):
a clear refusal, and run-as-leader's weaker, poll-based supervision."""

from __future__ import annotations

import os
import subprocess
import sys
import time

from electiond.coord.commands import NO_BACKEND
from electiond.devcluster import REPO, Cluster


def ctl(c: Cluster, name: str, *args: str, timeout_s: float = 20) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "electiond.cli", "--socket", c.socket(name), *args],
                          capture_output=True, text=True, timeout=timeout_s, env=dict(os.environ, PYTHONPATH=str(REPO)))


def test_bully_refuses_coordination_and_runs_a_leader_job(tmp_path):
    with Cluster(tmp_path, 2, timing={"heartbeat_interval": "100ms", "election_timeout": "300ms-500ms"}) as c:
        c.start_all()
        leader = c.wait_leader(10)
        for argv in (("config", "get", "k"), ("lock", "x", "--", "true"), ("barrier", "b", "--count", "2")):
            r = ctl(c, leader, *argv)
            assert r.returncode == 4 and NO_BACKEND in r.stderr, (argv, r.stderr)
        assert ctl(c, leader, "members", "--watch").returncode == 4
        marker = tmp_path / "ran"
        r = ctl(c, leader, "run-as-leader", "--", "sh", "-c", f"touch {marker}; exit 5")
        assert r.returncode == 5 and marker.exists()
        follower = next(n for n in c.names if n != leader)
        r = ctl(c, follower, "run-as-leader", "--wait", "1s", "--", "true")
        assert r.returncode == 75, r.stderr
        # leadership moves away: the job is stopped (within a poll of the node noticing)
        job = subprocess.Popen([sys.executable, "-m", "electiond.cli", "--socket", c.socket(leader), "run-as-leader",
                                "--", "sleep", "60"], env=dict(os.environ, PYTHONPATH=str(REPO)),
                               stderr=subprocess.PIPE, text=True)
        try:
            time.sleep(1.0)
            assert job.poll() is None
            assert ctl(c, leader, "stepdown").returncode == 0
            _, err = job.communicate(timeout=15)
            assert job.returncode == 76, err
        finally:
            if job.poll() is None:
                job.kill()
                job.wait()
