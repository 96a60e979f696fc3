"""Real daemons with [cluster] transport = unicast on loopback: IPv4
(127.0.0.N, a port each) and IPv6 (::1, a port each)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest

from cluster import REPO, Cluster
from electiond.devcluster import wait_for

from electiond.cli import request
from electiond.daemon import EX_CONFIG


def _has_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


FAMILIES = [pytest.param(False, id="ipv4"),
            pytest.param(True, id="ipv6", marks=pytest.mark.skipif(not _has_ipv6_loopback(),
                                                                   reason="no IPv6 on loopback"))]


@pytest.mark.parametrize("ipv6", FAMILIES)
@pytest.mark.parametrize("protocol", ["quorum-lease", "bully", "ring"])
def test_unicast_cluster_elects_and_fails_over(tmp_path, protocol, ipv6):
    with Cluster(tmp_path, 3, protocol=protocol, transport="unicast", ipv6=ipv6) as c:
        c.start_all()
        leader = c.wait_leader(10)
        status = c.status(leader)
        assert status["dropped"]["wrong_source"] == 0 and status["transport"] == "unicast"
        c.kill(leader)
        survivors = [n for n in c.names if n != leader]
        new = c.wait_for(lambda: c.agreed_leader(survivors), 10, "a leader among the survivors")
        assert new != leader
        assert "transport=unicast peers=2" in (tmp_path / f"{new}.log").read_text()


def test_datagram_from_the_wrong_address_is_dropped_as_wrong_source(tmp_path):
    """A copy of a member's real datagram, sent from another address, is counted
    and ignored; the cluster keeps its leader."""
    with Cluster(tmp_path, 3, protocol="quorum-lease", transport="unicast") as c:
        c.start_all()
        leader = c.wait_leader(10)
        follower = next(n for n in c.names if n != leader)
        text = (tmp_path / f"{follower}.conf").read_text()
        members = next(line for line in text.splitlines() if line.startswith("members"))
        target_port = int(members.split(f"{follower}=")[1].split(",")[0].split(":")[1])
        target_host = members.split(f"{follower}=")[1].split("@")[1].split(":")[0]
        # a well-formed datagram naming the leader, from 127.0.0.9 (no member's address)
        from electiond.wire import Codec
        from electiond.protocols.base import Send
        codec = Codec(cluster=c.cluster_name, node_name=leader, members=set(c.names), keys=None,
                      schemas={}, incarnation=1, unicast_port=7000)
        datagram = codec.encode(Send("HEARTBEAT", 1, {}, None))
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind(("127.0.0.9", 0))
            for _ in range(5):
                s.sendto(datagram, (target_host, target_port))
        c.wait_for(lambda: (c.status(follower) or {}).get("dropped", {}).get("wrong_source", 0) >= 5, 5,
                   "five wrong_source drops")
        assert c.agreed_leader() == leader
        metrics = request(c.socket(follower), "metrics", timeout_s=5.0)
        line = next(l for l in metrics.splitlines() if 'reason="wrong_source"' in l)
        assert float(line.split()[-1]) >= 5


def test_unicast_member_without_an_address_exits_78(tmp_path):
    conf = tmp_path / "bad.conf"
    conf.write_text(f"[cluster]\nname = x\ntransport = unicast\nmembers = n1=1@127.0.0.1:7001, n2=2, "
                    f"n3=3@127.0.0.3\n[node]\nname = n1\n[state]\ndirectory = {tmp_path}\n"
                    f"[control]\nsocket = {tmp_path}/s\n")
    run = subprocess.run([sys.executable, "-m", "electiond", "--config", str(conf)], capture_output=True,
                         text=True, timeout=60, env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert run.returncode == EX_CONFIG, run.stderr
    assert "[cluster] members" in run.stderr and "n2 has none" in run.stderr


def test_own_address_not_on_the_host_warns_and_waits(tmp_path):
    """192.0.2.1 (TEST-NET-1) is on no interface here: a warning, then the
    interface wait (the daemon neither exits nor falls back to multicast)."""
    conf = tmp_path / "wait.conf"
    conf.write_text(f"[cluster]\nname = w{os.getpid()}\ntransport = unicast\n"
                    f"members = n1=1@192.0.2.1, n2=2@192.0.2.2, n3=3@192.0.2.3\n[node]\nname = n1\n"
                    f"[state]\ndirectory = {tmp_path / 'state'}\n[control]\nsocket = {tmp_path}/s\n")
    log = tmp_path / "n1.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "electiond", "--config", str(conf)], stdout=out,
                                stderr=subprocess.STDOUT, env=dict(os.environ, PYTHONPATH=str(REPO)))
    try:
        wait_for(lambda: "waiting for the network" in log.read_text(), 15, "the interface wait",
                 lambda: log.read_text())
        text = log.read_text()
        assert "192.0.2.1 is not configured on this host" in text
        assert proc.poll() is None
        assert "group=" not in text
    finally:
        proc.terminate()
        proc.wait(15)
