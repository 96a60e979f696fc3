"""protocol = etcd against a REAL etcd: a 3-member cluster on loopback and 3 daemons.

Leadership intervals come from the hook log (wall-clock stamps written by the
hook itself): a node leads from its promote hook to its next demote hook, a
killed node until it was killed, a frozen node until it was frozen (DESIGN §3:
a frozen process acts on nothing, provided it demotes at once on waking).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from electiond.cli import request
from electiond.devcluster import REPO, Cluster
from electiond.devetcd import APT_HINT, EtcdCluster, etcd_binary

pytestmark = pytest.mark.skipif(etcd_binary() is None, reason=f"needs etcd (Debian: {APT_HINT})")

TTL_S = 3


def etcd_daemons(workdir, etcd: EtcdCluster, ttl_s: int = TTL_S) -> Cluster:
    cluster = Cluster(workdir, 3, protocol="etcd",
                      timing={"heartbeat_interval": "100ms", "election_timeout": "300ms-500ms"})
    cluster.config_text += f"\n[etcd]\nendpoints = {etcd.endpoints()}\nlease_ttl = {ttl_s}s\n"
    return cluster


def intervals(events, ended_at: dict[str, float] | None = None):
    """(node, start, end, token) for every leadership interval in the hook log."""
    ended_at = ended_at or {}
    open_since: dict[str, tuple[float, int]] = {}
    spans = []
    for stamp, event, node, term, _reason in sorted(events):
        if event == "promote":
            assert node not in open_since, f"{node} promoted twice without a demote"
            open_since[node] = (stamp, term)
        elif event == "demote" and node in open_since:
            start, token = open_since.pop(node)
            spans.append((node, start, min(stamp, ended_at.get(node, stamp)), token))
    for node, (start, token) in open_since.items():
        spans.append((node, start, ended_at.get(node, float("inf")), token))
    return sorted(spans, key=lambda s: s[1])


def assert_no_overlap(spans):
    for before, after in zip(spans, spans[1:]):
        assert after[1] >= before[2], f"leadership overlaps: {before} and {after}"
        assert after[3] > before[3] or after[0] == before[0], f"fencing token did not grow: {before} -> {after}"


def promotes_after(cluster: Cluster, t: float):
    return [e for e in cluster.hook_events() if e[1] == "promote" and e[0] > t]


def test_leader_killed_successor_within_ttl_plus_a_second(tmp_path):
    with EtcdCluster(tmp_path) as etcd:
        etcd.start_all()
        with etcd_daemons(tmp_path, etcd) as c:
            c.start_all()
            leader = c.wait_leader(15)
            status = c.status(leader)
            assert status["protocol"] == "etcd" and status["fencing_token"] == status["term"] > 0
            assert status["etcd"]["watch"] == "up" and status["etcd"]["lease_id"]
            assert any(ep["healthy"] for ep in status["etcd_endpoints"])
            time.sleep(1.0)  # a keep-alive or two
            killed_at = time.time()
            c.kill(leader)
            successor = c.wait_for(lambda: promotes_after(c, killed_at), TTL_S + 5, "a successor's promote hook")[0]
            took_s = c.history_wall(successor[2], "promote", killed_at)[0] - killed_at
            print(f"failover: {took_s:.2f}s with lease_ttl {TTL_S}s "
                  f"(promote hook ran {successor[0] - killed_at:.2f}s after the kill)")
            assert took_s <= TTL_S + 1.0
            assert successor[3] > status["term"]  # the token grows
            new = c.wait_leader(5)
            assert new == successor[2]
            assert_no_overlap(intervals(c.hook_events(), {leader: killed_at}))


def test_etcd_leader_killed_at_most_one_leader_throughout(tmp_path):
    with EtcdCluster(tmp_path) as etcd:
        etcd.start_all()
        with etcd_daemons(tmp_path, etcd) as c:
            c.start_all()
            c.wait_leader(15)
            raft_leader = etcd.leader()
            assert raft_leader is not None
            etcd.kill(raft_leader)
            deadline = time.monotonic() + 3 * TTL_S
            while time.monotonic() < deadline:
                claimants = [n for n in c.running() if (c.status(n) or {}).get("role") == "leader"]
                assert len(claimants) <= 1, f"two leaders at once: {claimants}"
                time.sleep(0.1)
            assert c.wait_leader(10)  # kept or moved, but one
            assert_no_overlap(intervals(c.hook_events()))


def test_etcd_quorum_lost_leader_demotes_first_nobody_promotes_until_back(tmp_path):
    with EtcdCluster(tmp_path) as etcd:
        etcd.start_all()
        with etcd_daemons(tmp_path, etcd) as c:
            c.start_all()
            leader = c.wait_leader(15)
            time.sleep(1.0)
            stopped = etcd.names[:2]
            lost_at = time.time()
            for name in stopped:
                etcd.kill(name)
            quorum_lost_at = time.time()
            demote = c.wait_for(
                lambda: [e for e in c.hook_events() if e[1] == "demote" and e[2] == leader and e[0] > lost_at],
                TTL_S + 3, "the leader's demote hook")[0]
            # its last answered keep-alive left before the loss, so etcd could
            # not have let the lease go before lost_at + TTL: it demoted first.
            # Judged by when the daemon demoted (its history), not when the hook
            # process got to run: spawning it lags on a loaded machine (3.39 s once)
            demoted_at = c.history_wall(leader, "demote", lost_at)
            assert demoted_at, request(c.socket(leader), "history")
            # The surviving etcd member, if it led, answers keep-alives until
            # check-quorum makes it step down: etcd can let the lease go no
            # earlier than that last answer + TTL, and the daemon's own deadline
            # counts from when it sent that keep-alive. Raft checks quorum once
            # per election timeout against the activity of the whole period
            # before, so a leader that lost its peers just after a check steps
            # down up to TWO election timeouts later (CI saw 4.29 s with 1 s + 3 s).
            step_down_s = 2 * etcd.election_timeout_ms / 1000
            assert demoted_at[0] < quorum_lost_at + step_down_s + TTL_S, \
                f"demoted {demoted_at[0] - lost_at:.2f}s after the loss"
            assert demote[4] == "lease_expired"
            time.sleep(2 * TTL_S)
            assert not promotes_after(c, lost_at), "a node promoted while etcd had no quorum"
            assert all((c.status(n) or {}).get("role") != "leader" for n in c.running())
            back_at = time.time()
            for name in stopped:
                etcd.restart(name)
            etcd.wait_healthy(30)
            c.wait_for(lambda: promotes_after(c, back_at), 15 + 2 * TTL_S, "a leader once etcd is back")
            assert c.wait_leader(10)
            assert_no_overlap(intervals(c.hook_events()))


def test_frozen_leader_demotes_at_once_on_waking(tmp_path):
    with EtcdCluster(tmp_path) as etcd:
        etcd.start_all()
        with etcd_daemons(tmp_path, etcd) as c:
            c.start_all()
            leader = c.wait_leader(15)
            frozen_at = time.time()
            c.signal(leader, signal.SIGSTOP)
            others = [n for n in c.names if n != leader]
            c.wait_for(lambda: promotes_after(c, frozen_at), TTL_S + 5, "a successor while the leader is frozen")
            time.sleep(1.0)
            woke_at = time.time()
            c.signal(leader, signal.SIGCONT)
            first = c.wait_for(lambda: [e for e in c.hook_events() if e[2] == leader and e[0] > woke_at],
                               5, "the woken leader's first hook")[0]
            assert first[1] == "demote" and first[4] == "lease_expired", first
            assert first[0] - woke_at < 1.5, f"demoted {first[0] - woke_at:.2f}s after waking"
            new = c.wait_leader(10)
            assert new in others
            assert_no_overlap(intervals(c.hook_events(), {leader: frozen_at}))


def test_transfer_and_stepdown(tmp_path):
    with EtcdCluster(tmp_path) as etcd:
        etcd.start_all()
        with etcd_daemons(tmp_path, etcd) as c:
            c.start_all()
            leader = c.wait_leader(15)
            c.wait_for(lambda: len((c.status(leader) or {}).get("etcd", {}).get("queue", [])) == 3, 10,
                       "every node queued")
            # the one furthest back in the queue, so the others must hold back for it
            target = c.status(leader)["etcd"]["queue"][-1]
            asked_at = time.time()
            assert request(c.socket(leader), "transfer", {"target": target})["ok"]
            promote = c.wait_for(lambda: promotes_after(c, asked_at), 10, "the target's promote")[0]
            assert promote[2] == target and promote[4] == "transfer"
            assert c.wait_leader(10) == target
            print(f"transfer to the last in line: {promote[0] - asked_at:.2f}s")
            asked_at = time.time()
            assert request(c.socket(target), "stepdown")["ok"]
            promote = c.wait_for(lambda: promotes_after(c, asked_at), 10, "a promote after stepdown")[0]
            assert promote[2] != target
            assert c.wait_leader(10) == promote[2]
            assert_no_overlap(intervals(c.hook_events()))


def electionctl(cluster: Cluster, name: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "electiond.cli", "--socket", cluster.socket(name), *args],
                          capture_output=True, text=True, timeout=15, env=dict(os.environ, PYTHONPATH=str(REPO)))


def test_electionctl_and_a_clean_stop_that_does_not_wait_for_the_ttl(tmp_path):
    ttl_s = 10  # long, so a hand-over quicker than it shows the lease was given back
    with EtcdCluster(tmp_path) as etcd:
        etcd.start_all()
        with etcd_daemons(tmp_path, etcd, ttl_s=ttl_s) as c:
            c.start_all()
            leader = c.wait_leader(15)
            follower = next(n for n in c.names if n != leader)
            assert electionctl(c, leader, "is-leader").returncode == 0
            assert electionctl(c, follower, "is-leader").returncode != 0
            shown = electionctl(c, leader, "status")
            assert shown.returncode == 0 and "etcd      lease" in shown.stdout and "watch up" in shown.stdout
            assert "endpoint  http://127.0.0.1:" in shown.stdout
            history = electionctl(c, leader, "history")
            assert "promote" in history.stdout
            stopped_at = time.time()
            c.signal(leader, signal.SIGTERM)
            c.procs[leader].wait(15)
            promote = c.wait_for(lambda: promotes_after(c, stopped_at), ttl_s, "a successor after a clean stop")[0]
            took_s = c.history_wall(promote[2], "promote", stopped_at)[0] - stopped_at
            print(f"clean stop to successor's promote: {took_s:.2f}s (lease_ttl {ttl_s}s)")
            assert took_s < ttl_s / 2
            assert_no_overlap(intervals(c.hook_events()))


def test_unhealthy_leader_hands_over_and_stays_out_until_healthy(tmp_path):
    check = tmp_path / "check"
    # each daemon checks its own flag file; ELECTIOND_NODE comes from the daemon
    check.write_text(f'#!/bin/sh\n[ ! -e "{tmp_path}/$ELECTIOND_NODE.sick" ] || {{ echo sick; exit 1; }}\n')
    check.chmod(0o755)
    with EtcdCluster(tmp_path) as etcd:
        etcd.start_all()
        with etcd_daemons(tmp_path, etcd) as c:
            c.config_text += f"\n[health]\ntrack_script = {check}\ninterval = 100ms\nrise = 2\nfall = 2\n"
            c.start_all()
            sick = c.wait_leader(15)
            (tmp_path / f"{sick}.sick").touch()
            successor = c.wait_for(lambda: (lead := c.agreed_leader()) not in (None, sick) and lead, 10,
                                   "leadership to leave the unhealthy node")
            c.wait_for(lambda: any(e[1] == "fault" and e[2] == sick for e in c.hook_events()), 10, "the fault hook")
            kinds = [e[1] for e in c.hook_events() if e[2] == sick]
            last_promote = max(i for i, k in enumerate(kinds) if k == "promote")
            assert kinds[last_promote + 1:][:2] == ["demote", "fault"], kinds  # demoted before its fault hooks
            # unhealthy, it has no key in etcd: the queue goes on without it
            c.wait_for(lambda: sick not in (c.status(successor) or {}).get("etcd", {}).get("queue", [sick]), 10,
                       "the unhealthy node out of the queue")
            (tmp_path / f"{sick}.sick").unlink()
            c.wait_for(lambda: sick in (c.status(successor) or {}).get("etcd", {}).get("queue", []), 10,
                       "the recovered node queued again")
            assert c.wait_leader(5) == successor  # recovering does not take leadership back
            assert_no_overlap(intervals(c.hook_events()))


def test_user_password_auth(tmp_path):
    """etcd with auth enabled: a user allowed only the prefix, its password from a file."""
    with EtcdCluster(tmp_path, size=1) as etcd:
        etcd.start_all()
        url = etcd.url("e1")

        def etcdctl(*args: str) -> None:
            subprocess.run(["etcdctl", "--endpoints", url, *args], check=True, capture_output=True, timeout=20)

        etcdctl("user", "add", "root", "--new-user-password=rootpw")
        etcdctl("role", "add", "electiond")
        cluster = Cluster(tmp_path, 3, protocol="etcd",
                          timing={"heartbeat_interval": "100ms", "election_timeout": "300ms-500ms"})
        prefix = f"/electiond/{cluster.cluster_name}/"
        etcdctl("role", "grant-permission", "electiond", "--prefix=true", "readwrite", prefix)
        etcdctl("user", "add", "electiond", "--new-user-password=s3cret")
        etcdctl("user", "grant-role", "electiond", "electiond")
        etcdctl("auth", "enable")
        password_file = tmp_path / "etcd.password"
        password_file.write_text("s3cret\n")
        cluster.config_text += (f"\n[etcd]\nendpoints = {url}\nlease_ttl = {TTL_S}s\nuser = electiond\n"
                                f"password_file = {password_file}\n")
        with cluster as c:
            c.start_all()
            leader = c.wait_leader(15)
            assert c.status(leader)["etcd"]["watch"] == "up"
            killed_at = time.time()
            c.kill(leader)
            c.wait_for(lambda: promotes_after(c, killed_at), TTL_S + 5, "a successor under auth")
            # a wrong password is an error the operator sees, and nobody leads on it
            (tmp_path / "bad").mkdir()
            bad = Cluster(tmp_path / "bad", 1, protocol="etcd")
            bad.config_text += f"\n[etcd]\nendpoints = {url}\nuser = electiond\npassword = wrong\n"

            def bad_error() -> str:
                return ((bad.status("n1") or {}).get("etcd") or {}).get("last_error") or ""

            with bad:
                bad.start_all()
                bad.wait_for(lambda: "authentication failed" in bad_error(), 10, "the auth error in status")
                assert bad.status("n1")["role"] != "leader"


def _make_certificates(directory) -> dict[str, str]:
    """A throwaway CA, a server certificate for 127.0.0.1 and a client certificate.

    The server's may also authenticate clients: etcd's own JSON gateway dials
    its gRPC side with it, and --client-cert-auth checks that dial too."""
    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=60, cwd=directory)

    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=electiond test CA",
            "-keyout", "ca.key", "-out", "ca.pem")
    for name, extension in (("server", "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth,clientAuth"),
                            ("client", "extendedKeyUsage=clientAuth")):
        (directory / f"{name}.ext").write_text(extension + "\n")
        openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}", "-keyout", f"{name}.key",
                "-out", f"{name}.csr")
        openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
                "-days", "2", "-extfile", f"{name}.ext", "-out", f"{name}.pem")
    return {"ca": str(directory / "ca.pem"), "cert": str(directory / "server.pem"),
            "key": str(directory / "server.key"), "client_cert": str(directory / "client.pem"),
            "client_key": str(directory / "client.key")}


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs openssl to make test certificates")
def test_tls_with_client_certificates(tmp_path):
    tls = _make_certificates(tmp_path)
    with EtcdCluster(tmp_path, size=1, tls=tls) as etcd:
        etcd.start_all()
        cluster = etcd_daemons(tmp_path, etcd)
        cluster.config_text += (f"ca_file = {tls['ca']}\ncert_file = {tls['client_cert']}\n"
                                f"key_file = {tls['client_key']}\n")
        with cluster as c:
            c.start_all()
            leader = c.wait_leader(15)
            assert c.status(leader)["etcd"]["watch"] == "up"
            assert c.status(leader)["etcd_endpoints"][0]["endpoint"].startswith("https://")
            killed_at = time.time()
            c.kill(leader)
            c.wait_for(lambda: promotes_after(c, killed_at), TTL_S + 5, "a successor over TLS")
