"""Unicast peers and IPv6 on a namespace LAN (test_netns_vip's ``Lan``).

* Multicast is dropped by nftables on every host: a multicast cluster cannot
  elect (why transport = unicast exists); the same hosts with transport =
  unicast elect, fail over when the leader's daemon dies, and, isolated
  (quorum-lease), the old leader gives the VIP up before a new one takes it.
* An IPv6 LAN (ULA fd00:213:100::/64, only inside these namespaces), with an
  IPv6 multicast group (ff02::, link scope) or with IPv6 unicast peers: after
  the leader's host dies, the client's neighbour entry for the IPv6 VIP moves
  to the new leader's MAC, without client traffic, so only the vip hook's
  unsolicited neighbour advertisement can have moved it.

Every namespace, link and nftables table is created here, named with our pid,
and removed in a finally (Lan also at exit); every wait is bounded.
"""

from __future__ import annotations

import os
import re
import shutil
import time
from pathlib import Path

import pytest

from lab import VIP, NetnsCluster, sh, vip_holders
from lab import VipLan as Lan
from test_process_lease import _assert_no_overlap, _intervals
from electiond.devcluster import wait_for

missing = [tool for tool in ("ip", "arping", "nft", "ping") if shutil.which(tool) is None]
pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root to create network namespaces and nftables rules"),
    pytest.mark.skipif(bool(missing), reason=f"needs {', '.join(missing)} (iproute2, arping, nftables, ping)"),
]

HOSTS = ["n1", "n2", "n3"]
# roomier than the defaults: two shared cores run this next to other helpers' tests
TIMING = {"heartbeat_interval": "50ms", "lease": "600ms", "election_timeout": "600ms-900ms"}
PREFIX6 = "fd00:213:100"
VIP6 = f"{PREFIX6}::50"


def _members_line(text: str) -> str:
    return next(line for line in text.splitlines() if line.startswith("members = "))


def to_unicast(cluster: NetnsCluster, addresses: dict[str, str]) -> None:
    """Rewrite the harness's multicast [cluster] into transport = unicast with
    each member at its LAN address (the default port)."""
    text = cluster.config_text
    members = ", ".join(f"{n}={i}@{'[' + a + ']' if ':' in a else a}:{cluster.port}"
                        for i, (n, a) in enumerate(addresses.items(), 1))
    text = text.replace(_members_line(text), f"members = {members}")
    text = re.sub(r"group = \S+\nport = \d+\ninterface = 127\.0\.0\.1\n", "transport = unicast\n", text)
    assert "transport = unicast" in text and "group =" not in text
    cluster.config_text = text


class MulticastDrop:
    """nftables in every host namespace: drop IPv4 multicast both ways."""

    def __init__(self, lan: Lan, hosts: list[str]) -> None:
        self.table = f"el{os.getpid()}nomc"
        self.done: list[str] = []
        try:
            for host in hosts:
                nft = ("ip", "netns", "exec", lan.ns[host], "nft")
                sh(*nft, "add", "table", "inet", self.table)
                self.done.append(lan.ns[host])
                for hook in ("input", "output"):
                    sh(*nft, "add", "chain", "inet", self.table, hook,
                       f"{{ type filter hook {hook} priority 0; policy accept; }}")
                    sh(*nft, "add", "rule", "inet", self.table, hook, "ip", "daddr", "224.0.0.0/4", "counter", "drop")
        except BaseException:
            self.remove()
            raise

    def dropped_packets(self, lan: Lan, host: str) -> int:
        out = sh("ip", "netns", "exec", lan.ns[host], "nft", "list", "table", "inet", self.table)
        return sum(int(n) for n in re.findall(r"counter packets (\d+)", out))

    def remove(self) -> None:
        for ns in self.done:
            sh("ip", "netns", "exec", ns, "nft", "delete", "table", "inet", self.table, check=False)
        self.done = []


def _leaders(cluster: NetnsCluster) -> list[str]:
    return [n for n in cluster.running() if (cluster.status(n) or {}).get("role") == "leader"]


