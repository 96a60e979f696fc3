"""A real etcd cluster on loopback, for the tests and scripts/bench-etcd.

Members listen on 127.0.0.1 only, on ports picked free at start, with data in
a directory the caller owns; ``stop_all`` (also on ``with`` exit) kills every
member it started. Every wait is bounded in time.
"""

from __future__ import annotations

import json
import pathlib
import shutil
import signal
import socket
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from typing import Any

ETCD = "etcd"
APT_HINT = "apt-get install etcd-server etcd-client"


def etcd_binary() -> str | None:
    return shutil.which(ETCD)


def _free_tcp_ports(count: int) -> list[int]:
    sockets, ports = [], []
    try:
        for _ in range(count):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            sockets.append(s)
            ports.append(s.getsockname()[1])
    finally:
        for s in sockets:
            s.close()
    return ports


class EtcdCluster:
    def __init__(self, workdir: pathlib.Path, size: int = 3, election_timeout_ms: int = 1000,
                 heartbeat_ms: int = 100, hosts: dict[str, tuple[str, str]] | None = None,
                 tls: dict[str, str] | None = None) -> None:
        """hosts: member name -> (network namespace, address) to run each
        member on its own host of a namespace LAN; default loopback."""
        self.workdir = workdir
        # tls: {"ca", "cert", "key"} serves clients over https and demands client certificates
        # (peers stay on http); "client_cert"/"client_key" are what this harness presents
        self.tls = tls
        self.names = [f"e{i}" for i in range(1, size + 1)]
        self.hosts = hosts or {}
        self.address = {n: self.hosts[n][1] if n in self.hosts else "127.0.0.1" for n in self.names}
        if self.hosts:
            self.client_port = {n: 2379 for n in self.names}  # one address per member: etcd's own ports
            self.peer_port = {n: 2380 for n in self.names}
        else:
            ports = _free_tcp_ports(2 * size)
            self.client_port = {n: ports[2 * k] for k, n in enumerate(self.names)}
            self.peer_port = {n: ports[2 * k + 1] for k, n in enumerate(self.names)}
        self.election_timeout_ms = election_timeout_ms
        self.heartbeat_ms = heartbeat_ms
        self.procs: dict[str, subprocess.Popen] = {}
        self.token = f"electiond-test-{workdir.name}-{int(time.time() * 1000)}"

    def url(self, name: str) -> str:
        scheme = "https" if self.tls else "http"
        return f"{scheme}://{self.address[name]}:{self.client_port[name]}"

    def _peer_url(self, name: str) -> str:
        return f"http://{self.address[name]}:{self.peer_port[name]}"

    def _in_netns(self, name: str) -> list[str]:
        return ["ip", "netns", "exec", self.hosts[name][0]] if name in self.hosts else []

    def endpoints(self) -> str:
        return ", ".join(self.url(n) for n in self.names)

    def start(self, name: str, new: bool = True) -> None:
        initial = ",".join(f"{n}={self._peer_url(n)}" for n in self.names)
        log = open(self.workdir / f"{name}.etcd.log", "ab")
        self.procs[name] = subprocess.Popen(
            [*self._in_netns(name), ETCD, "--name", name, "--data-dir", str(self.workdir / f"{name}.etcd"),
             "--listen-client-urls", self.url(name), "--advertise-client-urls", self.url(name),
             "--listen-peer-urls", self._peer_url(name), "--initial-advertise-peer-urls", self._peer_url(name),
             "--initial-cluster", initial, "--initial-cluster-token", self.token,
             "--initial-cluster-state", "new",
             "--election-timeout", str(self.election_timeout_ms), "--heartbeat-interval", str(self.heartbeat_ms),
             "--log-level", "warn",
             *(["--cert-file", self.tls["cert"], "--key-file", self.tls["key"], "--trusted-ca-file", self.tls["ca"],
                "--client-cert-auth"] if self.tls else [])],
            stdout=log, stderr=subprocess.STDOUT, cwd=self.workdir,
        )
        log.close()

    def start_all(self, timeout_s: float = 30.0) -> None:
        for name in self.names:
            self.start(name)
        self.wait_healthy(timeout_s)

    def wait_healthy(self, timeout_s: float = 30.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.leader() is not None:
                return
            time.sleep(0.2)
        raise AssertionError(f"etcd cluster not healthy within {timeout_s}s\n{self.logs()}")

    def _post(self, name: str, path: str, body: dict[str, Any], timeout_s: float = 1.0) -> dict[str, Any] | None:
        if name in self.hosts:
            # only the namespace reaches the member's address
            result = subprocess.run([*self._in_netns(name), "curl", "-s", "-m", str(timeout_s), self.url(name) + path,
                                     "-d", json.dumps(body)], capture_output=True, text=True, timeout=timeout_s + 5)
            try:
                return json.loads(result.stdout) if result.returncode == 0 else None
            except ValueError:
                return None
        request = urllib.request.Request(self.url(name) + path, data=json.dumps(body).encode(), method="POST",
                                         headers={"Content-Type": "application/json"})
        context = None
        if self.tls:
            context = ssl.create_default_context(cafile=self.tls["ca"])
            context.load_cert_chain(self.tls["client_cert"], self.tls["client_key"])
        try:
            with urllib.request.urlopen(request, timeout=timeout_s, context=context) as answer:
                return json.loads(answer.read())
        except (OSError, ValueError, urllib.error.URLError):
            return None

    def leader(self) -> str | None:
        """The member that is etcd's raft leader, as the members say (None if none answers)."""
        for name in self.running():
            status = self._post(name, "/v3/maintenance/status", {})
            if not status or not status.get("leader"):
                continue
            leader_id = status["leader"]
            for other in self.running():
                s = self._post(other, "/v3/maintenance/status", {})
                if s and s.get("header", {}).get("member_id") == leader_id:
                    return other
        return None

    def running(self) -> list[str]:
        return [n for n, p in self.procs.items() if p.poll() is None]

    def kill(self, name: str) -> None:
        proc = self.procs.pop(name)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)

    def restart(self, name: str) -> None:
        """Start a killed member again from its data directory."""
        self.start(name)

    def stop_all(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.kill()
        for proc in self.procs.values():
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                pass
        self.procs.clear()

    def logs(self) -> str:
        parts = []
        for name in self.names:
            path = self.workdir / f"{name}.etcd.log"
            if path.exists():
                parts.append(f"--- {name}.etcd.log\n" + "\n".join(path.read_text(errors="replace").splitlines()[-8:]))
        return "\n".join(parts)

    def __enter__(self) -> "EtcdCluster":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop_all()
