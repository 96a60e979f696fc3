"""The coordination surface (control socket commands, electionctl lock /
barrier / members --watch / config, electiond.client) against a small
in-memory backend, and the holder's deadline arithmetic with made-up times."""

from __future__ import annotations

import asyncio
import json
import math
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from coordfake import FakeBackend
from electiond import cli, client as clientmod, control
from electiond.coord import commands, supervise
from procio import readline_within

REPO = Path(__file__).resolve().parent.parent


# ---- the deadline arithmetic (pure) ---------------------------------------------------


def test_holder_deadline_counts_from_the_send_with_drift_and_grace():
    # sent at t=100, ttl 10 s, 1000 ppm: the server cannot expire it before 109.99 on our clock
    assert supervise.holder_deadline_s(100.0, 10.0, 1000.0, 2.0) == pytest.approx(107.99)
    assert supervise.kill_at_s(107.99, 2.0) == pytest.approx(108.99)  # SIGKILL half-way through the grace
    assert supervise.kill_at_s(107.99, 2.0) < 100.0 + 10.0 * (1 - 1e-3)  # dead before the lease could end
    assert supervise.renew_at_s(100.0, 9.0) == pytest.approx(103.0)


def test_a_confirmed_renewal_moves_the_deadline_from_its_own_send():
    first = supervise.holder_deadline_s(0.0, 10.0, 0.0, 2.0)
    # a renewal sent at 3.3 s (answered whenever) extends to 3.3 + 10 - 2
    second = supervise.holder_deadline_s(3.3, 10.0, 0.0, 2.0)
    assert second == pytest.approx(11.3) and second > first


def test_the_shorter_of_asked_and_granted_ttl_counts():
    assert supervise.effective_ttl_s(10.0, 7.0) == 7.0
    assert supervise.effective_ttl_s(10.0, 11.0) == 10.0  # etcd rounds up: we do not rely on it
    assert supervise.effective_ttl_s(10.0, 0.0) == 10.0


def test_leader_deadline_uses_the_lease_and_is_infinite_without_one():
    assert supervise.leader_deadline_s(50.0, 3.0, 1.0) == pytest.approx(52.0)
    assert supervise.leader_deadline_s(50.0, None, 1.0) == math.inf


@pytest.mark.parametrize("ttl_s, grace_s", [(0.5, 0.1), (10.0, 6.0), (10.0, 0.0), (math.inf, 1.0)])
def test_lock_arguments_that_cannot_be_supervised_safely_are_refused(ttl_s, grace_s):
    with pytest.raises(supervise.SuperviseError):
        supervise.check_lock_args(ttl_s, grace_s, 1000.0)


def test_sane_lock_arguments_pass():
    supervise.check_lock_args(10.0, 2.0, 1000.0)
    supervise.check_lock_args(1.0, 0.4, 1000.0)


# ---- a control server on the fake backend, in a thread -------------------------------------


