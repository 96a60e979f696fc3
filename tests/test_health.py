"""Health tracking: rise/fall hysteresis, script, process and interface checks.

Rounds are driven with ``check_now()`` so nothing depends on timing; only the
background-loop test uses the interval, with a bounded wait.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

import psutil
import pytest

from electiond.config import HealthConfig
from electiond.health import HealthMonitor, Hysteresis, InterfaceCheck, ProcessCheck

LOG = logging.getLogger("test.health")


def write_script(path: Path, body: str) -> Path:
    path.write_text("#!/bin/sh\n" + textwrap.dedent(body))
    path.chmod(0o755)
    return path


def process_gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


class Changes(list):
    def __call__(self, healthy: bool, reason: str) -> None:
        self.append((healthy, reason))


# --------------------------------------------------------------------------- pure parts


def test_hysteresis_first_probe_sets_state_then_fall_and_rise_count() -> None:
    h = Hysteresis(rise=3, fall=2)
    assert h.healthy is None
    assert h.observe(True) and h.healthy is True
    assert not h.observe(False) and h.healthy is True  # one failure is not enough
    assert h.observe(False) and h.healthy is False  # the second one is
    assert not h.observe(True) and not h.observe(True)
    assert h.healthy is False and h.consecutive_ok == 2
    assert h.observe(True) and h.healthy is True


def test_hysteresis_alternating_results_never_flip() -> None:
    h = Hysteresis(rise=2, fall=2)
    h.observe(True)
    for _ in range(20):
        assert not h.observe(False)
        assert not h.observe(True)
    assert h.healthy is True


def test_hysteresis_first_probe_failing_is_unhealthy_at_once() -> None:
    h = Hysteresis(rise=2, fall=5)
    assert h.observe(False) and h.healthy is False


def test_hysteresis_rejects_zero() -> None:
    with pytest.raises(ValueError):
        Hysteresis(rise=0, fall=1)


def test_process_pattern_plain_name_vs_regex() -> None:
    plain = ProcessCheck("postgres")
    assert plain.regex is None
    assert plain.matches("postgres", ["/usr/lib/postgresql/15/bin/postgres", "-D", "x"])
    assert plain.matches("python3", ["/usr/bin/postgres"])  # argv[0] basename
    assert not plain.matches("postgres-exporter", ["postgres-exporter"])
    assert not plain.matches("python3", ["python3", "postgres"])
    regex = ProcessCheck(r"haproxy.*-f /etc/haproxy")
    assert regex.regex is not None
    assert regex.matches("haproxy", ["/usr/sbin/haproxy", "-Ws", "-f", "/etc/haproxy/haproxy.cfg"])
    assert not regex.matches("haproxy", ["/usr/sbin/haproxy", "-v"])


def test_bad_process_pattern_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="bad process pattern"):
        ProcessCheck("post(gres")
    with pytest.raises(ValueError):
        ProcessCheck("")


def test_interface_name_validation() -> None:
    for bad in ["", "../etc", "a/b", ".."]:
        with pytest.raises(ValueError):
            InterfaceCheck(bad)


# --------------------------------------------------------------------------- script check


def test_script_check_rise_and_fall(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.write_text("ok")
    script = write_script(tmp_path / "check", f'echo "db says $(cat "{state}")"\n[ "$(cat "{state}")" = ok ]\n')
    changes = Changes()
    monitor = HealthMonitor(HealthConfig(track_script=(str(script),), rise=2, fall=3), changes, LOG)

    async def go() -> list[bool]:
        seen = []
        await monitor.start()
        seen.append(monitor.healthy)
        state.write_text("bad")
        for _ in range(3):
            await monitor.check_now()
            seen.append(monitor.healthy)
        state.write_text("ok")
        for _ in range(2):
            await monitor.check_now()
            seen.append(monitor.healthy)
        await monitor.stop()
        return seen

    seen = asyncio.run(go())
    assert seen == [True, True, True, False, False, True]
    assert len(changes) == 2
    assert changes[0][0] is False and "exit 1: db says bad" in changes[0][1]
    assert changes[1] == (True, "recovered")
    (snap,) = monitor.snapshot()
    assert snap["kind"] == "script" and snap["healthy"] is True
    assert snap["consecutive_ok"] == 2 and snap["consecutive_fail"] == 0
    assert snap["detail"] == "exit 0: db says ok"


def test_unhealthy_at_start_is_reported_during_start(tmp_path: Path) -> None:
    script = write_script(tmp_path / "check", "echo down\nexit 2\n")
    changes = Changes()
    monitor = HealthMonitor(HealthConfig(track_script=(str(script),), rise=2, fall=2), changes, LOG)

    async def go() -> bool:
        await monitor.start()
        healthy = monitor.healthy
        await monitor.stop()
        return healthy

    assert asyncio.run(go()) is False
    assert changes == [(False, "script " + str(script) + ": exit 2: down")]


def test_hung_check_script_is_killed_with_its_children(tmp_path: Path) -> None:
    child_pid = tmp_path / "child"
    script = write_script(tmp_path / "hang", f'sleep 100000 &\necho $! > "{child_pid}"\nwait\n')
    changes = Changes()
    monitor = HealthMonitor(HealthConfig(track_script=(str(script),), timeout_s=0.5, rise=1, fall=1), changes, LOG)

    async def go() -> None:
        await monitor.check_now()

    asyncio.run(go())
    assert monitor.healthy is False
    assert monitor.snapshot()[0]["detail"].startswith("timed out")
    assert process_gone(int(child_pid.read_text()))


def test_missing_check_script_counts_as_failure(tmp_path: Path) -> None:
    monitor = HealthMonitor(HealthConfig(track_script=(str(tmp_path / "nope"),), rise=1, fall=1), Changes(), LOG)
    asyncio.run(monitor.check_now())
    assert monitor.healthy is False and "cannot start" in monitor.snapshot()[0]["detail"]


# --------------------------------------------------------------------------- process check


def spawn_named(tmp_path: Path, name: str) -> subprocess.Popen:
    """A process whose name is ``name`` (a copy of sleep), so only we match it."""
    binary = tmp_path / name
    if not binary.exists():
        shutil.copy(shutil.which("sleep") or "/bin/sleep", binary)
    return subprocess.Popen([str(binary), "100000"])


def stop(proc: subprocess.Popen) -> None:
    proc.kill()
    proc.wait(timeout=10)


def test_tracked_process_rise_and_fall(tmp_path: Path) -> None:
    name = f"eh{os.getpid() % 100000}{uuid.uuid4().hex[:6]}"[:15]
    changes = Changes()
    monitor = HealthMonitor(HealthConfig(track_process=(name,), rise=2, fall=2), changes, LOG)
    proc = spawn_named(tmp_path, name)
    try:
        async def go() -> list[bool]:
            nonlocal proc
            seen = []
            await monitor.check_now()
            seen.append(monitor.healthy)
            stop(proc)
            for _ in range(2):
                await monitor.check_now()
                seen.append(monitor.healthy)
            proc = spawn_named(tmp_path, name)
            for _ in range(2):
                await monitor.check_now()
                seen.append(monitor.healthy)
            return seen

        assert asyncio.run(go()) == [True, True, False, False, True]
        assert changes[0] == (False, f"process {name}: no process matches {name!r}")
        assert changes[1] == (True, "recovered")
        assert f"pid {proc.pid}" in monitor.snapshot()[0]["detail"]
    finally:
        stop(proc)


def test_tracked_process_by_regex_on_cmdline(tmp_path: Path) -> None:
    marker = f"electiond-health-{uuid.uuid4().hex}"
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(100000)", marker])
    try:
        monitor = HealthMonitor(HealthConfig(track_process=(rf"python.*{marker}$",), rise=1, fall=1), Changes(), LOG)
        asyncio.run(monitor.check_now())
        assert monitor.healthy
        stop(proc)
        asyncio.run(monitor.check_now())
        assert not monitor.healthy
    finally:
        if proc.poll() is None:
            stop(proc)


def test_zombie_does_not_count_as_running(tmp_path: Path) -> None:
    name = f"ez{uuid.uuid4().hex[:10]}"
    proc = spawn_named(tmp_path, name)
    proc.kill()
    for _ in range(500):  # bounded: wait until it is a zombie (we have not reaped it)
        if process_gone(proc.pid):
            break
        time.sleep(0.01)
    try:
        monitor = HealthMonitor(HealthConfig(track_process=(name,), rise=1, fall=1), Changes(), LOG)
        asyncio.run(monitor.check_now())
        assert not monitor.healthy
    finally:
        proc.wait(timeout=10)


# --------------------------------------------------------------------------- interface check


def test_interface_loopback_up_and_missing_interface() -> None:
    missing = f"nx{uuid.uuid4().hex[:8]}"
    changes = Changes()
    monitor = HealthMonitor(HealthConfig(track_interface=("lo", missing), rise=1, fall=1), changes, LOG)
    asyncio.run(monitor.check_now())
    snap = {s["name"]: s for s in monitor.snapshot()}
    assert snap["lo"]["healthy"] is True and snap["lo"]["kind"] == "interface"
    assert snap[missing]["healthy"] is False and snap[missing]["detail"] == f"no interface {missing}"
    assert changes == [(False, f"interface {missing}: no interface {missing}")]


NETNS_PROBE = textwrap.dedent(
    """
    import asyncio, json, logging, subprocess, sys, time
    sys.path.insert(0, sys.argv[1])
    from electiond.config import HealthConfig
    from electiond.health import HealthMonitor
    changes = []
    m = HealthMonitor(HealthConfig(track_interface=("va",), rise=1, fall=1),
                      lambda ok, why: changes.append([ok, why]), logging.getLogger("x"))
    def ip(*a): subprocess.run(["ip", *a], check=True)
    def settle(state):
        # link state changes reach the kernel's flags asynchronously
        for _ in range(500):
            with open("/sys/class/net/va/operstate") as f:
                if f.read().strip() == state:
                    return
            time.sleep(0.01)
    seen = []
    ip("link", "add", "va", "type", "veth", "peer", "name", "vb")
    ip("link", "set", "va", "up"); ip("link", "set", "vb", "up"); settle("up")
    asyncio.run(m.check_now()); seen.append(m.snapshot()[0]["detail"])
    ip("link", "set", "vb", "down"); settle("lowerlayerdown")  # peer down: va has no carrier
    asyncio.run(m.check_now()); seen.append(m.snapshot()[0]["detail"])
    ip("link", "set", "va", "down"); settle("down")
    asyncio.run(m.check_now()); seen.append(m.snapshot()[0]["detail"])
    ip("link", "set", "va", "up"); ip("link", "set", "vb", "up"); settle("up")
    asyncio.run(m.check_now()); seen.append(m.snapshot()[0]["detail"])
    print(json.dumps({"seen": seen, "changes": changes}))
    """
)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to create a network namespace")
def test_interface_link_changes_in_a_private_namespace() -> None:
    ns = f"ehealth{os.getpid()}"
    repo = str(Path(__file__).resolve().parent.parent)
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        out = subprocess.run(
            ["ip", "netns", "exec", ns, sys.executable, "-c", NETNS_PROBE, repo],
            check=True, capture_output=True, text=True, timeout=60,
        )
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=False)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    seen = result["seen"]
    assert seen[0].startswith("up")
    assert seen[1].startswith("no link")
    assert seen[2] == "administratively down"
    assert seen[3].startswith("up")
    assert [c[0] for c in result["changes"]] == [False, True]


# --------------------------------------------------------------------------- background loop


def test_background_loop_notices_failure_and_recovery(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.write_text("ok")
    script = write_script(tmp_path / "check", f'[ "$(cat "{state}")" = ok ]\n')
    changes = Changes()
    monitor = HealthMonitor(
        HealthConfig(track_script=(str(script),), interval_s=0.05, rise=2, fall=2), changes, LOG
    )

    async def wait_for(n: int) -> None:
        for _ in range(2000):  # bounded: 2000 * 10 ms
            if len(changes) >= n:
                return
            await asyncio.sleep(0.01)
        raise AssertionError(f"expected {n} changes, got {changes}")

    async def go() -> None:
        await monitor.start()
        state.write_text("bad")
        await wait_for(1)
        state.write_text("ok")
        await wait_for(2)
        await monitor.stop()

    asyncio.run(go())
    assert [c[0] for c in changes] == [False, True]
    assert monitor.rounds >= 5  # first round + 2 to fall + 2 to rise


def test_no_checks_means_always_healthy() -> None:
    monitor = HealthMonitor(HealthConfig(), Changes(), LOG)

    async def go() -> None:
        await monitor.start()
        await monitor.stop()

    asyncio.run(go())
    assert monitor.healthy and monitor.snapshot() == [] and not monitor.enabled
