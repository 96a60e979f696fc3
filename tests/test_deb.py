"""The Debian package on this machine: build it, lintian, apt-get install
./dist/electiond_*.deb, the files where they belong, systemd-analyze verify
of the installed units (nothing is started), the installed daemon on the
system python3 electing a leader among 3 processes on loopback, and a purge
that leaves nothing behind. The package is purged even when a check fails:
the rest of the suite runs from the source tree."""

from __future__ import annotations

import os
import pathlib
import shutil
import subprocess

import pytest

import debpkg
from cluster import Cluster

# a fresh machine installs the build dependencies before building the package
pytestmark = [pytest.mark.deb, pytest.mark.timeout_s(1800)]

EXPECTED_FILES = [
    "/usr/sbin/electiond",
    "/usr/bin/electionctl",
    "/usr/lib/electiond/hooks/vip",
    "/usr/lib/electiond/hooks/send-na",
    "/usr/lib/electiond/hooks/systemd-unit",
    "/etc/electiond/electiond.conf",
    "/lib/systemd/system/electiond.service",
    "/lib/systemd/system/electiond@.service",
    "/usr/share/man/man8/electiond.8.gz",
    "/usr/share/man/man8/electionctl.8.gz",
    "/usr/share/man/man5/electiond.conf.5.gz",
    "/usr/share/bash-completion/completions/electionctl",
    "/usr/share/doc/electiond/README.md.gz",
    "/usr/share/doc/electiond/README.Debian",
    "/usr/share/doc/electiond/examples/cluster.conf",
    "/usr/lib/python3/dist-packages/electiond/daemon.py",
]


class InstalledCluster(Cluster):
    """The loopback test cluster, but each member is the installed
    /usr/sbin/electiond on Debian's python3, with no PYTHONPATH to the tree."""

    def spawn(self, name: str) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
        env.update(HOOK_LOG=str(self.hook_log), PATH="/usr/sbin:/usr/bin:/sbin:/bin")
        log = open(self.workdir / f"{name}.log", "ab")
        self.procs[name] = subprocess.Popen(
            ["/usr/sbin/electiond", "--config", str(self.config_path(name)), "--node", name],
            env=env, stdout=log, stderr=subprocess.STDOUT, cwd=self.workdir,
        )
        log.close()


def lintian_findings(deb: pathlib.Path) -> list[str]:
    result = subprocess.run(["lintian", "--pedantic", "-I", "-E", str(deb)], capture_output=True, text=True,
                            timeout=600)
    return [line for line in (result.stdout + result.stderr).splitlines()
            if line and "running with root privileges" not in line]


@pytest.fixture(scope="module")
def deb():
    reason = debpkg.why_not_debian_root()
    if reason:
        pytest.skip(reason)
    return debpkg.built_deb()


def test_lintian_reports_nothing(deb):
    if shutil.which("lintian") is None:
        assert debpkg.apt("install", "-y", "-qq", "lintian").returncode == 0
    # errors, warnings, info, pedantic and experimental tags are all fixed or
    # overridden with a reason (debian/electiond.lintian-overrides)
    assert lintian_findings(deb) == []


def test_install_run_and_purge(deb, tmp_path):
    if subprocess.run(["dpkg", "-s", "electiond"], capture_output=True).returncode == 0:
        pytest.skip("an electiond package is already installed here; not touching it")
    try:
        result = debpkg.apt("install", "-y", str(deb))
        assert result.returncode == 0, result.stdout + result.stderr
        check_files()
        check_units_verify(tmp_path)
        check_installed_daemon_elects(tmp_path)
        # a fresh install starts nothing, and the shipped config says why
        refusal = subprocess.run(["/usr/sbin/electiond", "--check-config"], capture_output=True, text=True,
                                 timeout=60, env={"PATH": "/usr/sbin:/usr/bin:/bin"})
        assert refusal.returncode == 78 and "README.Debian" in refusal.stderr, refusal.stderr
        # what running instances leave, for the purge to remove
        state = pathlib.Path("/var/lib/electiond/demo")
        state.mkdir(parents=True, exist_ok=True)
        (state / "state.json").write_text('{"term": 3, "voted_for": null, "incarnation": 1}')
    finally:
        purged = debpkg.purge()
    assert purged.returncode == 0, purged.stdout + purged.stderr
    check_nothing_left()


def check_files() -> None:
    missing = [path for path in EXPECTED_FILES if not os.path.exists(path)]
    assert missing == []
    conffiles = subprocess.run(["dpkg-query", "-W", "-f=${Conffiles}", "electiond"], capture_output=True,
                               text=True, check=True).stdout
    assert "/etc/electiond/electiond.conf" in conffiles
    # the system python3, never a venv or pyenv one
    for script in ("/usr/sbin/electiond", "/usr/bin/electionctl"):
        assert pathlib.Path(script).read_text().splitlines()[0] == "#!/usr/bin/python3", script
    assert subprocess.run(["getent", "group", "electiond"], capture_output=True).returncode == 0
    # nothing is started or enabled on a fresh install (no members, no key yet)
    assert not os.path.exists("/etc/systemd/system/multi-user.target.wants/electiond.service")
    ctl = subprocess.run(["/usr/bin/electionctl", "--help"], capture_output=True, text=True, timeout=60,
                         env={"PATH": "/usr/bin:/bin"})
    assert ctl.returncode == 0 and "wait-leader" in ctl.stdout
    # the man pages render (they came from --help and the shipped config)
    page = subprocess.run(["man", "-P", "cat", "electiond.conf"], capture_output=True, text=True, timeout=60,
                          env={"PATH": "/usr/bin:/bin", "MANWIDTH": "80"})
    assert page.returncode == 0 and "key_file" in page.stdout


def check_units_verify(tmp_path: pathlib.Path) -> None:
    # the template as an instance; Documentation=man: pages are installed now, so checked too
    instance = tmp_path / "electiond@demo.service"
    instance.write_text(pathlib.Path("/lib/systemd/system/electiond@.service").read_text())
    for unit in ("/lib/systemd/system/electiond.service", str(instance)):
        result = subprocess.run(["systemd-analyze", "verify", unit], capture_output=True, text=True, timeout=120)
        name = os.path.basename(unit)
        problems = [line for line in result.stderr.splitlines() if name in line]
        assert result.returncode == 0 and problems == [], result.stderr


def check_installed_daemon_elects(tmp_path: pathlib.Path) -> None:
    with InstalledCluster(tmp_path, 3, protocol="quorum-lease") as c:
        c.start_all()
        leader = c.wait_leader(10.0)
        assert leader in c.names
        assert {c.status(n)["leader"] for n in c.names} == {leader}
        # it really was the package's code that ran
        where = subprocess.run(["/usr/bin/python3", "-c", "import electiond; print(electiond.__file__)"],
                               capture_output=True, text=True, cwd=tmp_path, timeout=60,
                               env={"PATH": "/usr/bin:/bin"}).stdout
        assert where.startswith("/usr/lib/python3/dist-packages/electiond/"), where


def check_nothing_left() -> None:
    left = [path for path in EXPECTED_FILES + ["/etc/electiond", "/var/lib/electiond", "/usr/lib/electiond",
                                               "/usr/share/doc/electiond"]
            if os.path.lexists(path)]
    assert left == []
    assert subprocess.run(["dpkg", "-s", "electiond"], capture_output=True).returncode != 0
    assert subprocess.run(["getent", "group", "electiond"], capture_output=True).returncode != 0
