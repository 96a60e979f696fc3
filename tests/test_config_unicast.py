"""[cluster] transport = unicast, member addresses and IPv6 groups."""

import re
import subprocess
import sys

import pytest

from electiond import config
from electiond.daemon import EX_CONFIG

UNICAST = """
[cluster]
name = demo
protocol = quorum-lease
transport = unicast
members = {members}
{extra}
[node]
name = n1

[state]
directory = {state}
"""


def write(tmp_path, members, extra="", name="u.conf"):
    path = tmp_path / name
    path.write_text(UNICAST.format(members=members, extra=extra, state=tmp_path / "state"))
    return str(path)


def test_member_list_syntax():
    members, addresses = config.parse_member_list(
        "n1=1@10.0.0.1, n2=2@10.0.0.2:7701, n3=3@[2001:DB8::3], n4=4@[::1]:7703, n5=5")
    assert [m.name for m in members] == ["n1", "n2", "n3", "n4", "n5"]
    assert addresses == {"n1": ("10.0.0.1", None), "n2": ("10.0.0.2", 7701),
                         "n3": ("2001:db8::3", None), "n4": ("::1", 7703)}
    assert config.parse_members("n1=1, n2=2") == members[:2]


@pytest.mark.parametrize("text,says", [
    ("n1=1@10.0.0.300", "not an IP address"),
    ("n1=1@2001:db8::3", "not an IP address"),  # IPv6 must be bracketed
    ("n1=1@[10.0.0.1]", "brackets are for IPv6"),
    ("n1=1@10.0.0.1:0", "bad port"),
    ("n1=1@10.0.0.1:99999", "bad port"),
    ("n1=1@10.0.0.1:x", "bad port"),
    ("n1=1@239.1.1.1", "not a unicast"),
    ("n1=1@[fe80::1]", "link-local"),
    ("n1=1@", "not an IP address"),
])
def test_bad_member_addresses(text, says):
    with pytest.raises(ValueError, match=says):
        config.parse_member_list(text)


def test_unicast_config_loads_with_default_and_explicit_ports(tmp_path):
    cfg = config.load(write(tmp_path, "n1=1@127.0.0.1:7701, n2=2@127.0.0.2, n3=3@127.0.0.3:7703"))
    assert cfg.transport == "unicast"
    assert cfg.member_addresses == {"n1": ("127.0.0.1", 7701), "n2": ("127.0.0.2", 7676),
                                    "n3": ("127.0.0.3", 7703)}
    assert cfg.own_address == ("127.0.0.1", 7701)
    assert not cfg.warnings


def test_ipv6_unicast_loopback(tmp_path):
    cfg = config.load(write(tmp_path, "n1=1@[::1]:7701, n2=2@[::1]:7702, n3=3@[0:0::1]:7703"))
    assert cfg.member_addresses["n3"] == ("::1", 7703)


def test_multicast_stays_the_default(tmp_path):
    path = tmp_path / "m.conf"
    path.write_text(UNICAST.replace("transport = unicast\n", "").format(
        members="n1=1, n2=2, n3=3", extra="", state=tmp_path))
    cfg = config.load(str(path))
    assert cfg.transport == "multicast" and cfg.member_addresses == {} and cfg.own_address is None


@pytest.mark.parametrize("members,extra,key,says", [
    ("n1=1@10.0.0.1, n2=2, n3=3@10.0.0.3", "", "members", "n2 has none"),
    ("n1=1@10.0.0.1, n2=2@10.0.0.1, n3=3@10.0.0.3", "", "members", "share the address 10.0.0.1:7676"),
    ("n1=1@10.0.0.1:7701, n2=2@10.0.0.1:7701, n3=3@10.0.0.1:7703", "", "members", "share"),
    ("n1=1@[::1]:7701, n2=2@[0::1]:7701, n3=3@[::1]:7703", "", "members", "share the address [::1]:7701"),
    ("n1=1@10.0.0.1, n2=2@[2001:db8::2], n3=3@10.0.0.3", "", "members", "mixes IPv4 and IPv6"),
    ("n1=1@10.0.0.1, n2=2@10.0.0.2, n3=3@10.0.0.3", "group = 239.255.76.1", "group", "transport = multicast"),
    ("n1=1@10.0.0.1, n2=2@10.0.0.2, n3=3@10.0.0.3", "interface = eth0", "interface", "transport = multicast"),
])
def test_unicast_errors_name_the_key(tmp_path, members, extra, key, says):
    path = write(tmp_path, members, extra)
    with pytest.raises(config.ConfigError, match=rf"\[cluster\] {key}: .*{re.escape(says)}"):
        config.load(path)


def test_addresses_with_multicast_transport_are_an_error(tmp_path):
    path = tmp_path / "m.conf"
    path.write_text(UNICAST.replace("transport = unicast\n", "").format(
        members="n1=1@10.0.0.1, n2=2@10.0.0.2, n3=3", extra="", state=tmp_path))
    with pytest.raises(config.ConfigError, match=r"\[cluster\] members: gives addresses \(n1, n2\) but transport "
                                                 r"is multicast"):
        config.load(str(path))


def test_unknown_transport(tmp_path):
    path = write(tmp_path, "n1=1@10.0.0.1")
    text = open(path).read().replace("transport = unicast", "transport = broadcast")
    open(path, "w").write(text)
    with pytest.raises(config.ConfigError, match=r"\[cluster\] transport: expected multicast or unicast"):
        config.load(path)


def test_own_address_not_on_this_host_is_a_warning(tmp_path):
    # 192.0.2.0/24 is TEST-NET-1: no host here holds it
    cfg = config.load(write(tmp_path, "n1=1@192.0.2.1, n2=2@192.0.2.2, n3=3@192.0.2.3"))
    assert any("192.0.2.1 is not configured on this host" in w for w in cfg.warnings)


def test_ipv6_group(tmp_path):
    path = tmp_path / "m.conf"
    base = UNICAST.replace("transport = unicast\n", "")
    path.write_text(base.format(members="n1=1, n2=2, n3=3", extra="group = FF02::1:7676\ninterface = eth0",
                                state=tmp_path))
    assert config.load(str(path)).group == "ff02::1:7676"
    for extra, key, says in (("group = ff02::1:7676", "interface", "interface name of its link"),
                             ("group = ff0e::1", "group", "link-local"),
                             ("group = ff02::1:7676\ninterface = 127.0.0.1", "interface", "interface name")):
        path.write_text(base.format(members="n1=1, n2=2, n3=3", extra=extra, state=tmp_path))
        with pytest.raises(config.ConfigError, match=rf"\[cluster\] {key}: .*{says}"):
            config.load(str(path))


def test_ipv4_group_takes_alias_interface_names_but_not_ipv6_addresses(tmp_path):
    path = tmp_path / "m.conf"
    base = UNICAST.replace("transport = unicast\n", "")
    path.write_text(base.format(members="n1=1, n2=2, n3=3", extra="interface = eth0:1", state=tmp_path))
    assert config.load(str(path)).interface == "eth0:1"
    path.write_text(base.format(members="n1=1, n2=2, n3=3", extra="interface = ::1", state=tmp_path))
    with pytest.raises(config.ConfigError, match=r"\[cluster\] interface: an IPv4 group needs"):
        config.load(str(path))


def test_daemon_exits_78_naming_the_key(tmp_path):
    path = write(tmp_path, "n1=1@10.0.0.1, n2=2, n3=3@10.0.0.3")
    run = subprocess.run([sys.executable, "-m", "electiond", "--config", path, "--check-config"],
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == EX_CONFIG
    assert "[cluster] members" in run.stderr and "n2 has none" in run.stderr
