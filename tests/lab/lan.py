"""A LAN in network namespaces: a bridge in a "switch" namespace, N host
namespaces and optional client namespaces, each with a veth (``lan0``), an
address in a private subnet and the multicast route.

Every name carries our pid (and a per-process counter, so one process can
build several LANs); every namespace is deleted by close(), which runs in the
callers' finally blocks, at exit, and on SIGINT/SIGTERM once
install_signal_teardown() turned those into exceptions.
"""

from __future__ import annotations

import atexit
import itertools
import os
import re
import signal
import subprocess
import time
import weakref

SUBNET = "10.213.100"
_counter = itertools.count()
_open_lans: "weakref.WeakSet[Lan]" = weakref.WeakSet()


def sh(*argv: str, check: bool = True, timeout_s: float = 30.0) -> str:
    result = subprocess.run(argv, capture_output=True, text=True, timeout=timeout_s)
    if check and result.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed: {result.stderr.strip()}")
    return result.stdout


def install_signal_teardown() -> None:
    """SIGTERM (and SIGINT, already KeyboardInterrupt) unwind the stack, so
    every finally runs and the namespaces go; a second signal still kills."""

    def unwind(signum: int, _frame) -> None:
        signal.signal(signum, signal.SIG_DFL)
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, unwind)


def close_all() -> None:
    for lan in list(_open_lans):
        lan.close()


atexit.register(close_all)


class Lan:
    """The namespaces, the bridge and the addresses. ``ns[name]`` is a host's
    namespace, ``address[name]`` its address; clients are hosts that run no daemon."""

    def __init__(self, hosts: list[str], clients: tuple[str, ...] = ("cl",), subnet: str = SUBNET) -> None:
        if not 1 <= len(hosts) <= 80:
            raise ValueError("a lab LAN has 1 to 80 hosts")
        pid = os.getpid()
        k = next(_counter)
        tag = f"el{pid}" if k == 0 else f"el{pid}x{k}"  # the first LAN keeps the historic names
        self.pid = pid
        self.subnet = subnet
        self.hosts = list(hosts)
        self.clients = list(clients)
        self.switch = f"{tag}sw"
        self.ns = {name: f"{tag}{name}" for name in [*hosts, *clients]}
        self.address = {name: f"{subnet}.{11 + i}" for i, name in enumerate(hosts)}
        for i, name in enumerate(clients):
            self.address[name] = f"{subnet}.{100 + i}"
        self.created: list[str] = []
        _open_lans.add(self)
        try:
            self._build()
        except BaseException:
            self.close()
            raise

    def _build(self) -> None:
        sh("ip", "netns", "add", self.switch)
        self.created.append(self.switch)
        sh("ip", "-n", self.switch, "link", "add", "br0", "type", "bridge", "mcast_snooping", "0")
        sh("ip", "-n", self.switch, "link", "set", "br0", "up")
        for name, ns in self.ns.items():
            sh("ip", "netns", "add", ns)
            self.created.append(ns)
            # the switch end lives in the switch namespace only, so it need
            # not be unique across LANs; the pid keeps it apart while the
            # kernel creates the pair
            port = f"v{self.pid}{name}"[:15]
            sh("ip", "link", "add", "lan0", "netns", ns, "type", "veth", "peer", "name", port, "netns", self.switch)
            sh("ip", "-n", self.switch, "link", "set", port, "master", "br0", "up")
            sh("ip", "-n", ns, "addr", "add", f"{self.address[name]}/24", "dev", "lan0")
            sh("ip", "-n", ns, "link", "set", "lan0", "up")
            sh("ip", "-n", ns, "link", "set", "lo", "up")
            sh("ip", "-n", ns, "route", "replace", "224.0.0.0/4", "dev", "lan0")
        self.wait_links_up()

    def wait_links_up(self, timeout_s: float = 10.0) -> None:
        """Every lan0 reports carrier: datagrams sent before that are lost."""
        deadline = time.monotonic() + timeout_s
        waiting = list(self.ns)
        while waiting and time.monotonic() < deadline:
            waiting = [n for n in waiting
                       if "state UP" not in sh("ip", "-n", self.ns[n], "-o", "link", "show", "lan0")]
            if waiting:
                time.sleep(0.05)
        if waiting:
            raise RuntimeError(f"lan0 of {waiting} not up after {timeout_s}s")

    def close(self) -> None:
        for ns in reversed(self.created):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=30)
        self.created = []
        _open_lans.discard(self)

    def __enter__(self) -> "Lan":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def exec_argv(self, name: str, *argv: str) -> list[str]:
        return ["ip", "netns", "exec", self.ns[name], *argv]

    def run(self, name: str, *argv: str, check: bool = True) -> str:
        return sh(*self.exec_argv(name, *argv), check=check)

    def mac(self, name: str) -> str:
        out = sh("ip", "-n", self.ns[name], "-o", "link", "show", "lan0")
        match = re.search(r"link/ether (\S+)", out)
        assert match, out
        return match.group(1)

    def has_address(self, name: str, cidr: str) -> bool:
        out = sh("ip", "-n", self.ns[name], "-o", "-4", "addr", "show", "dev", "lan0")
        return cidr in re.findall(r"inet (\S+)", out)

    def neighbour(self, name: str, address: str) -> str | None:
        out = sh("ip", "-n", self.ns[name], "neigh", "show", address)
        match = re.search(r"lladdr (\S+)", out)
        return match.group(1) if match else None

    def set_link(self, name: str, up: bool) -> None:
        sh("ip", "-n", self.ns[name], "link", "set", "lan0", "up" if up else "down")
        if up:  # the kernel dropped the device's routes when it went down
            sh("ip", "-n", self.ns[name], "route", "replace", "224.0.0.0/4", "dev", "lan0")
