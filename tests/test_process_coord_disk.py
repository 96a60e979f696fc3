"""The embedded store's fail-stop on a failed write, in real daemons (root: a tmpfs).

A follower's state directory is a tiny tmpfs, remounted read-only while the
cluster serves writes: the next entry it is sent cannot be persisted, so it
must exit 75 (EX_TEMPFAIL) rather than ack from memory; the write is still
acknowledged by the other two and read back; once the disk works and the
node is restarted it catches up."""

from __future__ import annotations

import os
import subprocess
import time

import pytest

from cluster import Cluster
from test_process_disk_faults import _mount_tmpfs, _unmount

from electiond.cli import Refused, Unreachable, request

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root")


def _ask(c: Cluster, names, cmd: str, args: dict, limit_s: float = 15.0):
    deadline = time.monotonic() + limit_s
    last: Exception | None = None
    while time.monotonic() < deadline:
        for name in names:
            try:
                return request(c.socket(name), cmd, args, timeout_s=8.0)
            except (Refused, Unreachable) as exc:
                last = exc
        time.sleep(0.1)
    raise AssertionError(f"{cmd} {args} not answered within {limit_s}s: {last}")


def test_a_follower_that_cannot_write_its_store_exits_75_and_the_write_still_commits(tmp_path):
    faulted = "n1"
    state_dir = tmp_path / faulted
    _mount_tmpfs(state_dir)
    try:
        with Cluster(tmp_path, 3, protocol="quorum-lease") as c:
            c.start_all()
            leader = c.wait_leader(timeout_s=15.0)
            if leader == faulted:
                target = next(n for n in c.names if n != faulted)
                request(c.socket(leader), "transfer", {"target": target}, timeout_s=5.0)
                leader = c.wait_for(lambda: (lambda l: l if l not in (None, faulted) else None)(c.agreed_leader()),
                                    10.0, "the leader to move off the faulted node")
            rest = [n for n in c.names if n != faulted]
            first = _ask(c, rest, "config.set", {"key": "k", "value": "before"})
            deadline = time.monotonic() + 10.0
            while time.monotonic() < deadline:  # the faulted node holds the first write
                store = (c.status(faulted) or {}).get("coord_store") or {}
                if store.get("last_version", 0) >= first["version"]:
                    break
                time.sleep(0.1)
            subprocess.run(["mount", "-o", "remount,ro", str(state_dir)], check=True, timeout=10)
            proc = c.procs[faulted]
            second = _ask(c, rest, "config.set", {"key": "k", "value": "while-read-only"})
            assert proc.wait(timeout=15) == 75
            c.procs.pop(faulted)
            log = (tmp_path / f"{faulted}.log").read_text(errors="replace")
            assert "cannot write the coordination store" in log, log[-2000:]
            got = _ask(c, rest, "config.get", {"key": "k"})
            assert (got["value"], got["version"]) == ("while-read-only", second["version"])
            subprocess.run(["mount", "-o", "remount,rw", str(state_dir)], check=True, timeout=10)
            c.start(faulted)
            deadline = time.monotonic() + 20.0
            store = {}
            while time.monotonic() < deadline:
                store = (c.status(faulted) or {}).get("coord_store") or {}
                if store.get("commit", 0) >= second["version"]:
                    break
                time.sleep(0.2)
            assert store.get("commit", 0) >= second["version"], store
    finally:
        _unmount(state_dir)
