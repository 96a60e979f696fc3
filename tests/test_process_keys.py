"""Real daemons on loopback: live key rotation, strict key files, duplicate names."""

from __future__ import annotations

import os
import pathlib
import signal
import subprocess
import sys
import time

import pytest

from cluster import REPO, Cluster

from electiond import keys

OLD = keys.Key("old", bytes.fromhex("11" * 32))
NEW = keys.Key("new", bytes.fromhex("22" * 32))


class KeyedCluster(Cluster):
    """Each node reads its own key file, so a rotation is a real rolling change."""

    def key_path(self, name: str) -> pathlib.Path:
        return self.workdir / f"{name}.key"

    def write_keys(self, name: str, ring: tuple[keys.Key, ...], mode: int = 0o600) -> None:
        path = self.key_path(name)
        tmp = path.with_suffix(".tmp")
        tmp.write_text("".join(keys.key_line(k) for k in ring))
        tmp.chmod(mode)
        tmp.rename(path)

    def config_path(self, name: str) -> pathlib.Path:
        path = super().config_path(name)
        path.write_text(path.read_text().replace(
            "interface = 127.0.0.1", f"interface = 127.0.0.1\nkey_file = {self.key_path(name)}", 1))
        return path

    def log(self, name: str) -> str:
        return (self.workdir / f"{name}.log").read_text(errors="replace")


def _leadership_history(c: Cluster, name: str) -> list[tuple[str, int]]:
    from electiond.cli import request

    return [(h["event"], h["term"]) for h in request(c.socket(name), "history", timeout_s=2.0)
            if h["event"] in ("promote", "demote", "leader")]


def _changes(c: Cluster) -> list[tuple[str, str]]:
    return [(e[1], e[2]) for e in c.hook_events() if e[1] in ("promote", "demote")]


# Long leases and a slow detector: a loaded test machine stalls daemons for
# hundreds of ms, which must not pass for a leadership change caused by the
# rotation (what this test is about: every datagram still authenticates).
PATIENT = {"heartbeat_interval": "100ms", "election_timeout": "2s-3s", "lease": "1500ms",
           "min_suspicion_timeout": "1s", "max_suspicion_timeout": "4s"}


def test_live_key_rotation_on_three_nodes_changes_no_leader(tmp_path):
    with KeyedCluster(tmp_path, 3, protocol="quorum-lease", timing=PATIENT) as c:
        for name in c.names:
            c.write_keys(name, (OLD,))
        c.start_all()
        leader = c.wait_leader(15.0)
        c.wait_for(lambda: ("promote", leader) in _changes(c), 10.0, "the promote hook")
        before = _changes(c)
        term = c.status(leader)["term"]
        changes_before = {n: c.status(n)["leader_changes_last_hour"] for n in c.names}
        history_before = {n: _leadership_history(c, n) for n in c.names}
        reloads = {name: 0 for name in c.names}

        def reload(name: str) -> None:
            reloads[name] += 1
            c.signal(name, signal.SIGHUP)
            c.wait_for(lambda: c.log(name).count("keys reloaded") == reloads[name], 5.0, f"{name} to reload")

        # 1-2: add the new key as the second line everywhere, reload one by one
        # 3-4: move it first everywhere, reload; 5: remove the old one, reload
        for ring in ((OLD, NEW), (NEW, OLD), (NEW,)):
            for name in c.names:
                c.write_keys(name, ring)
                reload(name)
                time.sleep(0.3)  # a mixed cluster runs for a while at every step
            assert all(c.status(n)["signing_key"] == ring[0].id for n in c.names)
        # a bad new file is refused and the running keys kept
        c.write_keys("n1", (NEW,), mode=0o640)
        c.signal("n1", signal.SIGHUP)
        c.wait_for(lambda: "reload refused" in c.log("n1") and "chmod 600" in c.log("n1"), 5.0, "the refusal")
        time.sleep(1.0)
        assert c.status("n1")["accepted_keys"] == ["new"]
        for name in c.names:
            status = c.status(name)
            assert status["dropped"]["bad_mac"] == 0 and status["dropped"]["unknown_key"] == 0, status["dropped"]
        assert c.agreed_leader() == leader
        assert c.status(leader)["term"] == term
        assert _changes(c) == before
        for name in c.names:
            status = c.status(name)
            assert status["authenticated"] and status["leader_changes_last_hour"] == changes_before[name]
            assert _leadership_history(c, name) == history_before[name]


def test_skipping_the_add_step_is_counted_as_unknown_key(tmp_path):
    with KeyedCluster(tmp_path, 2, protocol="bully") as c:
        for name in c.names:
            c.write_keys(name, (OLD,))
        c.start_all()
        c.wait_leader(10.0)
        c.write_keys("n1", (NEW, OLD))  # signs with a key n2 does not list yet
        c.signal("n1", signal.SIGHUP)
        c.wait_for(lambda: c.status("n2")["dropped"]["unknown_key"] > 0, 5.0, "n2 to count unknown_key")
        assert c.status("n2")["dropped"]["bad_mac"] == 0


