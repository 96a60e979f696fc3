"""Real daemons on loopback: two voters and a witness (quorum-lease), and the
refresh hook run while leader."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cluster import REPO, Cluster
from electiond.cli import Refused, request


def electionctl(c: Cluster, name: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "electiond.cli", "--socket", c.socket(name), *args],
                          capture_output=True, text=True, timeout=30, cwd=REPO, env={"PYTHONPATH": str(REPO)})


def witness_cluster(tmp_path: Path, **hooks: str) -> Cluster:
    return Cluster(tmp_path, 3, protocol="quorum-lease", witnesses=("n3",), node_options={"preempt": "no"},
                   timing={"lease": "600ms"}, hooks=hooks)


def test_witness_status_and_transfer_to_it_refused(tmp_path: Path) -> None:
    with witness_cluster(tmp_path) as c:
        c.start_all()
        leader = c.wait_leader(30)
        assert leader in ("n1", "n2")
        w = c.status("n3")
        assert w["witness"] is True and w["role"] == "follower" and w["phase"] == "witness"
        assert w["leader"] == leader
        rows = {m["name"]: m for m in c.status(leader)["members"]}
        assert rows["n3"]["witness"] is True and rows["n1"]["witness"] is False and rows["n2"]["witness"] is False
        human = electionctl(c, "n3", "status")
        assert human.returncode == 0 and "WITNESS" in human.stdout
        member_line = next(line for line in human.stdout.splitlines() if line.startswith("n3 "))
        assert "witness" in member_line
        as_json = json.loads(electionctl(c, leader, "status", "--json").stdout)
        assert [m["witness"] for m in as_json["members"]] == [False, False, True]
        # transfer to the witness: a bad request (exit 4), and nothing moves
        refused = electionctl(c, leader, "transfer", "n3")
        assert refused.returncode == 4 and "witness" in refused.stderr
        with pytest.raises(Refused, match="witness"):
            request(c.socket(leader), "transfer", {"target": "n3"})
        assert c.agreed_leader() == leader
        # a transfer without a target goes to the other voter, never the witness;
        # a voter still in its start-up clock check grants nothing, so the leader
        # has not heard it lately: wait for the check to pass first
        other = "n2" if leader == "n1" else "n1"
        c.wait_for(lambda: not (c.status(other) or {"blocked_by": {1: 1}})["blocked_by"], 30,
                   f"{other} to pass its start-up clock check")
        time.sleep(0.5)  # its acks reach the leader
        ok = electionctl(c, leader, "transfer", "--wait", "20s")
        assert ok.returncode == 0, ok.stderr
        assert c.wait_leader(20) == other
        assert not [e for e in c.hook_events() if e[2] == "n3" and e[1] == "promote"]


def test_refresh_runs_periodically_while_leader_and_stops_at_demote(tmp_path: Path) -> None:
    hook = str(tmp_path / "record-hook")
    with witness_cluster(tmp_path, refresh=hook, refresh_interval="1s") as c:
        c.start_all()
        leader = c.wait_leader(30)

        def refreshes(node: str) -> list[float]:
            return [e[0] for e in c.hook_events() if e[1] == "refresh" and e[2] == node]

        c.wait_for(lambda: len(refreshes(leader)) >= 3, 20, "three refreshes on the leader")
        stamps = refreshes(leader)
        gaps = [b - a for a, b in zip(stamps, stamps[1:])]
        assert all(0.5 < g < 5.0 for g in gaps), gaps  # about once a second, generous bounds
        promote_at = max(e[0] for e in c.hook_events() if e[1] == "promote" and e[2] == leader)
        assert stamps[0] > promote_at + 0.5  # the promote announced; the first refresh is a period later
        term = next(e[3] for e in c.hook_events() if e[1] == "refresh" and e[2] == leader)
        assert term == c.status(leader)["term"]
        ok = electionctl(c, leader, "stepdown", "--wait", "20s")
        assert ok.returncode == 0, ok.stderr
        other = c.wait_leader(20)
        assert other != leader
        demote_at = max(e[0] for e in c.hook_events() if e[1] == "demote" and e[2] == leader)
        time.sleep(3)  # three periods: a leaked timer would have fired by now
        assert [t for t in refreshes(leader) if t > demote_at] == []
        assert len([t for t in refreshes(other) if t > demote_at]) >= 1
        assert refreshes("n3") == []
