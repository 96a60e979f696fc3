"""Two voters and a witness on the namespace LAN of test_netns_vip (bridge,
three hosts and a client, named with our pid, deleted in a finally), real
daemons running the shipped vip hook, n3 the witness.

* kill the witness: the leader keeps leading (2 of 3);
* kill either voter: the other leads and takes the VIP;
* isolate the leader from both others (nftables in every namespace): it
  demotes, and its VIP is gone, before the other voter promotes;
* bully: after a split brain heals, the winner's refresh runs at once;
* the refresh hook: the client's neighbour entry for the VIP, deleted by hand
  while the cluster is stable, points at the leader again within about one
  refresh interval (the client sends nothing: only the refresh's gratuitous
  ARP can bring the entry back, arp_accept = 1 lets it create one).
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest

from electiond.devcluster import wait_for
from lab import VIP, VIP_CIDR, VIP_HOOK, NetnsCluster, sh, vip_holders
from lab import VipLan as Lan

HOSTS = ["n1", "n2", "n3"]
VOTERS = ["n1", "n2"]
WITNESS = "n3"

missing = [tool for tool in ("ip", "arping", "nft") if shutil.which(tool) is None]
pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root to create network namespaces and nftables rules"),
    pytest.mark.skipif(bool(missing), reason=f"needs {', '.join(missing)} (iproute2, arping, nftables)"),
]


class WitnessLanCluster(NetnsCluster):
    """NetnsCluster with n3 a witness and the vip hook also run on refresh."""

    def __init__(self, workdir: Path, lan: Lan, refresh_interval_s: float = 60.0,
                 protocol: str = "quorum-lease") -> None:
        if protocol == "quorum-lease":
            super().__init__(workdir, lan, witnesses=(WITNESS,), timing={"lease": "600ms"})
        else:  # bully, ring: no witness (a config error there)
            super().__init__(workdir, lan, protocol=protocol)
        refresh_d = workdir / "hooks.d" / "refresh.d"
        refresh_d.mkdir(parents=True, exist_ok=True)
        (refresh_d / "50-record").symlink_to(workdir / "record-hook")
        vip = f"{VIP_HOOK} auto {VIP_CIDR} lan0"
        self.config_text = self.config_text.replace(
            "[hooks]\n", f"[hooks]\nrefresh = {vip}\nrefresh_interval = {refresh_interval_s}s\n", 1)


class Isolation:
    """nftables in every namespace: ``host`` and the others stop hearing each other."""

    def __init__(self, lan: Lan, host: str, others: list[str]) -> None:
        self.table = f"el{os.getpid()}iso"
        self.done: list[str] = []
        for ns_host, sources in [(host, others), *((o, [host]) for o in others)]:
            ns = lan.ns[ns_host]
            self.done.append(ns)  # from here on remove() cleans it, even if a rule below fails
            nft = ("ip", "netns", "exec", ns, "nft")
            sh(*nft, "add", "table", "inet", self.table)
            sh(*nft, "add", "chain", "inet", self.table, "input",
               "{ type filter hook input priority 0; policy accept; }")
            for source in sources:
                sh(*nft, "add", "rule", "inet", self.table, "input", "ip", "saddr", lan.address[source], "drop")

    def remove(self) -> None:
        while self.done:
            ns = self.done.pop()
            sh("ip", "netns", "exec", ns, "nft", "delete", "table", "inet", self.table, check=False)


def settled(lan: Lan, cluster: NetnsCluster, among: list[str], diag) -> str:
    def check() -> str | None:
        leader = cluster.agreed_leader(among)
        return leader if leader in VOTERS and vip_holders(lan, HOSTS) == [leader] else None

    return wait_for(check, 30, "one agreed voter leading and holding the VIP alone", diag)


def test_two_voters_and_a_witness_on_a_lan(tmp_path: Path) -> None:
    lan = Lan(HOSTS)
    cluster: WitnessLanCluster | None = None
    isolation: Isolation | None = None
    try:
        cluster = WitnessLanCluster(tmp_path, lan)
        diag = cluster.logs
        cluster.start_all()
        first = settled(lan, cluster, HOSTS, diag)
        assert cluster.status(WITNESS)["witness"] is True

        # ---- the witness dies: 2 of 3 still make a quorum
        killed_at = time.time()
        cluster.kill(WITNESS)
        time.sleep(3.0)  # many leases (600 ms) long
        assert cluster.agreed_leader(VOTERS) == first
        assert not [e for e in cluster.hook_events() if e[1] == "demote" and e[2] == first and e[0] > killed_at]
        cluster.start(WITNESS)
        wait_for(lambda: "clock_check" not in (cluster.status(WITNESS) or {}).get("blocked_by", {"clock_check": 1}),
                 30, "the witness to pass its start-up clock check", diag)

        # ---- either voter dies: the other leads
        for _ in range(2):
            leader = settled(lan, cluster, HOSTS, diag)
            other = next(v for v in VOTERS if v != leader)
            cluster.kill(leader)
            assert cluster.wait_leader(20.0, among=[other, WITNESS]) == other
            wait_for(lambda: lan.has_vip(other), 20, f"the VIP on {other}", diag)
            cluster.start(leader)  # its startup demote removes the VIP it kept
            wait_for(lambda: vip_holders(lan, HOSTS) == [other], 20, f"the VIP on {other} only", diag)
            wait_for(lambda: "clock_check" not in (cluster.status(leader) or {}).get("blocked_by", {"clock_check": 1}),
                     30, f"{leader} to pass its start-up clock check", diag)
        assert not [e for e in cluster.hook_events() if e[2] == WITNESS and e[1] == "promote"]

        # ---- the leader is cut off from both others
        leader = settled(lan, cluster, HOSTS, diag)
        other = next(v for v in VOTERS if v != leader)
        cut_at = time.time()
        isolation = Isolation(lan, leader, [other, WITNESS])
        assert cluster.wait_leader(20.0, among=[other, WITNESS]) == other
        wait_for(lambda: not lan.has_vip(leader) and lan.has_vip(other), 20, f"the VIP to move to {other}", diag)
        events = [e for e in cluster.hook_events() if e[0] > cut_at]
        old_demote_done = min(e[0] for e in events if e[1] == "demote" and e[2] == leader)
        new_promoted_at = cluster.history_wall(other, "promote", cut_at)[0]
        old_demoted_at = cluster.history_wall(leader, "demote", cut_at)[0]
        print(f"\nisolated {leader}: demoted +{old_demoted_at - cut_at:.3f}s, vip down by +{old_demote_done - cut_at:.3f}s;"
              f" {other} promoted +{new_promoted_at - cut_at:.3f}s")
        # history stamps are rounded to the millisecond
        assert old_demoted_at < new_promoted_at + 0.002
        # the old leader's vip down had finished (its record hook runs after it)
        # before the new leader even decided to promote: no overlap
        assert old_demote_done < new_promoted_at
        isolation.remove()
        isolation = None
        settled(lan, cluster, HOSTS, diag)
    finally:
        if isolation is not None:
            isolation.remove()
        if cluster is not None:
            cluster.stop_all()
        lan.close()


def test_refresh_restores_a_deleted_client_neighbour_entry(tmp_path: Path) -> None:
    interval_s = 2.0
    lan = Lan(HOSTS)
    cluster: WitnessLanCluster | None = None
    try:
        # a client that only ever learns the VIP's MAC from gratuitous ARPs
        sh("ip", "netns", "exec", lan.ns["cl"], "sysctl", "-q", "-w", "net.ipv4.conf.lan0.arp_accept=1")
        cluster = WitnessLanCluster(tmp_path, lan, refresh_interval_s=interval_s)
        diag = cluster.logs
        cluster.start_all()
        leader = settled(lan, cluster, HOSTS, diag)
        wait_for(lambda: lan.client_arp() == lan.mac(leader), 20, "the client's entry to point at the leader", diag)
        def refreshes_since(t: float) -> list[float]:
            return [e[0] for e in cluster.hook_events() if e[1] == "refresh" and e[2] == leader and e[0] > t]

        delays = []
        for _ in range(2):
            leader = settled(lan, cluster, HOSTS, diag)
            # past the promote's own repeated ARPs (VIP_ARP_COUNT=2: one more a second later)
            wait_for(lambda: refreshes_since(0.0), 20, "a first refresh on the leader", diag)
            sh("ip", "-n", lan.ns["cl"], "neigh", "del", VIP, "dev", "lan0")
            deleted_at = time.time()
            assert lan.client_arp() is None
            # generous slack over the interval: a loaded machine runs hooks late
            wait_for(lambda: lan.client_arp() == lan.mac(leader), interval_s + 3.0,
                     "the client's entry back on the leader", diag)
            delays.append(round(time.time() - deleted_at, 3))
            # the recorder runs right after the vip hook: its line may lag the entry a little
            wait_for(lambda: refreshes_since(deleted_at), 10, "the refresh that brought it back", diag)
        print(f"\nneighbour entry restored after {delays} s (refresh_interval {interval_s}s)")
        assert not [e for e in cluster.hook_events() if e[1] == "refresh" and e[2] == WITNESS]
    finally:
        if cluster is not None:
            cluster.stop_all()
        lan.close()


def test_bully_split_brain_winner_refreshes_at_once(tmp_path: Path) -> None:
    lan = Lan(HOSTS)
    cluster: WitnessLanCluster | None = None
    isolation: Isolation | None = None
    try:
        # the client learns the VIP's MAC only from gratuitous ARPs: the winner's refresh must move it back
        sh("ip", "netns", "exec", lan.ns["cl"], "sysctl", "-q", "-w", "net.ipv4.conf.lan0.arp_accept=1")
        cluster = WitnessLanCluster(tmp_path, lan, refresh_interval_s=600.0, protocol="bully")
        diag = cluster.logs
        cluster.start_all()
        top = wait_for(lambda: (lead := cluster.agreed_leader()) and vip_holders(lan, HOSTS) == [lead] and lead,
                       30, "a bully leader holding the VIP", diag)
        rest = [h for h in HOSTS if h != top]
        isolation = Isolation(lan, top, rest)
        # the others elect among themselves while the cut-off leader keeps its claim: a split brain
        other = cluster.wait_leader(20.0, among=rest)
        wait_for(lambda: lan.has_vip(other) and lan.has_vip(top), 20, "the VIP on both sides", diag)
        # the other side's promote announced last: the client points there now
        wait_for(lambda: lan.client_arp() == lan.mac(other), 20, f"the client's entry on {other}", diag)
        healed_at = time.time()
        isolation.remove()
        isolation = None
        winner = wait_for(lambda: (lead := cluster.agreed_leader()) and vip_holders(lan, HOSTS) == [lead] and lead,
                          30, "one leader holding the VIP after the heal", diag)

        def healed_refreshes() -> list:
            return [e for e in cluster.hook_events()
                    if e[1] == "refresh" and e[2] == winner and e[0] > healed_at and e[4] == "split_brain_healed"]

        wait_for(healed_refreshes, 10, f"{winner}'s refresh right after the heal", diag)
        took_s = healed_refreshes()[0][0] - healed_at
        print(f"\nsplit brain healed: {winner} refreshed {took_s:.3f}s after the heal (interval 600s)")
        assert took_s < 10  # far below the 600 s period: it ran because the split brain healed
        wait_for(lambda: lan.client_arp() == lan.mac(winner), 20, f"the client's entry on {winner}", diag)
    finally:
        if isolation is not None:
            isolation.remove()
        if cluster is not None:
            cluster.stop_all()
        lan.close()
