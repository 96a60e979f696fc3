"""[cluster] witnesses, [node] role and [hooks] refresh: parsing and the config errors."""

from __future__ import annotations

import pathlib
import subprocess
import sys

import pytest

from electiond import config
from electiond.daemon import EX_CONFIG

REPO = pathlib.Path(__file__).resolve().parent.parent

WITNESS_BASE = """
[cluster]
name = pair
protocol = quorum-lease
members = a=1, b=2, w=3
witnesses = w
interface = 127.0.0.1

[node]
name = {name}
{role}

[hooks]
promote = /usr/lib/electiond/hooks/vip up 10.0.0.10/24 eth0
refresh = /usr/lib/electiond/hooks/vip refresh 10.0.0.10/24 eth0
refresh_interval = 2s
"""


def write(tmp_path, text: str) -> str:
    path = tmp_path / "electiond.conf"
    path.write_text(text)
    return str(path)


def conf(tmp_path, name: str = "a", role: str = "") -> str:
    return write(tmp_path, WITNESS_BASE.format(name=name, role=role))


def test_two_voters_and_a_witness_parse(tmp_path):
    cfg = config.load(conf(tmp_path, "a"))
    assert cfg.settings.witnesses == ("w",) and cfg.settings.quorum == 2
    assert cfg.hooks.refresh == ("/usr/lib/electiond/hooks/vip", "refresh", "10.0.0.10/24", "eth0")
    assert cfg.hooks.refresh_interval_s == 2.0
    assert cfg.warnings == ()
    w = config.load(conf(tmp_path, "w", "role = witness"))
    assert w.settings.is_witness("w") and not w.settings.is_witness("a")
    # hooks on a witness are legal (one file for all nodes) but never run: said once
    assert any("never run on a witness" in x for x in w.warnings)


def test_refresh_interval_defaults_to_a_minute(tmp_path):
    cfg = config.load(write(tmp_path, WITNESS_BASE.format(name="a", role="").replace("refresh_interval = 2s\n", "")))
    assert cfg.hooks.refresh_interval_s == 60.0


@pytest.mark.parametrize("name,role,named,why", [
    ("w", "", "[node] role", "set role = witness"),
    ("a", "role = witness", "[node] role", "does not list 'a'"),
    ("a", "role = judge", "[node] role", "expected voter or witness"),
])
def test_a_node_that_disagrees_about_its_own_role_is_refused(tmp_path, name, role, named, why):
    with pytest.raises(config.ConfigError) as err:
        config.load(conf(tmp_path, name, role))
    assert named in str(err.value) and why in str(err.value)


@pytest.mark.parametrize("old,new,why", [
    ("witnesses = w", "witnesses = x", "'x' is not in members"),
    ("witnesses = w", "witnesses = w, w", "listed twice"),
    ("witnesses = w", "witnesses = a, b, w", "every member is a witness"),
    ("protocol = quorum-lease", "protocol = bully", "bully has no quorum"),
    ("protocol = quorum-lease", "protocol = ring", "ring has no quorum"),
    ("refresh_interval = 2s", "refresh_interval = 2", "bad duration"),
])
def test_witness_and_refresh_errors_name_the_key(tmp_path, old, new, why):
    text = WITNESS_BASE.format(name="a", role="").replace(old, new)
    with pytest.raises(config.ConfigError) as err:
        config.load(write(tmp_path, text))
    key = new.split(" =")[0].replace("protocol", "witnesses")
    assert key in str(err.value) and why in str(err.value)


def test_two_member_quorum_lease_is_refused_naming_the_witness(tmp_path):
    text = WITNESS_BASE.format(name="a", role="").replace("members = a=1, b=2, w=3\nwitnesses = w\n",
                                                          "members = a=1, b=2\n")
    with pytest.raises(config.ConfigError) as err:
        config.load(write(tmp_path, text))
    assert "[cluster] members" in str(err.value) and "witness" in str(err.value)
    # bully and ring have no quorum: two members are fine there
    assert config.load(write(tmp_path, text.replace("quorum-lease", "bully"))).settings.quorum == 2


def test_daemon_exits_78_on_a_two_member_quorum_lease_cluster(tmp_path):
    text = WITNESS_BASE.format(name="a", role="").replace("members = a=1, b=2, w=3\nwitnesses = w\n",
                                                          "members = a=1, b=2\n")
    path = write(tmp_path, text)
    result = subprocess.run([sys.executable, "-m", "electiond", "--config", path, "--check-config"],
                            capture_output=True, text=True, timeout=60, cwd=REPO,
                            env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})
    assert result.returncode == EX_CONFIG
    assert "[cluster] members" in result.stderr and "witness" in result.stderr
