"""electiond entry point: config, logging, sd_notify, signals, the event loop."""

from __future__ import annotations

import argparse
import asyncio
import faulthandler
import logging
import os
import signal
import socket
import sys
import time
from typing import Any, NoReturn

from electiond import __version__, config as configmod, net, statelock
from electiond.control import ControlServer
from electiond.net import NetError
from electiond.state import StateError

# sysexits.h codes; README "Exit codes" lists what each means for the operator
EX_CONFIG = 78  # bad config, corrupt state, unusable state directory: systemd's RestartPreventExitStatus
EX_UNAVAILABLE = 69  # a network error that waiting cannot fix (e.g. permission denied binding the port)
EX_SOFTWARE = 70  # a bug: an exception escaped the event loop
EX_IOERR = 74  # --recover-state could not write the new state file
EX_TEMPFAIL = statelock.EX_TEMPFAIL  # 75: another electiond holds this state directory

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
    parser.add_argument("--recover-state", action="store_true",
                        help="set a lost or corrupt state.json aside and write one that rejoins safely, then exit")
    parser.add_argument("--gen-key", metavar="PATH",
                        help="write a new key file (mode 0600; never overwrites) and exit")
    parser.add_argument("--add", action="store_true",
                        help="with --gen-key: append a new key to the existing file PATH as its last line "
                             "(accepted at once, used for sending once moved first: see README, key rotation)")
    parser.add_argument("--key-id", help="with --gen-key: the new key's id (default: k + UTC time)")
    parser.add_argument("--version", action="version", version=f"electiond {__version__}")
    return parser.parse_args(argv)


async def serve(cfg: configmod.Config) -> tuple[str, float]:
    """Run until a signal; returns why it stopped (for the final log line)
    and when the signal came (monotonic seconds)."""
    from electiond.runtime import Runtime

    runtime = Runtime(cfg, on_status=lambda line: sd_notify(f"STATUS={line}"))

    def command(name: str, args: dict[str, Any]) -> Any:
        """The runtime's answer; status also shows the control socket's bounds."""
        result = runtime.command(name, args)
        if name == "status":
            result["control"] = control.stats()  # connections open, refused, closed for idling
            result["descriptors"] = runtime.fd_reserve.status()
        return result

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    stop_signal = ["?"]
    stop_at_s = [0.0]

    def on_stop_signal(sig: signal.Signals) -> None:
        if not stop.is_set():
            stop_signal[0], stop_at_s[0] = sig.name, time.monotonic()
        stop.set()

    # before the start: a daemon waiting for its interface must still stop at once
    loop.add_signal_handler(signal.SIGTERM, on_stop_signal, signal.SIGTERM)
    loop.add_signal_handler(signal.SIGINT, on_stop_signal, signal.SIGINT)
    control: ControlServer | None = None

    def on_reload() -> None:
        runtime.reload(cfg.path)
        if control is not None:
            control.admin_group = runtime.config.admin_group  # who may mutate: applies at once

    loop.add_signal_handler(signal.SIGHUP, on_reload)
    watchdog_s = watchdog_interval_s()
    if watchdog_s:
        def ping() -> None:
            sd_notify("WATCHDOG=1")
            loop.call_later(watchdog_s, ping)
        ping()
    if not await runtime.start(stop):
        return f"{stop_signal[0]} while waiting for the network", stop_at_s[0]
    control = ControlServer(cfg.control_socket, cfg.control_socket_mode, command,
                            cfg.control_max_connections, cfg.control_idle_timeout_s, cfg.admin_group)
    await control.start()
    metrics_server = None
    if cfg.metrics_listen is not None:
        from electiond.metrics import MetricsServer

        metrics_server = MetricsServer(*cfg.metrics_listen, runtime.metrics_text)
        try:
            await metrics_server.start()
        except OSError as exc:
            # metrics are for watching: a taken port must not stop an election daemon
            log.error("cannot serve metrics on %s:%d: %s", *cfg.metrics_listen, exc.strerror or exc)
            metrics_server = None
    sd_notify("READY=1")
    await stop.wait()
    assert runtime.node is not None
    role = runtime.node.role(time.monotonic())
    log.info("stopping on %s (%s)", stop_signal[0], role)
    sd_notify("STOPPING=1")
    if metrics_server is not None:
        await metrics_server.stop()
    await runtime.stop()
    await control.stop()
    return f"{stop_signal[0]} ({role})", stop_at_s[0]


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


def recover_state(cfg: configmod.Config) -> tuple[int, str]:
    from electiond.state import RECOVERING_MEANS, recover

    try:
        done = recover(cfg.state_directory, time.time())
    except StateError as exc:
        return EX_IOERR, f"state recovery failed: {exc}"
    if done.kept_aside is None:
        print(f"{done.path}: there was no state file")
    elif done.old_fault is None:
        print(f"{done.path} was readable; kept it as {done.kept_aside} anyway")
    else:
        print(f"{done.path} was unusable ({done.old_fault}); kept it as {done.kept_aside}")
    print(f"wrote {done.path}: term 0, no vote, incarnation {done.incarnation}, recovering.")
    print(f"The next start rejoins as a recovering node: {RECOVERING_MEANS}.")
    return 0, f"state recovered into {done.path}"


