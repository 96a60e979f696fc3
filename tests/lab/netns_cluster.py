"""electiond daemons inside the host namespaces of a lab LAN.

NetnsCluster is the process harness of tests/cluster.py with each daemon
started by ``ip netns exec`` in its host's namespace and bound to its LAN
address; by default every host runs the shipped vip hook (the netns VIP
tests), ``vip=False`` leaves only the hooks given.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from electiond.devcluster import REPO, Cluster

from .lan import Lan, sh

VIP_HOOK = REPO / "scripts" / "hooks" / "vip"
VIP = "10.213.100.50"
VIP_CIDR = f"{VIP}/24"


class VipLan(Lan):
    """A Lan whose tests watch one VIP and a client's ARP entry for it."""

    def has_vip(self, name: str) -> bool:
        return self.has_address(name, VIP_CIDR)

    def client_arp(self) -> str | None:
        return self.neighbour("cl", VIP)


def vip_holders(lan: VipLan, hosts: list[str]) -> list[str]:
    return [h for h in hosts if lan.has_vip(h)]


class NetnsCluster(Cluster):
    """The process harness, with each daemon inside its host namespace."""

    def __init__(self, workdir: Path, lan: Lan, protocol: str = "quorum-lease",
                 node_options: dict[str, str] | None = None, size: int = 3, vip: bool = True,
                 hooks: dict[str, str] | None = None, **kwargs) -> None:
        self.lan = lan
        options = {"preempt": "no"} if node_options is None else node_options
        if vip:
            hook_dir = workdir / "hooks.d"
            for event in ("promote", "demote", "fault"):
                (hook_dir / f"{event}.d").mkdir(parents=True, exist_ok=True)
            line = f"{VIP_HOOK} auto {VIP_CIDR} lan0"
            hooks = {"promote": line, "demote": line, "fault": line, "directory": str(hook_dir), "timeout": "10s"}
        super().__init__(workdir, size, protocol=protocol, node_options=options, hooks=hooks, **kwargs)
        if vip:
            # the harness's recorder runs after the vip hook, so its timestamps
            # say when the address was in place
            for event in ("promote", "demote", "fault"):
                (workdir / "hooks.d" / f"{event}.d" / "50-record").symlink_to(workdir / "record-hook")

    socket_wait_s = 15.0  # the lab raises it: on a loaded 2-core machine a daemon may take long to start

    # the daemons' nice value (None: inherit ours); the lab sets the shipped unit's
    nice: int | None = None

    def wait_socket(self, name: str) -> None:
        self.wait_for(lambda: os.path.exists(self.socket(name)), self.socket_wait_s, f"{name} to open its socket")

    def config_path(self, name: str) -> Path:
        path = super().config_path(name)
        path.write_text(path.read_text().replace("interface = 127.0.0.1", f"interface = {self.lan.address[name]}"))
        return path

    def env(self) -> dict[str, str]:
        return dict(os.environ, HOOK_LOG=str(self.hook_log), PYTHONPATH=str(REPO), VIP_ARP_COUNT="2")

    def spawn(self, name: str) -> None:
        import subprocess

        log = open(self.workdir / f"{name}.log", "ab")
        # nice and ip netns exec exec the daemon, so the pid we hold is the daemon's
        niced = () if self.nice is None else ("nice", "-n", str(self.nice))
        self.procs[name] = subprocess.Popen(
            [*niced, "ip", "netns", "exec", self.lan.ns[name], sys.executable, "-m", "electiond",
             "--config", str(self.config_path(name)), "--node", name],
            env=self.env(), stdout=log, stderr=subprocess.STDOUT, cwd=self.workdir,
        )
        log.close()


__all__ = ["NetnsCluster", "VipLan", "vip_holders", "VIP", "VIP_CIDR", "VIP_HOOK", "sh"]
