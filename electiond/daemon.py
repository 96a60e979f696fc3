"""electiond entry point: config, logging, sd_notify, signals, the event loop."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import socket
import sys

from electiond import __version__, config as configmod
from electiond.control import ControlServer
from electiond.net import NetError
from electiond.state import StateError

EX_CONFIG = 78  # sysexits.h: systemd's RestartPreventExitStatus keeps it from looping
EX_UNAVAILABLE = 69

log = logging.getLogger("electiond")


def sd_notify(message: str) -> bool:
    """The sd_notify protocol, spoken directly: one datagram to $NOTIFY_SOCKET."""
    path = os.environ.get("NOTIFY_SOCKET")
    if not path:
        return False
    if path.startswith("@"):
        path = "\0" + path[1:]  # abstract namespace
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.connect(path)
            sock.sendall(message.encode())
        return True
    except OSError as exc:
        log.debug("sd_notify failed: %s", exc)
        return False


def watchdog_interval_s() -> float | None:
    """Half of WatchdogSec, when systemd asked for pings from this very process."""
    usec = os.environ.get("WATCHDOG_USEC")
    pid = os.environ.get("WATCHDOG_PID")
    if not usec or (pid and pid != str(os.getpid())):
        return None
    try:
        return int(usec) / 2e6
    except ValueError:
        return None


def setup_logging(level: str) -> None:
    root = logging.getLogger()
    root.handlers.clear()
    root.setLevel(level.upper())
    handler: logging.Handler
    if os.environ.get("JOURNAL_STREAM") or os.environ.get("INVOCATION_ID"):
        try:
            from systemd.journal import JournalHandler

            handler = JournalHandler(SYSLOG_IDENTIFIER="electiond")
        except ImportError:
            handler = logging.StreamHandler(sys.stderr)
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
    root.addHandler(handler)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="electiond", description="Leader election daemon for a LAN.")
    parser.add_argument("--config", default=configmod.DEFAULT_PATH, help="config file (default %(default)s)")
    parser.add_argument("--node", help="this node's name (overrides [node] name)")
    parser.add_argument("--check-config", action="store_true", help="validate the config and exit")
    parser.add_argument("--cleanup", action="store_true",
                        help="run the demote hooks once and exit (systemd ExecStopPost after a crash)")
    parser.add_argument("--gen-key", metavar="PATH",
                        help="write a new key file (mode 0600; never overwrites) and exit")
    parser.add_argument("--add", action="store_true",
                        help="with --gen-key: append a new key to the existing file PATH as its last line "
                             "(accepted at once, used for sending once moved first: see README, key rotation)")
    parser.add_argument("--key-id", help="with --gen-key: the new key's id (default: k + UTC time)")
    parser.add_argument("--version", action="version", version=f"electiond {__version__}")
    return parser.parse_args(argv)


async def serve(cfg: configmod.Config) -> int:
    from electiond.runtime import Runtime

    runtime = Runtime(cfg, on_status=lambda line: sd_notify(f"STATUS={line}"))
    await runtime.start()
    control = ControlServer(cfg.control_socket, cfg.control_socket_mode, runtime.command)
    await control.start()
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    loop.add_signal_handler(signal.SIGHUP, lambda: runtime.reload(cfg.path))
    watchdog_s = watchdog_interval_s()
    if watchdog_s:
        def ping() -> None:
            sd_notify("WATCHDOG=1")
            loop.call_later(watchdog_s, ping)
        ping()
    sd_notify("READY=1")
    await stop.wait()
    log.info("stopping")
    sd_notify("STOPPING=1")
    await runtime.stop()
    await control.stop()
    return 0


def cleanup(cfg: configmod.Config) -> int:
    """After the daemon died without demoting, give up what it may have held."""
    from electiond.hooks import Transition
    from electiond.runtime import make_hook_runner
    from electiond.state import StateStore

    service_result = os.environ.get("SERVICE_RESULT")
    if service_result == "success":
        log.info("clean stop: the daemon already ran its demote hooks")
        return 0
    try:
        persisted = StateStore(cfg.state_directory).load()
        term_number = persisted.term if persisted else 0
    except StateError:
        term_number = 0
    failures: list[object] = []

    async def run() -> None:
        runner = make_hook_runner(cfg, lambda result: None if result.ok else failures.append(result))
        runner.submit(Transition("demote", term_number, None, None, "crash" if service_result else "cleanup"))
        await runner.close()

    asyncio.run(run())
    return 1 if failures else 0


def gen_key(path: str, key_id: str | None, add: bool) -> int:
    from electiond import keys

    try:
        key = keys.new_key(key_id)
        if add:
            keys.add(path, key)
        else:
            keys.create(path, key)
    except keys.KeyFileError as exc:
        print(f"electiond: {exc}", file=sys.stderr)
        return EX_CONFIG
    if add:
        print(f"{path}: added key {key.id} as the last line; copy the file to every node and reload them, "
              f"then move it first everywhere and reload again")
    else:
        print(f"{path}: new key {key.id}; copy the file (mode 0600) to every node")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.gen_key:
        return gen_key(args.gen_key, args.key_id, args.add)
    if args.add or args.key_id:
        print("electiond: --add and --key-id go with --gen-key PATH", file=sys.stderr)
        return 2
    try:
        cfg = configmod.load(args.config, args.node)
    except configmod.ConfigError as exc:
        print(f"electiond: config error: {exc}", file=sys.stderr)
        return EX_CONFIG
    setup_logging(cfg.log_level)
    for warning in cfg.warnings:
        log.warning("%s", warning)
    if args.check_config:
        auth = (f"{len(cfg.keys)} key(s), signing with {cfg.keys[0].id}" if cfg.keys
                else "NOT authenticated: no key_file")
        print(f"{args.config}: OK (node {cfg.settings.node_name}, protocol {cfg.protocol}, "
              f"{len(cfg.settings.members)} members, {auth})")
        return 0
    if args.cleanup:
        return cleanup(cfg)
    try:
        import uvloop

        loop_factory = uvloop.new_event_loop
    except ImportError:
        log.info("uvloop not available; using the default asyncio loop")
        loop_factory = None
    try:
        with asyncio.Runner(loop_factory=loop_factory) as runner:
            return runner.run(serve(cfg))
    except StateError as exc:
        log.error("state: %s", exc)
        print(f"electiond: state error: {exc}", file=sys.stderr)
        return EX_CONFIG
    except NetError as exc:
        log.error("network: %s", exc)
        print(f"electiond: network error: {exc}", file=sys.stderr)
        return EX_UNAVAILABLE


if __name__ == "__main__":
    sys.exit(main())