def test_multicast_filtered_lan_needs_unicast_which_elects_fails_over_and_partitions_safely(tmp_path: Path) -> None:
    lan = Lan(HOSTS)
    drop: MulticastDrop | None = None
    cluster: NetnsCluster | None = None
    try:
        drop = MulticastDrop(lan, HOSTS)

        # ---- multicast: every datagram to the group is dropped, nobody can get a majority
        (tmp_path / "multicast").mkdir()
        cluster = NetnsCluster(tmp_path / "multicast", lan, timing=TIMING)
        cluster.start_all()
        deadline = time.monotonic() + 6.0
        while time.monotonic() < deadline:
            assert _leaders(cluster) == [], cluster.logs()
            time.sleep(0.2)
        assert all(drop.dropped_packets(lan, h) > 0 for h in HOSTS)
        assert vip_holders(lan, HOSTS) == []
        cluster.stop_all()
        cluster = None

        # ---- the same hosts with transport = unicast
        (tmp_path / "unicast").mkdir()
        cluster = NetnsCluster(tmp_path / "unicast", lan, timing=TIMING)
        to_unicast(cluster, {h: lan.address[h] for h in HOSTS})
        diag = cluster.logs
        cluster.start_all()
        first = cluster.wait_leader(30.0)
        wait_for(lambda: vip_holders(lan, HOSTS) == [first], 20, f"the VIP on {first} only", diag)
        assert all((cluster.status(h) or {}).get("dropped", {}).get("wrong_source", -1) == 0 for h in HOSTS)

        # the leader's daemon dies: another takes over
        cluster.kill(first)
        second = cluster.wait_leader(30.0, among=[h for h in HOSTS if h != first])
        wait_for(lambda: lan.has_vip(second), 20, f"the VIP on {second}", diag)
        cluster.start(first)  # its startup demote gives the stale VIP up
        wait_for(lambda: vip_holders(lan, HOSTS) == [second] and cluster.agreed_leader(), 30,
                 "one leader holding the VIP alone, the old one back as a follower", diag)

        # the leader is cut off from both others: it must demote before anyone promotes
        isolated = cluster.agreed_leader()
        settled_at = cut_at = time.time()
        lan.set_link(isolated, False)
        others = [h for h in HOSTS if h != isolated]
        third = cluster.wait_leader(30.0, among=others)
        assert third != isolated
        wait_for(lambda: (cluster.status(isolated) or {}).get("role") not in ("leader", None), 20,
                 f"{isolated} to demote on its own clock", diag)
        lan.set_link(isolated, True)
        wait_for(lambda: cluster.agreed_leader() and len(vip_holders(lan, HOSTS)) == 1, 30,
                 "one leader after the partition heals", diag)
        wait_for(lambda: any(e[1] == "promote" and e[2] == third and e[0] > cut_at for e in cluster.hook_events()),
                 20, f"{third}'s promote hook", diag)
        events = cluster.hook_events()
        # (node, term, promote stamp, demote stamp) from the recorder that runs after the vip
        # hook: from the settled state on (the SIGKILLed daemon's host held the VIP until its
        # restart, as documented), VIP-holding intervals never overlap
        _assert_no_overlap([i for i in _intervals(events, {}) if i[3] > settled_at])
        demote = next(e for e in events if e[1] == "demote" and e[2] == isolated and e[0] > cut_at)
        promote = next(e for e in events if e[1] == "promote" and e[2] == third and e[0] > cut_at)
        assert demote[0] < promote[0], (demote, promote)
    finally:
        if cluster is not None:
            cluster.stop_all()
        if drop is not None:
            drop.remove()
        lan.close()


class Lan6(Lan):
    """Lan, plus an IPv6 ULA address (nodad: usable at once) on every host."""

    def _build(self) -> None:
        super()._build()
        self.address6 = {name: f"{PREFIX6}::{11 + i}" for i, name in enumerate(self.hosts)}
        self.address6["cl"] = f"{PREFIX6}::100"
        for name, ns in self.ns.items():
            sh("ip", "-n", ns, "-6", "addr", "add", f"{self.address6[name]}/64", "dev", "lan0", "nodad")

    def client_neighbour6(self) -> str | None:
        out = sh("ip", "-n", self.ns["cl"], "-6", "neigh", "show", VIP6)
        match = re.search(r"lladdr (\S+)", out)
        return match.group(1) if match else None


def use_ipv6_group(cluster: NetnsCluster) -> str:
    """Rewrite the harness's IPv4 group into a link-scope IPv6 one (unique
    to this test process) joined on lan0; returns the group."""
    group = f"ff02::e1:{os.getpid() % 0xFFFF + 1:x}"
    cluster.config_text = cluster.config_text.replace(f"group = {cluster.group}", f"group = {group}")
    # the IPv6 group is joined on the link by interface name
    original = cluster.config_path

    def config_path(name: str) -> Path:
        path = original(name)
        path.write_text(re.sub(r"interface = \S+", "interface = lan0", path.read_text()))
        return path

    cluster.config_path = config_path  # type: ignore[method-assign]
    return group


@pytest.mark.parametrize("transport", ["multicast", "unicast"])
def test_ipv6_lan_client_neighbour_entry_moves_to_the_new_leader(tmp_path: Path, transport: str) -> None:
    lan = Lan6(HOSTS)
    cluster: NetnsCluster | None = None
    try:
        cluster = NetnsCluster(tmp_path, lan, timing=TIMING)
        cluster.config_text = cluster.config_text.replace(f"{VIP}/24", f"{VIP6}/64")
        group = ""
        if transport == "unicast":
            to_unicast(cluster, {h: lan.address6[h] for h in HOSTS})
        else:
            group = use_ipv6_group(cluster)
        diag = cluster.logs
        cluster.start_all()
        first = cluster.wait_leader(30.0)

        def vip6_on(host: str) -> bool:
            out = sh("ip", "-n", lan.ns[host], "-o", "-6", "addr", "show", "dev", "lan0")
            return f"{VIP6}/64" in out

        wait_for(lambda: [h for h in HOSTS if vip6_on(h)] == [first], 20, f"the IPv6 VIP on {first} only", diag)
        # the client talks to the VIP once: its neighbour entry points at the leader
        sh("ip", "netns", "exec", lan.ns["cl"], "ping", "-6", "-c", "3", "-i", "0.2", "-W", "2", VIP6)
        assert lan.client_neighbour6() == lan.mac(first)

        # the leader's host dies; the client sends nothing meanwhile
        lan.set_link(first, False)
        cluster.kill(first)
        second = cluster.wait_leader(30.0, among=[h for h in HOSTS if h != first])
        wait_for(lambda: vip6_on(second), 20, f"the IPv6 VIP on {second}", diag)
        wait_for(lambda: lan.client_neighbour6() == lan.mac(second), 20,
                 f"the client's neighbour entry for {VIP6} to move to {second}",
                 lambda: sh("ip", "-n", lan.ns["cl"], "-6", "neigh") + diag())
        sh("ip", "netns", "exec", lan.ns["cl"], "ping", "-6", "-c", "2", "-i", "0.2", "-W", "2", VIP6)
        log = (tmp_path / f"{second}.log").read_text()
        if transport == "unicast":
            assert "transport=unicast" in log and f"unicast={lan.address6[second]}:" in log
        else:
            assert f"group={group}:{cluster.port}" in log and f"unicast={lan.address6[second]}:" in log
    finally:
        if cluster is not None:
            cluster.stop_all()
        lan.close()
