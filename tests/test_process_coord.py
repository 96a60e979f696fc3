"""The embedded coordination store in real daemons on loopback (quorum-lease).

Driven through the control socket's config.* and lock.* commands, and through
`electionctl lock` as a shell script would use it."""

from __future__ import annotations

import os
import subprocess
import time

from cluster import Cluster
from test_process_coord_etcd import REPO, ctl_argv, run_lock_loops

from electiond.cli import Refused, Unreachable, request


def _ask(c: Cluster, name: str, cmd: str, args: dict, timeout_s: float = 8.0):
    return request(c.socket(name), cmd, args, timeout_s=timeout_s)


def _until(c: Cluster, names, cmd: str, args: dict, limit_s: float):
    """The first answer from any of ``names`` within ``limit_s`` (a leader may be changing)."""
    deadline = time.monotonic() + limit_s
    last: Exception | None = None
    while time.monotonic() < deadline:
        for name in names:
            try:
                return _ask(c, name, cmd, args)
            except (Refused, Unreachable) as exc:
                last = exc
        time.sleep(0.1)
    raise AssertionError(f"{cmd} {args} not answered within {limit_s}s: {last}")


def test_config_writes_acknowledged_before_a_leader_kill_are_all_read_back(tmp_path):
    with Cluster(tmp_path, 3, protocol="quorum-lease") as c:
        c.start_all()
        leader = c.wait_leader(timeout_s=15.0)
        acked: dict[str, tuple[str, int]] = {}
        versions = []
        for i in range(12):
            via = c.names[i % 3]  # followers forward to the leader
            r = _until(c, [via], "config.set", {"key": f"k{i % 4}", "value": f"v{i}"}, 10.0)
            acked[r["key"]] = (r["value"], r["version"])
            versions.append(r["version"])
        assert versions == sorted(versions) and len(set(versions)) == len(versions)
        cas = _until(c, [leader], "config.cas", {"key": "k0", "value": "after-cas", "version": acked["k0"][1]}, 10.0)
        acked["k0"] = (cas["value"], cas["version"])
        try:
            _ask(c, leader, "config.cas", {"key": "k0", "value": "stale", "version": 1})
            raise AssertionError("a cas against an old version succeeded")
        except Refused as exc:
            assert "version" in str(exc)
        c.kill(leader)
        rest = [n for n in c.names if n != leader]
        new = c.wait_leader(timeout_s=15.0, among=rest)
        assert new != leader
        for key, (value, version) in acked.items():
            r = _until(c, rest, "config.get", {"key": key}, 10.0)
            assert (r["value"], r["version"]) == (value, version), (key, r)
        # the killed leader comes back and agrees
        c.start(leader)
        for key, (value, version) in acked.items():
            r = _until(c, [leader], "config.get", {"key": key}, 15.0)
            assert (r["value"], r["version"]) == (value, version), (key, r)


def test_lock_tokens_grow_across_a_leader_kill_and_a_held_lock_is_refused(tmp_path):
    with Cluster(tmp_path, 3, protocol="quorum-lease") as c:
        c.start_all()
        leader = c.wait_leader(timeout_s=15.0)
        follower = next(n for n in c.names if n != leader)
        g = _until(c, [follower], "lock.acquire", {"name": "job", "owner": "a", "ttl_s": 1.0}, 10.0)
        try:
            _ask(c, leader, "lock.acquire", {"name": "job", "owner": "b", "ttl_s": 1.0, "wait_s": 0.0})
            raise AssertionError("a held lock was granted twice")
        except Refused as exc:
            assert "held" in str(exc)
        _until(c, [follower], "lock.renew", {"name": "job", "token": g["token"], "ttl_s": 1.0}, 10.0)
        c.kill(leader)
        rest = [n for n in c.names if n != leader]
        c.wait_leader(timeout_s=15.0, among=rest)
        t0 = time.monotonic()
        g2 = _until(c, rest, "lock.acquire", {"name": "job", "owner": "b", "ttl_s": 1.0, "wait_s": 10.0}, 20.0)
        assert g2["token"] > g["token"]
        assert time.monotonic() - t0 < 15.0
        _until(c, rest, "lock.release", {"name": "job", "token": g2["token"]}, 10.0)
        g3 = _until(c, rest, "lock.acquire", {"name": "job", "owner": "c", "ttl_s": 1.0}, 10.0)
        assert g3["token"] > g2["token"]


