"""A leader whose sends fail for a few seconds rejoins afterwards.

On the lab's namespace LAN (tests/lab), three quorum-lease daemons on an
IPv4 or a link-scope IPv6 multicast group (or IPv6 unicast peers). The leader is cut off for a few seconds in one of two ways
that make its sends fail (not merely vanish): its link goes down (ENETUNREACH
and friends), or nftables drops its output (EPERM from sendto). Then it is
healed. Afterwards there is one leader again and every member hears every
other, the old leader included: it sends again, not just receives.

This is the case uvloop < 0.21 (Debian 12's 0.17) broke: its datagram
transport closed itself and its socket on the first failed send, so the old
leader kept hearing the group (a separate socket) but was mute for good.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest

from lab import Lan, NetnsCluster, sh
from test_netns_unicast import Lan6, to_unicast, use_ipv6_group
from electiond.devcluster import wait_for

missing = [tool for tool in ("ip", "nft") if shutil.which(tool) is None]
pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root to create network namespaces and nftables rules"),
    pytest.mark.skipif(bool(missing), reason=f"needs {', '.join(missing)} (iproute2, nftables)"),
]

HOSTS = ["n1", "n2", "n3"]
# roomier than the defaults: two shared cores run this next to other tests
TIMING = {"heartbeat_interval": "50ms", "lease": "600ms", "election_timeout": "600ms-900ms"}
CUT_S = 3.0  # long enough for the others to elect, short enough to keep the test quick


class OutputDrop:
    """nftables in one host's namespace: every datagram it sends is refused."""

    def __init__(self, lan: Lan, host: str) -> None:
        self.nft = ("ip", "netns", "exec", lan.ns[host], "nft")
        self.table = f"el{os.getpid()}out"
        sh(*self.nft, "add", "table", "inet", self.table)
        try:
            sh(*self.nft, "add", "chain", "inet", self.table, "output",
               "{ type filter hook output priority 0; policy accept; }")
            sh(*self.nft, "add", "rule", "inet", self.table, "output", "oifname", "lan0", "meta", "l4proto", "udp",
               "drop")
        except BaseException:
            self.remove()
            raise

    def remove(self) -> None:
        sh(*self.nft, "delete", "table", "inet", self.table, check=False)


def _everyone_hears_everyone(cluster: NetnsCluster) -> bool:
    for name in HOSTS:
        status = cluster.status(name)
        if status is None or not all(m["alive"] for m in status["members"] if not m.get("self")):
            return False
    return True


def _received(cluster: NetnsCluster, name: str, status: dict | None = None) -> int:
    status = status or cluster.status(name) or {}
    return int(status.get("received") or 0)


@pytest.mark.parametrize("family, transport, cut", [
    ("ipv4", "multicast", "link_down"), ("ipv4", "multicast", "output_dropped"),
    ("ipv6", "multicast", "link_down"), ("ipv6", "multicast", "output_dropped"),
    # IPv4 unicast with its link down: test_netns_unicast
    ("ipv6", "unicast", "link_down"),
])
def test_a_leader_whose_sends_fail_rejoins_after_the_heal(tmp_path: Path, family: str, transport: str,
                                                          cut: str) -> None:
    lan = Lan(HOSTS) if family == "ipv4" else Lan6(HOSTS)
    cluster: NetnsCluster | None = None
    drop: OutputDrop | None = None
    try:
        cluster = NetnsCluster(tmp_path, lan, vip=False, timing=TIMING)
        if transport == "unicast":
            to_unicast(cluster, {h: lan.address6[h] for h in HOSTS})
        elif family == "ipv6":
            group = use_ipv6_group(cluster)
        diag = cluster.logs
        cluster.start_all()
        old = cluster.wait_leader(30.0)
        wait_for(lambda: _everyone_hears_everyone(cluster), 20, "every member alive to every other", diag)
        if family == "ipv6":
            log = (tmp_path / f"{old}.log").read_text()
            assert f"unicast={lan.address6[old]}:" in log, log
            assert ("transport=unicast" if transport == "unicast" else f"group={group}:") in log, log

        if cut == "link_down":
            if family == "ipv6":
                # the kernel would flush the static ULA address with the link;
                # a host's network configuration puts it back, here it stays
                sh("ip", "netns", "exec", lan.ns[old], "sysctl", "-q", "net.ipv6.conf.lan0.keep_addr_on_down=1")
            lan.set_link(old, False)
        else:
            drop = OutputDrop(lan, old)
        cut_at = time.monotonic()
        others = [h for h in HOSTS if h != old]
        cluster.wait_leader(30.0, among=others)
        wait_for(lambda: (cluster.status(old) or {}).get("role") != "leader", 20, f"{old} to demote", diag)
        time.sleep(max(0.0, CUT_S - (time.monotonic() - cut_at)))
        failed_sends = sum(((cluster.status(old) or {}).get("send_errors") or {}).values())
        if cut == "link_down":
            lan.set_link(old, True)
        else:
            assert drop is not None
            drop.remove()
            drop = None

        wait_for(lambda: cluster.agreed_leader() is not None and _everyone_hears_everyone(cluster), 30,
                 f"one leader and {old} heard by every member again after the heal", diag)
        status = cluster.status(old)
        assert status is not None
        # it hears the others (the leader's heartbeats keep coming in)
        wait_for(lambda: _received(cluster, old) > _received(cluster, old, status), 10, f"{old} receiving", diag)
        # the cut really made its sends fail, and it kept its sockets
        assert failed_sends > 0, status
        assert status["transports_lost"] == 0, status
    finally:
        if drop is not None:
            drop.remove()
        if cluster is not None:
            cluster.stop_all()
        lan.close()
