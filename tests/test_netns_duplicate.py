"""Two hosts with the same [node] name on one LAN (network namespaces, root).

h1, h2, h3 run n1, n2, n3; a fourth host "cp" runs a copy of n1's config (a
cloned VM): the same name and key, its own address. Both n1s must enter FAULT
naming each other's address, the cluster keeps a leader on n2/n3, and once the
clone is gone n1 rejoins. Namespaces are named with our pid and always deleted.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from cluster import Cluster
from electiond import keys

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root to create network namespaces"),
    pytest.mark.skipif(shutil.which("ip") is None, reason="needs ip (iproute2)"),
]

KEY = keys.Key("k1", bytes.fromhex("5a" * 32))


class DuplicateLan(Cluster):
    def __init__(self, workdir: Path, lan) -> None:
        self.lan = lan
        super().__init__(workdir, 3, protocol="quorum-lease")
        key_path = workdir / "key"
        key_path.write_text(keys.key_line(KEY))
        key_path.chmod(0o600)
        self.config_text = self.config_text.replace(
            "interface = 127.0.0.1", f"interface = 127.0.0.1\nkey_file = {key_path}")

    def host_text(self, name: str, host: str) -> str:
        """name's config as host runs it: bound to host's address on the LAN."""
        text = super().config_path(name).read_text()
        return text.replace("interface = 127.0.0.1", f"interface = {self.lan.address[host]}")

    def config_path(self, name: str) -> Path:
        path = self.workdir / f"{name}.conf"
        path.write_text(self.host_text(name, name))
        return path

    def spawn_in(self, key: str, name: str, host: str, config: Path) -> None:
        self.spawn_as(key, name, config, ("ip", "netns", "exec", self.lan.ns[host]))

    def spawn(self, name: str) -> None:
        self.spawn_in(name, name, name, self.config_path(name))


def test_a_cloned_host_with_our_name_faults_both_until_it_leaves(tmp_path):
    from lab import Lan

    lan = Lan(["n1", "n2", "n3", "cp"])
    try:
        with DuplicateLan(tmp_path, lan) as c:
            c.start_all()
            c.wait_leader(15.0)
            clone_conf = c.twin_config("n1", "-clone", c.host_text("n1", "cp"))
            c.spawn_in("n1-clone", "n1", "cp", clone_conf)
            c.wait_for(lambda: "duplicate_name" in (c.status("n1") or {}).get("blocked_by", {}), 15.0,
                       "n1 to enter FAULT")
            c.wait_for(lambda: "duplicate_name" in (c.status("n1-clone") or {}).get("blocked_by", {}), 15.0,
                       "the clone to enter FAULT")
            n1_log = (tmp_path / "n1.log").read_text()
            clone_log = (tmp_path / "n1-clone.log").read_text()
            assert f"from {lan.address['cp']}:" in n1_log and f"ours is {lan.address['n1']}:" in n1_log
            assert f"from {lan.address['n1']}:" in clone_log and f"ours is {lan.address['cp']}:" in clone_log
            leader = c.wait_for(lambda: c.agreed_leader(["n2", "n3"]), 15.0, "a leader on n2/n3")
            assert leader in ("n2", "n3")
            c.wait_for(lambda: any(m["name"] == "n1" and m["duplicate"] for m in c.status("n2")["members"]),
                       15.0, "n2 to flag n1")
            c.stop("n1-clone")
            c.wait_for(lambda: (c.status("n1") or {}).get("blocked_by") == {}, 15.0, "n1 to leave FAULT")
            c.wait_leader(15.0)
            c.wait_for(lambda: all(m["alive"] for m in c.status("n1")["members"]), 15.0, "n1 to rejoin")
    finally:
        lan.close()
