"""protocol = etcd on a namespace LAN: the leader's host cut off from etcd.

The LAN of test_netns_vip (a bridge and one namespace per host, all named with
our pid and deleted in a finally) holds three electiond hosts running the
shipped vip hook and three etcd members, each on a host of its own. Once a
leader is agreed, nftables in the leader's namespace drops everything to and
from the etcd hosts: etcd keeps its quorum and the other daemons keep
reaching it. The leader must demote on its own clock, and a follower promote
only after that demote (hook stamps: one wall clock for every namespace).
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest

from electiond.devetcd import APT_HINT, EtcdCluster, etcd_binary
from lab import NetnsCluster, sh, vip_holders
from lab import VipLan as Lan
from test_process_etcd import assert_no_overlap, intervals, promotes_after

TTL_S = 3
HOSTS = ["n1", "n2", "n3"]
ETCD_HOSTS = ["e1", "e2", "e3"]

missing = [tool for tool in ("ip", "arping", "nft", "curl") if shutil.which(tool) is None]
pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root to create network namespaces and nftables rules"),
    pytest.mark.skipif(bool(missing), reason=f"needs {', '.join(missing)} (iproute2, arping, nftables, curl)"),
    pytest.mark.skipif(etcd_binary() is None, reason=f"needs etcd (Debian: {APT_HINT})"),
]


class CutFromEtcd:
    """Inside ``host``'s namespace, drop all traffic to and from the etcd hosts."""

    def __init__(self, lan: Lan, host: str) -> None:
        self.ns = lan.ns[host]
        self.table = f"el{os.getpid()}etcdcut"
        self.active = True  # from here on remove() cleans up, even if a rule below fails
        nft = ("ip", "netns", "exec", self.ns, "nft")
        targets = "{ " + ", ".join(lan.address[e] for e in ETCD_HOSTS) + " }"
        sh(*nft, "add", "table", "inet", self.table)
        for chain, hook, direction in (("input", "input", "saddr"), ("output", "output", "daddr")):
            sh(*nft, "add", "chain", "inet", self.table, chain,
               f"{{ type filter hook {hook} priority 0; policy accept; }}")
            sh(*nft, "add", "rule", "inet", self.table, chain, "ip", direction, targets, "drop")

    def remove(self) -> None:
        if self.active:
            self.active = False
            sh("ip", "netns", "exec", self.ns, "nft", "delete", "table", "inet", self.table, check=False)


def test_leader_cut_off_from_etcd_demotes_before_anyone_promotes(tmp_path: Path) -> None:
    lan = Lan(HOSTS + ETCD_HOSTS)
    cut = None
    try:
        etcd_hosts = {e: (lan.ns[e], lan.address[e]) for e in ETCD_HOSTS}
        with EtcdCluster(tmp_path, hosts=etcd_hosts) as etcd:
            etcd.start_all(60)
            cluster = NetnsCluster(tmp_path, lan, protocol="etcd",
                                   timing={"heartbeat_interval": "100ms", "election_timeout": "300ms-500ms"})
            cluster.config_text += f"\n[etcd]\nendpoints = {etcd.endpoints()}\nlease_ttl = {TTL_S}s\n"
            with cluster:
                cluster.start_all()
                leader = cluster.wait_leader(20)
                cluster.wait_for(lambda: vip_holders(lan, HOSTS) == [leader], 10, "the VIP on the leader")
                time.sleep(1.0)
                cut_at = time.time()
                cut = CutFromEtcd(lan, leader)
                demote = cluster.wait_for(
                    lambda: [e for e in cluster.hook_events() if e[1] == "demote" and e[2] == leader and e[0] > cut_at],
                    TTL_S + 3, "the cut-off leader's demote")[0]
                assert demote[4] == "lease_expired", demote
                # its last answered keep-alive left before the cut: it demoted
                # before etcd could have expired its lease
                assert demote[0] < cut_at + TTL_S, f"demoted {demote[0] - cut_at:.2f}s after the cut"
                promote = cluster.wait_for(lambda: promotes_after(cluster, cut_at), TTL_S + 10,
                                           "a follower's promote")[0]
                assert promote[2] != leader and promote[0] > demote[0], (demote, promote)
                print(f"cut at 0: demote after {demote[0] - cut_at:.2f}s, "
                      f"{promote[2]} promoted after {promote[0] - cut_at:.2f}s")
                new = cluster.wait_leader(10, among=[n for n in HOSTS if n != leader])
                cluster.wait_for(lambda: vip_holders(lan, HOSTS) == [new], 10, "the VIP on the new leader only")
                # healed: the old leader comes back as a follower, one leader
                cut.remove()
                time.sleep(2 * TTL_S)
                assert cluster.wait_leader(10) == new
                assert_no_overlap(intervals(cluster.hook_events()))
    finally:
        if cut is not None:
            cut.remove()
        lan.close()
