"""electionctl against real daemons, as a process."""

import json
import subprocess
import sys

from cluster import REPO, Cluster


def ctl(*args):
    return subprocess.run([sys.executable, "-m", "electiond.cli", *args], capture_output=True, text=True,
                          timeout=30, cwd=REPO)


def test_status_json_and_is_leader(tmp_path):
    with Cluster(tmp_path, 3, protocol="bully") as c:
        c.start_all()
        # bully with preempt = yes ends with the highest id leading; a lower one
        # may lead for a moment first on a loaded machine (n2, then n3, seen
        # once), so wait for the end state rather than the first agreement
        leader = c.wait_for(lambda: c.agreed_leader() == "n3" and "n3", 15.0, "n3 leading, as bully settles")
        follower = next(n for n in c.names if n != leader)
        out = ctl("--socket", c.socket(follower), "status", "--json")
        assert out.returncode == 0, out.stderr
        status = json.loads(out.stdout)
        for key in ("node", "cluster", "protocol", "role", "leader", "term", "members", "authenticated",
                    "uptime_s", "dropped"):
            assert key in status
        assert status["role"] == "follower" and status["leader"] == leader
        assert status["authenticated"] is False
        assert {m["name"] for m in status["members"]} == set(c.names)
        assert all({"name", "id", "alive", "last_seen_ms"} <= set(m) for m in status["members"])
        assert ctl("--socket", c.socket(leader), "is-leader").returncode == 0
        assert ctl("--socket", c.socket(follower), "is-leader").returncode == 1
        human = ctl("--socket", c.socket(leader), "status")
        assert human.returncode == 0 and f"leader    {leader}" in human.stdout and "NAME" in human.stdout
        history = ctl("--socket", c.socket(leader), "history", "--json")
        assert any(e["event"] == "promote" for e in json.loads(history.stdout)["history"])
        waited = ctl("--socket", c.socket(follower), "wait-leader", "--timeout", "5")
        assert waited.returncode == 0 and waited.stdout.strip() == leader


def test_unreachable_daemon_exits_2_with_one_line(tmp_path):
    out = ctl("--socket", str(tmp_path / "nothing.sock"), "is-leader")
    assert out.returncode == 2
    assert len(out.stderr.strip().splitlines()) == 1 and "no daemon socket" in out.stderr
    (tmp_path / "stale.sock").write_text("")
    out = ctl("--socket", str(tmp_path / "stale.sock"), "status")
    assert out.returncode == 2 and len(out.stderr.strip().splitlines()) == 1


def test_refused_command_exits_1(tmp_path):
    with Cluster(tmp_path, 3, protocol="bully") as c:
        c.start_all()
        # bully with preempt = yes ends with the highest id leading; a lower one
        # may lead for a moment first on a loaded machine (n2, then n3, seen
        # once), so wait for the end state rather than the first agreement
        leader = c.wait_for(lambda: c.agreed_leader() == "n3" and "n3", 15.0, "n3 leading, as bully settles")
        follower = next(n for n in c.names if n != leader)
        out = ctl("--socket", c.socket(follower), "stepdown")
        assert out.returncode == 1 and "not the leader" in out.stderr