def test_the_member_view_has_one_version_per_view_and_drops_a_killed_node(tmp_path):
    with Cluster(tmp_path, 3, protocol="quorum-lease") as c:
        c.start_all()
        leader = c.wait_leader(timeout_s=15.0)
        deadline = time.monotonic() + 15.0
        full = None
        while time.monotonic() < deadline:
            full = _until(c, c.names, "members", {}, 10.0)
            if full["members"] == sorted(c.names):
                break
            time.sleep(0.2)
        assert full is not None and full["members"] == sorted(c.names), full
        victim = next(n for n in c.names if n != leader)
        c.kill(victim)
        rest = [n for n in c.names if n != victim]
        deadline = time.monotonic() + 20.0
        views = {}
        while time.monotonic() < deadline:
            for name in rest:
                r = _until(c, [name], "members", {}, 10.0)
                views.setdefault(r["version"], r["members"])
                assert views[r["version"]] == r["members"], (r, views)  # one version, one view
            if views.get(max(views)) == sorted(rest):
                break
            time.sleep(0.2)
        assert views[max(views)] == sorted(rest) and max(views) > full["version"], views
        # the store refuses writes to the daemon's own keys
        try:
            _ask(c, leader, "config.set", {"key": "_coord/members", "value": "forged"})
            raise AssertionError("a reserved key was written")
        except Refused:
            pass


def test_a_barrier_returns_on_every_host_once_all_three_entered(tmp_path):
    import threading

    with Cluster(tmp_path, 3, protocol="quorum-lease") as c:
        c.start_all()
        c.wait_leader(timeout_s=15.0)
        # fewer than the count: not passed within the timeout
        try:
            _ask(c, "n1", "barrier.enter", {"name": "early", "participant": "p1", "count": 2, "timeout_s": 1.0})
            raise AssertionError("a barrier passed with one participant of two")
        except Refused:
            pass
        results: dict[str, object] = {}

        def enter(name: str) -> None:
            try:
                results[name] = _ask(c, name, "barrier.enter",
                                     {"name": "go", "participant": f"p-{name}", "count": 3, "timeout_s": 15.0},
                                     timeout_s=20.0)
            except Exception as exc:  # reported by the assert below
                results[name] = exc

        threads = [threading.Thread(target=enter, args=(n,)) for n in c.names]
        for i, t in enumerate(threads):
            t.start()
            time.sleep(0.3 * i)  # they arrive at different times
        for t in threads:
            t.join(25.0)
        assert all(isinstance(r, dict) and r["count"] == 3 for r in results.values()) and len(results) == 3, results


def test_electionctl_lock_loops_on_three_hosts_while_the_leader_is_killed_and_restarted(tmp_path):
    # the same loops as with protocol = etcd; here the killed daemon is also
    # the store's leader, so its successor holds the logged grant for W first
    with Cluster(tmp_path, 3, protocol="quorum-lease",
                 timing={"heartbeat_interval": "100ms", "election_timeout": "300ms-500ms", "lease": "400ms"}) as c:
        run_lock_loops(tmp_path, c)


