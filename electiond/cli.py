"""electionctl: ask the local electiond over its control socket.

Exit codes: 0 success (for is-leader: this node leads), 1 a negative answer or
a refused command, 2 the daemon cannot be reached or answered nonsense, 3
permission denied (a mutating command from neither root nor [control]
admin_group), 4 a bad request (a usage error, an unknown node); lock,
barrier and run-as-leader add 75 (not obtained in time) and 76 (lost: CMD
was stopped), or exit with CMD's own status (coordcli.py); config watch and
members --watch add 77 (the versions asked for have been compacted). With
--json, every answer and every error is one JSON object on stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import time
from typing import Any

from electiond import coordcli

DEFAULT_SOCKET = "/run/electiond/control.sock"
EXIT_OK, EXIT_NO, EXIT_UNREACHABLE, EXIT_PERMISSION, EXIT_BAD_REQUEST = 0, 1, 2, 3, 4
# the daemon's "code" of a refusal -> the exit code
REFUSAL_EXITS = {"permission": EXIT_PERMISSION, "bad_request": EXIT_BAD_REQUEST}


class Unreachable(Exception):
    pass


class Refused(Exception):
    def __init__(self, message: str, code: str | None = None) -> None:
        super().__init__(message)
        self.code = code


class UsageError(Exception):
    pass


def request(path: str, cmd: str, args: dict[str, Any] | None = None, timeout_s: float = 5.0) -> Any:
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout_s)
            sock.connect(path)
            try:
                sock.sendall(json.dumps({"cmd": cmd, "args": args or {}}).encode() + b"\n")
            except (BrokenPipeError, ConnectionResetError):
                pass  # a daemon refusing us may close first; its one-line reason is still there to read
            data = b""
            while not data.endswith(b"\n"):
                try:
                    chunk = sock.recv(65536)
                except ConnectionResetError:
                    break
                if not chunk:
                    break
                data += chunk
    except FileNotFoundError:
        raise Unreachable(f"no daemon socket at {path} (is electiond running?)") from None
    except PermissionError:
        raise Unreachable(f"permission denied on {path} (run as root or a member of the socket's group)") from None
    except ConnectionRefusedError:
        raise Unreachable(f"connection refused on {path} (stale socket: is electiond running?)") from None
    except socket.timeout:
        raise Unreachable(f"no answer from {path} within {timeout_s:g}s") from None
    except OSError as exc:
        raise Unreachable(f"cannot talk to {path}: {exc.strerror or exc}") from None
    if not data:
        raise Unreachable(f"{path}: the daemon closed the connection without answering "
                          "(overloaded or out of file descriptors? see its log)")
    try:
        reply = json.loads(data)
        ok = reply["ok"]
    except (ValueError, KeyError, TypeError):
        raise Unreachable(f"bad reply from {path}: {data[:200]!r}") from None
    if not ok and reply.get("code") == "busy":
        # not an answer to the command: the daemon did not take the request at all
        raise Unreachable(f"{path}: daemon busy: {reply.get('error', 'too many connections')}")
    if not ok:
        raise Refused(reply.get("error", "refused"), reply.get("code"))
    return reply.get("result")


def _fmt_ms(value: float | None) -> str:
    if value is None:
        return "never"
    return f"{value / 1000:.1f}s" if value >= 10_000 else f"{value:.0f}ms"


def parse_duration_s(text: str) -> float:
    """'30', '30s', '500ms', '2m' -> seconds (a bare number is seconds)."""
    text = text.strip()
    for unit, scale in (("ms", 0.001), ("s", 1.0), ("m", 60.0)):
        if text.endswith(unit):
            number, factor = text[: -len(unit)], scale
            break
    else:
        number, factor = text, 1.0
    try:
        value = float(number) * factor
    except ValueError:
        raise argparse.ArgumentTypeError(f"bad duration {text!r} (e.g. 30s, 500ms, 2m)") from None
    if not 0 < value <= 3600:
        raise argparse.ArgumentTypeError(f"duration {text!r} must be above 0 and at most 1h")
    return value


def print_status(status: dict[str, Any]) -> None:
    auth = "yes" if status.get("authenticated") else "NO (no key_file)"
    if status.get("signing_key"):
        auth += f" (key {status['signing_key']})"
    role = status["role"] + (", WITNESS: votes, never leads" if status.get("witness") else "") \
        + (", PAUSED" if status.get("paused") else "")
    print(f"node      {status['node']} ({role})")
    print(f"cluster   {status['cluster']}  protocol {status['protocol']}  authenticated {auth}")
    print(f"leader    {status['leader'] or '-'}  term {status['term']}")
    for blocker, detail in (status.get("blocked_by") or {}).items():
        # the start-up clock check is a wait, not a fault
        label = {"paused": "PAUSED", "clock_check": "WAITING"}.get(blocker, "FAULT")
        print(f"{label:<9} {blocker}: {detail}")
    if status.get("flapping"):
        print(f"WARNING   {status['leader_changes_last_hour']} leadership changes in the last hour "
              f"(above max_changes_per_hour = {status.get('max_changes_per_hour', 2)})")
    disk = status.get("disk") or {}
    if disk.get("ok") is False:
        print(f"DISK      state writes failing ({disk['error']}; {disk['failures']} failed, retry in "
              f"{_fmt_ms(disk['retry_in_ms'])}): not voting or standing")
    clock = status.get("clock") or {}
    if clock and not clock.get("ok", True):
        print(f"CLOCK     {status.get('blocked_by', {}).get('clock', 'beyond its bound')}")
    elif clock.get("beyond"):
        rates = clock.get("rate_vs_peers", {})
        print("clock     beyond the bound: " + ", ".join(
            f"{n} (ours x{rates[n]:.4f} of its)" if n in rates else n for n in clock["beyond"]))
    etcd = status.get("etcd")
    if etcd:
        lease = f"lease {etcd['lease_id']} {etcd['lease_remaining_ms'] / 1000:.1f}s left" if etcd["lease_id"] else "no lease"
        print(f"etcd      {lease}; revision {etcd['revision']}; watch {etcd['watch']}; "
              f"queue {', '.join(etcd['queue']) or '-'}")
        for ep in status.get("etcd_endpoints") or []:
            state = {True: "ok", False: "FAILING", None: "not tried"}[ep["healthy"]]
            print(f"endpoint  {ep['endpoint']}: {state}{' (current)' if ep['current'] else ''} "
                  f"{ep.get('last_error') or ''}".rstrip())
    for check in status.get("health") or []:
        state = {True: "ok", False: "FAILING", None: "unknown"}[check["healthy"]]
        print(f"health    {check['kind']} {check['name']}: {state} {check.get('detail') or ''}".rstrip())
    print()
    print_members(status["members"], status)
    dropped = {k: v for k, v in status.get("dropped", {}).items() if v and k != "self"}
    if dropped:
        print()
        print("dropped   " + ", ".join(f"{k}={v}" for k, v in sorted(dropped.items())))


def member_role(m: dict[str, Any], status: dict[str, Any] | None) -> str:
    """What a member is, as this node knows it: leader, paused, fault, witness."""
    flags = []
    if status is not None and status.get("leader") == m["name"]:
        flags.append("leader")
    if m.get("paused"):
        flags.append("paused")
    if m.get("fault"):
        flags.append("fault")
    if m.get("witness"):
        flags.append("witness")
    return ",".join(flags) or "-"


def print_members(members: list[dict[str, Any]], status: dict[str, Any] | None = None) -> None:
    print(f"{'NAME':<16} {'ID':>4}  {'ALIVE':<5}  {'ROLE':<14} {'LAST SEEN':>9}  {'PHI':>6}  {'TIMEOUT':>8}")
    leader = status.get("leader") if status else None
    for m in members:
        alive = "self" if m.get("self") else ("yes" if m["alive"] else "DEAD")
        seen = "-" if m.get("self") else _fmt_ms(m["last_seen_ms"])
        watch = m.get("suspicion") or {}
        if status is not None and m["name"] == leader and status.get("leader_watch"):
            # the leader is watched by its heartbeats: that timeout decides a failover
            watch = status["leader_watch"]
        phi = f"{watch['phi']:.1f}" if "phi" in watch else "-"
        timeout = _fmt_ms(watch["timeout_ms"]) if "timeout_ms" in watch else "-"
        flag = "  DUPLICATE NAME: two processes use it" if m.get("duplicate") else ""
        print(f"{m['name']:<16} {m['id']:>4}  {alive:<5}  {member_role(m, status):<14} {seen:>9}  {phi:>6}  "
              f"{timeout:>8}{flag}")


def print_history(entries: list[dict[str, Any]]) -> None:
    for e in entries:
        detail = " ".join(f"{k}={v}" for k, v in e.items()
                          if k not in ("at", "ago_s", "event", "term") and not (k in ("error", "timed_out") and not v))
        at = e.get("at") or f"{e['ago_s']:.3f}s ago"
        print(f"{at}  term {e['term']:<5} {e['event']:<16} {detail}".rstrip())


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(f"{self.prog}: {message}")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="electionctl", description="Query and steer the local electiond.")
    parser.add_argument("--socket", default=os.environ.get("ELECTIOND_SOCKET", DEFAULT_SOCKET),
                        help=f"control socket (default {DEFAULT_SOCKET}, or $ELECTIOND_SOCKET)")
    parser.add_argument("--json", action="store_true", help="print one JSON object (answers and errors alike)")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    sub.add_parser("status", help="role, leader, term and members")
    members = sub.add_parser("members", help="the member table")
    members.add_argument("--watch", action="store_true",
                         help="one JSON line per membership change (needs protocol = quorum-lease or etcd)")
    sub.add_parser("history", help="recent leadership changes and hook runs, with wall-clock times")
    sub.add_parser("metrics", help="Prometheus text format")
    sub.add_parser("is-leader", help="exit 0 only on the leader (for `electionctl is-leader && job`)")
    wait = sub.add_parser("wait-leader", help="wait until the cluster has a leader; print it")
    wait.add_argument("--timeout", type=parse_duration_s, default=30.0, help="how long (default 30s)")
    transfer = sub.add_parser("transfer", help="hand leadership over; it sticks (no preemption back)")
    transfer.add_argument("node", nargs="?", help="target member (default: the best live one)")
    stepdown = sub.add_parser("stepdown", help="give up leadership; it sticks (no preemption back)")
    for p in (transfer, stepdown):
        p.add_argument("--wait", nargs="?", type=parse_duration_s, const=30.0, default=None, metavar="DURATION",
                       help="return once the new leader ran its promote hooks (default 30s); non-zero if not")
    pause = sub.add_parser("pause", help="maintenance: never stand; a leader hands over first")
    pause.add_argument("--wait", type=parse_duration_s, default=10.0, metavar="DURATION",
                       help="how long a leader waits for a successor (default 10s)")
    sub.add_parser("resume", help="end maintenance (and clear a promote-hook FAULT)")
    coordcli.add_parsers(sub, parse_duration_s)
    for name in sub.choices:
        sub.choices[name].add_argument("--json", action="store_true", default=argparse.SUPPRESS)
    return parser


def main(argv: list[str] | None = None) -> int:
    json_wanted = "--json" in (sys.argv[1:] if argv is None else argv)
    code = EXIT_OK
    try:
        try:
            own, cmd = coordcli.split_command(list(sys.argv[1:] if argv is None else argv))
            args = build_parser().parse_args(own)
            if args.command in coordcli.SUPERVISING:
                args.cmd = cmd
            elif cmd is not None:  # "--" meant for argparse itself (a config value starting with "-")
                args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
        except UsageError as exc:
            return _fail(json_wanted, EXIT_BAD_REQUEST, str(exc), None)
        try:
            code = _run(args)
        except Unreachable as exc:
            code = _fail(args.json, EXIT_UNREACHABLE, f"electionctl: {exc}", args.command)
        except Refused as exc:
            code = _fail(args.json, REFUSAL_EXITS.get(exc.code or "", EXIT_NO), f"electionctl: {args.command}: {exc}",
                         args.command)
        sys.stdout.flush()
    except BrokenPipeError:
        # `electionctl status | head -3`: the reader left; say nothing more
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    return code


def _fail(as_json: bool, code: int, message: str, command: str | None) -> int:
    if as_json:
        print(json.dumps({"ok": False, "command": command, "error": message, "exit_code": code}))
    else:
        print(message, file=sys.stderr)
    return code


def _emit(args: argparse.Namespace, obj: Any, human: str | None) -> None:
    if args.json:
        print(json.dumps(obj, indent=2))
    elif human is not None:
        print(human)


def _run(args: argparse.Namespace) -> int:
    path = args.socket
    if args.command in coordcli.COMMANDS or (args.command == "members" and args.watch):
        return coordcli.run(args, _emit, _fail)
    if args.command in ("status", "members"):
        status = request(path, "status")
        if args.json:
            _emit(args, status if args.command == "status" else {"members": status["members"]}, None)
        elif args.command == "status":
            print_status(status)
        else:
            print_members(status["members"], status)
        return EXIT_OK
    if args.command == "history":
        entries = request(path, "history")
        _emit(args, {"history": entries}, None) if args.json else print_history(entries)
        return EXIT_OK
    if args.command == "metrics":
        text = request(path, "metrics")
        if args.json:
            _emit(args, {"metrics": text}, None)
        else:
            sys.stdout.write(text)
        return EXIT_OK
    if args.command == "is-leader":
        answer = request(path, "is-leader")
        _emit(args, answer, None)
        return EXIT_OK if answer["leader"] else EXIT_NO
    if args.command == "wait-leader":
        deadline = time.monotonic() + args.timeout
        while True:
            status = request(path, "status")
            if status["leader"]:
                _emit(args, {"leader": status["leader"], "term": status["term"]}, status["leader"])
                return EXIT_OK
            if time.monotonic() >= deadline:
                return _fail(args.json, EXIT_NO, f"electionctl: no leader within {args.timeout:g}s", args.command)
            time.sleep(0.05)
    if args.command in ("transfer", "stepdown"):
        call_args: dict[str, Any] = {}
        if args.command == "transfer":
            call_args["target"] = args.node
        if args.wait is not None:
            call_args["wait_s"] = args.wait
        result = request(path, args.command, call_args, timeout_s=5.0 + (args.wait or 0.0))
        if "done" in result:
            human = f"{result['leader']} leads and ran its promote hooks (term {result['served_term']})"
        else:
            verb = "stepped down" if args.command == "stepdown" else "handed over"
            to = ""
            if result.get("target"):
                to = f", handing over to {result['target']}" if args.command == "stepdown" else f" to {result['target']}"
            human = f"{verb}{to} (was leader of term {result['term']}); the new leader may still be starting"
        _emit(args, result, human)
        return EXIT_OK
    if args.command == "pause":
        result = request(path, "pause", {"wait_s": args.wait}, timeout_s=5.0 + args.wait)
        if result.get("warning"):
            human = f"paused; {result['warning']}"
        elif result.get("was_leader"):
            human = f"paused; handed over to {result['leader']}"
        else:
            human = "paused; this node will not stand for election until electionctl resume"
        _emit(args, result, human)
        return EXIT_NO if result.get("warning") else EXIT_OK
    if args.command == "resume":
        result = request(path, "resume")
        _emit(args, result, "resumed" if result["was_paused"] else "not paused; promote-hook failures cleared")
        return EXIT_OK
    raise AssertionError(args.command)


if __name__ == "__main__":
    sys.exit(main())
