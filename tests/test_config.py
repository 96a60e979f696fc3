import pathlib
import subprocess
import sys

import pytest

from electiond import config
from electiond.daemon import EX_CONFIG

REPO = pathlib.Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "etc" / "electiond.conf"

BASE = """
[cluster]
name = demo
protocol = bully                  ; bully | ring | quorum-lease
members = n1=1, n2=2, n3=3        ; name=id
group = 239.255.76.1
port = 7676
interface = 127.0.0.1

[node]
name = n1
preempt = yes

[timing]
heartbeat_interval = 50ms
election_timeout = 150ms-300ms

[control]
socket = /run/electiond/control.sock

[state]
directory = /var/lib/electiond

[hooks]
promote = /usr/lib/electiond/hooks/vip up 10.0.0.10/24 eth0
demote  = /usr/lib/electiond/hooks/vip down 10.0.0.10/24 eth0
timeout = 30s
"""


def write(tmp_path, text):
    path = tmp_path / "electiond.conf"
    path.write_text(text)
    return str(path)


def test_issue_example_parses(tmp_path):
    cfg = config.load(write(tmp_path, BASE))
    s = cfg.settings
    assert (cfg.protocol, s.node_name, s.cluster) == ("bully", "n1", "demo")
    assert [(m.name, m.id) for m in s.members] == [("n1", 1), ("n2", 2), ("n3", 3)]
    assert s.heartbeat_interval_s == pytest.approx(0.05)
    assert (s.election_timeout_min_s, s.election_timeout_max_s) == pytest.approx((0.15, 0.30))
    assert cfg.hooks.promote == ("/usr/lib/electiond/hooks/vip", "up", "10.0.0.10/24", "eth0")
    assert cfg.hooks.timeout_s == 30.0
    assert cfg.keys == () and cfg.warnings == ()


def filled_in_example(tmp_path) -> str:
    """The shipped config once the admin did what it asks: members and a key."""
    key = tmp_path / "key"
    key.write_text(f"k1 {'ab' * 32}\n")
    key.chmod(0o600)
    text = EXAMPLE.read_text()
    assert "\n# members = n1=1, n2=2, n3=3" in text
    text = text.replace("\n# members = n1=1, n2=2, n3=3", "\nmembers = n1=1, n2=2, n3=3")
    text = text.replace("key_file = /etc/electiond/key", f"key_file = {key}")
    return write(tmp_path, text)


def test_shipped_example_refuses_until_members_and_key_are_written(tmp_path):
    # the package must not run a daemon on placeholders: the refusal names what to do
    with pytest.raises(config.ConfigError, match=r"\[cluster\] members.*is required.*README.Debian"):
        config.load(str(EXAMPLE))
    cfg = config.load(filled_in_example(tmp_path))
    assert cfg.protocol == "quorum-lease" and len(cfg.keys) == 1


def test_node_override_and_durations(tmp_path):
    cfg = config.load(write(tmp_path, BASE.replace("heartbeat_interval = 50ms", "heartbeat_interval = 0.02s")), "n3")
    assert cfg.settings.node_name == "n3"
    assert cfg.settings.heartbeat_interval_s == pytest.approx(0.02)


def test_even_member_count_warns(tmp_path):
    cfg = config.load(write(tmp_path, BASE.replace("n3=3", "n3=3, n4=4")))
    assert any("even" in w for w in cfg.warnings)


def test_key_file(tmp_path):
    key = tmp_path / "key"
    key.write_text(f"# rotation: new first\nnew {'ab' * 32}\nold {'cd' * 32}\n")
    key.chmod(0o600)
    cfg = config.load(write(tmp_path, BASE.replace("interface = 127.0.0.1", f"interface = 127.0.0.1\nkey_file = {key}")))
    assert [(k.id, k.secret) for k in cfg.keys] == [("new", b"\xab" * 32), ("old", b"\xcd" * 32)]


