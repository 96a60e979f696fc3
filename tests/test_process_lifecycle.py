"""The daemon's life cycle as processes: strict state loading, --recover-state,
one daemon per state directory, waiting for the interface, fast SIGTERM."""

import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import time

import pytest

from cluster import REPO, Cluster
from electiond.devcluster import wait_for

EX_CONFIG, EX_TEMPFAIL = 78, 75


def run_daemon(c, *extra, env=None, timeout=60):
    return subprocess.run(
        [sys.executable, "-m", "electiond", "--config", str(c.config_path("n1")), "--node", "n1", *extra],
        capture_output=True, text=True, timeout=timeout,
        env=dict(os.environ, PYTHONPATH=str(REPO), HOOK_LOG=str(c.hook_log), **(env or {})),
    )


def state_file(c):
    return c.workdir / "n1" / "state.json"


def record(**overrides):
    data = {"term": 3, "voted_for": None, "incarnation": 17}
    data.update(overrides)
    return json.dumps(data).encode()


MALFORMED = {
    "binary": b"\x00\x9f\xff\xfe\x00garbage",
    "utf16": '{"term": 1, "voted_for": null, "incarnation": 1}'.encode("utf-16"),
    "deep_nesting": b"[" * 40_000,
    "oversize": b" " * 100_000 + record(),
    "not_object": b"[1, 2, 3]",
    "missing_key": b'{"term": 1, "incarnation": 1}',
    "bool_term": record(term=True),
    "huge_term": record(term=2**64 - 1),
    "thousand_digit_term": b'{"term": 1' + b"7" * 5000 + b', "voted_for": null, "incarnation": 1}',
    "negative_incarnation": record(incarnation=-5),
    "long_vote": record(voted_for="n" * 300),
    "bad_recovering": record(recovering="yes"),
}


@pytest.mark.parametrize("name", sorted(MALFORMED) + ["directory", "fifo"])
def test_malformed_state_exits_78_with_one_line(tmp_path, name):
    c = Cluster(tmp_path, 1, protocol="quorum-lease")
    state_file(c).parent.mkdir()
    if name == "directory":  # unreadable as a file
        state_file(c).mkdir()
    elif name == "fifo":  # would block a plain open() forever
        os.mkfifo(state_file(c))
    else:
        state_file(c).write_bytes(MALFORMED[name])
    result = run_daemon(c)
    assert result.returncode == EX_CONFIG, result.stderr
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if " ERROR " in line]
    assert len(errors) == 1, result.stderr
    assert "exiting: state error:" in errors[0] and str(state_file(c)) in errors[0]
    assert "--recover-state" in errors[0]
    assert c.hook_events() == []  # refused before any hook ran


def test_recover_state_then_the_daemon_starts_recovering(tmp_path):
    with Cluster(tmp_path, 3, protocol="quorum-lease") as c:
        state_file(c).parent.mkdir()
        state_file(c).write_bytes(record(term=True, incarnation=4242))
        assert run_daemon(c).returncode == EX_CONFIG
        result = run_daemon(c, "--recover-state")
        assert result.returncode == 0, result.stderr
        kept = [p for p in state_file(c).parent.iterdir() if p.name.startswith("state.json.corrupt-")]
        assert len(kept) == 1 and kept[0].read_bytes() == record(term=True, incarnation=4242)
        assert str(kept[0]) in result.stdout and "learnt the current term" in result.stdout
        assert json.loads(state_file(c).read_text()) == {
            "term": 0, "voted_for": None, "incarnation": 4242, "recovering": True}
        c.start("n1")
        status = c.wait_for(lambda: c.status("n1"), 10, "n1 to answer")
        # what the state file says now: until quorum-lease keeps the flag in its
        # own Persist effects, n1's first campaign may already have cleared it
        assert status["recovering"] is True  # alone: no quorum of peers has shown it a term
        time.sleep(1.0)  # well past its quarantine: still neither voting nor standing
        status = c.status("n1")
        assert status["recovering"] is True and status["role"] != "leader"
        assert "recovering: state was reset by --recover-state" in (tmp_path / "n1.log").read_text()
        assert json.loads(state_file(c).read_text())["incarnation"] > 4242
        # its peers come: once a quorum of them was heard it stores their highest
        # term with its vote withheld, and is an ordinary member again
        c.start("n2")
        c.start("n3")
        c.wait_leader(15)
        c.wait_for(lambda: (c.status("n1") or {}).get("recovering") is False, 15, "n1 to finish recovering")
        stored = json.loads(state_file(c).read_text())
        assert not stored.get("recovering") and stored["term"] >= 1, stored
        assert c.agreed_leader() is not None