class _Terminated(BaseException):
    """A stop signal before the event loop took the signals over."""


def _terminate_early(signum: int, frame: object) -> None:
    raise _Terminated(signal.Signals(signum).name)


def _finish(code: int, reason: str, started_s: float) -> int:
    """The last line every exit logs: why, and how long the process lived."""
    level = logging.INFO if code == 0 else logging.ERROR
    log.log(level, "exiting: %s; up %.2f s", reason, time.monotonic() - started_s)
    return code


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
    started_s = time.monotonic()
    # systemd's watchdog kills a wedged loop with SIGABRT: the journal then
    # shows where every thread was stuck
    try:
        faulthandler.enable()
    except (ValueError, OSError, AttributeError):
        pass  # stderr without a descriptor (called in-process under a capture)
    args = parse_args(argv)
    if args.gen_key:
        return gen_key(args.gen_key, args.key_id, args.add)
    if args.add or args.key_id:
        print("electiond: --add and --key-id go with --gen-key PATH", file=sys.stderr)
        return 2
    try:
        cfg = configmod.load(args.config, args.node)
    except configmod.ConfigError as exc:
        print(f"electiond: exiting: config error: {exc}", file=sys.stderr)
        return EX_CONFIG
    setup_logging(cfg.log_level)
    for warning in cfg.warnings:
        log.warning("%s", warning)
    if args.check_config:
        absent = net.check_interface(cfg.interface, cfg.group, cfg.own_address)
        if absent:
            outlook = "the daemon will wait for it" if absent.transient else "the daemon would exit 69"
            print(f"{args.config}: warning: {absent} now; {outlook}", file=sys.stderr)
        problems = configmod.hook_problems(cfg)
        if problems:
            for problem in problems:
                print(f"electiond: {args.config}: {problem}", file=sys.stderr)
            return EX_CONFIG
        auth = (f"{len(cfg.keys)} key(s), signing with {cfg.keys[0].id}" if cfg.keys
                else "NOT authenticated: no key_file")
        print(f"{args.config}: OK (node {cfg.settings.node_name}, protocol {cfg.protocol}, "
              f"{len(cfg.settings.members)} members, {auth})")
        return 0
    action = "--cleanup" if args.cleanup else "--recover-state" if args.recover_state else "start"
    # until serve() hands them to the loop: a stop during start-up still logs its final line
    previous = {sig: signal.signal(sig, _terminate_early) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        return _locked(args, cfg, action, started_s)
    except _Terminated as exc:
        return _finish(0, f"{exc} during {action}", started_s)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _locked(args: argparse.Namespace, cfg: configmod.Config, action: str, started_s: float) -> int:
    # first of all: nothing shared (hooks, state.json, the control socket) is
    # touched unless this process is the only electiond on this state directory
    try:
        lock = statelock.acquire(cfg.state_directory)
    except statelock.LockHeld as exc:
        return _finish(EX_TEMPFAIL, f"{action} refused: {exc}", started_s)
    except statelock.LockError as exc:
        return _finish(EX_CONFIG, f"state directory error: {exc}", started_s)
    try:
        return _run(args, cfg, started_s)
    finally:
        lock.release()


def _run(args: argparse.Namespace, cfg: configmod.Config, started_s: float) -> int:
    if args.cleanup:
        code = cleanup(cfg)
        return _finish(code, "cleanup done" if code == 0 else "cleanup: a demote hook failed", started_s)
    if args.recover_state:
        code, reason = recover_state(cfg)
        return _finish(code, reason, started_s)
    try:
        import uvloop

        loop_factory = uvloop.new_event_loop
    except ImportError:
        log.info("uvloop not available; using the default asyncio loop")
        loop_factory = None
    try:
        with asyncio.Runner(loop_factory=loop_factory) as runner:
            reason, signalled_at_s = runner.run(serve(cfg))
    except StateError as exc:
        return _finish(EX_CONFIG, f"state error: {exc}", started_s)
    except NetError as exc:
        return _finish(EX_UNAVAILABLE, f"network error: {exc}", started_s)
    except Exception as exc:
        log.exception("crash in the event loop")
        return _finish(EX_SOFTWARE, f"crash: {type(exc).__name__}: {exc}", started_s)
    # measured after the loop is closed: what is left is the interpreter's exit
    return _finish(0, f"{reason}, stopped in {time.monotonic() - signalled_at_s:.3f} s", started_s)


def run() -> NoReturn:
    """The program's entry point: main(), then a prompt exit. After the final
    log line there is nothing left to clean up (hooks have finished, the
    kernel drops the state-directory lock), yet the interpreter's own
    finalization took 0.1-0.2 s on a loaded host, most of a follower's stop."""
    code = main()
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe: nothing more can be said
            pass
    os._exit(code)


if __name__ == "__main__":
    run()
