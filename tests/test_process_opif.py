"""The operator interface against real daemons on loopback: every electionctl
command in both output modes with its exit codes, maintenance that survives a
restart, transfers that stick, metrics (socket and HTTP) parsed by
prometheus_client, and the member table after a leader is killed."""

import json
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

from cluster import REPO, Cluster

prometheus_parser = pytest.importorskip("prometheus_client.parser")


def ctl(sock, *args, timeout=60):
    return subprocess.run([sys.executable, "-m", "electiond.cli", "--socket", sock, *args], capture_output=True,
                          text=True, timeout=timeout, cwd=REPO)


def one_json(out):
    """--json prints exactly one object, answers and errors alike."""
    obj = json.loads(out.stdout)
    assert isinstance(obj, dict), out.stdout
    return obj


def free_tcp_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def families(text):
    return {f.name: f for f in prometheus_parser.text_string_to_metric_families(text)}


PROMOTE_HOOK = """#!/bin/sh
echo "$(date +%s.%N) $ELECTIOND_EVENT $ELECTIOND_NODE ${ELECTIOND_TERM:-0} $ELECTIOND_REASON" >> "$HOOK_LOG"
echo "$ELECTIOND_NODE previous=$ELECTIOND_PREVIOUS_LEADER pid=$ELECTIOND_PID token=${ELECTIOND_HOOK_TOKEN:+set}" >> "$HOOK_LOG.env"
"""