def test_second_daemon_cleanup_and_recover_are_refused_while_one_lives(tmp_path):
    with Cluster(tmp_path, 1, protocol="bully") as c:
        c.start("n1")
        c.wait_leader(10)
        c.wait_for(lambda: [e[1] for e in c.hook_events()] == ["demote", "promote"], 10, "startup and promote hooks")
        holder = c.procs["n1"].pid
        token = (tmp_path / "n1" / "hooks.token").read_text()
        state = state_file(c).read_bytes()
        socket_inode = os.stat(c.socket("n1")).st_ino

        second = run_daemon(c, timeout=30)
        cleanup = run_daemon(c, "--cleanup", env={"SERVICE_RESULT": "signal"}, timeout=30)
        recover = run_daemon(c, "--recover-state", timeout=30)
        for what, result in (("start", second), ("--cleanup", cleanup), ("--recover-state", recover)):
            assert result.returncode == EX_TEMPFAIL, (what, result.stderr)
            assert f"exiting: {what} refused" in result.stderr and f"PID {holder}" in result.stderr, result.stderr
            assert "Traceback" not in result.stderr
        # nothing shared was touched: no hook ran, the token, state and socket are the first daemon's
        assert [e[1] for e in c.hook_events()] == ["demote", "promote"]
        assert (tmp_path / "n1" / "hooks.token").read_text() == token
        assert state_file(c).read_bytes() == state
        assert os.stat(c.socket("n1")).st_ino == socket_inode
        assert c.status("n1")["role"] == "leader"

        c.signal("n1", signal.SIGTERM)
        assert c.procs["n1"].wait(15) == 0
        # ExecStopPost runs after the daemon died: the lock is free again
        after = run_daemon(c, "--cleanup", env={"SERVICE_RESULT": "success"})
        assert after.returncode == 0, after.stderr


def test_unusable_state_directory_exits_78(tmp_path):
    c = Cluster(tmp_path, 1, protocol="bully")
    (tmp_path / "n1").write_text("a file where the directory should be")
    result = run_daemon(c)
    assert result.returncode == EX_CONFIG
    assert "exiting: state directory error" in result.stderr and "Traceback" not in result.stderr


def test_missing_interface_waits_and_sigterm_stops_the_wait(tmp_path):
    c = Cluster(tmp_path, 1, protocol="bully")
    c.config_text = c.config_text.replace("interface = 127.0.0.1", "interface = eldnone0")
    check = run_daemon(c, "--check-config")
    assert check.returncode == 0 and "OK" in check.stdout
    assert "warning: interface 'eldnone0' does not exist now; the daemon will wait for it" in check.stderr
    with c:
        c.spawn("n1")
        log = tmp_path / "n1.log"
        c.wait_for(lambda: "waiting for the network: interface 'eldnone0' does not exist" in log.read_text(),
                   15, "the wait to be logged")
        time.sleep(2.5)  # a few retries: still logged once, still alive
        assert log.read_text().count("waiting for the network") == 1
        assert c.procs["n1"].poll() is None and not os.path.exists(c.socket("n1"))
        c.signal("n1", signal.SIGTERM)
        assert c.procs["n1"].wait(5) == 0
        assert "exiting: SIGTERM while waiting for the network" in log.read_text()


@pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces need root")
def test_daemon_waits_for_its_interface_inside_a_namespace(tmp_path):
    netns = f"eld-{os.getpid()}"
    notify_path = str(tmp_path / "notify.sock")
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(notify_path)
    notify.settimeout(0.1)
    messages: list[str] = []

    def drain():
        while True:
            try:
                messages.append(notify.recv(4096).decode())
            except socket.timeout:
                return messages

    c = Cluster(tmp_path, 1, protocol="bully")
    c.config_text = c.config_text.replace("interface = 127.0.0.1", "interface = eldtest0")
    subprocess.run(["ip", "netns", "add", netns], check=True, timeout=30)
    proc = None
    try:
        env = dict(os.environ, PYTHONPATH=str(REPO), HOOK_LOG=str(c.hook_log), NOTIFY_SOCKET=notify_path)
        log_path = tmp_path / "n1.log"
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(
                ["ip", "netns", "exec", netns, sys.executable, "-m", "electiond",
                 "--config", str(c.config_path("n1")), "--node", "n1"],
                env=env, stdout=log, stderr=subprocess.STDOUT)
        wait_for(lambda: "waiting for the network" in log_path.read_text(), 15, "the wait to be logged",
                 log_path.read_text)
        drain()
        assert any(m.startswith("STATUS=waiting for the network") for m in messages), messages
        assert "READY=1" not in messages and c.status("n1") is None
        # a veth pair rather than a dummy: containers often lack the dummy module
        for command in (["link", "add", "eldtest0", "type", "veth", "peer", "name", "eldtest1"],
                        ["addr", "add", "10.213.99.1/24", "dev", "eldtest0"],
                        ["link", "set", "eldtest1", "up"],
                        ["link", "set", "eldtest0", "multicast", "on", "up"]):
            subprocess.run(["ip", "-n", netns, *command], check=True, timeout=30)
        status = wait_for(lambda: c.status("n1"), 15, "the daemon to answer once the interface exists",
                          log_path.read_text)
        assert status["node"] == "n1"
        wait_for(lambda: "READY=1" in drain(), 5, "READY=1 after binding", log_path.read_text)
        assert "network ready after" in log_path.read_text()
        assert "unicast=10.213.99.1:" in log_path.read_text()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait(10)
        notify.close()
        subprocess.run(["ip", "netns", "delete", netns], timeout=30)


