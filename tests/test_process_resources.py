"""Real daemons short of descriptors, flooded with control connections, or
with a promote hook that cannot start.

The rule under test: a daemon never leads without a promote HookResult. A
promote hook that cannot start (out of descriptors, not executable) is a
failed hook, so the node steps down; a node that cannot even write its vote
never promotes. Either way it says why in its log and leads again, with a
working promote hook, once the cause is gone.
"""

from __future__ import annotations

import os
import pathlib
import resource
import socket
import subprocess
import sys
import time
from typing import Any

import pytest

from cluster import REPO, Cluster

from electiond.cli import Refused, Unreachable, request

# the daemon's own cap; the exhaustion tests open this many connections
MAX_CONNECTIONS = 64


class BoundedCluster(Cluster):
    """A loopback cluster with extra [control] keys and per-node hook overrides."""

    def __init__(self, *args: Any, control: dict[str, str] | None = None,
                 node_hooks: dict[str, dict[str, str]] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.control = control or {}
        self.node_hooks = node_hooks or {}

    def config_path(self, name: str) -> pathlib.Path:
        path = super().config_path(name)
        text = path.read_text()
        extra = "".join(f"{k} = {v}\n" for k, v in self.control.items())
        text = text.replace("[control]\n", "[control]\n" + extra)
        lines = []
        for line in text.splitlines():
            key = line.split("=", 1)[0].strip()
            if key in self.node_hooks.get(name, {}) and "=" in line:
                line = f"{key} = {self.node_hooks[name][key]}"
            lines.append(line)
        path.write_text("\n".join(lines) + "\n")
        return path


def fds_of(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def connect(path: str, deadline: float) -> socket.socket:
    """A connection that waits (bounded) while the listen backlog is full."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(5.0)
    while True:
        try:
            sock.connect(path)
            return sock
        except BlockingIOError:  # backlog full: the daemon has not accepted yet
            if time.monotonic() > deadline:
                sock.close()
                raise
            time.sleep(0.005)


def history(c: Cluster, name: str) -> list[dict[str, Any]]:
    return request(c.socket(name), "history", timeout_s=5.0)


def run_electionctl(c: Cluster, name: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "electiond.cli", "--socket", c.socket(name), *args],
        capture_output=True, text=True, timeout=30, env=dict(os.environ, PYTHONPATH=str(REPO)),
    )


def assert_never_led_without_a_promote_result(entries: list[dict[str, Any]], name: str) -> None:
    """Every promotion in the history is followed by its promote hook's
    result or by a demote (then the coalesced promote never needed to run);
    a failed promote hook is followed by a stepdown."""
    for i, entry in enumerate(entries):
        if entry["event"] != "promote":
            continue
        later = entries[i + 1:]
        closing = next((e for e in later if e["event"] == "demote"
                        or (e["event"] == "hook" and e["hook_event"] == "promote")), None)
        assert closing is not None, f"{name} promoted in term {entry['term']} with no promote hook result: {entries}"
        if closing["event"] == "hook" and (closing["exit_code"] != 0 or closing.get("error")):
            assert any(e["event"] == "demote" and e["reason"] in ("promote_backoff", "promote_failed")
                       for e in later), (
                f"{name}'s promote hook failed but it did not step down: {entries}")


def exhaust(c: Cluster, name: str, spare: int = 12) -> list[socket.socket]:
    """Lower the daemon's descriptor limit to a few above what it uses, then
    open control connections (up to its cap) until it has none left."""
    pid = c.procs[name].pid
    limit = fds_of(pid) + spare
    # only the soft limit: lowering it needs no privilege, and it can be raised back
    _, hard = resource.prlimit(pid, resource.RLIMIT_NOFILE)
    resource.prlimit(pid, resource.RLIMIT_NOFILE, (limit, hard))
    held: list[socket.socket] = []
    deadline = time.monotonic() + 10
    for _ in range(MAX_CONNECTIONS):
        try:
            held.append(connect(c.socket(name), deadline))
        except OSError:
            break
    c.wait_for(lambda: fds_of(pid) >= limit, 10, f"{name} to run out of descriptors")
    return held


def release(c: Cluster, name: str, held: list[socket.socket]) -> None:
    for sock in held:
        sock.close()
    held.clear()
    pid = c.procs[name].pid
    _, hard = resource.prlimit(pid, resource.RLIMIT_NOFILE)
    resource.prlimit(pid, resource.RLIMIT_NOFILE, (min(hard, 4096), hard))


def hook_promotes(c: Cluster, name: str) -> list[tuple[float, str, str, int, str]]:
    return [e for e in c.hook_events() if e[1] == "promote" and e[2] == name]


# what fdreserve and the hooks log when work meets EMFILE and retries on the reserve
RESERVE_USED = "out of file descriptors (Too many open files"


def summary(entries: list[dict[str, Any]], log: str) -> str:
    """What happened, for the test output: promotions, promote results, errors logged."""
    promotes = sum(e["event"] == "promote" for e in entries)
    results = [("ok" if e["exit_code"] == 0 and not e.get("error") else e.get("error") or f"exit {e['exit_code']}")
               for e in entries if e["event"] == "hook" and e["hook_event"] == "promote"]
    return (f"{promotes} promotion(s), promote results {results}, "
            f"{log.count(RESERVE_USED)} EMFILE(s) met by the state write or a hook")


def transfer_to(c: Cluster, target: str, timeout_s: float = 30.0) -> None:
    """Ask the current leader to hand over to target until target leads with
    its promote hook done (a transfer may be refused while leadership moves)."""
    c.wait_clock_checked(target, timeout_s)  # until then every transfer to it is refused
    refusals: list[str] = []

    def led() -> bool:
        leader = c.agreed_leader()
        if leader == target:
            return bool(hook_promotes(c, target)) and c.status(target)["hooks"]["busy"] is False
        if leader is not None:
            try:
                request(c.socket(leader), "transfer", {"target": target}, timeout_s=2.0)
            except (Unreachable, Refused) as exc:
                refusals.append(f"{leader}: {exc}")
            time.sleep(0.5)
        return False

    try:
        c.wait_for(led, timeout_s, f"{target} to lead after a transfer")
    except AssertionError as exc:
        statuses = {n: c.status(n) for n in c.running()}
        raise AssertionError(f"{exc}\nrefusals: {refusals[-5:]}\nstatuses: {statuses}") from None


LEASE = {"lease": "600ms"}  # long enough not to lapse on a loaded two-core machine


def test_thousand_idle_connections_are_capped_and_timed_out(tmp_path: pathlib.Path) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 1100:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 4096), hard))
    idle_timeout_s = 3.0
    with BoundedCluster(tmp_path, 3, protocol="quorum-lease", timing=LEASE,
                        control={"idle_timeout": f"{idle_timeout_s}s"}) as c:
        c.start("n1")
        pid = c.procs["n1"].pid
        baseline = fds_of(pid)
        clients: list[socket.socket] = []
        try:
            t0 = time.monotonic()
            for _ in range(1000):
                clients.append(connect(c.socket("n1"), t0 + 30))
            opened_s = time.monotonic() - t0
            # the daemon holds at most its cap, however many clients there are
            assert fds_of(pid) <= baseline + MAX_CONNECTIONS + 4
            # while the cap is reached by others, electionctl gets a clear error, exit 2
            if time.monotonic() - t0 < idle_timeout_s - 0.5:
                busy = run_electionctl(c, "n1", "status")
                assert busy.returncode == 2, busy
                assert "daemon busy: too many control connections" in busy.stderr
            # the refused ones got one JSON line and were closed; the others get
            # theirs when the idle timeout closes them
            refused = idle = 0
            for sock in clients:
                data = b""
                while not data.endswith(b"\n"):
                    chunk = sock.recv(4096)
                    if not chunk:
                        break
                    data += chunk
                if b'"code": "busy"' in data:
                    refused += 1
                elif b"no request within" in data:
                    idle += 1
            assert refused + idle == 1000, (refused, idle)
            assert idle <= MAX_CONNECTIONS and refused >= 1000 - MAX_CONNECTIONS
            # once the idle ones are gone, a normal status answers
            status = c.wait_for(lambda: c.status("n1"), 3 * idle_timeout_s, "status to answer again")
            assert status["control"]["refused"] >= refused and status["control"]["idle_closed"] >= idle
            assert status["descriptors"]["reserve_held"] == status["descriptors"]["reserve_size"] == 16
            assert status["descriptors"]["open"] < baseline + 8
            ok = run_electionctl(c, "n1", "status")
            assert ok.returncode == 0, ok
            log = (tmp_path / "n1.log").read_text()
            assert "refusing connections" in log and "max_connections" in log
            print(f"1000 connections in {opened_s:.2f}s: {refused} refused at once, {idle} closed idle; "
                  f"daemon fds {baseline} idle, peak bound {baseline + MAX_CONNECTIONS}")
        finally:
            for sock in clients:
                sock.close()


def test_out_of_descriptors_during_an_election(tmp_path: pathlib.Path) -> None:
    with BoundedCluster(tmp_path, 3, protocol="quorum-lease", node_options={"preempt": "no"}, timing=LEASE,
                        control={"idle_timeout": "120s"}) as c:
        c.start_all()
        leader = c.wait_leader(15)
        x = next(n for n in c.names if n != leader)
        y = next(n for n in c.names if n not in (leader, x))
        held = exhaust(c, x)
        try:
            c.kill(leader)  # x may be the one to win: it must not lead without its promote hook
            deadline = time.monotonic() + 8.0
            while time.monotonic() < deadline:
                s = c.status(y)
                if s is not None and s["leader"] == x:
                    # led by x: its promote hook must have run (the hook logs it)
                    c.wait_for(lambda: hook_promotes(c, x), 15, f"{x}'s promote hook while it leads")
                time.sleep(0.1)
        finally:
            release(c, x, held)
        c.wait_leader(20, among=[x, y])
        entries = history(c, x)
        assert_never_led_without_a_promote_result(entries, x)
        log = (tmp_path / f"{x}.log").read_text()
        # the vote write or the promote hook met EMFILE (the control socket's own line does not count)
        assert RESERVE_USED in log, log[-3000:]
        print(f"election while {x} is out of descriptors: {summary(entries, log)}")
        # recovered: a later promote on x succeeds
        transfer_to(c, x)
        last = [e for e in history(c, x) if e["event"] == "hook" and e["hook_event"] == "promote"][-1]
        assert last["exit_code"] == 0 and last["error"] is None


def test_out_of_descriptors_during_a_transfer_to_it(tmp_path: pathlib.Path) -> None:
    with BoundedCluster(tmp_path, 3, protocol="quorum-lease", node_options={"preempt": "no"}, timing=LEASE,
                        control={"idle_timeout": "120s"}) as c:
        c.start_all()
        leader = c.wait_leader(15)
        x = next(n for n in c.names if n != leader)
        # a node still in its start-up clock check may not stand: exhaust it once it passed
        c.wait_clock_checked(x, 15)
        held = exhaust(c, x)
        try:
            request(c.socket(leader), "transfer", {"target": x}, timeout_s=5.0)
            deadline = time.monotonic() + 8.0
            while time.monotonic() < deadline:
                statuses = [c.status(n) for n in c.names if n != x]
                if any(s is not None and s["leader"] == x for s in statuses):
                    c.wait_for(lambda: hook_promotes(c, x), 15, f"{x}'s promote hook while it leads")
                time.sleep(0.1)
        finally:
            release(c, x, held)
        c.wait_leader(20)
        entries = history(c, x)
        assert_never_led_without_a_promote_result(entries, x)
        log = (tmp_path / f"{x}.log").read_text()
        # the vote write or the promote hook met EMFILE (the control socket's own line does not count)
        assert RESERVE_USED in log, log[-3000:]
        print(f"transfer to {x} while it is out of descriptors: {summary(entries, log)}")
        transfer_to(c, x)
        last = [e for e in history(c, x) if e["event"] == "hook" and e["hook_event"] == "promote"][-1]
        assert last["exit_code"] == 0 and last["error"] is None


def test_promote_hook_that_cannot_start_makes_the_node_step_down(tmp_path: pathlib.Path) -> None:
    broken = tmp_path / "broken-promote"
    broken.write_text(f"#!/bin/sh\nexec {tmp_path}/record-hook\n")
    broken.chmod(0o644)  # not executable: EACCES
    with BoundedCluster(tmp_path, 3, protocol="quorum-lease", node_options={"preempt": "no"}, timing=LEASE,
                        node_hooks={"n1": {"promote": str(broken)}}) as c:
        c.start_all()
        leader = c.wait_leader(15)
        if leader != "n1":
            # a node still in its start-up clock check may not stand: hand over once it passed
            c.wait_clock_checked("n1", 15)
            request(c.socket(leader), "transfer", {"target": "n1"}, timeout_s=5.0)

        def failed_promote() -> dict[str, Any] | None:
            try:
                entries = history(c, "n1")
            except (Unreachable, Refused):
                return None
            return next((e for e in entries if e["event"] == "hook" and e["hook_event"] == "promote"), None)

        result = c.wait_for(failed_promote, 20, "n1's promote hook to fail")
        assert result["exit_code"] is None
        assert result["error"] == "cannot start: Permission denied (EACCES)"
        c.wait_for(lambda: c.agreed_leader() not in (None, "n1"), 20, "leadership to leave n1")
        entries = history(c, "n1")
        assert_never_led_without_a_promote_result(entries, "n1")
        assert any(e["event"] == "demote" and e["reason"] in ("promote_backoff", "promote_failed") for e in entries)
        log = (tmp_path / "n1.log").read_text()
        assert "cannot start" in log and "Permission denied (EACCES)" in log and "stepping down" in log
        # fixed: a later promote succeeds
        broken.chmod(0o755)
        transfer_to(c, "n1")
        last = [e for e in history(c, "n1") if e["event"] == "hook" and e["hook_event"] == "promote"][-1]
        assert last["exit_code"] == 0 and last["error"] is None