def test_every_command_both_modes_exit_codes_sticky_transfer_and_pause(tmp_path):
    port = free_tcp_port()
    promote_hook = tmp_path / "promote-hook"
    promote_hook.write_text(PROMOTE_HOOK)
    promote_hook.chmod(0o755)
    # n3 is preferred and preempts after 1s; transfers away from it must stick
    with Cluster(tmp_path, 3, protocol="quorum-lease", node_options={"preempt_delay": "1s"},
                 per_node={"n3": {"priority": "200"}, "n2": {"priority": "150"}},
                 control={"n1": {"metrics_listen": f"127.0.0.1:{port}"}},
                 hooks={"promote": str(promote_hook)}) as c:
        c.start_all()
        leader = c.wait_for(lambda: c.agreed_leader() == "n3" and "n3", 10, "n3 to lead")
        s = {n: c.socket(n) for n in c.names}

        # ---- reads, both modes
        out = ctl(s["n1"], "status")
        assert out.returncode == 0 and "leader    n3" in out.stdout and "ROLE" in out.stdout
        assert one_json(ctl(s["n1"], "--json", "status"))["leader"] == "n3"
        out = ctl(s["n1"], "members")
        assert out.returncode == 0 and "n3" in out.stdout and "leader" in out.stdout
        rows = one_json(ctl(s["n1"], "members", "--json"))["members"]
        assert {r["name"] for r in rows} == set(c.names)
        out = ctl(s["n3"], "history")
        assert out.returncode == 0 and "promote" in out.stdout and "T" in out.stdout.split()[0]  # ISO time
        hist = one_json(ctl(s["n3"], "history", "--json"))["history"]
        promote = next(e for e in hist if e["event"] == "promote")
        assert promote["at"].endswith("Z") and promote["at"][:4].isdigit()
        assert ctl(s["n3"], "is-leader").returncode == 0
        out = ctl(s["n1"], "is-leader", "--json")
        assert out.returncode == 1 and one_json(out)["leader"] is False
        out = ctl(s["n1"], "wait-leader", "--timeout", "5s")
        assert out.returncode == 0 and out.stdout.strip() == "n3"
        assert one_json(ctl(s["n1"], "--json", "wait-leader"))["leader"] == "n3"

        # ---- metrics over the socket and over HTTP, parsed by prometheus_client
        out = ctl(s["n3"], "metrics")
        assert out.returncode == 0
        fams = families(out.stdout)
        for name in ("electiond_role", "electiond_term", "electiond_leader", "electiond_leadership_changes",
                     "electiond_elections_started", "electiond_elections_won", "electiond_elections_lost",
                     "electiond_messages_sent", "electiond_messages_received", "electiond_dropped",
                     "electiond_hook_runs", "electiond_hook_duration_seconds", "electiond_member_suspicion",
                     "electiond_member_timeout_seconds", "electiond_lease_remaining_seconds", "electiond_paused",
                     "electiond_fault", "electiond_flapping"):
            assert name in fams, name
        role = {smp.labels["role"]: smp.value for smp in fams["electiond_role"].samples}
        assert role["leader"] == 1.0
        assert fams["electiond_lease_remaining_seconds"].samples[0].value > 0
        sent = {smp.labels["kind"]: smp.value for smp in fams["electiond_messages_sent"].samples}
        assert sent.get("LEASE_HEARTBEAT", 0) > 0
        hooks = {(smp.labels["event"], smp.labels["result"]) for smp in fams["electiond_hook_runs"].samples}
        assert ("promote", "ok") in hooks
        assert "metrics" in one_json(ctl(s["n3"], "--json", "metrics"))
        body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
        assert families(body)["electiond_is_leader"].samples[0].value == 0.0  # n1 follows

        # ---- refusals and errors: exit codes and one JSON object each
        out = ctl(s["n1"], "transfer", "n2")
        assert out.returncode == 1 and "not the leader" in out.stderr
        out = ctl(s["n1"], "--json", "stepdown")
        assert out.returncode == 1 and one_json(out)["exit_code"] == 1 and "not the leader" in one_json(out)["error"]
        out = ctl(s["n3"], "transfer", "nobody")
        assert out.returncode == 4 and "unknown node" in out.stderr
        out = ctl(s["n3"], "--json", "transfer", "nobody")
        assert out.returncode == 4 and one_json(out)["exit_code"] == 4
        out = ctl(s["n3"], "no-such-command")
        assert out.returncode == 4 and out.stdout == ""
        assert one_json(ctl(s["n3"], "--json", "transfer", "--wait", "soon"))["exit_code"] == 4
        out = ctl(str(tmp_path / "none.sock"), "--json", "status")
        assert out.returncode == 2 and one_json(out)["exit_code"] == 2

        # ---- a closed pipe is not an error
        piped = subprocess.run(f"{sys.executable} -m electiond.cli --socket {s['n1']} status | head -1",
                               shell=True, capture_output=True, text=True, timeout=30, cwd=REPO)
        assert piped.stdout.startswith("node") and "Traceback" not in piped.stderr, piped.stderr

        # ---- transfer --wait, and it sticks against n3's preemption
        out = ctl(s["n3"], "--json", "transfer", "n1", "--wait", "15s")
        assert out.returncode == 0, out.stdout + out.stderr
        result = one_json(out)
        assert result["done"] is True and result["leader"] == "n1" and result["served_term"] > result["term"]
        promotes = [e for e in c.hook_events() if e[1] == "promote" and e[2] == "n1"]
        assert promotes, "n1's promote hook ran before the transfer returned"
        env_lines = (tmp_path / "hooks.log.env").read_text().splitlines()
        n1_env = [line for line in env_lines if line.startswith("n1 ")][-1]
        pid = c.procs["n1"].pid
        assert n1_env == f"n1 previous=n3 pid={pid} token=set", env_lines
        time.sleep(4.0)  # four preempt delays
        assert c.agreed_leader() == "n1", "the preferred n3 must not take an operator's transfer back"
        st = one_json(ctl(s["n2"], "--json", "status"))
        assert st["operator_chosen"] is True
        human = ctl(s["n1"], "transfer", "n2", "--wait")
        assert human.returncode == 0 and "n2 leads and ran its promote hooks" in human.stdout, human.stderr
        out = ctl(s["n2"], "stepdown")
        assert out.returncode == 0 and "stepped down" in out.stdout
        after_stepdown = c.wait_leader(10)
        assert after_stepdown != "n2"

        # more than max_changes_per_hour (2) changes: flagged, one warning per crossing
        st = c.status("n1")
        assert st["flapping"] is True and st["leader_changes_last_hour"] > 2
        assert (tmp_path / "n1.log").read_text().count("leadership flapping") == 1

        # ---- pause: a leader hands over first; others see it; it survives a restart
        current = c.wait_leader(10)
        out = ctl(s[current], "--json", "pause")
        assert out.returncode == 0, out.stdout
        paused = one_json(out)
        assert paused["paused"] is True and paused["was_leader"] is True and paused["leader"] not in (None, current)
        other = next(n for n in c.names if n != current)
        c.wait_for(lambda: any(m["name"] == current and m.get("paused") for m in (c.status(other) or {}).get("members", [])),
                   5, f"{other} to see {current} paused")
        assert f"paused" in ctl(s[other], "members").stdout
        assert ctl(s[current], "pause").returncode == 0  # a follower pauses at once
        c.signal(current, 15)
        c.procs[current].wait(15)
        c.start(current)
        st = c.wait_for(lambda: c.status(current), 10, f"{current} back")
        assert st["paused"] is True and "paused" in st["blocked_by"]
        time.sleep(2.0)
        assert (c.status(current) or {}).get("role") != "leader"
        fams = families(ctl(s[current], "metrics").stdout)
        assert fams["electiond_paused"].samples[0].value == 1.0
        out = ctl(s[current], "resume")
        assert out.returncode == 0 and "resumed" in out.stdout
        assert one_json(ctl(s[current], "--json", "status"))["paused"] is False
        assert not (tmp_path / current / "paused").exists()

        # ---- a killed leader is shown dead once suspected, with the leader's real timeout
        leader = c.wait_leader(10)
        table = one_json(ctl(s[next(n for n in c.names if n != leader)], "--json", "status"))
        c.kill(leader)
        rest = [n for n in c.names if n != leader]
        c.wait_leader(10, among=rest)
        observer = rest[0]
        c.wait_for(lambda: not next(m for m in c.status(observer)["members"] if m["name"] == leader)["alive"],
                   3, f"{observer} to show {leader} dead")
        assert "DEAD" in ctl(s[observer], "members").stdout
        assert table["leader_timeout_ms"] < 1000, "the heartbeat timeout, not the slow presence window's"
