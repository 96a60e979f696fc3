"""electionctl: ask the local electiond over its control socket.

Exit codes: 0 success (for is-leader: this node leads), 1 a negative answer or
a refused command, 2 the daemon cannot be reached or answered nonsense.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import time
from typing import Any

DEFAULT_SOCKET = "/run/electiond/control.sock"
EXIT_OK, EXIT_NO, EXIT_UNREACHABLE = 0, 1, 2


class Unreachable(Exception):
    pass


class Refused(Exception):
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
        raise Refused(reply.get("error", "refused"))
    return reply.get("result")


def _fmt_ms(value: float | None) -> str:
    return "never" if value is None else f"{value:.0f}ms"


def print_status(status: dict[str, Any]) -> None:
    auth = "yes" if status.get("authenticated") else "NO (no key_file)"
    if status.get("signing_key"):
        auth += f" (key {status['signing_key']})"
    print(f"node      {status['node']} ({status['role']})")
    print(f"cluster   {status['cluster']}  protocol {status['protocol']}  authenticated {auth}")
    print(f"leader    {status['leader'] or '-'}  term {status['term']}")
    for blocker, detail in (status.get("blocked_by") or {}).items():
        # the start-up clock check is a wait, not a fault
        label = "WAITING" if blocker == "clock_check" else "FAULT"
        print(f"{label:<9} {blocker}: {detail}")
    if status.get("flapping"):
        print(f"WARNING   {status['leader_changes_last_hour']} leadership changes in the last hour")
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
    for check in status.get("health") or []:
        state = {True: "ok", False: "FAILING", None: "unknown"}[check["healthy"]]
        print(f"health    {check['kind']} {check['name']}: {state} {check.get('detail') or ''}".rstrip())
    print()
    print_members(status["members"])
    dropped = {k: v for k, v in status.get("dropped", {}).items() if v and k != "self"}
    if dropped:
        print()
        print("dropped   " + ", ".join(f"{k}={v}" for k, v in sorted(dropped.items())))


def print_members(members: list[dict[str, Any]]) -> None:
    print(f"{'NAME':<16} {'ID':>4}  {'ALIVE':<5}  {'LAST SEEN':>9}  {'PHI':>6}  {'TIMEOUT':>8}")
    for m in members:
        alive = "self" if m.get("self") else ("yes" if m["alive"] else "no")
        seen = "-" if m.get("self") else _fmt_ms(m["last_seen_ms"])
        watch = m.get("suspicion") or {}
        phi = f"{watch['phi']:.1f}" if "phi" in watch else "-"
        timeout = f"{watch['timeout_ms']:.0f}ms" if "timeout_ms" in watch else "-"
        flag = "  DUPLICATE NAME: two processes use it" if m.get("duplicate") else ""
        print(f"{m['name']:<16} {m['id']:>4}  {alive:<5}  {seen:>9}  {phi:>6}  {timeout:>8}{flag}")


def print_history(entries: list[dict[str, Any]]) -> None:
    for e in entries:
        detail = " ".join(f"{k}={v}" for k, v in e.items()
                          if k not in ("ago_s", "event", "term") and not (k == "error" and v is None))
        print(f"{e['ago_s']:>10.3f}s ago  term {e['term']:<5} {e['event']:<12} {detail}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="electionctl", description="Query and steer the local electiond.")
    parser.add_argument("--socket", default=os.environ.get("ELECTIOND_SOCKET", DEFAULT_SOCKET),
                        help=f"control socket (default {DEFAULT_SOCKET}, or $ELECTIOND_SOCKET)")
    parser.add_argument("--json", action="store_true", help="print machine-readable JSON")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("status", help="role, leader, term and members")
    sub.add_parser("members", help="the member table")
    sub.add_parser("history", help="recent leadership changes and hook runs")
    sub.add_parser("is-leader", help="exit 0 only on the leader (for `electionctl is-leader && job`)")
    wait = sub.add_parser("wait-leader", help="wait until the cluster has a leader; print it")
    wait.add_argument("--timeout", type=float, default=30.0, help="seconds (default 30)")
    transfer = sub.add_parser("transfer", help="hand leadership over (quorum-lease)")
    transfer.add_argument("node", nargs="?", help="target member (default: the best live one)")
    sub.add_parser("stepdown", help="give up leadership")
    for name in ("status", "members", "history"):
        sub.choices[name].add_argument("--json", action="store_true", default=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    try:
        return _run(args)
    except Unreachable as exc:
        print(f"electionctl: {exc}", file=sys.stderr)
        return EXIT_UNREACHABLE
    except Refused as exc:
        print(f"electionctl: {args.command}: {exc}", file=sys.stderr)
        return EXIT_NO


def _run(args: argparse.Namespace) -> int:
    path = args.socket
    if args.command in ("status", "members"):
        status = request(path, "status")
        if args.json:
            print(json.dumps(status if args.command == "status" else status["members"], indent=2))
        elif args.command == "status":
            print_status(status)
        else:
            print_members(status["members"])
        return EXIT_OK
    if args.command == "history":
        entries = request(path, "history")
        print(json.dumps(entries, indent=2)) if args.json else print_history(entries)
        return EXIT_OK
    if args.command == "is-leader":
        answer = request(path, "is-leader")
        if args.json:
            print(json.dumps(answer))
        return EXIT_OK if answer["leader"] else EXIT_NO
    if args.command == "wait-leader":
        deadline = time.monotonic() + args.timeout
        while True:
            status = request(path, "status")
            if status["leader"]:
                print(json.dumps({"leader": status["leader"], "term": status["term"]}) if args.json
                      else status["leader"])
                return EXIT_OK
            if time.monotonic() >= deadline:
                print(f"electionctl: no leader within {args.timeout:g}s", file=sys.stderr)
                return EXIT_NO
            time.sleep(0.05)
    if args.command == "transfer":
        request(path, "transfer", {"target": args.node})
        return EXIT_OK
    if args.command == "stepdown":
        request(path, "stepdown")
        return EXIT_OK
    raise AssertionError(args.command)


if __name__ == "__main__":
    sys.exit(main())