class Served:
    def __init__(self, path: str, backend: FakeBackend | None) -> None:
        self.backend = backend
        self.loop = asyncio.new_event_loop()
        self.server = control.ControlServer(path, 0o600, self.handle, max_connections=8, idle_timeout_s=1.0)
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def handle(self, name, args):
        if name in commands.COORD_COMMANDS:
            return commands.dispatch(self.backend, "n1", 1000.0, name, args)
        if name == "is-leader":
            return {"leader": True, "node": "n1", "valid_for_ms": 3000.0}
        raise control.BadRequest(f"unknown command {name!r}")

    def run(self, coro, timeout_s=10.0):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout_s)

    def __enter__(self):
        self.thread.start()
        self.run(self.server.start())
        return self

    def __exit__(self, *exc):
        self.run(self.server.stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


@pytest.fixture
def served(tmp_path):
    with Served(str(tmp_path / "control.sock"), FakeBackend()) as s:
        yield s


def ctl(served_or_path, *argv, timeout_s=30):
    path = served_or_path if isinstance(served_or_path, str) else served_or_path.server.path
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.run([sys.executable, "-m", "electiond.cli", "--socket", path, *argv], capture_output=True,
                          text=True, timeout=timeout_s, env=env, cwd=str(REPO))


def test_lock_runs_cmd_with_the_token_and_exits_with_its_status(served, tmp_path):
    out = tmp_path / "token"
    r = ctl(served, "lock", "job", "--ttl", "3s", "--", "sh", "-c", f'echo "$ELECTIOND_LOCK_TOKEN" > {out}; exit 7')
    assert r.returncode == 7, r.stderr
    assert int(out.read_text()) >= 1
    assert "job" not in served.backend.locks  # released after CMD ended


def test_lock_renews_every_third_of_the_ttl(served):
    r = ctl(served, "lock", "job", "--ttl", "1.5s", "--kill-grace", "0.5s", "--", "sleep", "2.2")
    assert r.returncode == 0, r.stderr
    assert served.backend.renewals >= 3


def test_lock_not_acquired_in_time_exits_75_and_lost_exits_76_with_cmd_stopped(served, tmp_path):
    started = time.monotonic()
    holder = subprocess.Popen([sys.executable, "-m", "electiond.cli", "--socket", served.server.path, "lock", "job",
                               "--ttl", "2s", "--kill-grace", "0.5s", "--", "sh", "-c",
                               f"trap '' TERM; echo up > {tmp_path / 'up'}; sleep 30"],
                              env=dict(os.environ, PYTHONPATH=str(REPO)), cwd=str(REPO), stderr=subprocess.PIPE,
                              text=True)
    try:
        for _ in range(200):
            if (tmp_path / "up").exists():
                break
            time.sleep(0.05)
        r = ctl(served, "lock", "job", "--wait", "300ms", "--", "true")
        assert r.returncode == coordcli_exit("EXIT_NOT_ACQUIRED") == 75, r.stderr
        served.backend.refuse_renewals = True  # the lock is gone: CMD must be stopped (it ignores TERM: KILL)
        _, err = holder.communicate(timeout=15)
        assert holder.returncode == 76, err
        assert "lost the lock" in err
        # no renewal after the loss was confirmed: it was stopped within its deadline + the grace
        assert time.monotonic() - started < 15
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()


def coordcli_exit(name):
    from electiond import coordcli

    return getattr(coordcli, name)


def test_a_cmd_that_cannot_run_exits_127_and_releases_the_lock(served):
    r = ctl(served, "lock", "job", "--", "/nonexistent/cmd")
    assert r.returncode == 127 and "cannot run" in r.stderr
    assert "job" not in served.backend.locks


def test_lock_argument_errors_exit_4(served):
    assert ctl(served, "lock", "job").returncode == 4  # no CMD
    assert ctl(served, "lock", "job", "--ttl", "2s", "--kill-grace", "1.5s", "--", "true").returncode == 4
    assert ctl(served, "lock", "job", "--ttl", "nonsense", "--", "true").returncode == 4
    assert ctl(served, "config", "cas", "k", "v").returncode == 4  # no --version
    assert ctl(served, "config", "set", "k").returncode == 4
    assert ctl(served, "barrier", "b").returncode == 4  # no --count


def test_config_set_get_cas_delete(served):
    r = ctl(served, "config", "set", "color", "blue")
    assert r.returncode == 0, r.stderr
    version = int(r.stdout)
    assert ctl(served, "config", "get", "color").stdout.strip() == "blue"
    entry = json.loads(ctl(served, "--json", "config", "get", "color").stdout)
    assert entry == {"key": "color", "value": "blue", "version": version}
    stale = ctl(served, "config", "cas", "color", "red", "--version", str(version - 1))
    assert stale.returncode == 1 and "version" in stale.stderr
    assert ctl(served, "config", "cas", "color", "red", "--version", str(version)).returncode == 0
    assert ctl(served, "config", "delete", "color").returncode == 0
    assert ctl(served, "config", "get", "color").returncode == 1


def test_config_watch_streams_changes_from_a_version_on(served):
    c = clientmod.Client(served.server.path)
    first = c.set("app/a", "1")["version"]
    c.set("app/b", "2")
    c.set("other", "x")
    seen = []
    for event in c.watch("app/", from_version=0):
        seen.append(event)
        if len(seen) == 2:
            c.set("app/a", "3")
        if len(seen) == 3:
            break
    assert [(e["key"], e["value"]) for e in seen] == [("app/a", "1"), ("app/b", "2"), ("app/a", "3")]
    later = next(iter(c.watch("app/", from_version=first)))
    assert later["key"] == "app/b"


def test_a_watch_from_a_compacted_version_is_refused_with_its_own_code_and_exit_77(served):
    served.backend.oldest_watchable = 5
    c = clientmod.Client(served.server.path)
    with pytest.raises(clientmod.CoordRefused) as got:
        next(iter(c.watch("app/", from_version=2)))
    assert got.value.code == "compacted"
    r = ctl(served, "config", "watch", "app/", "--from", "2", timeout_s=20)
    assert r.returncode == 77 and "compacted" in r.stderr, (r.returncode, r.stderr)
    from electiond import coordcli

    assert coordcli.EXIT_COMPACTED == 77


def test_a_watch_is_not_closed_as_idle(served):
    c = clientmod.Client(served.server.path)
    stream = c.watch("k", 0)

    def write_later():
        time.sleep(1.5)  # longer than the server's idle timeout (1 s)
        clientmod.Client(served.server.path).set("k", "v")
    threading.Thread(target=write_later, daemon=True).start()
    assert next(iter(stream))["value"] == "v"


def test_members_watch_prints_one_json_line_per_change(served):
    from electiond.coord.backend import MemberEvent

    proc = subprocess.Popen([sys.executable, "-m", "electiond.cli", "--socket", served.server.path, "members",
                             "--watch"], stdout=subprocess.PIPE, text=True, env=dict(os.environ, PYTHONPATH=str(REPO)),
                            cwd=str(REPO))
    try:
        first = json.loads(readline_within(proc.stdout, 15, "members --watch"))
        assert first["node"] == "n1" and first["change"] == "joined"
        served.backend.member_events.append(MemberEvent(2, "n2", "joined", ("n1", "n2")))
        served.backend.member_events.append(MemberEvent(3, "n1", "left", ("n2",)))
        assert json.loads(readline_within(proc.stdout, 15, "members --watch"))["version"] == 2
        assert json.loads(readline_within(proc.stdout, 15, "members --watch")) == {"version": 3, "node": "n1", "change": "left",
                                                      "members": ["n2"], "suspected": []}
    finally:
        proc.terminate()
        proc.wait(5)


def test_barrier_counts_only_live_participants(served):
    # one participant enters and dies: it must not count for the others
    dying = subprocess.Popen([sys.executable, "-m", "electiond.cli", "--socket", served.server.path, "barrier", "b",
                              "--count", "2", "--participant", "dies"], env=dict(os.environ, PYTHONPATH=str(REPO)),
                             cwd=str(REPO))
    for _ in range(100):
        if served.backend.barriers.get("b"):
            break
        time.sleep(0.05)
    dying.kill()
    dying.wait()
    for _ in range(100):
        if not served.backend.barriers.get("b"):
            break
        time.sleep(0.05)
    assert served.backend.barriers["b"] == set(), "a dead participant is still counted"
    results = []
    threads = [threading.Thread(target=lambda p=p: results.append(
        ctl(served, "barrier", "b", "--count", "2", "--timeout", "10s", "--participant", p))) for p in ("x", "y")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert [r.returncode for r in results] == [0, 0], [r.stderr for r in results]
    timed_out = ctl(served, "barrier", "c", "--count", "2", "--timeout", "300ms")
    assert timed_out.returncode == 75


def test_python_client_lock_and_async_client(served):
    c = clientmod.Client(served.server.path)
    with c.lock("reindex", ttl_s=2.0, wait_s=1.0, kill_grace_s=0.5) as holder:
        assert holder.token >= 1 and holder.valid()
        with pytest.raises(clientmod.CoordRefused) as refused:
            c.acquire("reindex", 2.0, 0.1)
        assert refused.value.code == "not_acquired"
        time.sleep(1.2)  # past a renewal
        assert holder.valid()
    assert "reindex" not in served.backend.locks

    async def use_async():
        a = clientmod.AsyncClient(served.server.path)
        async with a.lock("reindex", ttl_s=2.0) as h:
            token = h.token
        assert (await a.set("k", "v"))["value"] == "v"
        return token, (await a.get("k"))["value"]
    token, value = asyncio.run(use_async())
    assert token > holder.token and value == "v"


def test_without_a_backend_the_error_says_which_protocols_coordinate(tmp_path):
    with Served(str(tmp_path / "c.sock"), None) as s:
        r = ctl(s, "config", "get", "k")
        assert r.returncode == 4 and commands.NO_BACKEND in r.stderr
        with pytest.raises(clientmod.CoordRefused) as refused:
            clientmod.Client(s.server.path).get("k")
        assert refused.value.code == "unsupported"


def test_bad_arguments_are_bad_requests(served):
    c = clientmod.Client(served.server.path)
    for cmd, args in [("lock.acquire", {"name": ""}), ("lock.acquire", {"name": "x", "ttl_s": 0.1}),
                      ("lock.renew", {"name": "x", "token": "1"}), ("config.set", {"key": "k", "value": 3}),
                      ("barrier.enter", {"name": "b", "participant": "p", "count": 0})]:
        with pytest.raises(clientmod.CoordRefused) as refused:
            c.call(cmd, args)
        assert refused.value.code == "bad_request", (cmd, args)


def test_coordination_writes_need_root_or_admin_group():
    # the same rule as transfer: a script that can take a lock can stall every host's job
    assert commands.COORD_MUTATING <= control.MUTATING
    assert {"config.get", "config.watch", "members", "members.watch"}.isdisjoint(control.MUTATING)
    allowed, _ = control.may_mutate(65534, 65534, None)
    assert not allowed


def test_run_as_leader_stops_cmd_before_the_lease_ends(served, tmp_path):
    # the fake says "leader, valid for 3 s" forever: CMD runs; then the answer turns to not leader
    done = tmp_path / "done"
    r = ctl(served, "run-as-leader", "--kill-grace", "0.5s", "--", "sh", "-c", f"echo $$ > {done}; exit 3")
    assert r.returncode == 3 and done.exists()
    served.handle_orig = served.handle

    first_asked: list[float] = []

    def not_leader_later(name, args):
        if name == "is-leader":
            # counted from the first question, not from here: a loaded machine
            # may take over a second to start electionctl
            first_asked[:] = first_asked or [time.monotonic()]
            leading = time.monotonic() - first_asked[0] < 1.0
            return {"leader": leading, "node": "n1", "valid_for_ms": 3000.0 if leading else 0.0}
        return served.handle_orig(name, args)
    served.server._handler = not_leader_later
    started = time.monotonic()
    r = ctl(served, "run-as-leader", "--kill-grace", "0.5s", "--", "sleep", "30")
    assert r.returncode == 76, r.stderr
    assert time.monotonic() - started < 10
