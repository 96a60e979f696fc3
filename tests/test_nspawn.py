"""The package under a real systemd, never this machine's own: a cached
Debian 12 root file system (scripts/build-rootfs, mmdebstrap), a copy of it
with the .deb installed, booted with systemd-nspawn --boot on a private
network (its own loopback). tests/nspawn_checks.py runs inside as a unit,
drives three electiond@ instances with systemctl and writes its findings to
a bind-mounted directory, then powers the container off. The copy is
removed and the container killed whatever happens."""

from __future__ import annotations

import json
import os
import pathlib
import re
import secrets
import shutil
import signal
import subprocess
import time

import pytest

import debpkg
from cluster import REPO

# a fresh machine builds the Debian 12 rootfs first (bounded at 1200 s), then copy, install and boot
pytestmark = [pytest.mark.deb, pytest.mark.timeout_s(3000)]

BOOT_TIMEOUT_S = 420  # the boot, every check and the power-off; typically ~1-2 min

CHECKS_UNIT = """[Unit]
Description=electiond package checks (tests/test_nspawn.py)
After=multi-user.target

[Service]
Type=simple
ExecStart=/usr/bin/python3 /usr/local/lib/nspawn_checks.py
StandardOutput=journal+console
StandardError=journal+console
# a hung check must not keep the container up until the host's timeout
RuntimeMaxSec=300
ExecStopPost=/bin/systemctl poweroff --no-block

[Install]
WantedBy=multi-user.target
"""

RECORD_HOOK = """#!/bin/sh
# instance, event, term, reason: what tests/nspawn_checks.py looks for. The
# line is written after a pause, so a hook killed early (by the stop's
# signal) leaves none.
sleep 0.3
echo "$(date +%s.%N) $1 $ELECTIOND_EVENT ${ELECTIOND_TERM:-0} $ELECTIOND_REASON" >> /results/hooks.log
"""


def instance_config(instance: str, node: str) -> str:
    return f"""[cluster]
name = demo
protocol = quorum-lease
members = n1=1, n2=2, n3=3
group = 239.255.77.1
port = 7677
interface = 127.0.0.1
key_file = /etc/electiond/key

[node]
name = {node}

[control]
socket = /run/electiond/{instance}/control.sock

[state]
directory = /var/lib/electiond/{instance}

[hooks]
promote = /usr/local/bin/record-hook {instance}
demote = /usr/local/bin/record-hook {instance}
timeout = 10s
"""


def machine_name() -> str:
    # unique per test process: nspawn keeps per-machine state under /run/systemd/nspawn
    return f"electiond-test-{os.getpid()}"


def why_no_nspawn() -> str | None:
    reason = debpkg.why_not_debian_root()
    if reason:
        return reason
    if shutil.which("systemd-nspawn") is None or shutil.which("mmdebstrap") is None:
        result = debpkg.apt("install", "-y", "-qq", "systemd-container", "mmdebstrap")
        if result.returncode != 0:
            return f"cannot install systemd-container/mmdebstrap: {result.stderr.strip()[-300:]}"
    return None


@pytest.fixture(scope="module")
def rootfs() -> pathlib.Path:
    reason = why_no_nspawn()
    if reason:
        pytest.skip(reason)
    result = subprocess.run([str(REPO / "scripts" / "build-rootfs")], capture_output=True, text=True, timeout=1200,
                            env=debpkg.APT_ENV)
    if result.returncode != 0:
        # mmdebstrap needs the Debian mirror: without it there is nothing to boot
        pytest.skip(f"no Debian 12 rootfs (mmdebstrap, needs the package mirror): {result.stderr.strip()[-400:]}")
    return pathlib.Path(result.stdout.strip().splitlines()[-1])


def prepare(copy: pathlib.Path, deb: pathlib.Path) -> None:
    shutil.copy(deb, copy / "root" / deb.name)
    # dpkg in the copy (no boot): its dependencies are in the cached rootfs, so offline
    install = subprocess.run(["systemd-nspawn", "--quiet", "--register=no", "--keep-unit", "--private-network",
                              f"--machine={machine_name()}", "-D", str(copy),
                              "dpkg", "-i", f"/root/{deb.name}"], capture_output=True, text=True, timeout=300)
    assert install.returncode == 0, install.stdout + install.stderr
    etc = copy / "etc" / "electiond"
    key = etc / "key"
    key.write_text(f"k1 {secrets.token_hex(32)}\n")
    key.chmod(0o600)
    for instance, node in {"a": "n1", "b": "n2", "c": "n3"}.items():
        (etc / f"{instance}.conf").write_text(instance_config(instance, node))
    hook = copy / "usr" / "local" / "bin" / "record-hook"
    hook.write_text(RECORD_HOOK)
    hook.chmod(0o755)
    shutil.copy(REPO / "tests" / "nspawn_checks.py", copy / "usr" / "local" / "lib" / "nspawn_checks.py")
    units = copy / "etc" / "systemd" / "system"
    (units / "electiond-checks.service").write_text(CHECKS_UNIT)
    wants = units / "multi-user.target.wants"
    wants.mkdir(exist_ok=True)
    (wants / "electiond-checks.service").symlink_to("/etc/systemd/system/electiond-checks.service")


