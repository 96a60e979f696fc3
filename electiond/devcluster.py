"""Run a cluster of real electiond processes on loopback multicast.

Used by scripts/demo, the process-level tests and the benchmarks. Each
cluster gets its own port, group and cluster name, so parallel test workers
never hear each other. Every wait is bounded in time.
"""

from __future__ import annotations

import itertools
import json
import os
import pathlib
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable

from electiond.cli import Refused, Unreachable, request

# PYTHONPATH for the daemons: wherever this package is imported from
REPO = pathlib.Path(__file__).resolve().parent.parent
_counter = itertools.count()
# status requests in flight at once when sweeping a large cluster
STATUS_THREADS = 16

HOOK_SCRIPT = """#!/bin/sh
# records every transition: wall time, event, node, term, reason
echo "$(date +%s.%N) $ELECTIOND_EVENT $ELECTIOND_NODE ${ELECTIOND_TERM:-0} $ELECTIOND_REASON" >> "$HOOK_LOG"
"""


def wait_for(predicate: Callable[[], Any], timeout_s: float, what: str,
             diagnostics: Callable[[], str] = lambda: "") -> Any:
    """Poll until predicate() is truthy (returning it) or fail after timeout_s."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout_s}s waiting for {what}\n{diagnostics()}")


def free_udp_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def unicast_members(names: list[str], hosts: list[str]) -> str:
    """members = n1=1@127.0.0.1:PORT, ... with a free port for each member."""
    items = []
    for i, (name, host) in enumerate(zip(names, hosts), 1):
        where = f"[{host}]" if ":" in host else host
        items.append(f"{name}={i}@{where}:{free_udp_port(host)}")
    return ", ".join(items)


class Cluster:
    def __init__(
        self,
        workdir: pathlib.Path,
        size: int,
        protocol: str = "bully",
        node_options: dict[str, str] | None = None,
        timing: dict[str, str] | None = None,
        hooks: dict[str, str] | None = None,
        per_node: dict[str, dict[str, str]] | None = None,
        control: dict[str, dict[str, str]] | None = None,
        transport: str = "multicast",
        ipv6: bool = False,
        witnesses: tuple[str, ...] = (),
    ) -> None:
        """transport = unicast: each member on its own loopback address
        (127.0.0.N, or ::1 with ipv6) and port; multicast with ipv6 is not
        offered on loopback (lo does not do IPv6 multicast)."""
        self.workdir = workdir
        self.names = [f"n{i}" for i in range(1, size + 1)]
        self.protocol = protocol
        self.procs: dict[str, subprocess.Popen] = {}
        self.hook_log = workdir / "hooks.log"
        self.hook_log.touch()
        hook = workdir / "record-hook"
        hook.write_text(HOOK_SCRIPT)
        hook.chmod(0o755)
        unique = os.getpid() * 100 + next(_counter)
        self.cluster_name = f"t{unique}"
        self.group = f"239.255.{(unique >> 8) % 256}.{unique % 256}"
        self.port = free_udp_port()
        self.transport = transport
        if transport == "unicast":
            hosts = ["::1"] * size if ipv6 else [f"127.0.0.{i}" for i in range(1, size + 1)]
            members = unicast_members(self.names, hosts)
            where = "transport = unicast"
        elif ipv6:
            raise ValueError("IPv6 loopback clusters use transport = unicast")
        else:
            members = ", ".join(f"{n}={i}" for i, n in enumerate(self.names, 1))
            where = f"group = {self.group}\nport = {self.port}\ninterface = 127.0.0.1"
        self.per_node = {name: dict(keys) for name, keys in (per_node or {}).items()}
        for name in witnesses:  # quorum-lease: [cluster] witnesses, and role = witness on each
            self.per_node.setdefault(name, {})["role"] = "witness"
        witness_line = f"witnesses = {', '.join(witnesses)}\n" if witnesses else ""
        self.control = control or {}  # node -> extra [control] keys (metrics_listen, socket_mode...)
        node_lines = "\n".join(f"{k} = {v}" for k, v in (node_options or {}).items())
        timing_lines = "\n".join(f"{k} = {v}" for k, v in (timing or {}).items())
        hook_cfg = {"promote": f"{hook}", "demote": f"{hook}", "fault": f"{hook}", "timeout": "10s"}
        hook_cfg.update(hooks or {})
        hook_lines = "\n".join(f"{k} = {v}" for k, v in hook_cfg.items())
        self.config_text = f"""
[cluster]
name = {self.cluster_name}
protocol = {protocol}
members = {members}
{where}
{witness_line}
[node]
{node_lines}

[timing]
{timing_lines}

