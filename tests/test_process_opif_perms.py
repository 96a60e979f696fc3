"""Socket permissions with a real non-root user (created here, as root):
it can read status but is refused transfer with exit 3; a member of
[control] admin_group is not refused."""

import grp
import json
import os
import pwd
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from cluster import REPO, Cluster

# electionctl needs only the standard library: Debian's python runs it as any
# user (the venv's interpreter lives under /root, which others cannot enter)
SYSTEM_PYTHON = "/usr/bin/python3"

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="creating a user needs root"),
    pytest.mark.skipif(shutil.which("useradd") is None or not os.path.exists(SYSTEM_PYTHON),
                       reason="needs useradd and /usr/bin/python3"),
]


def as_user(user, sock, *args):
    pw = pwd.getpwnam(user)
    return subprocess.run([SYSTEM_PYTHON, "-m", "electiond.cli", "--socket", sock, *args], capture_output=True,
                          text=True, timeout=30, cwd="/", user=pw.pw_uid, group=pw.pw_gid,
                          extra_groups=os.getgrouplist(user, pw.pw_gid),
                          env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})


def test_non_root_reads_but_is_refused_mutations_unless_in_admin_group():
    tag = f"eo{os.getpid() % 100000}"
    user, admin, group = f"{tag}u", f"{tag}a", f"{tag}g"
    # a directory others can enter (pytest's tmp_path is root-only)
    workdir = Path(tempfile.mkdtemp(prefix=f"opif-perm-{os.getpid()}-"))
    workdir.chmod(0o755)
    created = []
    try:
        subprocess.run(["groupadd", group], check=True)
        created.append(("group", group))
        for name, extra in ((user, []), (admin, ["-G", group])):
            subprocess.run(["useradd", "--no-create-home", "--shell", "/usr/sbin/nologin", *extra, name], check=True)
            created.append(("user", name))
        with Cluster(workdir, 3, protocol="quorum-lease",
                     control={n: {"socket_mode": "0666", "admin_group": group} for n in ("n1", "n2", "n3")}) as c:
            c.start_all()
            leader = c.wait_leader(10)
            sock = c.socket(leader)
            out = as_user(user, sock, "status")
            assert out.returncode == 0 and f"leader    {leader}" in out.stdout, out.stderr
            assert as_user(user, sock, "metrics").returncode == 0
            assert as_user(user, sock, "is-leader").returncode == 0
            for cmd in (["transfer"], ["stepdown"], ["pause"], ["resume"]):
                out = as_user(user, sock, *cmd)
                assert out.returncode == 3, (cmd, out.returncode, out.stderr)
                assert "permission denied" in out.stderr and user in out.stderr and group in out.stderr
            # coordination writes are refused the same way; a read reaches the backend (1: unset, or
            # 4: no backend yet), never a permission refusal
            for cmd in (["lock", "job", "--", "true"], ["config", "set", "k", "v"], ["barrier", "b", "--count", "2"]):
                out = as_user(user, sock, *cmd)
                assert out.returncode == 3 and "permission denied" in out.stderr, (cmd, out.returncode, out.stderr)
            assert as_user(user, sock, "config", "get", "k").returncode in (1, 4)
            out = as_user(user, sock, "--json", "transfer")
            assert out.returncode == 3 and json.loads(out.stdout)["exit_code"] == 3
            assert c.agreed_leader() == leader, "a refused transfer changed nothing"
            # a member of admin_group may
            out = as_user(admin, sock, "transfer", "--wait", "15s")
            assert out.returncode == 0, out.stderr
            assert c.wait_leader(10) != leader
            assert c.status(leader)["control"]["permission_refused"] >= 5
    finally:
        for kind, name in reversed(created):
            subprocess.run(["userdel" if kind == "user" else "groupdel", name], capture_output=True)
        shutil.rmtree(workdir, ignore_errors=True)
        for kind, name in created:
            lookup = pwd.getpwnam if kind == "user" else grp.getgrnam
            with pytest.raises(KeyError):
                lookup(name)