def test_a_participant_killed_after_the_barrier_does_not_hold_the_others_leave(tmp_path):
    """ZooKeeper's double barrier: a participant's entry is ephemeral. Three
    hosts enter, the leader's host (its daemon: the participant dies with it)
    is SIGKILLed; the new leader sees that node leave the member view and
    removes its participant, so the two others' --leave returns long before
    its 40 s timeout. Back again, the killed host's own --leave finds
    everyone gone."""
    env = dict(os.environ, PYTHONPATH=str(REPO))

    def ctl_bg(name: str, *args: str) -> subprocess.Popen:
        return subprocess.Popen(ctl_argv(c, name, "barrier", "db", *args, "--participant", "w"), env=env,
                                cwd=str(REPO), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    with Cluster(tmp_path, 3, protocol="quorum-lease") as c:
        c.start_all()
        leader = c.wait_leader(timeout_s=15.0)
        entering = [ctl_bg(n, "--count", "3", "--timeout", "30s") for n in c.names]
        for p in entering:
            _, err = p.communicate(timeout=40)
            assert p.returncode == 0, err
        c.kill(leader)
        killed_at = time.monotonic()
        rest = [n for n in c.names if n != leader]
        leaving = [ctl_bg(n, "--leave", "--timeout", "40s") for n in rest]
        got = [(p.communicate(timeout=50), p.returncode) for p in leaving]
        took_s = time.monotonic() - killed_at
        print(f"--leave of the two survivors returned {took_s:.1f} s after the kill")
        assert all(rc == 0 and "all left" in out for (out, _), rc in got), got
        assert took_s < 20.0, took_s  # the timeout is 40 s: the dead participant did not hold them
        c.start(leader)
        _until(c, [leader], "members", {}, 20.0)  # its daemon is up and hears the store's leader
        last = ctl_bg(leader, "--leave", "--timeout", "30s")
        (out, err), rc = last.communicate(timeout=40), last.returncode
        assert rc == 0 and "all left" in out, (out, err)


def test_a_node_down_for_more_writes_than_the_kept_log_catches_up_by_snapshot(tmp_path):
    import threading

    from electiond.client import Client, CoordRefused
    from electiond.coord.replica import LOG_KEEP

    with Cluster(tmp_path, 3, protocol="quorum-lease") as c:
        c.start_all()
        leader = c.wait_leader(timeout_s=15.0)
        victim = next(n for n in c.names if n != leader)
        _until(c, [victim], "config.set", {"key": "before", "value": "x"}, 10.0)
        c.stop(victim)
        writer = Client(c.socket(leader), timeout_s=10.0)
        last = None
        versions = []
        for i in range(LOG_KEEP + 60):
            last = writer.set(f"k{i % 7}", f"v{i}")
            versions.append(last["version"])
        assert last is not None
        expected = {f"k{i}": writer.get(f"k{i}") for i in range(7)}
        c.start(victim)

        def caught_up():
            st = c.status(victim)
            store = (st or {}).get("coord_store") or {}
            return store if store.get("commit", 0) >= last["version"] else None

        deadline = time.monotonic() + 30.0
        store = None
        while time.monotonic() < deadline and store is None:
            store = caught_up()
            time.sleep(0.2)
        assert store is not None, c.status(victim)
        assert store["snapshots_installed"] >= 1 and store["oldest_watchable"] > 1, store
        local = Client(c.socket(victim), timeout_s=10.0)
        for key, want in expected.items():
            got = local.get(key)
            assert (got["value"], got["version"]) == (want["value"], want["version"]), (key, got, want)
        # a watch from before the snapshot: the documented error, never a gap
        try:
            next(iter(local.watch("k", from_version=1)))
            raise AssertionError("a watch from a compacted version streamed")
        except CoordRefused as exc:
            assert exc.code == "compacted" and "has been compacted" in str(exc), exc
        r = subprocess.run(ctl_argv(c, victim, "config", "watch", "k", "--from", "1"), capture_output=True,
                           text=True, timeout=30, env=dict(os.environ, PYTHONPATH=str(REPO)), cwd=str(REPO))
        assert r.returncode == 77 and "compacted" in r.stderr, (r.returncode, r.stderr)
        # from a version the snapshot's log tail holds (each later write, such as the member
        # view's, folds one more entry: watch well inside the tail, not at its very start)
        seen: list[int] = []
        errors: list[Exception] = []
        start = last["version"] - 50
        assert start > store["oldest_watchable"]

        def consume():
            try:
                for e in local.watch("k", from_version=start):
                    seen.append(e["version"])
                    if e["version"] >= last["version"]:
                        return
            except Exception as exc:  # reported below
                errors.append(exc)

        t = threading.Thread(target=consume, daemon=True)
        t.start()
        t.join(20.0)
        assert not errors, errors
        # every write to k0..k6 since ``start``, in order, to the last acknowledged one (the
        # versions between them are the member view's)
        assert seen == [v for v in versions if v > start], (seen[:5], seen[-5:])


def test_members_watch_tells_suspected_from_left_with_one_version_per_view_on_every_host(tmp_path):
    import json
    import signal
    import threading

    env = dict(os.environ, PYTHONPATH=str(REPO))
    with Cluster(tmp_path, 3, protocol="quorum-lease") as c:
        c.start_all()
        leader = c.wait_leader(timeout_s=15.0)
        victim, other = [n for n in c.names if n != leader]
        deadline = time.monotonic() + 15.0
        while time.monotonic() < deadline and _until(c, [leader], "members", {}, 10.0)["members"] != sorted(c.names):
            time.sleep(0.2)
        lines: dict[str, list[dict]] = {leader: [], other: []}
        watchers = {n: subprocess.Popen(ctl_argv(c, n, "members", "--watch"), stdout=subprocess.PIPE, text=True,
                                        env=env, cwd=str(REPO)) for n in lines}
        for n, w in watchers.items():
            threading.Thread(target=lambda n=n, w=w: [lines[n].append(json.loads(x)) for x in w.stdout],
                             daemon=True).start()

        def wait_change(change: str, limit_s: float, after: int = 0) -> dict:
            deadline = time.monotonic() + limit_s
            while time.monotonic() < deadline:
                got = [e for e in lines[leader] if e["node"] == victim and e["change"] == change
                       and e["version"] > after]
                if got:
                    return got[-1]
                time.sleep(0.05)
            raise AssertionError(f"no {change!r} for {victim}: {lines[leader]}")

        try:
            c.signal(victim, signal.SIGSTOP)  # frozen: silent, not gone
            try:
                suspected = wait_change("suspected", 10.0)
                assert victim in suspected["suspected"] and victim not in suspected["members"], suspected
                left = wait_change("left", 10.0)
                assert left["version"] > suspected["version"]
                assert victim not in left["members"] and victim not in left["suspected"], left
            finally:
                c.signal(victim, signal.SIGCONT)
            back = wait_change("joined", 15.0, after=left["version"])
            assert back["version"] > left["version"] and victim in back["members"], back
            # the other host's watch reaches the same versions, and each version is one view
            deadline = time.monotonic() + 10.0
            while time.monotonic() < deadline and max((e["version"] for e in lines[other]), default=0) < back["version"]:
                time.sleep(0.1)
            views: dict[int, tuple] = {}
            for n in lines:
                for e in lines[n]:
                    if e["change"] == "view":
                        continue
                    view = (tuple(e["members"]), tuple(e["suspected"]))
                    assert views.setdefault(e["version"], view) == view, (n, e, views)
            assert {suspected["version"], left["version"], back["version"]} <= {
                e["version"] for e in lines[other]}, lines[other]
        finally:
            for w in watchers.values():
                w.terminate()
                w.wait(10)


def test_run_as_leader_cmd_is_dead_before_the_next_leaders_starts_on_stepdown_and_transfer(tmp_path):
    """CMD ignores SIGTERM (so it dies only by the SIGKILL after ENDED_KILL_S);
    every voluntary hand-over must wait for the registered supervisor."""
    stamps = tmp_path / "leader-stamps.log"
    env = dict(os.environ, PYTHONPATH=str(REPO))
    script = (f"trap '' TERM; echo start $NODE $(date +%s.%N) >> {stamps}; "
              f"while :; do date +%s.%N > {tmp_path}/alive-$NODE.new; "
              f"mv -f {tmp_path}/alive-$NODE.new {tmp_path}/alive-$NODE; sleep 0.01; done")

    def supervise(n: str) -> subprocess.Popen:
        return subprocess.Popen(ctl_argv(c, n, "run-as-leader", "--", "sh", "-c", script), env={**env, "NODE": n},
                                cwd=str(REPO), stderr=subprocess.PIPE, text=True)

    def starts() -> list[tuple[str, float]]:
        text = stamps.read_text() if stamps.exists() else ""
        return [(line.split()[1], float(line.split()[2])) for line in text.splitlines() if line.strip()]

    def wait_starts(k: int) -> list[tuple[str, float]]:
        deadline = time.monotonic() + 20.0
        while time.monotonic() < deadline:
            got = starts()
            if len(got) >= k:
                return got
            time.sleep(0.05)
        raise AssertionError(f"fewer than {k} CMD starts: {starts()}")

    with Cluster(tmp_path, 3, protocol="quorum-lease") as c:
        c.start_all()
        c.wait_leader(timeout_s=15.0)
        procs = {n: supervise(n) for n in c.names}
        try:
            for k, how in enumerate(("stepdown", "transfer", "stepdown", "transfer"), start=1):
                got = wait_starts(k)
                holder = got[-1][0]
                time.sleep(0.5)  # a settled leader: its CMD ran a while
                args = {"target": next(n for n in c.names if n != holder)} if how == "transfer" else {}
                request(c.socket(holder), how, args, timeout_s=5.0)
                _, err = procs[holder].communicate(timeout=20)
                assert procs[holder].returncode == 76, err
                assert "not registered" not in err, err
                nxt = wait_starts(k + 1)[k]
                last_alive = float((tmp_path / f"alive-{holder}").read_text())
                assert nxt[0] != holder and last_alive < nxt[1], (how, holder, last_alive, nxt)
                procs[holder] = supervise(holder)  # it stands by for its next turn
            status = c.status(got[-1][0]) or {}
            assert status["run_as_leader"]["registered"] == 0 or status["role"] == "leader", status
        finally:
            for p in procs.values():
                if p.poll() is None:
                    p.terminate()
                    p.wait(10)
