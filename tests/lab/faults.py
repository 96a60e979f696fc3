"""Network faults on a lab LAN, each undone by heal().

Packet filters are nftables tables inside the namespaces (one table per
fault, named with our pid), traffic shaping is tc inside a host namespace.
Loss and duplication use nftables ``numgen`` because the kernels of these
machines lack sch_netem; delay and reordering exist only where netem does
(netem_available() says, callers skip with that reason elsewhere).
"""

from __future__ import annotations

import itertools
import subprocess
import threading

from .lan import Lan, sh

_counter = itertools.count()


def _sample(percent: int) -> str:
    """An nftables match for percent % of packets (numgen's values are 0..99)."""
    percent = int(percent)
    if not 0 < percent <= 100:
        raise ValueError(f"percent must be 1..100, got {percent}")
    return "" if percent == 100 else f"numgen random mod 100 < {percent} "


def netem_available(lan: Lan, host: str) -> tuple[bool, str]:
    """Try a netem qdisc on the host's link (there is no modprobe here)."""
    result = subprocess.run(lan.exec_argv(host, "tc", "qdisc", "add", "dev", "lan0", "root", "netem", "delay", "1ms"),
                            capture_output=True, text=True, timeout=30)
    if result.returncode == 0:
        lan.run(host, "tc", "qdisc", "del", "dev", "lan0", "root", check=False)
        return True, ""
    return False, f"this kernel has no sch_netem ({result.stderr.strip()})"


class Faults:
    """The faults in force on one LAN; heal() removes them all."""

    def __init__(self, lan: Lan) -> None:
        self.lan = lan
        self.tables: list[tuple[str, str, str]] = []  # (namespace, family, table)
        self.shaped: list[str] = []  # hosts with a root qdisc of ours
        self.flappers: list[tuple[threading.Event, threading.Thread, str]] = []

    def _table(self, namespace: str, family: str, body: str) -> None:
        name = f"el{self.lan.pid}f{next(_counter)}"
        text = f"table {family} {name} {{\n{body}\n}}\n"
        self.tables.append((namespace, family, name))  # before nft runs: heal() tries it either way
        subprocess.run(["ip", "netns", "exec", namespace, "nft", "-f", "-"], input=text, text=True,
                       capture_output=True, timeout=30, check=True)

    def _input_drop(self, host: str, match: str) -> None:
        self._table(self.lan.ns[host], "inet",
                    f"chain input {{\n type filter hook input priority 0; policy accept;\n {match} drop\n}}")

    # ---- partitions -----------------------------------------------------------

    def one_way(self, source: str, destination: str) -> None:
        """destination no longer hears source; source still hears destination."""
        self._input_drop(destination, f"ip saddr {self.lan.address[source]}")

    def partition(self, groups: list[list[str]]) -> None:
        """Symmetric: every host hears only the hosts of its own group. Hosts
        in no group keep hearing everyone who still hears them."""
        for group in groups:
            others = [self.lan.address[h] for g in groups if g is not group for h in g]
            for host in group:
                if others:
                    self._input_drop(host, f"ip saddr {{ {', '.join(others)} }}")

    def isolate(self, host: str) -> None:
        self.partition([[host], [h for h in self.lan.hosts if h != host]])

    # ---- lossy links ------------------------------------------------------------

    def loss(self, host: str, percent: int) -> None:
        """host drops percent % of what it receives, at random."""
        self._input_drop(host, f"meta l4proto udp {_sample(percent)}".rstrip())

    def duplicate(self, host: str, percent: int) -> None:
        """percent % of what host sends reaches every other port twice: the
        switch copies its frames to the bridge, which floods the copy."""
        port = f"v{self.lan.pid}{host}"[:15]
        self._table(self.lan.switch, "netdev",
                    f"chain copy {{\n type filter hook ingress device \"{port}\" priority 0;\n"
                    f" {_sample(percent)}dup to \"br0\"\n}}")

    def congest(self, host: str, rate_kbit: int = 64, latency_ms: int = 200) -> None:
        """A slow link out of host: a token bucket that queues, then drops."""
        self.shaped.append(host)
        self.lan.run(host, "tc", "qdisc", "replace", "dev", "lan0", "root", "tbf", "rate", f"{rate_kbit}kbit",
                     "burst", "1600", "latency", f"{latency_ms}ms")

    def delay(self, host: str, delay_ms: int, jitter_ms: int = 0) -> None:
        """netem only (callers check netem_available first)."""
        self.shaped.append(host)
        argv = ["tc", "qdisc", "replace", "dev", "lan0", "root", "netem", "delay", f"{delay_ms}ms"]
        if jitter_ms:
            argv += [f"{jitter_ms}ms"]
        self.lan.run(host, *argv)

    def flap(self, host: str, period_s: float, max_flaps: int = 200) -> None:
        """host's link goes down and up every period_s/2, until heal()."""
        stop = threading.Event()

        def run() -> None:
            for i in range(max_flaps):  # bounded in count; heal() ends it sooner
                if stop.wait(period_s / 2):
                    break
                try:
                    self.lan.set_link(host, up=i % 2 == 1)
                except Exception:
                    break
            try:
                self.lan.set_link(host, up=True)
            except Exception:
                pass

        thread = threading.Thread(target=run, daemon=True, name=f"flap-{host}")
        thread.start()
        self.flappers.append((stop, thread, host))

    # ---- heal ---------------------------------------------------------------------

    def heal(self) -> None:
        for stop, thread, host in self.flappers:
            stop.set()
            thread.join(10)
        self.flappers = []
        for namespace, family, name in self.tables:
            sh("ip", "netns", "exec", namespace, "nft", "delete", "table", family, name, check=False)
        self.tables = []
        for host in self.shaped:
            self.lan.run(host, "tc", "qdisc", "del", "dev", "lan0", "root", check=False)
        self.shaped = []
        for host in self.lan.hosts:
            self.lan.set_link(host, up=True)

    def active(self) -> bool:
        return bool(self.tables or self.shaped or self.flappers)
