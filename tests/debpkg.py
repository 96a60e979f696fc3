"""Shared by the package tests: build dist/electiond_*.deb once per test run
(xdist workers share it under a lock), run apt without racing other apt users."""

from __future__ import annotations

import fcntl
import glob
import os
import pathlib
import shutil
import subprocess

from cluster import REPO

DIST = REPO / "dist"
APT_ENV = dict(os.environ, DEBIAN_FRONTEND="noninteractive", PATH="/usr/sbin:/usr/bin:/sbin:/bin")
# another apt on this machine (a helper installing a tool) waits, not fails
APT_LOCK_WAIT = ["-o", "DPkg::Lock::Timeout=300"]


def why_not_debian_root() -> str | None:
    if os.geteuid() != 0:
        return "building and installing the .deb needs root"
    if not (shutil.which("dpkg-buildpackage") or shutil.which("apt-get")):
        return "not a Debian system (no dpkg-buildpackage/apt-get)"
    if not pathlib.Path("/etc/debian_version").exists():
        return "not a Debian system"
    return None


def built_deb() -> pathlib.Path:
    """scripts/build-deb once for this pytest run (all workers), then its .deb."""
    DIST.mkdir(exist_ok=True)
    run_id = os.environ.get("PYTEST_XDIST_TESTRUNUID", f"pid{os.getpid()}")
    marker = DIST / f".built-{run_id}"
    with open(DIST / ".build.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not marker.exists():
            for old in DIST.glob(".built-*"):
                old.unlink()
            result = subprocess.run([str(REPO / "scripts" / "build-deb")], capture_output=True, text=True,
                                    timeout=900, env=APT_ENV)
            assert result.returncode == 0, result.stdout + result.stderr
            marker.touch()
    debs = sorted(glob.glob(str(DIST / "electiond_*_all.deb")))
    assert len(debs) == 1, debs
    return pathlib.Path(debs[0])


def apt(*args: str, timeout_s: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(["apt-get", *APT_LOCK_WAIT, *args], capture_output=True, text=True,
                          timeout=timeout_s, env=APT_ENV)


def purge() -> subprocess.CompletedProcess:
    return apt("purge", "-y", "electiond")
