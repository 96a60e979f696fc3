"""The daemon as a process: authentication, hostile datagrams, reload, bad state."""

import os
import signal
import socket
import subprocess
import sys

from cluster import REPO, Cluster


def test_authenticated_cluster_and_a_wrong_key_is_dropped(tmp_path):
    good, bad = tmp_path / "key", tmp_path / "badkey"
    # the same key id with another secret: the receiver tries that id's key and the MAC fails
    good.write_text(f"k1 {'aa' * 32}\n")
    bad.write_text(f"k1 {'bb' * 32}\n")
    good.chmod(0o600)
    bad.chmod(0o600)
    with Cluster(tmp_path, 3, protocol="bully") as c:
        c.config_text = c.config_text.replace("interface = 127.0.0.1", f"interface = 127.0.0.1\nkey_file = {good}")
        c.start("n1")
        c.start("n2")
        # n1 may lead first; n2 takes over preempt_delay (5 s) after its start
        c.wait_for(lambda: c.agreed_leader() == "n2", 12.0, "n2 to lead")
        assert c.status("n2")["authenticated"] is True
        c.config_text = c.config_text.replace(str(good), str(bad))
        c.start("n3")  # highest id, wrong key: must not take over
        c.wait_for(lambda: c.status("n1")["dropped"]["bad_mac"] > 3, 5.0, "n1 to drop n3's datagrams")
        assert c.agreed_leader(["n1", "n2"]) == "n2"


def test_garbage_datagrams_are_counted_not_fatal(tmp_path):
    with Cluster(tmp_path, 1, protocol="bully") as c:
        c.start_all()
        c.wait_leader(5.0)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 1)
            s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton("127.0.0.1"))
            for payload in (b"\xc1", b"x" * 1500, b"\x92\xc4\x01a\xc4\x00", b"\x90"):
                s.sendto(payload, (c.group, c.port))
        c.wait_for(lambda: sum(v for k, v in c.status("n1")["dropped"].items() if k != "self") >= 4, 5.0,
                   "the drops to be counted")
        dropped = c.status("n1")["dropped"]
        assert dropped["bad_encoding"] >= 1 and dropped["oversize"] >= 1 and dropped["bad_schema"] >= 1
        assert dropped["wrong_version"] >= 1  # [bytes, bytes] is version 1's envelope
        assert c.procs["n1"].poll() is None


def test_sighup_reloads_hooks_and_refuses_fixed_changes(tmp_path):
    with Cluster(tmp_path, 1, protocol="bully") as c:
        c.start_all()
        c.wait_leader(5.0)
        path = c.config_path("n1")
        path.write_text(path.read_text().replace("protocol = bully", "protocol = ring"))
        c.signal("n1", signal.SIGHUP)
        c.wait_for(lambda: "reload refused" in (tmp_path / "n1.log").read_text(), 5.0, "the refusal")
        assert "protocol" in (tmp_path / "n1.log").read_text()
        path.write_text(path.read_text().replace("protocol = ring", "protocol = bully")
                        .replace("timeout = 10s", "timeout = 11s"))
        c.signal("n1", signal.SIGHUP)
        c.wait_for(lambda: "reloaded" in (tmp_path / "n1.log").read_text(), 5.0, "the reload")
        assert c.status("n1")["role"] == "leader"


def test_corrupt_state_refuses_to_start(tmp_path):
    c = Cluster(tmp_path, 1, protocol="bully")
    (tmp_path / "n1").mkdir()
    (tmp_path / "n1" / "state.json").write_text("{not json")
    result = subprocess.run([sys.executable, "-m", "electiond", "--config", str(c.config_path("n1")), "--node", "n1"],
                            capture_output=True, text=True, timeout=60,
                            env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert result.returncode == 78
    assert "state.json is corrupt" in result.stderr


def test_sigterm_leader_demotes_and_exits_cleanly(tmp_path):
    with Cluster(tmp_path, 1, protocol="bully") as c:
        c.start_all()
        c.wait_leader(5.0)
        c.wait_for(lambda: any(e[1] == "promote" for e in c.hook_events()), 5.0, "promote hook")
        c.signal("n1", signal.SIGTERM)
        assert c.procs["n1"].wait(15) == 0
        assert c.hook_events()[-1][1] == "demote" and c.hook_events()[-1][4] in ("shutdown", "stepdown")
