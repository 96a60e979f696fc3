"""The systemd integration, without starting systemd: sd_notify spoken to a
NOTIFY_SOCKET of our own, the unit checked with systemd-analyze verify, and
the ExecStopPost cleanup run as a process."""

import os
import pathlib
import re
import shutil
import signal
import socket
import subprocess
import sys
import time

import pytest

from cluster import REPO, Cluster


def test_ready_status_and_watchdog_reach_notify_socket(tmp_path):
    notify_path = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(notify_path)
    sock.settimeout(0.2)
    c = Cluster(tmp_path, 1, protocol="bully")
    env = dict(os.environ, NOTIFY_SOCKET=notify_path, WATCHDOG_USEC="400000", PYTHONPATH=str(REPO),
               HOOK_LOG=str(c.hook_log))
    proc = subprocess.Popen([sys.executable, "-m", "electiond", "--config", str(c.config_path("n1")), "--node", "n1"],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    messages = []
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not (
            "READY=1" in messages and sum(m == "WATCHDOG=1" for m in messages) >= 3
            and any(m.startswith("STATUS=leader") for m in messages)
        ):
            try:
                messages.append(sock.recv(4096).decode())
            except socket.timeout:
                pass
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
        while True:
            try:
                messages.append(sock.recv(4096).decode())
            except socket.timeout:
                break
    finally:
        if proc.poll() is None:
            proc.kill()
        sock.close()
    assert "READY=1" in messages
    assert sum(m == "WATCHDOG=1" for m in messages) >= 3
    assert any(re.fullmatch(r"STATUS=leader of \S+ \(term \d+\), 1/1 members alive", m) for m in messages), messages
    assert "STOPPING=1" in messages


def test_unit_file_verifies(tmp_path):
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed")
    daemon = pathlib.Path(sys.executable).with_name("electiond")
    if not daemon.exists():
        pytest.skip("the electiond console script is not installed in this environment (scripts/test installs it)")
    # the template is verified as an instance of it; the man pages are checked
    # where they are installed (tests/test_deb.py)
    for source, name in (("electiond.service", "electiond.service"), ("electiond@.service", "electiond@demo.service")):
        unit = (REPO / "systemd" / source).read_text().replace("/usr/sbin/electiond", str(daemon))
        path = tmp_path / name
        path.write_text(unit)
        result = subprocess.run([analyze, "verify", "--man=no", str(path)], capture_output=True, text=True, timeout=60)
        problems = [line for line in result.stderr.splitlines()
                    if name in line and "Documentation" not in line]
        assert result.returncode == 0 and not problems, result.stderr


def test_cleanup_runs_demote_hooks_after_a_crash(tmp_path):
    c = Cluster(tmp_path, 1, protocol="bully")
    env = dict(os.environ, PYTHONPATH=str(REPO), HOOK_LOG=str(c.hook_log), SERVICE_RESULT="signal")
    result = subprocess.run([sys.executable, "-m", "electiond", "--config", str(c.config_path("n1")), "--node", "n1",
                             "--cleanup"], env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert [(e[1], e[4]) for e in c.hook_events()] == [("demote", "crash")]
    env["SERVICE_RESULT"] = "success"
    subprocess.run([sys.executable, "-m", "electiond", "--config", str(c.config_path("n1")), "--node", "n1",
                    "--cleanup"], env=env, capture_output=True, timeout=60, check=True)
    assert len(c.hook_events()) == 1  # a clean stop already demoted


def test_a_blocked_event_loop_stops_the_watchdog_pings(tmp_path, monkeypatch):
    """The ping is a loop callback, not a thread: while a callback hogs the
    loop no WATCHDOG=1 leaves, so systemd's WatchdogSec= catches a wedged
    daemon; pings resume when the loop runs again."""
    import asyncio
    import threading

    from electiond import config as configmod, daemon

    notify_path = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(notify_path)
    sock.settimeout(0.1)
    received: list[tuple[float, str]] = []
    done = threading.Event()

    def listen() -> None:
        while not done.is_set():
            try:
                message = sock.recv(4096).decode()
                received.append((time.monotonic(), message))  # stamped on arrival
            except socket.timeout:
                pass

    listener = threading.Thread(target=listen, daemon=True)
    listener.start()
    c = Cluster(tmp_path, 1, protocol="bully")
    monkeypatch.setenv("NOTIFY_SOCKET", notify_path)
    monkeypatch.setenv("WATCHDOG_USEC", "200000")  # a ping every 0.1 s
    monkeypatch.setenv("HOOK_LOG", str(c.hook_log))
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    cfg = configmod.load(str(c.config_path("n1")), "n1")
    block: dict[str, float] = {}

    def wedge() -> None:
        block["from"] = time.monotonic()
        time.sleep(1.5)  # what a stuck hook call or a busy loop would do
        block["to"] = time.monotonic()

    async def scenario() -> None:
        task = asyncio.create_task(daemon.serve(cfg))
        deadline = time.monotonic() + 10
        while not any(m == "READY=1" for _, m in received) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.5)
        asyncio.get_running_loop().call_soon(wedge)
        await asyncio.sleep(0.1)  # returns only once the wedge is over
        await asyncio.sleep(0.8)  # the loop runs again: pings resume
        os.kill(os.getpid(), signal.SIGTERM)  # serve's own handler: a clean stop
        await asyncio.wait_for(task, 15)

    try:
        asyncio.run(scenario())
        time.sleep(0.3)
    finally:
        done.set()
        listener.join(5)
        sock.close()
    pings = [t for t, m in received if m == "WATCHDOG=1"]
    assert any(m == "READY=1" for _, m in received), received
    # a datagram sent just before the wedge may be read a moment into it
    during = [t for t in pings if block["from"] + 0.05 < t < block["to"]]
    assert during == [], (block, [(round(t, 3), m) for t, m in received])
    assert len([t for t in pings if t < block["from"]]) >= 3
    assert len([t for t in pings if t > block["to"]]) >= 3
