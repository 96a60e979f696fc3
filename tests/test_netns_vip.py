"""A LAN in network namespaces: real daemons move a VIP with the shipped vip hook.

Topology (every namespace and link is created here, named with our pid, and
deleted in a finally and at exit):

    client ─┐
    h1 ─────┤ br0 (in its own "switch" namespace)
    h2 ─────┤
    h3 ─────┘

Hosts run real electiond daemons (quorum-lease) inside their namespace with
``vip auto 10.213.100.50/24 lan0`` as their promote/demote/fault hook. The
private test subnet 10.213.100.0/24 exists only inside these namespaces; the
client pings the VIP throughout. Two failures are exercised:

* the leader's daemon is SIGKILLed (the host stays up and keeps the address
  until its daemon restarts and runs the startup demote);
* the leader's host dies (its link goes down and the daemon is killed), so
  pings are lost until a new leader has announced the VIP;
* a graceful transfer (``electionctl transfer``): demote hooks on the old
  leader, then the target campaigns at once and announces the VIP.

The number of pings lost in each phase is printed (run with ``-s``) and saved
to ``netns_vip_results.json`` in the test's tmp dir, next to ``timeline.txt``
(test actions, hook runs, the client's ARP entry and unanswered pings in one
wall-clock order). NETNS_TCPDUMP=1 also records the client's ARP traffic.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest

from cluster import Cluster
from electiond.cli import request
from electiond.devcluster import wait_for
from lab import VIP, VIP_CIDR, NetnsCluster, sh, vip_holders  # noqa: F401 (re-exported for older imports)
from lab import VipLan as Lan

PING_INTERVAL_S = 0.05

missing = [tool for tool in ("ip", "ping", "arping") if shutil.which(tool) is None]
pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root to create network namespaces"),
    pytest.mark.skipif(bool(missing), reason=f"needs {', '.join(missing)} (iproute2, iputils-ping, arping)"),
]


class Pinger:
    def __init__(self, lan: Lan, out: Path) -> None:
        self.out = out
        self.file = open(out, "w")
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", lan.ns["cl"], "ping", "-D", "-n", "-i", str(PING_INTERVAL_S), "-W", "1", VIP],
            stdout=self.file, stderr=subprocess.STDOUT,
        )

    def replies(self) -> list[int]:
        return [int(m) for m in re.findall(r"icmp_seq=(\d+) ttl", self.out.read_text())]

    def stop(self) -> dict[str, int]:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)  # ping prints its summary on SIGINT
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.file.close()
        text = self.out.read_text()
        summary = re.search(r"(\d+) packets transmitted, (\d+) received", text)
        sent, received = (int(summary.group(1)), int(summary.group(2))) if summary else (0, 0)
        replied = set(self.replies())
        last = max(replied) if replied else 0
        # longest run of consecutive unanswered sequence numbers = the outage
        longest = run = 0
        for seq in range(1, last + 1):
            run = 0 if seq in replied else run + 1
            longest = max(longest, run)
        return {"sent": sent, "received": received, "lost": sent - received, "longest_gap": longest,
                "outage_s": round(longest * PING_INTERVAL_S, 2)}


class ArpWatch(threading.Thread):
    """Samples the client's ARP entry for the VIP (for the timeline on failure)."""

    def __init__(self, lan: Lan) -> None:
        super().__init__(daemon=True)
        self.lan = lan
        self.changes: list[tuple[float, str]] = []
        self.done = threading.Event()

    def run(self) -> None:
        last = None
        for _ in range(20000):  # bounded: at most ~20 minutes
            if self.done.wait(0.02):
                return
            try:
                out = sh("ip", "-n", self.lan.ns["cl"], "neigh", "show", VIP).strip()
            except Exception:
                return
            if out != last:
                self.changes.append((time.time(), out))
                last = out

    def stop(self) -> list[tuple[float, str]]:
        self.done.set()
        self.join(5)
        return self.changes


def write_timeline(tmp_path: Path, marks, arp_changes, cluster) -> None:
    """One file to read when the test fails or loses pings: test actions, hook
    runs, the client's ARP entry and unanswered pings, in wall-clock order."""
    rows = [(t, "test", text) for t, text in marks]
    rows += [(t, "arp", text) for t, text in arp_changes]
    if cluster is not None:
        rows += [(e[0], "hook", f"{e[1]} {e[2]} term {e[3]} {e[4]}") for e in cluster.hook_events()]
    for name in ("ping1.txt", "ping2.txt", "ping3.txt"):
        path = tmp_path / name
        if path.exists():
            stamps = [(float(t), int(q)) for t, q in re.findall(r"\[(\d+\.\d+)\] .*icmp_seq=(\d+) ttl", path.read_text())]
            for (t0, q0), (t1, q1) in zip(stamps, stamps[1:]):
                if q1 > q0 + 1:
                    rows.append((t0, "ping", f"{name}: seqs {q0 + 1}..{q1 - 1} unanswered until {t1:.3f}"))
    rows.sort()
    (tmp_path / "timeline.txt").write_text("".join(f"{t:.3f} {kind:5} {text}\n" for t, kind, text in rows))


def settled(lan: Lan, cluster: Cluster, hosts: list[str], diag) -> str:
    """The VIP is on exactly the agreed leader and the client's ARP entry points
    there. (Leadership itself may move again on a loaded machine, e.g. a lease
    that was not renewed in time; the VIP must follow it.)"""

    def check() -> str | None:
        leader = cluster.agreed_leader()
        if leader and vip_holders(lan, hosts) == [leader] and lan.client_arp() == lan.mac(leader):
            return leader
        return None

    return wait_for(check, 20, "the VIP on exactly the leader, the client's ARP entry pointing there", diag)