def test_reload_refuses_turning_authentication_off(tmp_path):
    with KeyedCluster(tmp_path, 1, protocol="bully") as c:
        c.write_keys("n1", (OLD,))
        c.start_all()
        c.wait_leader(10.0)
        path = c.config_path("n1")
        path.write_text("\n".join(line for line in path.read_text().splitlines() if not line.startswith("key_file")))
        c.signal("n1", signal.SIGHUP)
        c.wait_for(lambda: "authentication on/off" in c.log("n1"), 5.0, "the refusal")
        assert c.status("n1")["authenticated"]


def _run(config: pathlib.Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "electiond", "--config", str(config), "--node", "n1"],
                          capture_output=True, text=True, timeout=60, env=dict(os.environ, PYTHONPATH=str(REPO)))


def test_daemon_with_a_group_readable_key_exits_78_naming_the_fix(tmp_path):
    c = KeyedCluster(tmp_path, 1, protocol="bully")
    c.write_keys("n1", (OLD,), mode=0o640)
    result = _run(c.config_path("n1"))
    assert result.returncode == 78
    assert f"chmod 600 {c.key_path('n1')}" in result.stderr and "[cluster] key_file" in result.stderr
    assert not os.path.exists(c.socket("n1"))


def test_daemon_with_a_version_1_bare_key_exits_78_naming_the_line(tmp_path):
    c = KeyedCluster(tmp_path, 1, protocol="bully")
    c.key_path("n1").write_text("A" * 44 + "\n")
    c.key_path("n1").chmod(0o600)
    result = _run(c.config_path("n1"))
    assert result.returncode == 78 and "line 1" in result.stderr and "--gen-key" in result.stderr


# ---- duplicate names ---------------------------------------------------------------


@pytest.mark.parametrize("n1_leads", [False, True], ids=["n1-follows", "n1-leads"])
def test_a_second_daemon_with_our_name_puts_both_in_fault_until_it_is_gone(tmp_path, n1_leads):
    per_node = {"n1": {"priority": "250"}} if n1_leads else None
    with KeyedCluster(tmp_path, 3, protocol="quorum-lease", per_node=per_node) as c:
        for name in c.names:
            c.write_keys(name, (OLD,))
        c.start_all()
        first = c.wait_for(lambda: c.agreed_leader(), 10.0, "a leader")
        if n1_leads:
            first = c.wait_for(lambda: c.agreed_leader() == "n1" and "n1", 15.0, "n1 to lead (priority)")
            c.wait_for(lambda: ("promote", "n1") in _changes(c), 10.0, "n1's promote hook")
        # the very same config but its own state dir and socket
        c.spawn_as("n1-copy", "n1", c.twin_config("n1", "-copy"))
        try:
            c.wait_for(lambda: "duplicate_name" in (c.status("n1") or {}).get("blocked_by", {}), 10.0,
                       "n1 to enter FAULT")
            c.wait_for(lambda: "duplicate_name" in (c.status("n1-copy") or {}).get("blocked_by", {}), 10.0,
                       "the copy to enter FAULT")
            for text in (c.log("n1"), (c.workdir / "n1-copy.log").read_text()):
                line = next(ln for ln in text.splitlines() if "duplicate name, entering FAULT" in ln)
                assert line.count("127.0.0.1:") >= 2, line  # both addresses are named
            # neither copy leads; the two other nodes still have a leader (2 of 3 is a quorum)
            leader = c.wait_for(lambda: c.agreed_leader(["n2", "n3"]), 10.0, "a leader among n2, n3")
            assert leader in ("n2", "n3")
            assert c.status("n1")["role"] != "leader" and c.status("n1-copy")["role"] != "leader"
            assert c.status("n1")["members"][0]["duplicate"]
            c.wait_for(lambda: any(m["name"] == "n1" and m["duplicate"] for m in c.status("n2")["members"]),
                       10.0, "n2 to flag n1 as a duplicate")
            assert c.status("n2")["dropped"]["duplicate_name"] > 0
            ctl = [sys.executable, "-m", "electiond.cli", "--socket"]
            human = subprocess.run([*ctl, c.socket("n1"), "status"], capture_output=True, text=True, timeout=30,
                                   cwd=REPO)
            assert "FAULT     duplicate_name: another process uses our name n1" in human.stdout, human.stdout
            human = subprocess.run([*ctl, c.socket("n2"), "members"], capture_output=True, text=True, timeout=30,
                                   cwd=REPO)
            assert any(line.startswith("n1 ") and "DUPLICATE NAME" in line for line in human.stdout.splitlines())
            assert any(e[1] == "fault" and e[2] == "n1" and e[4] == "duplicate_name" for e in c.hook_events())
            if n1_leads:  # the leader stepped down and ran its demote hook
                assert any(e[1] == "demote" and e[2] == "n1" and e[4] == "duplicate_name" for e in c.hook_events())
            assert first is not None
        finally:
            c.stop("n1-copy")
        c.wait_for(lambda: (c.status("n1") or {}).get("blocked_by") == {}, 10.0, "n1 to leave FAULT")
        assert "duplicate name cleared" in c.log("n1")
        c.wait_leader(10.0)
        # the peers follow the real n1 again, and it takes part: its table sees everyone
        c.wait_for(lambda: not any(m["name"] == "n1" and m["duplicate"] for m in c.status("n2")["members"]),
                   10.0, "n2 to stop flagging n1")
        c.wait_for(lambda: all(m["alive"] for m in c.status("n1")["members"]), 10.0, "n1 to see all members")
