"""Coordination with protocol = etcd against a REAL etcd (3 members on
loopback) and 3 daemons, through electionctl as a shell script would use it.

Lock intervals come from stamps CMD writes itself (wall clock, one host); a
CMD that was killed wrote no stop stamp, so its interval ends when its
electionctl returned, which is after CMD was dead.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from electiond.devcluster import REPO, Cluster
from electiond.devetcd import APT_HINT, EtcdCluster, etcd_binary
from procio import readline_within

pytestmark = pytest.mark.skipif(etcd_binary() is None, reason=f"needs etcd (Debian: {APT_HINT})")

TTL_S = 3
LOOPS = 10


def etcd_daemons(workdir, etcd: EtcdCluster, ttl_s: int = TTL_S) -> Cluster:
    cluster = Cluster(workdir, 3, protocol="etcd",
                      timing={"heartbeat_interval": "100ms", "election_timeout": "300ms-500ms"})
    cluster.config_text += f"\n[etcd]\nendpoints = {etcd.endpoints()}\nlease_ttl = {ttl_s}s\n"
    return cluster


def ctl_argv(cluster: Cluster, name: str, *args: str) -> list[str]:
    return [sys.executable, "-m", "electiond.cli", "--socket", cluster.socket(name), *args]


def ctl(cluster: Cluster, name: str, *args: str, timeout_s: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run(ctl_argv(cluster, name, *args), capture_output=True, text=True, timeout=timeout_s,
                          env=dict(os.environ, PYTHONPATH=str(REPO)), cwd=str(REPO))


def retry(predicate, timeout_s: float, what: str):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        result = predicate()
        if result:
            return result
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def lock_spans(stamp_log, returned: dict[str, float]):
    """(start, end, token, run id) of every CMD run, from its own stamps."""
    starts, stops = {}, {}
    for line in stamp_log.read_text().splitlines():
        kind, run, stamp, token = line.split()
        (starts if kind == "start" else stops)[run] = (float(stamp), int(token))
    spans = []
    for run, (start, token) in starts.items():
        end = stops[run][0] if run in stops else returned[run]
        spans.append((start, end, token, run))
    return sorted(spans)


def test_lock_loops_on_three_hosts_while_the_leader_is_killed_and_restarted(tmp_path):
    with EtcdCluster(tmp_path) as etcd:
        etcd.start_all()
        with etcd_daemons(tmp_path, etcd) as c:
            run_lock_loops(tmp_path, c)


def run_lock_loops(tmp_path, c: Cluster) -> None:
    """3 hosts x LOOPS `electionctl lock` runs on one lock while the daemon of
    the cluster leader is killed as its host holds the lock, then restarted:
    no two CMDs overlap, tokens grow, the cut-off holder is stopped (76)."""
    stamps = tmp_path / "stamps.log"
    returned: dict[str, float] = {}
    outcomes: list[tuple[str, int, str]] = []
    c.start_all()
    leader = c.wait_leader(15)

    def loop(name: str) -> None:
        for k in range(LOOPS):
            run = f"{name}-{k}"
            # long enough to be renewed (every ttl/3) and to be running when the leader is killed
            # (5 s on the host whose daemon the test kills: it must be stopped, not finish)
            slow = tmp_path / f"slow-{name}"
            script = (f'echo start {run} $(date +%s.%N) $ELECTIOND_LOCK_TOKEN >> {stamps}; '
                      f'if [ -e {slow} ]; then sleep 5; else sleep 1.2; fi; '
                      f'echo stop {run} $(date +%s.%N) $ELECTIOND_LOCK_TOKEN >> {stamps}')
            r = ctl(c, name, "lock", "shared", "--ttl", f"{TTL_S}s", "--wait", "30s", "--", "sh", "-c",
                    script, timeout_s=60)
            returned[run] = time.time()
            outcomes.append((run, r.returncode, r.stderr.strip()[-200:]))
            if r.returncode == 2:
                time.sleep(0.3)  # this host's daemon is down: a script would retry later

    threads = [threading.Thread(target=loop, args=(n,)) for n in c.names]
    for t in threads:
        t.start()
    retry(lambda: stamps.exists() and len(stamps.read_text().splitlines()) >= 5, 60, "a few lock runs")
    (tmp_path / f"slow-{leader}").touch()
    # a run whose start stamp comes after these lines checked the flag after it existed
    seen_before_flag = len(stamps.read_text().splitlines())

    def leader_holds():
        lines = stamps.read_text().splitlines()
        last = lines[-1].split()
        return (len(lines) > seen_before_flag and last[0] == "start" and last[1].startswith(f"{leader}-")
                and last[1])
    victim = retry(leader_holds, 60, f"{leader} to hold the lock")
    c.kill(leader)  # the holder's daemon: its renewals fail from now on
    killed_at = time.time()
    time.sleep(TTL_S + 1.0)  # past the holder's deadline
    c.start(leader)
    (tmp_path / f"slow-{leader}").unlink()
    for t in threads:
        t.join(240)
    assert not any(t.is_alive() for t in threads)
    codes = [code for _, code, _ in outcomes]
    print(f"exit codes: {sorted(codes)}; leader {leader} killed at {killed_at:.3f}")
    assert set(codes) <= {0, 2, 75, 76}, outcomes
    spans = lock_spans(stamps, returned)
    assert sum(1 for code in codes if code == 0) >= 2 * LOOPS, outcomes
    # the holder cut off from its daemon was stopped (lost), not left running
    assert [code for run, code, _ in outcomes if run == victim] == [76], outcomes
    gaps = sorted(after[0] - before[1] for before, after in zip(spans, spans[1:]))
    print(f"{len(spans)} CMD runs; hand-over gap stop->next start: median {gaps[len(gaps) // 2] * 1000:.0f} ms, "
          f"max {gaps[-1] * 1000:.0f} ms")
    for before, after in zip(spans, spans[1:]):
        assert after[0] >= before[1], f"two CMDs held the lock at once: {before} and {after}"
        assert after[2] > before[2], f"the fencing token did not grow: {before} -> {after}"


def test_acknowledged_config_writes_survive_a_daemon_kill(tmp_path):
    with EtcdCluster(tmp_path) as etcd:
        etcd.start_all()
        with etcd_daemons(tmp_path, etcd) as c:
            c.start_all()
            leader = c.wait_leader(15)
            acked = {}
            for k in range(20):
                name = c.names[k % 3]
                r = ctl(c, name, "--json", "config", "set", f"app/key{k}", f"value{k}")
                assert r.returncode == 0, r.stderr
                entry = json.loads(r.stdout)
                acked[f"app/key{k}"] = (entry["value"], entry["version"])
            versions = [v for _, v in acked.values()]
            assert versions == sorted(versions) and len(set(versions)) == len(versions)
            # cas on the version just read: one winner
            current = json.loads(ctl(c, c.names[0], "--json", "config", "get", "app/key0").stdout)["version"]
            first = ctl(c, c.names[0], "config", "cas", "app/key0", "cas1", "--version", str(current))
            second = ctl(c, c.names[1], "config", "cas", "app/key0", "cas2", "--version", str(current))
            assert (first.returncode, second.returncode) == (0, 1), (first.stderr, second.stderr)
            acked["app/key0"] = ("cas1", int(first.stdout))
            # version 0: only if absent
            assert ctl(c, c.names[2], "config", "cas", "once", "a", "--version", "0").returncode == 0
            assert ctl(c, c.names[0], "config", "cas", "once", "b", "--version", "0").returncode == 1
            assert ctl(c, c.names[0], "config", "get", "once").stdout.strip() == "a"
            c.kill(leader)
            time.sleep(1.0)
            c.start(leader)
            for name in c.names:
                for key, (value, version) in acked.items():
                    r = retry(lambda: (lambda r: r if r.returncode == 0 else None)(
                        ctl(c, name, "--json", "config", "get", key)), 20, f"{name} to answer config get")
                    assert json.loads(r.stdout) == {"key": key, "value": value, "version": version}
            # a watch from version 0 replays every write, in version order, without gaps in what was acked
            watch = subprocess.Popen(ctl_argv(c, c.names[1], "config", "watch", "app/"), stdout=subprocess.PIPE,
                                     text=True, env=dict(os.environ, PYTHONPATH=str(REPO)), cwd=str(REPO))
            try:
                seen = [json.loads(readline_within(watch.stdout, 20, "config watch")) for _ in range(21)]
            finally:
                watch.terminate()
                watch.wait(10)
            assert [e["version"] for e in seen] == sorted(e["version"] for e in seen)
            assert {(e["key"], e["value"], e["version"]) for e in seen} >= \
                {(k, v, ver) for k, (v, ver) in acked.items()}
            # etcd compacts its history: a watch from below gets the same code and exit status (77)
            # as the embedded store's, never a silent gap
            newest = max(v for _, v in acked.values())
            member = etcd.running()[0]
            assert etcd._post(member, "/v3/kv/compaction", {"revision": newest, "physical": True}, 5.0) is not None
            r = ctl(c, c.names[0], "config", "watch", "app/", "--from", "1")
            assert r.returncode == 77 and "compacted" in r.stderr, (r.returncode, r.stderr)


def test_barrier_with_one_participant_dying_before_the_count(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(REPO))
    with EtcdCluster(tmp_path) as etcd:
        etcd.start_all()
        with etcd_daemons(tmp_path, etcd) as c:
            c.start_all()
            c.wait_leader(15)
            n1, n2, n3 = c.names

            def enter(name, who):
                return subprocess.Popen(ctl_argv(c, name, "barrier", "b", "--count", "3", "--timeout", "60s",
                                                 "--participant", who), env=env, cwd=str(REPO),
                                        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            first = enter(n1, "p1")
            dying = enter(n2, "p2")
            time.sleep(1.5)
            dying.kill()
            dying.wait(10)
            time.sleep(1.0)  # its daemon withdraws it on the hang-up
            third = enter(n3, "p3")
            time.sleep(2.0)
            assert first.poll() is None and third.poll() is None, "passed with a dead participant counted"
            again = enter(n2, "p2")
            for p in (first, third, again):
                out, err = p.communicate(timeout=60)
                assert p.returncode == 0, err
            # the double barrier: everyone leaves
            leavers = [subprocess.Popen(ctl_argv(c, n, "barrier", "b", "--leave", "--timeout", "30s",
                                                 "--participant", who), env=env, cwd=str(REPO),
                                        stderr=subprocess.PIPE, text=True)
                       for n, who in ((n1, "p1"), (n2, "p2"), (n3, "p3"))]
            for p in leavers:
                _, err = p.communicate(timeout=60)
                assert p.returncode == 0, err


def test_a_participant_whose_daemon_is_killed_after_the_barrier_does_not_hold_the_others_leave(tmp_path):
    """Each participant's key lives by its daemon's election lease (ephemeral,
    as in ZooKeeper): three enter, one daemon is SIGKILLed, its key goes with
    its lease (TTL 3 s) and the two others' --leave returns long before its
    60 s timeout."""
    env = dict(os.environ, PYTHONPATH=str(REPO))
    with EtcdCluster(tmp_path) as etcd:
        etcd.start_all()
        with etcd_daemons(tmp_path, etcd) as c:
            c.start_all()
            leader = c.wait_leader(15)

            def barrier(name, *args):
                return subprocess.Popen(ctl_argv(c, name, "barrier", "eph", *args, "--participant", "w"), env=env,
                                        cwd=str(REPO), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            entering = [barrier(n, "--count", "3", "--timeout", "30s") for n in c.names]
            for p in entering:
                _, err = p.communicate(timeout=40)
                assert p.returncode == 0, err
            victim = next(n for n in c.names if n != leader)
            c.kill(victim)
            killed_at = time.monotonic()
            rest = [n for n in c.names if n != victim]
            leaving = [barrier(n, "--leave", "--timeout", "60s") for n in rest]
            got = [(p.communicate(timeout=70), p.returncode) for p in leaving]
            took_s = time.monotonic() - killed_at
            print(f"--leave of the two survivors returned {took_s:.1f} s after the kill (lease TTL {TTL_S} s)")
            assert all(rc == 0 and "all left" in out for (out, _), rc in got), got
            assert took_s < 3 * TTL_S, took_s  # a lease of its own (BARRIER_LEASE_S, 10 s) would not pass


def test_members_watch_shows_a_kill_and_the_return(tmp_path):
    with EtcdCluster(tmp_path) as etcd:
        etcd.start_all()
        with etcd_daemons(tmp_path, etcd) as c:
            c.start_all()
            c.wait_leader(15)
            n1, _, n3 = c.names
            retry(lambda: len(_view(c, n1)) == 3, 30, "all three in the view")
            watch = subprocess.Popen(ctl_argv(c, n1, "members", "--watch"), stdout=subprocess.PIPE, text=True,
                                     env=dict(os.environ, PYTHONPATH=str(REPO)), cwd=str(REPO))
            lines: list[dict] = []
            reader = threading.Thread(target=lambda: [lines.append(json.loads(x)) for x in watch.stdout],
                                      daemon=True)
            reader.start()
            try:
                retry(lambda: lines, 10, "the first view")
                assert lines[0]["members"] == sorted(c.names)
                c.kill(n3)
                left = retry(lambda: [e for e in lines if e["change"] == "left" and e["node"] == n3],
                             TTL_S + 10, f"{n3} to leave")[0]
                assert n3 not in left["members"]
                c.start(n3)
                joined = retry(lambda: [e for e in lines if e["change"] == "joined" and e["node"] == n3],
                               30, f"{n3} to join again")[0]
                assert joined["version"] > left["version"] and n3 in joined["members"]
            finally:
                watch.terminate()
                watch.wait(10)


def test_members_watch_shows_a_frozen_member_suspected_then_back_or_left(tmp_path):
    """SIGSTOP a follower's daemon: its keep-alives stop, so once less than
    half its lease TTL (6 s) is left it is suspected; SIGCONT before expiry
    brings it back (joined); frozen again past the expiry it has left, and
    after SIGCONT it joins with a new lease. Watched on two hosts: versions
    strictly increase in each stream, and one version is one view on both."""
    ttl_s = 6
    env = dict(os.environ, PYTHONPATH=str(REPO))
    with EtcdCluster(tmp_path) as etcd:
        etcd.start_all()
        with etcd_daemons(tmp_path, etcd, ttl_s) as c:
            c.start_all()
            leader = c.wait_leader(15)
            frozen = next(n for n in c.names if n != leader)
            watchers = [n for n in c.names if n != frozen]
            retry(lambda: all(len(_view(c, n)) == 3 for n in watchers), 30, "all three in the view")
            streams: dict[str, list[dict]] = {n: [] for n in watchers}
            procs = []
            for n in watchers:
                p = subprocess.Popen(ctl_argv(c, n, "members", "--watch"), stdout=subprocess.PIPE, text=True,
                                     env=env, cwd=str(REPO))
                procs.append(p)
                threading.Thread(target=lambda p=p, out=streams[n]: [out.append(json.loads(x)) for x in p.stdout],
                                 daemon=True).start()

            def seen(change: str, after: int = 0):
                got = [e for e in streams[watchers[0]] if e["node"] == frozen and e["change"] == change
                       and e["version"] > after]
                return got[0] if got else None
            try:
                retry(lambda: all(streams.values()), 10, "the first views")
                c.signal(frozen, signal.SIGSTOP)
                stopped_at = time.monotonic()
                sus = retry(lambda: seen("suspected"), ttl_s + 5, f"{frozen} suspected")
                sus_after_s = time.monotonic() - stopped_at
                assert frozen in sus["suspected"] and frozen not in sus["members"], sus
                c.signal(frozen, signal.SIGCONT)
                back = retry(lambda: seen("joined", sus["version"]), 10, f"{frozen} back")
                assert frozen in back["members"] and not back["suspected"], back
                assert not seen("left"), "left although it was back before its lease ended"
                c.signal(frozen, signal.SIGSTOP)
                sus2 = retry(lambda: seen("suspected", back["version"]), ttl_s + 5, f"{frozen} suspected again")
                gone = retry(lambda: seen("left", sus2["version"]), ttl_s + 10, f"{frozen} left")
                c.signal(frozen, signal.SIGCONT)
                again = retry(lambda: seen("joined", gone["version"]), 30, f"{frozen} joined again")
                print(f"suspected {sus_after_s:.1f} s after SIGSTOP (TTL {ttl_s} s); versions "
                      f"{sus['version']} {back['version']} {sus2['version']} {gone['version']} {again['version']}")
                time.sleep(1.0)  # the second stream catches up
                for n, events in streams.items():
                    versions = [e["version"] for e in events[1:]]
                    assert all(a <= b for a, b in zip(versions, versions[1:])), (n, versions)
                    changes = [e["change"] for e in events if e["node"] == frozen]
                    assert changes[:5] == ["suspected", "joined", "suspected", "left", "joined"], (n, changes)
                views = {}
                for n, events in streams.items():
                    for e in events[1:]:
                        views.setdefault(e["version"], set()).add((tuple(e["members"]), tuple(e["suspected"])))
                assert all(len(v) == 1 for v in views.values()), views
            finally:
                for s in (signal.SIGCONT,):
                    try:
                        c.signal(frozen, s)
                    except Exception:
                        pass
                for p in procs:
                    p.terminate()
                    p.wait(10)


def _view(c: Cluster, name: str) -> list[str]:
    from electiond.client import Client, ClientError, CoordRefused

    try:
        return Client(c.socket(name)).members()["members"]
    except (ClientError, CoordRefused):
        return []


def test_run_as_leader_only_on_the_leader_and_dead_before_the_next_one_starts(tmp_path):
    """The leader's daemon is killed: its run-as-leader cannot renew the
    deadline and kills CMD (which ignores SIGTERM) before the etcd lease, and
    so the next leader's CMD, can start. A stepdown then stops the next one, and
    the hand-over waits for it to be dead before the third leader's starts."""
    stamps = tmp_path / "leader-stamps.log"
    env = dict(os.environ, PYTHONPATH=str(REPO))
    with EtcdCluster(tmp_path) as etcd:
        etcd.start_all()
        with etcd_daemons(tmp_path, etcd) as c:
            c.start_all()
            leader = c.wait_leader(15)
            script = (f"trap '' TERM; echo start $NODE $(date +%s.%N) >> {stamps}; "
                      # written then renamed: a reader must never see the truncated file
                      f"while :; do date +%s.%N > {tmp_path}/alive-$NODE.new; "
                      f"mv -f {tmp_path}/alive-$NODE.new {tmp_path}/alive-$NODE; sleep 0.02; done")
            procs = {n: subprocess.Popen(ctl_argv(c, n, "run-as-leader", "--kill-grace", "1s", "--", "sh", "-c",
                                                  script), env={**env, "NODE": n}, cwd=str(REPO),
                                         stderr=subprocess.PIPE, text=True) for n in c.names}
            try:
                retry(lambda: stamps.exists() and stamps.read_text().strip(), 15, "the leader's CMD")
                time.sleep(1.0)
                starts = stamps.read_text().split()
                assert starts[0::3] == ["start"] and starts[1] == leader, starts  # only the leader's
                c.kill(leader)
                _, err = procs[leader].communicate(timeout=20)
                assert procs[leader].returncode == 76, err
                lines = retry(lambda: len(stamps.read_text().splitlines()) >= 2 and stamps.read_text().splitlines(),
                              TTL_S + 10, "the next leader's CMD")
                _, successor, started = lines[1].split()
                assert successor != leader
                last_alive = float((tmp_path / f"alive-{leader}").read_text())
                print(f"killed daemon: old CMD last alive {last_alive:.3f}, new started {started}")
                assert last_alive < float(started), "the old leader's CMD still ran when the new one's started"
                # a voluntary hand-over waits (bounded) for the registered run-as-leader's CMD to die
                assert ctl(c, successor, "stepdown").returncode == 0
                _, err = procs[successor].communicate(timeout=20)
                assert procs[successor].returncode == 76, err
                third = next(n for n in c.names if n not in (leader, successor))
                lines = retry(lambda: len(stamps.read_text().splitlines()) >= 3 and stamps.read_text().splitlines(),
                              TTL_S + 20, "the third leader's CMD")
                _, node3, started3 = lines[2].split()
                assert node3 == third, lines
                last_alive = float((tmp_path / f"alive-{successor}").read_text())
                print(f"stepdown: old CMD last alive {last_alive:.3f}, new started {started3}")
                assert last_alive < float(started3), "the stepped-down leader's CMD still ran when the next one's started"
            finally:
                for p in procs.values():
                    if p.poll() is None:
                        p.terminate()
                        p.wait(10)