def boot(copy: pathlib.Path, results: pathlib.Path) -> str:
    console = results / "console.txt"
    with open(console, "wb") as out:
        proc = subprocess.Popen(["systemd-nspawn", "--boot", "--register=no", "--keep-unit", "--private-network",
                                 "--quiet", f"--machine={machine_name()}", "-D", str(copy), f"--bind={results}:/results"],
                                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
        try:
            proc.wait(BOOT_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            pass
        finally:
            if proc.poll() is None:
                # nspawn powers the container off on SIGTERM; then no mercy
                os.killpg(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait(30)
    return console.read_text(errors="replace")


def test_package_under_a_real_systemd(rootfs, tmp_path):
    deb = debpkg.built_deb()
    work = pathlib.Path(f"/var/tmp/electiond-nspawn-{os.getpid()}")
    results = tmp_path / "results"
    results.mkdir()
    try:
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir()
        copy = work / "root"
        subprocess.run(["cp", "-a", "--reflink=auto", str(rootfs), str(copy)], check=True, timeout=600)
        prepare(copy, deb)
        started = time.monotonic()
        console = boot(copy, results)
        took_s = time.monotonic() - started
    finally:
        shutil.rmtree(work, ignore_errors=True)
    keep = os.environ.get("ELECTIOND_NSPAWN_RESULTS")  # for the report: where to copy the transcript
    if keep:
        shutil.copytree(results, keep, dirs_exist_ok=True)
    checks_path = results / "checks.json"
    assert checks_path.exists(), f"no results after {took_s:.0f} s; console:\n{console[-4000:]}"
    checks = json.loads(checks_path.read_text())
    transcript = (results / "transcript.txt").read_text()
    assert "error" not in checks, checks["error"] + "\n" + transcript[-4000:]

    # start: activating until READY=1, then active (running), the socket already answering
    for instance, states in checks["start_states"].items():
        assert states[-1] == "active" and "activating" in states, (instance, states)
        assert checks["socket_answers_when_active"][instance] is True
        assert checks["after_start"][instance]["SubState"] == "running"
        assert checks["after_start"][instance]["Type"] == "notify"
    # STATUS=: the leader's with role, cluster, term and members; systemctl status shows it
    leader_text = checks["status_text"][checks["first_leader"]]
    assert re.fullmatch(r"leader of demo \(term \d+\), 3/3 members alive", leader_text), checks["status_text"]
    assert f'Status: "{leader_text}"' in checks["systemctl_status"], checks["systemctl_status"]
    assert any(e["ELECTIOND_ROLE"] == "leader" and e["_SYSTEMD_UNIT"].startswith("electiond@")
               and e["ELECTIOND_TERM"] for e in checks["journal_leader_entries"]), checks["journal_leader_entries"]
    # kill -9: ExecStopPost ran the demote hook (reason crash), restarted, a new leader in a later term
    kill9 = checks["kill9"]
    assert int(kill9["after"]["NRestarts"]) == int(kill9["before"]["NRestarts"]) + 1
    assert kill9["cleanup_hook"] and kill9["new_leader"][1] > 0
    # SIGSTOP: the watchdog (WatchdogSec=5s) had it restarted
    watchdog = checks["watchdog"]
    assert int(watchdog["after"]["NRestarts"]) == int(watchdog["before"]["NRestarts"]) + 1
    assert watchdog["journal_says_watchdog"] is True
    # a bad config fails once with 78 and is not restarted; so does the package's unfilled config
    bad = checks["bad_config"]
    assert bad["start_rc"] != 0 and bad["ActiveState"] == "failed" and bad["ExecMainStatus"] == "78"
    assert bad["NRestarts"] == "0"
    shipped = checks["shipped_config"]
    assert shipped["ExecMainStatus"] == "78" and shipped["NRestarts"] == "0" and shipped["says"]
    # reload: the changed hook command ran, without a restart
    assert checks["reload"]["hook_runs"]
    # an upgrade restarts the running instances gracefully: new PIDs, the old
    # leader demoted by its stop (not a crash), a leader again
    upgrade = checks["upgrade"]
    for instance, before_pid in upgrade["pids_before"].items():
        assert upgrade["after"][instance]["MainPID"] != before_pid and upgrade["after"][instance]["ActiveState"] == "active"
    assert upgrade["leader_demote_hooks"] and all(h[-1] != "crash" for h in upgrade["leader_demote_hooks"])
