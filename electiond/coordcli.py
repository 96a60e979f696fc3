"""electionctl's coordination commands: lock, run-as-leader, barrier,
members --watch, config.

Exit codes beyond electionctl's own (0-4): CMD's own exit status (128+N if
a signal ended it), EXIT_NOT_ACQUIRED (75) when a lock, a barrier or
leadership was not obtained within --wait/--timeout, EXIT_LOST (76) when
the lock or leadership was lost and CMD was stopped for it, and
EXIT_COMPACTED (77) when a watch asked for versions the backend no longer
keeps (never a silent gap).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import socket
import subprocess
import sys
import time
from typing import Any

from electiond.client import Client, ClientError, CoordRefused
from electiond.coord.supervise import (
    SuperviseError,
    check_lock_args,
    effective_ttl_s,
    holder_deadline_s,
    kill_at_s,
    leader_deadline_s,
    renew_at_s,
)

EXIT_NOT_ACQUIRED, EXIT_LOST, EXIT_COMPACTED = 75, 76, 77
COMMANDS = ("lock", "run-as-leader", "barrier", "config")
DEFAULT_KILL_GRACE_S = 2.0
DEFAULT_LEADER_GRACE_S = 1.0
ENDED_KILL_S = 0.1  # run-as-leader: SIGTERM to SIGKILL once the node already stopped leading
POLL_S = 0.1  # how often the supervisor looks at CMD, and run-as-leader at leadership
RETRY_S = 0.2
WATCH_RETRY_S = 0.5


def add_parsers(sub: Any, duration: Any) -> None:
    lock = sub.add_parser("lock", help="NAME [options] -- CMD ARGS...: run CMD while holding a cluster-wide lock "
                          "(it gets ELECTIOND_LOCK_TOKEN)")
    lock.add_argument("name")
    lock.add_argument("--ttl", type=duration, default=10.0, help="the lock's lease (default 10s)")
    lock.add_argument("--wait", type=duration, default=None, metavar="DURATION",
                      help="wait this long for the lock (default: do not wait)")
    lock.add_argument("--kill-grace", type=duration, default=None, metavar="DURATION",
                      help="SIGTERM this long before the lease could end; SIGKILL half-way (default 2s, at most "
                           "a quarter of --ttl)")
    leader = sub.add_parser("run-as-leader", help="[options] -- CMD ARGS...: run CMD while this node leads; stop it before its "
                            "leadership ends")
    leader.add_argument("--wait", type=duration, default=None, metavar="DURATION",
                        help="give up if not leader within this long (default: wait for ever)")
    leader.add_argument("--kill-grace", type=duration, default=None, metavar="DURATION",
                        help="SIGTERM this long before the leadership lease ends (default 1s, at most a third "
                             "of what the lease has left)")
    barrier = sub.add_parser("barrier", help="wait until COUNT participants entered (or, --leave, all left)")
    barrier.add_argument("name")
    barrier.add_argument("--count", type=int, default=None, help="participants to wait for")
    barrier.add_argument("--timeout", type=duration, default=60.0, help="how long (default 60s)")
    barrier.add_argument("--leave", action="store_true", help="double barrier: leave, wait until all left")
    barrier.add_argument("--participant", default=None,
                         help="who enters (default: host and parent pid, the same for enter and --leave)")
    config = sub.add_parser("config", help="versioned cluster-wide keys: get, set, cas, delete, watch")
    config.add_argument("action", choices=("get", "set", "cas", "delete", "watch"))
    config.add_argument("key")
    config.add_argument("value", nargs="?")
    config.add_argument("--version", type=int, default=None, help="cas: the version the key must be at (0: absent)")
    config.add_argument("--from", dest="from_version", type=int, default=0,
                        help="watch: changes with a version above this one (default: from the start)")


SUPERVISING = ("lock", "run-as-leader")


def split_command(argv: list[str]) -> tuple[list[str], list[str] | None]:
    """electionctl's own arguments, and CMD ARGS... after the first "--"
    (options of CMD must never be taken for electionctl's)."""
    if "--" not in argv:
        return argv, None
    at = argv.index("--")
    return argv[:at], argv[at + 1:]


def _command(args: argparse.Namespace) -> list[str]:
    cmd = list(getattr(args, "cmd", None) or [])
    if not cmd:
        raise UsageError(f"electionctl {args.command}: give the command after --")
    return cmd


class UsageError(Exception):
    pass


def run(args: argparse.Namespace, emit: Any, fail: Any) -> int:
    client = Client(args.socket)
    try:
        if args.command == "lock":
            return run_lock(client, args, fail)
        if args.command == "run-as-leader":
            return run_as_leader(client, args, fail)
        if args.command == "barrier":
            return run_barrier(client, args, emit, fail)
        if args.command == "members":
            return watch_members(client, args)
        return run_config(client, args, emit, fail)
    except (UsageError, SuperviseError) as exc:
        return fail(args.json, 4, str(exc), args.command)


def refusal_exit(exc: CoordRefused) -> int:
    return {"not_acquired": EXIT_NOT_ACQUIRED, "lock_lost": EXIT_LOST, "compacted": EXIT_COMPACTED,
            "permission": 3, "bad_request": 4,
            "unsupported": 4, "unavailable": 2}.get(exc.code or "", 1)


# ---- supervising CMD ---------------------------------------------------------------------


class CannotStart(Exception):
    pass


EXIT_CANNOT_START = 127  # as a shell says for a command it cannot run


def _start(cmd: list[str], env: dict[str, str]) -> subprocess.Popen:
    # its own process group: a stop reaches the shell's children too
    try:
        return subprocess.Popen(cmd, env={**os.environ, **env}, start_new_session=True)
    except OSError as exc:
        raise CannotStart(f"cannot run {cmd[0]}: {exc.strerror or exc}") from None


def _signal(proc: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def stop(proc: subprocess.Popen, kill_at: float) -> None:
    """SIGTERM now, SIGKILL at ``kill_at`` (monotonic); return once it is dead."""
    _signal(proc, signal.SIGTERM)
    while proc.poll() is None and time.monotonic() < kill_at:
        time.sleep(min(0.02, max(0.0, kill_at - time.monotonic())))
    if proc.poll() is None:
        _signal(proc, signal.SIGKILL)
        proc.wait()
    _signal(proc, signal.SIGKILL)  # whatever it left behind in its group


def _exit_status(code: int) -> int:
    return 128 - code if code < 0 else code


class _Interrupted(Exception):
    pass


def _on_signal(signum: int, frame: Any) -> None:
    raise _Interrupted(signum)


def run_lock(client: Client, args: argparse.Namespace, fail: Any) -> int:
    cmd = _command(args)
    if args.kill_grace is None:
        args.kill_grace = min(DEFAULT_KILL_GRACE_S, args.ttl / 4)
    check_lock_args(args.ttl, args.kill_grace, 1000.0)  # before taking the lock; again with the daemon's bound
    wait_s = args.wait or 0.0
    sent = time.monotonic()
    try:
        grant = client.acquire(args.name, args.ttl, wait_s, owner=f"{socket.gethostname()}:{os.getpid()}")
    except CoordRefused as exc:
        return fail(args.json, refusal_exit(exc), f"electionctl lock {args.name}: {exc}", "lock")
    except ClientError as exc:
        return fail(args.json, 2, f"electionctl: {exc}", "lock")
    drift = float(grant.get("clock_drift_ppm", 1000.0))
    token = int(grant["token"])
    try:
        check_lock_args(args.ttl, args.kill_grace, drift)  # the daemon's own drift bound may be wider
    except SuperviseError:
        _release_quietly(client, args.name, token)
        raise
    deadline = holder_deadline_s(sent, effective_ttl_s(args.ttl, float(grant["ttl_s"])), drift, args.kill_grace)
    next_renew = renew_at_s(sent, args.ttl)
    if time.monotonic() >= next_renew:
        # a long --wait: the deadline counted from the acquire's send is (nearly) gone, so
        # confirm the lease afresh, and count from this renewal's send, before CMD starts
        renew_sent = time.monotonic()
        try:
            r = client.renew(args.name, token, args.ttl, timeout_s=args.ttl / 3)
        except (CoordRefused, ClientError, OSError) as exc:
            return fail(args.json, EXIT_LOST, f"electionctl lock {args.name}: lost the lock (token {token}) before "
                        f"the command started: {exc}", "lock")
        deadline = holder_deadline_s(renew_sent, effective_ttl_s(args.ttl, float(r["ttl_s"])), drift,
                                     args.kill_grace)
        next_renew = renew_at_s(renew_sent, args.ttl)
    old = {s: signal.signal(s, _on_signal) for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)}
    proc = None
    lost = ""
    try:
        if time.monotonic() < deadline:
            proc = _start(cmd, {"ELECTIOND_LOCK_TOKEN": str(token), "ELECTIOND_LOCK_NAME": args.name})
        else:
            lost = "the lease was nearly over when the lock was granted"
        while proc is not None and proc.poll() is None and not lost:
            now = time.monotonic()
            if now >= deadline:
                lost = "no renewal confirmed before the holder's deadline"
                break
            if now >= next_renew:
                renew_sent = time.monotonic()
                try:
                    r = client.renew(args.name, token, args.ttl, timeout_s=max(0.05, deadline - renew_sent))
                except CoordRefused as exc:
                    if exc.code == "lock_lost":
                        lost = str(exc)
                        break
                    next_renew = now + RETRY_S
                except (ClientError, OSError):
                    next_renew = now + RETRY_S  # the daemon may be restarting: retry until the deadline
                else:
                    deadline = holder_deadline_s(renew_sent, effective_ttl_s(args.ttl, float(r["ttl_s"])), drift,
                                                 args.kill_grace)
                    next_renew = renew_at_s(renew_sent, args.ttl)
            wake = min(next_renew, deadline, time.monotonic() + POLL_S)
            try:
                proc.wait(max(0.0, wake - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
        if proc is not None and proc.poll() is None:
            stop(proc, kill_at_s(min(deadline, time.monotonic()), args.kill_grace))
    except _Interrupted:
        if proc is not None and proc.poll() is None:
            stop(proc, kill_at_s(min(deadline, time.monotonic()), args.kill_grace))
        lost = lost or "interrupted"
    except CannotStart as exc:
        _release_quietly(client, args.name, token)
        return fail(args.json, EXIT_CANNOT_START, f"electionctl lock {args.name}: {exc}", "lock")
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)
    if not lost or lost == "interrupted":
        _release_quietly(client, args.name, token)
    if lost == "interrupted":
        return 128 + signal.SIGTERM
    if lost:
        return fail(args.json, EXIT_LOST, f"electionctl lock {args.name}: lost the lock (token {token}): {lost}; "
                    "the command was stopped", "lock")
    assert proc is not None
    return _exit_status(proc.returncode)


def _release_quietly(client: Client, name: str, token: int) -> None:
    try:
        client.release(name, token)
    except (CoordRefused, ClientError, OSError):
        pass  # its lease runs out by itself


# what a voluntary hand-over waits for at most, announced when registering:
# one poll to notice the demotion, ENDED_KILL_S to SIGKILL, and slack to reap and hang up
SUPERVISE_STOP_WITHIN_S = POLL_S + ENDED_KILL_S + 0.4


def _register(client: Client) -> socket.socket | None:
    """Register with the daemon (``leader.supervise``) so that a voluntary
    hand-over waits until we hang up, which we do once CMD is dead. None if
    the daemon refuses (an older one, or no admin rights): run unregistered."""
    try:
        sock = client._connect(client.timeout_s)
    except ClientError:
        return None
    try:
        sock.sendall((json.dumps({"cmd": "leader.supervise",
                                  "args": {"stop_within_s": SUPERVISE_STOP_WITHIN_S}}) + "\n").encode())
        reply = json.loads(sock.makefile("rb").readline(65536) or b"{}")
    except (OSError, ValueError):
        reply = {}
    if not isinstance(reply, dict) or not reply.get("ok"):
        sock.close()
        error = reply.get("error") if isinstance(reply, dict) else None
        print(f"electionctl run-as-leader: not registered with the daemon ({error or 'no answer'}): a voluntary "
              "hand-over will not wait for CMD", file=sys.stderr)
        return None
    return sock


def _leadership(client: Client) -> tuple[bool, float | None, float]:
    asked = time.monotonic()
    answer = client.call("is-leader", timeout_s=1.0)
    valid_ms = answer.get("valid_for_ms")
    return bool(answer.get("leader")), None if valid_ms is None else valid_ms / 1000.0, asked


def run_as_leader(client: Client, args: argparse.Namespace, fail: Any) -> int:
    cmd = _command(args)
    give_up = time.monotonic() + args.wait if args.wait else math.inf
    old = {s: signal.signal(s, _on_signal) for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)}
    proc = None
    registered: socket.socket | None = None
    try:
        deadline = -math.inf
        grace = args.kill_grace or DEFAULT_LEADER_GRACE_S
        while True:
            try:
                leading, valid_s, asked = _leadership(client)
            except (ClientError, CoordRefused, OSError):
                leading, valid_s, asked = False, None, time.monotonic()
            if leading:
                grace = args.kill_grace
                if grace is None:  # quorum-lease's lease is 150 ms by default: the grace must fit in it
                    grace = DEFAULT_LEADER_GRACE_S if valid_s is None else min(DEFAULT_LEADER_GRACE_S, valid_s / 3)
                deadline = leader_deadline_s(asked, valid_s, grace)
            elif proc is None:
                deadline = -math.inf
            if proc is None:
                if leading and time.monotonic() < deadline:
                    if registered is None:
                        registered = _register(client)
                    proc = _start(cmd, {"ELECTIOND_LEADER_SINCE": str(time.time())})
                elif time.monotonic() >= give_up:
                    return fail(args.json, EXIT_NOT_ACQUIRED, f"electionctl: not leader within {args.wait:g}s",
                                "run-as-leader")
            else:
                if proc.poll() is not None:
                    return _exit_status(proc.returncode)
                if not leading or time.monotonic() >= deadline:
                    # leadership already over (a hand-over: the daemon waits for our hang-up, for at
                    # most SUPERVISE_STOP_WITHIN_S): kill soon; at the deadline: the usual grace
                    kill_at = time.monotonic() + ENDED_KILL_S if not leading else kill_at_s(deadline, grace)
                    stop(proc, kill_at)
                    return fail(args.json, EXIT_LOST, "electionctl run-as-leader: leadership ended; the command "
                                "was stopped", "run-as-leader")
            # a short lease (quorum-lease) is looked at often enough to renew the deadline in time
            poll_s = POLL_S if not leading or not valid_s else max(0.01, min(POLL_S, valid_s / 4))
            wake = min(time.monotonic() + poll_s, deadline if proc is not None else math.inf)
            if proc is not None:
                try:
                    proc.wait(max(0.0, wake - time.monotonic()))
                except subprocess.TimeoutExpired:
                    pass
            else:
                time.sleep(poll_s)
    except _Interrupted:
        if proc is not None and proc.poll() is None:
            stop(proc, time.monotonic() + grace / 2)
        return 128 + signal.SIGTERM
    except CannotStart as exc:
        return fail(args.json, EXIT_CANNOT_START, f"electionctl run-as-leader: {exc}", "run-as-leader")
    finally:
        if registered is not None:
            registered.close()  # CMD is dead (every path above waited for it): the hand-over may go on
        for s, handler in old.items():
            signal.signal(s, handler)


# ---- barrier, members, config ------------------------------------------------------------


def run_barrier(client: Client, args: argparse.Namespace, emit: Any, fail: Any) -> int:
    who = args.participant or f"{socket.gethostname()}-{os.getppid()}"
    try:
        if args.leave:
            client.barrier_leave(args.name, args.timeout, participant=who)
            emit(args, {"name": args.name, "left": True}, f"all left barrier {args.name}")
            return 0
        if args.count is None or args.count < 1:
            raise UsageError("electionctl barrier: --count N (at least 1) is needed to enter")
        count = client.barrier(args.name, args.count, args.timeout, participant=who)
    except CoordRefused as exc:
        return fail(args.json, refusal_exit(exc), f"electionctl barrier {args.name}: {exc}", "barrier")
    except ClientError as exc:
        return fail(args.json, 2, f"electionctl: {exc}", "barrier")
    emit(args, {"name": args.name, "count": count}, f"{count} entered barrier {args.name}")
    return 0


def _watch(client: Client, cmd: str, call_args: dict[str, Any], version_field: str = "version") -> int:
    """Print each event as one JSON line; reconnect from the last version seen."""
    last = int(call_args.get("from_version", 0))
    while True:
        try:
            for event in client.stream(cmd, {**call_args, "from_version": last}):
                print(json.dumps(event), flush=True)
                last = max(last, int(event.get(version_field, last)))
        except CoordRefused as exc:
            if exc.code not in ("unavailable", None):
                print(f"electionctl: {exc}", file=sys.stderr)
                return refusal_exit(exc)
        except ClientError:
            pass  # the daemon restarts: come back and go on from where we were
        time.sleep(WATCH_RETRY_S)


def watch_members(client: Client, args: argparse.Namespace) -> int:
    return _watch(client, "members.watch", {"from_version": 0})


def run_config(client: Client, args: argparse.Namespace, emit: Any, fail: Any) -> int:
    action, key = args.action, args.key
    if action in ("set", "cas") and args.value is None:
        raise UsageError(f"electionctl config {action}: give KEY and VALUE")
    if action == "cas" and args.version is None:
        raise UsageError("electionctl config cas: --version V is needed (0: only if absent)")
    if action not in ("set", "cas") and args.value is not None:
        raise UsageError(f"electionctl config {action}: takes no VALUE")
    try:
        if action == "watch":
            return _watch(client, "config.watch", {"key": key, "from_version": args.from_version})
        if action == "get":
            entry = client.get(key)
            if entry["value"] is None:
                return fail(args.json, 1, f"electionctl config get: {key} is not set", "config")
            emit(args, entry, entry["value"])
            return 0
        if action == "set":
            entry = client.set(key, args.value)
        elif action == "cas":
            entry = client.cas(key, args.value, args.version)
        else:
            entry = client.delete(key)
    except CoordRefused as exc:
        return fail(args.json, refusal_exit(exc), f"electionctl config {action} {key}: {exc}", "config")
    except ClientError as exc:
        return fail(args.json, 2, f"electionctl: {exc}", "config")
    emit(args, entry, str(entry["version"]))
    return 0