[hooks]
{hook_lines}
"""

    def config_path(self, name: str) -> pathlib.Path:
        path = self.workdir / f"{name}.conf"
        text = self.config_text
        control = "".join(f"{k} = {v}\n" for k, v in self.control.get(name, {}).items())
        text += f"\n[control]\nsocket = {self.socket(name)}\n{control}\n[state]\ndirectory = {self.workdir / name}\n"
        extra = self.per_node.get(name)
        if extra:
            text = text.replace("[node]\n", "[node]\n" + "".join(f"{k} = {v}\n" for k, v in extra.items()))
        path.write_text(text)
        return path

    def socket(self, name: str) -> str:
        return str(self.workdir / f"{name}.sock")

    # ---- processes ----------------------------------------------------------

    def spawn(self, name: str) -> None:
        """Start a daemon without waiting for it."""
        self.spawn_as(name, name, self.config_path(name))

    def spawn_as(self, key: str, name: str, config: pathlib.Path, prefix: tuple[str, ...] = ()) -> None:
        """Start a daemon for [node] ``name`` from ``config``, tracked (procs,
        ``key``.log) as ``key``; ``prefix`` runs it inside something (ip netns exec NS)."""
        env = dict(os.environ, HOOK_LOG=str(self.hook_log), PYTHONPATH=str(REPO))
        with open(self.workdir / f"{key}.log", "ab") as log:
            self.procs[key] = subprocess.Popen(
                [*prefix, sys.executable, "-m", "electiond", "--config", str(config), "--node", name],
                env=env, stdout=log, stderr=subprocess.STDOUT, cwd=self.workdir,
            )

    def twin_config(self, name: str, suffix: str, text: str | None = None) -> pathlib.Path:
        """name's config (or ``text``, a variant of it) for a second daemon with the
        same [node] name, as a cloned host would run: only its control socket and
        state directory differ, named name+suffix (so ``status(name + suffix)`` asks it)."""
        twin = name + suffix
        text = self.config_path(name).read_text() if text is None else text
        text = text.replace(self.socket(name), self.socket(twin)).replace(
            f"directory = {self.workdir / name}\n", f"directory = {self.workdir / twin}\n")
        path = self.workdir / f"{twin}.conf"
        path.write_text(text)
        return path

    def wait_socket(self, name: str) -> None:
        self.wait_for(lambda: os.path.exists(self.socket(name)), 15, f"{name} to open its socket")

    def start(self, name: str) -> None:
        self.spawn(name)
        self.wait_socket(name)

    def start_all(self) -> None:
        """Start every daemon at once, as hosts booting together would."""
        for name in self.names:
            self.spawn(name)
        for name in self.names:
            self.wait_socket(name)

    def signal(self, name: str, sig: int) -> None:
        self.procs[name].send_signal(sig)

    def stop(self, key: str, timeout_s: float = 15.0) -> None:
        """SIGTERM one daemon and wait for it to exit (SIGKILL after timeout_s)."""
        proc = self.procs.pop(key)
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)

    def kill(self, name: str) -> None:
        proc = self.procs.pop(name)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)

    def stop_all(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGCONT)
                proc.terminate()
        for proc in self.procs.values():
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        self.procs.clear()

    def __enter__(self) -> "Cluster":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop_all()

    # ---- observation ---------------------------------------------------------

    def status(self, name: str) -> dict[str, Any] | None:
        try:
            return request(self.socket(name), "status", timeout_s=2.0)
        except (Unreachable, Refused):
            return None

    def running(self) -> list[str]:
        return [n for n, p in self.procs.items() if p.poll() is None]

    def statuses(self, names: list[str]) -> list[dict[str, Any] | None]:
        """Every named node's status, asked all at once (a sweep costs the
        slowest answer, not the sum: 65 daemons asked one after another took
        longer than a quorum-lease term lasted on a loaded machine), and a
        node that did not answer in time asked once more before it counts as
        silent (one slow answer among 65 must not void the sweep)."""
        if len(names) <= 3:
            return [self.status(n) for n in names]
        with ThreadPoolExecutor(min(len(names), STATUS_THREADS)) as pool:
            found = list(pool.map(self.status, names))
            again = [i for i, s in enumerate(found) if s is None]
            for i, s in zip(again, pool.map(self.status, [names[i] for i in again])):
                found[i] = s
        return found

    def agreed_leader(self, among: list[str] | None = None) -> str | None:
        """The leader if every running node names the same one and only it says it leads."""
        statuses = self.statuses(among or self.running())
        if not statuses or any(s is None for s in statuses):
            return None
        leaders = {s["leader"] for s in statuses}
        claimants = [s["node"] for s in statuses if s["role"] == "leader"]
        if len(leaders) == 1 and None not in leaders and claimants == [next(iter(leaders))]:
            return claimants[0]
        return None

    def wait_for(self, predicate: Callable[[], Any], timeout_s: float, what: str) -> Any:
        return wait_for(predicate, timeout_s, what, self.logs)

    def wait_leader(self, timeout_s: float = 5.0, among: list[str] | None = None) -> str:
        return self.wait_for(lambda: self.agreed_leader(among), timeout_s, "an agreed leader")

    def wait_clock_checked(self, name: str, timeout_s: float = 15.0) -> dict[str, Any]:
        """Wait until name's start-up clock check passed; returns its status.
        A node still checking may not stand, so a transfer to it is refused."""
        def checked() -> dict[str, Any] | None:
            status = self.status(name)
            return status if status is not None and (status.get("clock") or {}).get("checked") else None

        return self.wait_for(checked, timeout_s, f"{name}'s clock check")

    def history_wall(self, name: str, event: str, after: float = float("-inf")) -> list[float]:
        """Wall-clock times, oldest first, at which name itself recorded event
        (promote, demote, ...) in its history after ``after``: the daemon's
        decision, not when its hook process got to run (spawning one lags by
        seconds on a loaded machine). The daemons share this host's clock."""
        now = time.time()
        entries = request(self.socket(name), "history", timeout_s=5.0)
        return sorted(t for t in (now - e["ago_s"] for e in entries if e["event"] == event) if t > after)

    def hook_events(self) -> list[tuple[float, str, str, int, str]]:
        events = []
        for line in self.hook_log.read_text().splitlines():
            stamp, event, node, term, reason = (line.split() + [""] * 5)[:5]
            events.append((float(stamp), event, node, int(term), reason))
        return events

    def logs(self) -> str:
        parts = []
        for name in self.names:
            path = self.workdir / f"{name}.log"
            if path.exists():
                tail = path.read_text(errors="replace").splitlines()[-15:]
                parts.append(f"--- {name}.log\n" + "\n".join(tail))
        return "\n".join(parts)

    def status_json(self, name: str) -> str:
        return json.dumps(self.status(name), indent=1)