def test_sigterm_on_a_follower_is_fast_and_logs_a_final_line(tmp_path):
    with Cluster(tmp_path, 3, protocol="quorum-lease") as c:
        c.start("n2")
        c.start("n3")
        leader = c.wait_leader(10, ["n2", "n3"])
        durations = []
        for attempt in range(3):
            c.start("n1")
            c.wait_for(lambda: c.agreed_leader() == leader, 10, "n1 to follow the leader")
            started = time.monotonic()
            c.signal("n1", signal.SIGTERM)
            assert c.procs["n1"].wait(10) == 0
            durations.append(time.monotonic() - started)
            c.procs.pop("n1")
            lines = (tmp_path / "n1.log").read_text().splitlines()
            assert "exiting: SIGTERM (follower), stopped in" in lines[-1], lines[-3:]
        # generous: the machine is shared; the measured median is in the report
        assert statistics.median(durations) < 2.0, durations


def test_sigterm_on_a_leader_hands_over_and_logs_a_final_line(tmp_path):
    with Cluster(tmp_path, 1, protocol="bully") as c:
        c.start("n1")
        c.wait_leader(10)
        c.wait_for(lambda: any(e[1] == "promote" for e in c.hook_events()), 10, "promote hook")
        c.signal("n1", signal.SIGTERM)
        assert c.procs["n1"].wait(15) == 0
        assert c.hook_events()[-1][1] == "demote"
        lines = (tmp_path / "n1.log").read_text().splitlines()
        assert "exiting: SIGTERM (leader), stopped in" in lines[-1], lines[-3:]


def test_config_error_is_one_final_line(tmp_path):
    c = Cluster(tmp_path, 1, protocol="bully")
    c.config_text = c.config_text.replace("protocol = bully", "protocol = paxos")
    result = run_daemon(c)
    assert result.returncode == EX_CONFIG
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("electiond: exiting: config error:")


def test_sigterm_before_the_loop_takes_signals_still_logs_a_final_line(tmp_path):
    """--cleanup runs its demote hook before any event-loop signal handler exists."""
    hook = tmp_path / "slow-demote"
    hook.write_text(f"#!/bin/sh\necho $$ > {tmp_path / 'hook.pid'}\nexec sleep 30\n")
    hook.chmod(0o755)
    c = Cluster(tmp_path, 1, protocol="bully", hooks={"demote": str(hook)})
    proc = subprocess.Popen(
        [sys.executable, "-m", "electiond", "--config", str(c.config_path("n1")), "--node", "n1", "--cleanup"],
        env=dict(os.environ, PYTHONPATH=str(REPO), SERVICE_RESULT="signal"),
        stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: (tmp_path / "hook.pid").exists() and (tmp_path / "hook.pid").read_text().strip(),
                 15, "the demote hook to start")
        # the hook can write its pid before the daemon's spawn call returns; a
        # signal inside that call would find no process to kill (hooks.py)
        time.sleep(1.0)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=10)
        assert proc.returncode == 0
        lines = err.strip().splitlines()
        assert "exiting: SIGTERM during --cleanup" in lines[-1], lines
        assert not any("Traceback" in line for line in lines)
        hook_pid = int((tmp_path / "hook.pid").read_text())
        # the interrupted hook is killed with its process group, not left behind
        wait_for(lambda: not os.path.exists(f"/proc/{hook_pid}") or
                 open(f"/proc/{hook_pid}/stat").read().split()[2] == "Z", 10, "the hook to be killed")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        proc.stderr.close()


def test_unwritable_state_file_exits_78_before_any_hook(tmp_path):
    c = Cluster(tmp_path, 1, protocol="bully")
    # a directory where the temp file goes makes the atomic write fail, even as root
    (tmp_path / "n1" / "state.json.tmp").mkdir(parents=True)
    result = run_daemon(c)
    assert result.returncode == EX_CONFIG, result.stderr
    assert "exiting: state error: cannot write" in result.stderr and "Traceback" not in result.stderr
    assert c.hook_events() == []