BAD = [
    ("protocol = bully", "protocol = raft", "[cluster] protocol"),
    ("name = n1", "name = n9", "[node] name"),
    ("n3=3", "n3=2", "[cluster] members"),
    ("n3=3", "n1=3", "[cluster] members"),
    ("n3=3", "n3=x", "[cluster] members"),
    ("heartbeat_interval = 50ms", "heartbeat_interval = 50", "[timing] heartbeat_interval"),
    ("heartbeat_interval = 50ms", "heartbeat_interval = fast", "[timing] heartbeat_interval"),
    ("election_timeout = 150ms-300ms", "election_timeout = 300ms-150ms", "[timing] election_timeout"),
    ("election_timeout = 150ms-300ms", "election_timeout = 40ms", "[timing] election_timeout"),
    ("interface = 127.0.0.1", "interface = 127.0.0.1\nkey_file = /nonexistent/key", "[cluster] key_file"),
    ("preempt = yes", "preempt = maybe", "[node] preempt"),
    ("preempt = yes", "preempt = yes\npriorty = 3", "[node] priorty"),
    ("port = 7676", "port = 70000", "[cluster] port"),
    ("group = 239.255.76.1", "group = 10.1.2.3", "[cluster] group"),
    ("timeout = 30s", "timeout = 30s\non_promote_failure = panic", "[hooks] on_promote_failure"),
    ("[state]", "[stat]", "[stat]"),
    ("name = demo", "", "[cluster] name"),
    ("timeout = 30s", "timeout = 30s\n[health]\ntrack_process = postgres [unclosed", "[health] track_process"),
    ("members = n1=1, n2=2, n3=3        ; name=id", "", "[cluster] members"),
]


@pytest.mark.parametrize("old,new,named", BAD)
def test_bad_config_names_the_key(tmp_path, old, new, named):
    assert old in BASE
    path = write(tmp_path, BASE.replace(old, new, 1))
    with pytest.raises(config.ConfigError) as err:
        config.load(path)
    assert path in str(err.value) and named in str(err.value)


def test_quorum_lease_needs_two_renewals_per_lease(tmp_path):
    text = BASE.replace("protocol = bully", "protocol = quorum-lease").replace(
        "election_timeout = 150ms-300ms", "election_timeout = 150ms-300ms\nlease = 100ms")
    with pytest.raises(config.ConfigError, match=r"\[timing\] lease"):
        config.load(write(tmp_path, text))


def test_short_key_rejected(tmp_path):
    key = tmp_path / "key"
    key.write_text("k1 0123456789abcdef\n")
    key.chmod(0o600)
    path = write(tmp_path, BASE.replace("interface = 127.0.0.1", f"interface = 127.0.0.1\nkey_file = {key}"))
    with pytest.raises(config.ConfigError, match="key_file"):
        config.load(path)


def run_daemon(*args):
    return subprocess.run([sys.executable, "-m", "electiond", *args], capture_output=True, text=True,
                          timeout=60, cwd=REPO, env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})


@pytest.mark.parametrize("old,new,named", [BAD[0], BAD[5], BAD[9], BAD[11]])
def test_daemon_exits_78_naming_the_key(tmp_path, old, new, named):
    path = write(tmp_path, BASE.replace(old, new, 1))
    result = run_daemon("--config", path, "--check-config")
    assert result.returncode == EX_CONFIG
    assert named in result.stderr and path in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_check_config_ok(tmp_path):
    # the example names the installed hooks; here they are the repository's
    text = pathlib.Path(filled_in_example(tmp_path)).read_text()
    text = text.replace("/usr/lib/electiond/hooks/", f"{REPO}/scripts/hooks/")
    result = run_daemon("--config", write(tmp_path, text), "--check-config")
    assert result.returncode == 0, result.stderr
    assert "OK" in result.stdout


@pytest.mark.parametrize("hook,why", [("/nonexistent/promote-hook", "does not exist"),
                                      ("{tmp}/plain-file", "is not an executable file"),
                                      ("{tmp}", "is not an executable file"),
                                      ("no-such-program-anywhere", "is not found on PATH")])
