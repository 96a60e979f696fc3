"""The lab's faults do what they say, measured with datagrams (root).

A 3-host namespace LAN; h1 multicasts a burst to the group, receivers in the
other hosts count what arrives, under each fault of tests/lab/faults.py and
after heal(). Also: a LAN is torn down when its process gets SIGTERM.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lab import Faults, Lan, sh
from procio import readline_within

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root to create network namespaces and nftables rules"),
    pytest.mark.skipif(any(shutil.which(t) is None for t in ("ip", "nft", "tc")), reason="needs iproute2, nftables"),
]

GROUP, PORT, BURST = "239.213.0.7", 5999, 200

RECEIVER = """
import select, socket, struct, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
s.bind(("", {port}))
s.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, struct.pack("4s4s", socket.inet_aton("{group}"), socket.inet_aton(sys.argv[1])))
print("ready", flush=True)
# count until the test says the burst is over (a starved machine may start the
# sender seconds later), then drain what is still in flight
n, stop_at = 0, None
deadline = time.monotonic() + 60
while time.monotonic() < deadline and (stop_at is None or time.monotonic() < stop_at):
    ready, _, _ = select.select([s, sys.stdin], [], [], 0.1)
    if s in ready:
        s.recv(100)
        n += 1
    if sys.stdin in ready and stop_at is None:
        sys.stdin.readline()
        stop_at = time.monotonic() + 0.5
print(n, flush=True)
""".format(port=PORT, group=GROUP)

SENDER = """
import socket, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 1)
s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton(sys.argv[1]))
for i in range({burst}):
    s.sendto(b"lab", ("{group}", {port}))
    time.sleep(0.001)
""".format(port=PORT, group=GROUP, burst=BURST)


def burst(lan: Lan, sender: str, receivers: list[str]) -> dict[str, int]:
    """Datagrams each receiver got of one burst from sender."""
    procs = {r: subprocess.Popen(lan.exec_argv(r, sys.executable, "-c", RECEIVER, lan.address[r]),
                                 stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True) for r in receivers}
    try:
        for p in procs.values():
            assert readline_within(p.stdout, 30, "a receiver").strip() == "ready"
        lan.run(sender, sys.executable, "-c", SENDER, lan.address[sender])
        return {r: int(p.communicate("done\n", timeout=30)[0].strip()) for r, p in procs.items()}
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.kill()
                p.wait(5)


def test_faults_filter_drop_and_duplicate_datagrams_and_heal_undoes_them() -> None:
    lan = Lan(["h1", "h2", "h3"], clients=())
    faults = Faults(lan)
    try:
        assert burst(lan, "h1", ["h2", "h3"]) == {"h2": BURST, "h3": BURST}

        faults.one_way("h1", "h2")  # h2 no longer hears h1; h1 still hears h2
        assert burst(lan, "h1", ["h2", "h3"]) == {"h2": 0, "h3": BURST}
        assert burst(lan, "h2", ["h1"]) == {"h1": BURST}
        faults.heal()

        faults.partition([["h1"], ["h2", "h3"]])
        assert burst(lan, "h1", ["h2", "h3"]) == {"h2": 0, "h3": 0}
        assert burst(lan, "h2", ["h1", "h3"]) == {"h1": 0, "h3": BURST}
        faults.heal()

        faults.loss("h2", 50)
        got = burst(lan, "h1", ["h2", "h3"])
        assert 0.2 * BURST < got["h2"] < 0.8 * BURST and got["h3"] == BURST, got
        faults.heal()

        faults.duplicate("h1", 100)
        got = burst(lan, "h1", ["h2", "h3"])
        assert got["h2"] > 1.2 * BURST and got["h3"] > 1.2 * BURST, got
        faults.heal()

        faults.congest("h1", rate_kbit=8)  # 200 datagrams of ~45 bytes on the wire: far over 8 kbit/s
        got = burst(lan, "h1", ["h2"])
        assert got["h2"] < 0.8 * BURST, got
        faults.heal()

        faults.flap("h1", period_s=0.2)
        time.sleep(0.5)
        faults.heal()
        assert not faults.active()
        assert burst(lan, "h1", ["h2", "h3"]) == {"h2": BURST, "h3": BURST}
    finally:
        faults.heal()
        lan.close()


def test_a_lan_is_torn_down_on_sigterm(tmp_path: Path) -> None:
    script = (
        "import sys, time\n"
        f"sys.path.insert(0, {str(Path(__file__).parent)!r})\n"
        "from lab import Lan, install_signal_teardown\n"
        "install_signal_teardown()\n"
        "lan = Lan(['h1', 'h2'])\n"
        "try:\n"
        "    print(lan.switch, flush=True)\n"
        "    time.sleep(60)\n"
        "finally:\n"
        "    lan.close()\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        switch = readline_within(proc.stdout, 60, "the LAN script").strip()
        prefix = switch[:-2]  # el<pid>: every namespace of that LAN
        assert switch in sh("ip", "netns", "list")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 128 + signal.SIGTERM
        left = [line for line in sh("ip", "netns", "list").splitlines() if line.startswith(prefix)]
        assert left == []
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