def test_vip_follows_the_leader_across_a_namespace_lan(tmp_path: Path) -> None:
    hosts = ["n1", "n2", "n3"]
    lan = Lan(hosts)
    cluster: NetnsCluster | None = None
    pinger: Pinger | None = None
    results: dict[str, dict] = {}
    marks: list[tuple[float, str]] = []
    watch = ArpWatch(lan)
    watch.start()
    dump = None
    if os.environ.get("NETNS_TCPDUMP"):
        dump = subprocess.Popen(["ip", "netns", "exec", lan.ns["cl"], "tcpdump", "-l", "-n", "-e", "-tt", "-i", "lan0", "arp"],
                                stdout=open(tmp_path / "arp.dump", "w"), stderr=subprocess.DEVNULL)
    try:
        cluster = NetnsCluster(tmp_path, lan)
        diag = cluster.logs
        cluster.start_all()
        first = cluster.wait_leader(20.0)
        wait_for(lambda: vip_holders(lan, hosts) == [first], 20, f"the VIP on {first} only", diag)

        # ---- phase 1: the leader's daemon crashes; its host stays up
        pinger = Pinger(lan, tmp_path / "ping1.txt")
        wait_for(lambda: len(pinger.replies()) >= 5, 15, "the client to reach the VIP")
        # on a loaded machine a 150 ms lease can lapse while we ping: kill
        # whoever leads (and holds the VIP) right now
        first = settled(lan, cluster, hosts, diag)
        marks.append((time.time(), f"kill -9 daemon {first}"))
        cluster.kill(first)
        second = cluster.wait_leader(20.0, among=[h for h in hosts if h != first])
        wait_for(lambda: lan.has_vip(second), 20, f"the VIP on {second}", diag)
        wait_for(lambda: lan.client_arp() == lan.mac(second), 20,
                 f"the client's ARP entry to move to {second}", lambda: sh("ip", "-n", lan.ns["cl"], "neigh"))
        # a crashed daemon cannot give the address up; its next start does
        assert lan.has_vip(first)
        marks.append((time.time(), f"restart daemon {first}"))
        cluster.start(first)
        wait_for(lambda: vip_holders(lan, hosts) == [second], 20, "startup cleanup on the old leader", diag)
        assert any(e[1] == "demote" and e[2] == first and e[4] == "startup" for e in cluster.hook_events())
        mark = max(pinger.replies())
        wait_for(lambda: max(pinger.replies()) >= mark + 5, 15, "pings to go on being answered")
        leader = settled(lan, cluster, hosts, diag)
        results["daemon_killed"] = {**pinger.stop(), "leader_moved_again": leader != second}
        pinger = None

        # ---- phase 2: the leader's host dies (link down, daemon killed)
        pinger = Pinger(lan, tmp_path / "ping2.txt")
        wait_for(lambda: len(pinger.replies()) >= 5, 15, "the client to reach the VIP")
        marks.append((time.time(), f"link down + kill -9 {second}"))
        lan.set_link(second, False)
        cluster.kill(second)
        survivors = [h for h in hosts if h != second]
        third = cluster.wait_leader(20.0, among=survivors)
        wait_for(lambda: lan.has_vip(third), 20, f"the VIP on {third}", diag)
        wait_for(lambda: lan.client_arp() == lan.mac(third), 20, f"the client's ARP entry to move to {third}")
        mark = max(pinger.replies())
        wait_for(lambda: max(pinger.replies()) >= mark + 5, 15, "pings to be answered by the new leader")
        # the dead host comes back: its startup demote removes the stale address
        marks.append((time.time(), f"link up + restart {second}"))
        lan.set_link(second, True)
        cluster.start(second)
        wait_for(lambda: not lan.has_vip(second), 20, "startup cleanup on the returning host", diag)
        leader = settled(lan, cluster, hosts, diag)
        results["host_died"] = {**pinger.stop(), "leader_moved_again": leader != third}
        pinger = None
        assert results["host_died"]["received"] > 0

        # ---- phase 3: a graceful transfer (electionctl transfer)
        pinger = Pinger(lan, tmp_path / "ping3.txt")
        wait_for(lambda: len(pinger.replies()) >= 5, 15, "the client to reach the VIP")
        before = cluster.agreed_leader()
        marks.append((time.time(), f"transfer away from {before}"))
        request(cluster.socket(before), "transfer", {}, timeout_s=10.0)
        after = wait_for(lambda: (lead := cluster.agreed_leader()) not in (None, before) and lead, 20,
                         "the transfer", diag)
        wait_for(lambda: vip_holders(lan, hosts) == [after] and lan.client_arp() == lan.mac(after), 20,
                 f"the VIP and the client's ARP entry on {after}", diag)
        mark = max(pinger.replies())
        wait_for(lambda: max(pinger.replies()) >= mark + 5, 15, "pings to be answered by the new leader")
        results["transfer"] = pinger.stop()
        pinger = None
    finally:
        if pinger is not None:
            results.setdefault("aborted", pinger.stop())
        if cluster is not None:
            cluster.stop_all()
        if dump is not None:
            dump.terminate()
            dump.wait(5)
        lan.close()
        write_timeline(tmp_path, marks, watch.stop(), cluster)
        (tmp_path / "netns_vip_results.json").write_text(json.dumps(results, indent=1))
        print(f"\nnetns VIP pings (interval {PING_INTERVAL_S}s): {json.dumps(results)}")