def test_check_config_fails_78_on_a_hook_that_cannot_run(tmp_path, hook, why):
    (tmp_path / "plain-file").write_text("#!/bin/sh\n")
    (tmp_path / "plain-file").chmod(0o644)
    hook = hook.format(tmp=tmp_path)
    text = pathlib.Path(filled_in_example(tmp_path)).read_text()
    text = text.replace("/usr/lib/electiond/hooks/", f"{REPO}/scripts/hooks/")
    text = text.replace(f"promote = {REPO}/scripts/hooks/vip", f"promote = {hook}", 1)
    result = run_daemon("--config", write(tmp_path, text), "--check-config")
    assert result.returncode == EX_CONFIG
    assert "[hooks] promote" in result.stderr and why in result.stderr


def test_control_and_monitor_keys(tmp_path):
    base = BASE.replace("[control]\n", "[control]\nmetrics_listen = 127.0.0.1:9798\nadmin_group = root\n")
    base = base.replace("timeout = 30s\n", "timeout = 30s\nmax_promote_failures = 7\n")
    cfg = config.load(write(tmp_path, base + "\n[monitor]\nmax_changes_per_hour = 5\n"))
    assert cfg.metrics_listen == ("127.0.0.1", 9798) and cfg.admin_group == "root"
    assert cfg.max_changes_per_hour == 5 and cfg.hooks.max_promote_failures == 7
    defaults = config.load(write(tmp_path, BASE))
    assert defaults.metrics_listen is None and defaults.max_changes_per_hour == 2
    assert defaults.hooks.max_promote_failures == 3
    for bad, named in (("metrics_listen = localhost:9798\n", "metrics_listen"),
                       ("metrics_listen = 127.0.0.1\n", "metrics_listen"),
                       ("admin_group = no-such-group-xyz\n", "admin_group")):
        with pytest.raises(config.ConfigError, match=named):
            config.load(write(tmp_path, BASE.replace("[control]\n", "[control]\n" + bad)))


def test_missing_file_exits_78(tmp_path):
    result = run_daemon("--config", str(tmp_path / "none.conf"), "--check-config")
    assert result.returncode == EX_CONFIG and "none.conf" in result.stderr


def test_health_section(tmp_path):
    text = BASE + "\n[health]\ntrack_process = postgres 'pg_ctl .*-D /srv'\ntrack_interface = eth0, eth1\nrise = 3\n"
    cfg = config.load(write(tmp_path, text))
    assert cfg.health.track_process == ("postgres", "pg_ctl .*-D /srv")
    assert cfg.health.track_interface == ("eth0", "eth1") and cfg.health.rise == 3


def test_clock_check_defaults_to_2s_and_0s_turns_it_off(tmp_path):
    assert config.load(write(tmp_path, BASE)).settings.clock_check_s == pytest.approx(2.0)
    for text, want in (("5s", 5.0), ("0s", 0.0)):
        cfg = config.load(write(tmp_path, BASE.replace("election_timeout = 150ms-300ms",
                                                       f"election_timeout = 150ms-300ms\nclock_check = {text}")))
        assert cfg.settings.clock_check_s == pytest.approx(want)
    with pytest.raises(config.ConfigError, match="clock_check"):
        config.load(write(tmp_path, BASE.replace("election_timeout = 150ms-300ms",
                                                 "election_timeout = 150ms-300ms\nclock_check = -1s")))


def test_lease_max_defaults_to_ten_heartbeats_and_never_below_the_lease(tmp_path):
    ql = BASE.replace("protocol = bully", "protocol = quorum-lease")
    s = config.load(write(tmp_path, ql)).settings
    assert s.lease_max_s == pytest.approx(0.5) and s.lease_ceiling_s() == pytest.approx(0.5)
    longer = ql.replace("election_timeout = 150ms-300ms", "election_timeout = 150ms-300ms\nlease = 800ms")
    assert config.load(write(tmp_path, longer)).settings.lease_ceiling_s() == pytest.approx(0.8)
    off = ql.replace("election_timeout = 150ms-300ms", "election_timeout = 150ms-300ms\nlease_max = 150ms")
    assert config.load(write(tmp_path, off)).settings.lease_ceiling_s() == pytest.approx(0.15)
    below = ql.replace("election_timeout = 150ms-300ms", "election_timeout = 150ms-300ms\nlease_max = 100ms")
    with pytest.raises(config.ConfigError, match=r"\[timing\] lease_max"):
        config.load(write(tmp_path, below))
