"""Run hook commands for leadership transitions: one at a time, in order, bounded.

keepalived's notify scripts are known to overlap, run out of order and hang
forever; these rules exist so ours cannot:

* One transition at a time, in the order the runtime submitted them, and never
  two hook processes at once.
* Transitions that pile up while a hook runs are coalesced (``plan_transitions``):
  the final state's hooks run last, a promote never runs after a later demote,
  and a down event (demote/fault) is never skipped once a promote has run.
* Every command has a timeout. On expiry its whole process group (hooks run in a
  new session) gets SIGTERM, then SIGKILL after ``kill_grace_s``.
* Output is logged line by line, tagged with the hook, and every command's
  outcome is reported as a :class:`HookResult` through ``on_result``.

How the runtime applies ``[hooks] on_promote_failure``: a promote transition
stops at its first failing command, so exactly one result with
``result.event == "promote" and not result.ok`` is reported per failed promote.
On that result, with ``on_promote_failure == "stepdown"``, the runtime calls the
protocol's stepdown; the resulting demote is submitted like any other and runs
after the (failed) promote, which is what releases half-acquired resources.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import signal
import stat
import time
import uuid
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import psutil

from electiond.config import HooksConfig
from electiond.fdreserve import DescriptorReserve, is_exhaustion

EVENT_PROMOTE = "promote"
EVENT_DEMOTE = "demote"
EVENT_FAULT = "fault"
# run while leader, every [hooks] refresh_interval and when a split brain
# heals: re-announces what the promote set up (gratuitous ARP for a VIP);
# not a change of state, see plan_with_refresh
EVENT_REFRESH = "refresh"
EVENTS = (EVENT_PROMOTE, EVENT_DEMOTE, EVENT_FAULT, EVENT_REFRESH)
# events that give up whatever a promote acquired
DOWN_EVENTS = frozenset({EVENT_DEMOTE, EVENT_FAULT})

# after a hook exits, how long to keep reading output that a background child
# might still be writing into our pipe (a child that keeps the pipe open must
# not keep the runner waiting)
OUTPUT_DRAIN_S = 0.5
MAX_LINE_BYTES = 4096
# a runaway hook must not flood the journal
MAX_LOGGED_LINES = 1000
# after SIGKILL a process in uninterruptible sleep may linger; do not wait forever
REAP_WAIT_S = 5.0
GROUP_POLL_S = 0.05
RECENT_RESULTS = 50

# run-parts conventions: files that are leftovers of editors and package managers
_SKIP_SUFFIXES = ("~", ".bak", ".orig", ".swp", ".rpmsave", ".rpmnew", ".rpmorig", ".disabled")
_SKIP_INFIXES = (".dpkg-", ".ucf-")


@dataclass(frozen=True, slots=True)
class Transition:
    """A leadership change whose hooks must run."""

    event: str  # "promote" | "demote" | "fault"
    term: int  # fencing token -> ELECTIOND_TERM
    leader: str | None  # -> ELECTIOND_LEADER ("" when none)
    previous_leader: str | None  # -> ELECTIOND_PREVIOUS_LEADER
    reason: str  # elected, lease_lost, transfer, stepdown, fault, startup, shutdown, ...

    def __post_init__(self) -> None:
        if self.event not in EVENTS:
            raise ValueError(f"unknown hook event {self.event!r}; expected one of {EVENTS}")


@dataclass(frozen=True, slots=True)
class HookResult:
    """The outcome of one hook command.

    ``ok`` is False when the command exited non-zero, was killed by a signal,
    timed out, or could not be started (``error``). The runtime detects a failed
    promote with ``result.event == "promote" and not result.ok``.
    """

    event: str
    command: str  # the argv, joined for display
    exit_code: int | None  # None when it timed out, died of a signal or never started
    duration_s: float
    reason: str
    term: int
    timed_out: bool
    started_at: float  # wall clock (time.time()) when it started
    hook: str = ""  # short name used in the log: "promote:vip"
    source: str = "config"  # "config" ([hooks] promote=) or "directory" (promote.d/)
    signal: int | None = None  # the signal that ended it, if any
    error: str | None = None  # why it could not be started

    @property
    def ok(self) -> bool:
        return self.exit_code == 0 and not self.timed_out and self.error is None

    def as_dict(self) -> dict[str, Any]:
        return {
            "event": self.event,
            "hook": self.hook,
            "command": self.command,
            "source": self.source,
            "exit_code": self.exit_code,
            "signal": self.signal,
            "timed_out": self.timed_out,
            "error": self.error,
            "ok": self.ok,
            "duration_s": round(self.duration_s, 3),
            "reason": self.reason,
            "term": self.term,
            "started_at": self.started_at,
        }


# --------------------------------------------------------------------------- planning


def plan_transitions(
    applied: str | None,
    applied_term: int | None,
    pending: Sequence[Transition],
) -> list[Transition]:
    """Which of the pending transitions to run, in order (pure).

    ``applied`` is the event whose hooks ran last, or None when unknown (nothing
    ran yet, or a down event's hooks failed, so resources may still be held).
    The result is a subsequence of ``pending``:

    * if a promote may be in effect (``applied`` is promote or unknown) and any
      down event is pending, the first down event runs first — a down is never
      skipped after a promote that ran, and the startup cleanup always runs;
    * then the final transition runs unless its state is already in effect
      (a promote repeated for the same term is a duplicate);
    * everything else in between is dropped: a promote that never ran needs no
      demote, and a promote followed by a demote in the queue never runs.
    """
    if not pending:
        return []
    final = pending[-1]
    plan: list[Transition] = []
    state = applied
    if applied is None or applied == EVENT_PROMOTE:
        first_down = next((t for t in pending if t.event in DOWN_EVENTS), None)
        if first_down is not None:
            plan.append(first_down)
            state = first_down.event
    if plan and plan[-1] is final:
        return plan
    if final.event == EVENT_PROMOTE:
        if not (state == EVENT_PROMOTE and applied_term == final.term):
            plan.append(final)
    elif final.event != state:
        plan.append(final)
    return plan


def plan_with_refresh(
    applied: str | None,
    applied_term: int | None,
    pending: Sequence[Transition],
) -> list[Transition]:
    """``plan_transitions`` for a queue that may hold refreshes (pure).

    A refresh re-announces what a promote acquired, so it runs only while
    that promote is what is in effect: the queue holds no change of state
    (a queued demote or fault means leadership is going, and a refresh must
    never run after a demote has started; a queued promote announces anyway)
    and the promote applied last is of the refresh's own term. Refreshes
    that pile up run once."""
    changes = [t for t in pending if t.event != EVENT_REFRESH]
    if changes:
        return plan_transitions(applied, applied_term, changes)
    if not pending:
        return []
    last = pending[-1]
    if applied == EVENT_PROMOTE and applied_term == last.term:
        return [last]
    return []


def _skip_name(name: str) -> bool:
    if name.startswith(".") or (name.startswith("#") and name.endswith("#")):
        return True
    if name.endswith(_SKIP_SUFFIXES):
        return True
    return any(infix in name for infix in _SKIP_INFIXES)


def directory_hooks(
    directory: str, event: str, logger: logging.Logger | None = None, *, strict: bool = False
) -> list[str]:
    """Executables in ``<directory>/<event>.d/`` in lexical (C locale) order.

    A missing directory means no hooks. Any other error reading it is logged
    and means none, unless ``strict``: then it is raised, because the runner
    must not report a promote as done when its hooks could not even be listed
    (out of descriptors, say).

    run-parts conventions: dotfiles, editor backups (``*~``, ``#*#``, ``*.swp``)
    and package-manager leftovers (``*.dpkg-*``, ``*.rpmnew``, ...) are skipped,
    as are directories and files that are not executable.
    """
    path = os.path.join(directory, f"{event}.d")
    try:
        names = sorted(os.listdir(path))
    except FileNotFoundError:
        return []
    except OSError as exc:
        if strict:
            raise
        if logger:
            logger.error("hooks: cannot read %s: %s", path, exc.strerror or exc)
        return []
    found: list[str] = []
    for name in names:
        full = os.path.join(path, name)
        if _skip_name(name):
            if logger:
                logger.debug("hooks: skipping %s (backup or hidden file)", full)
            continue
        try:
            st = os.stat(full)
        except OSError:
            if logger:
                logger.warning("hooks: skipping %s (broken link or unreadable)", full)
            continue
        if not stat.S_ISREG(st.st_mode):
            continue
        if not os.access(full, os.X_OK):
            if logger:
                logger.info("hooks: skipping %s (not executable)", full)
            continue
        found.append(full)
    return found


# --------------------------------------------------------------------------- processes


@dataclass(frozen=True, slots=True)
class ProcessOutcome:
    exit_code: int | None
    signal: int | None
    timed_out: bool
    error: str | None
    duration_s: float
    started_at: float
    last_line: str  # last line of output, for short status details

    @property
    def ok(self) -> bool:
        return self.exit_code == 0 and not self.timed_out and self.error is None


def _group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes in a process group."""
    members = []
    for proc in psutil.process_iter():
        try:
            if os.getpgid(proc.pid) == pgid and proc.status() != psutil.STATUS_ZOMBIE:
                members.append(proc.pid)
        except (ProcessLookupError, psutil.Error, OSError):
            continue
    return members


TOKEN_VARIABLE = "ELECTIOND_HOOK_TOKEN"


def kill_token_holders(token: str, grace_s: float, logger: logging.Logger) -> int:
    """SIGTERM, then SIGKILL, every process whose environment carries the token."""
    me = os.getpid()
    victims: list[psutil.Process] = []
    for proc in psutil.process_iter():
        try:
            if proc.pid == me or proc.status() == psutil.STATUS_ZOMBIE:
                continue
            if proc.environ().get(TOKEN_VARIABLE) == token:
                victims.append(proc)
        except (psutil.Error, OSError):
            continue
    if not victims:
        return 0
    logger.warning(
        "hooks: killing %d hook process(es) left running by the previous daemon: %s",
        len(victims), ", ".join(f"{p.pid} ({_describe(p)})" for p in victims),
    )
    for proc in victims:
        try:
            proc.terminate()
        except psutil.Error:
            pass
    deadline = time.monotonic() + grace_s
    alive = victims
    while alive and time.monotonic() < deadline:
        time.sleep(GROUP_POLL_S)
        alive = [p for p in alive if _alive(p)]
    for proc in alive:
        try:
            proc.kill()
        except psutil.Error:
            pass
    return len(victims)


def _alive(proc: psutil.Process) -> bool:
    # an orphan that died may stay a zombie if init does not reap it promptly
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _describe(proc: psutil.Process) -> str:
    try:
        return " ".join(proc.cmdline())[:80] or proc.name()
    except psutil.Error:
        return "?"


def _killpg(pgid: int, sig: int) -> bool:
    try:
        os.killpg(pgid, sig)
        return True
    except (ProcessLookupError, PermissionError):
        return False


async def _terminate_group(
    proc: asyncio.subprocess.Process, kill_grace_s: float, logger: logging.Logger, tag: str
) -> None:
    """SIGTERM the process group, SIGKILL whatever is left after the grace period."""
    pgid = proc.pid  # start_new_session=True: the hook leads its own group
    _killpg(pgid, signal.SIGTERM)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + kill_grace_s
    try:
        await asyncio.wait_for(proc.wait(), kill_grace_s)
    except TimeoutError:
        pass
    # children the hook forked may outlive it; they are part of the timeout too
    survivors = await asyncio.to_thread(_group_members, pgid)
    while survivors and loop.time() < deadline:
        await asyncio.sleep(GROUP_POLL_S)
        survivors = await asyncio.to_thread(_group_members, pgid)
    if survivors or proc.returncode is None:
        logger.warning("hook %s: still running %.1fs after SIGTERM, sending SIGKILL to its group", tag, kill_grace_s)
        _killpg(pgid, signal.SIGKILL)
    try:
        await asyncio.wait_for(proc.wait(), REAP_WAIT_S)
    except TimeoutError:
        logger.error("hook %s: pid %d did not die after SIGKILL", tag, proc.pid)


async def _pump_lines(
    reader: asyncio.StreamReader, emit: Callable[[str], None], last: list[str]
) -> None:
    buf = b""
    while True:
        chunk = await reader.read(65536)
        if not chunk:
            break
        buf += chunk
        while b"\n" in buf:
            line, buf = buf.split(b"\n", 1)
            emit_line(line, emit, last)
        # an endless line is logged in pieces rather than buffered without bound
        while len(buf) > MAX_LINE_BYTES:
            emit_line(buf[:MAX_LINE_BYTES], emit, last, split=True)
            buf = buf[MAX_LINE_BYTES:]
    if buf:
        emit_line(buf, emit, last)


def emit_line(raw: bytes, emit: Callable[[str], None], last: list[str], split: bool = False) -> None:
    for start in range(0, max(len(raw), 1), MAX_LINE_BYTES):
        piece = raw[start : start + MAX_LINE_BYTES]
        line = piece.rstrip(b"\r").decode("utf-8", "replace")
        if split or len(raw) > MAX_LINE_BYTES:
            line += " [split]"
        if line.strip():
            last[0] = line
        emit(line)


def describe_error(exc: BaseException) -> str:
    """An error in words an operator can act on: "Too many open files (EMFILE)"."""
    if isinstance(exc, OSError) and exc.strerror:
        code = errno.errorcode.get(exc.errno or 0)
        return f"{exc.strerror} ({code})" if code else exc.strerror
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


async def _spawn(
    argv: Sequence[str], env: dict[str, str] | None
) -> tuple[asyncio.subprocess.Process, int]:
    """Start the command with stdout and stderr on a pipe of ours; returns the
    process and the pipe's read end. Raises whatever starting it raised, with
    no descriptor left open."""
    if not argv:
        raise ValueError("empty command")
    # our own pipe (not PIPE) so that we can stop reading it when a background
    # child of the hook keeps the write end open after the hook has exited
    read_fd, write_fd = os.pipe()
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=write_fd,
            stderr=write_fd,
            env=env,
            start_new_session=True,
        )
    except BaseException:
        os.close(read_fd)
        raise
    finally:
        os.close(write_fd)
    return proc, read_fd


async def _spawn_with_reserve(
    argv: Sequence[str],
    env: dict[str, str] | None,
    reserve: DescriptorReserve | None,
    logger: logging.Logger,
    tag: str,
    extra: dict[str, Any] | None,
) -> tuple[asyncio.subprocess.Process, int]:
    try:
        return await _spawn(argv, env)
    except OSError as exc:
        if reserve is None or not is_exhaustion(exc):
            raise
        logger.warning("hook %s: out of file descriptors (%s); retrying with the %d reserved",
                       tag, describe_error(exc), reserve.held, extra=extra)
    # the fork happens before create_subprocess_exec first yields, so no
    # other task can take the freed descriptors before the hook has them
    with reserve.released():
        return await _spawn(argv, env)


async def run_command(
    argv: Sequence[str],
    *,
    env: dict[str, str] | None,
    timeout_s: float,
    kill_grace_s: float,
    logger: logging.Logger,
    tag: str,
    output_level: int = logging.INFO,
    extra: dict[str, Any] | None = None,
    reserve: DescriptorReserve | None = None,
) -> ProcessOutcome:
    """Run one command in its own session with a timeout; log its output.

    Never raises except when cancelled: a command that cannot be started (for
    any reason: out of descriptors or memory, missing, not executable, a bad
    interpreter line) or that could not be supervised comes back as an outcome
    with ``error`` set. If the caller is cancelled while the command runs, the
    process group is killed before re-raising, so no hook is ever left running
    unsupervised. With a ``reserve``, a start that runs out of descriptors is
    retried once with the reserve released.
    """
    loop = asyncio.get_running_loop()
    started_at = time.time()
    t0 = loop.time()
    last = [""]
    logged = [0]

    def emit(line: str) -> None:
        logged[0] += 1
        if logged[0] <= MAX_LOGGED_LINES:
            logger.log(output_level, "hook %s: %s", tag, line, extra=extra)
        elif logged[0] == MAX_LOGGED_LINES + 1:
            logger.warning("hook %s: more than %d lines of output, not logging the rest", tag, MAX_LOGGED_LINES)

    try:
        proc, read_fd = await _spawn_with_reserve(argv, env, reserve, logger, tag, extra)
    except Exception as exc:
        reason = describe_error(exc)
        logger.error("hook %s: cannot start %s: %s", tag, argv[0] if argv else "(empty)", reason, extra=extra)
        return ProcessOutcome(None, None, False, f"cannot start: {reason}", loop.time() - t0, started_at, "")

    pipe_file: Any = None
    transport: asyncio.BaseTransport | None = None
    pump: asyncio.Task[None] | None = None
    timed_out = False
    error: str | None = None
    try:
        pipe_file = os.fdopen(read_fd, "rb", 0)
        reader = asyncio.StreamReader()
        transport, _ = await loop.connect_read_pipe(
            lambda: asyncio.StreamReaderProtocol(reader), pipe_file
        )
        pump = asyncio.create_task(_pump_lines(reader, emit, last))
        try:
            await asyncio.wait_for(proc.wait(), timeout_s)
        except TimeoutError:
            timed_out = True
            logger.warning(
                "hook %s: timed out after %.1fs, sending SIGTERM to its process group", tag, timeout_s, extra=extra
            )
            await _terminate_group(proc, kill_grace_s, logger, tag)
        try:
            await asyncio.wait_for(asyncio.shield(pump), OUTPUT_DRAIN_S)
        except TimeoutError:
            logger.debug("hook %s: output still open after exit (background child?); not reading further", tag)
    except BaseException as exc:
        # cancelled (daemon shutting down hard), or supervising failed: never
        # leave a hook running unsupervised
        if proc.returncode is None:
            _killpg(proc.pid, signal.SIGKILL)
            try:
                await asyncio.wait_for(asyncio.shield(proc.wait()), REAP_WAIT_S)
            except BaseException:
                pass
        if not isinstance(exc, Exception):
            raise
        error = f"lost track of the hook, killed it: {describe_error(exc)}"
        logger.error("hook %s: %s", tag, error, extra=extra)
    finally:
        if pump is not None:
            pump.cancel()
        if transport is not None:
            transport.close()
        elif pipe_file is not None:
            pipe_file.close()
        else:
            os.close(read_fd)

    duration_s = loop.time() - t0
    rc = proc.returncode
    sig = -rc if rc is not None and rc < 0 else None
    exit_code = None if (timed_out or error or rc is None or rc < 0) else rc
    return ProcessOutcome(exit_code, sig, timed_out, error, duration_s, started_at, last[0])


def describe_outcome(outcome: ProcessOutcome) -> str:
    if outcome.error:
        return outcome.error
    if outcome.timed_out:
        return "timed out"
    if outcome.signal is not None:
        try:
            return f"killed by {signal.Signals(outcome.signal).name}"
        except ValueError:
            return f"killed by signal {outcome.signal}"
    return f"exit {outcome.exit_code}"


# --------------------------------------------------------------------------- runner


def _current_task_cancelling() -> bool:
    task = asyncio.current_task()
    return bool(task is not None and task.cancelling())


class HookRunner:
    """Runs the hooks of submitted transitions in the daemon's event loop.

    ``submit`` is synchronous and returns at once; a worker task runs the
    coalesced queue and exits when it is empty. Call it from inside the loop.
    """

    def __init__(
        self,
        config: HooksConfig,
        base_env: dict[str, str],
        on_result: Callable[[HookResult], None],
        logger: logging.Logger,
        *,
        token_file: str | None = None,
        reserve: DescriptorReserve | None = None,
    ) -> None:
        """``token_file`` (in the state directory) lets a restarted daemon kill
        hook processes its crashed predecessor left running: every hook of this
        runner carries ``ELECTIOND_HOOK_TOKEN`` in its environment, and before
        its first hook a runner kills the processes carrying the token found in
        the file, then writes its own. Without it (and without systemd's
        control-group kill) an orphaned ``vip up`` could keep announcing the
        VIP after another host took it over.

        ``reserve``: descriptors released for a retry when starting a hook
        runs out of them (see ``electiond.fdreserve``)."""
        self.config = config
        self._reserve = reserve
        self._token_file = token_file
        self._token = uuid.uuid4().hex
        self._orphans_checked = token_file is None
        self._base_env = dict(base_env)
        self._on_result = on_result
        self._log = logger
        self._pending: list[Transition] = []
        self._worker: asyncio.Task[None] | None = None
        self._closed = False
        # the event whose hooks ran last; None = unknown (see plan_transitions)
        self._applied: str | None = None
        self._applied_term: int | None = None
        self._running: tuple[Transition, str] | None = None
        self._refresh_task: asyncio.Future[ProcessOutcome] | None = None  # a refresh command running
        self.recent: deque[HookResult] = deque(maxlen=RECENT_RESULTS)
        self.coalesced = 0  # transitions dropped by coalescing, for status/metrics

    # -- status

    @property
    def busy(self) -> bool:
        return self._running is not None

    @property
    def pending(self) -> tuple[str, ...]:
        return tuple(t.event for t in self._pending)

    @property
    def applied(self) -> str | None:
        return self._applied

    def status(self) -> dict[str, Any]:
        running = None
        if self._running is not None:
            transition, hook = self._running
            running = {"event": transition.event, "hook": hook, "term": transition.term}
        return {
            "busy": self.busy,
            "running": running,
            "pending": list(self.pending),
            "applied": self._applied,
            "coalesced": self.coalesced,
        }

    # -- API used by the runtime

    def submit(self, transition: Transition) -> None:
        if self._closed:
            self._log.warning("hooks: runner closed, not running %s hooks (%s)", transition.event, transition.reason)
            return
        self._pending.append(transition)
        if transition.event in DOWN_EVENTS and self._refresh_task is not None and not self._refresh_task.done():
            self._log.warning("hooks: %s queued while a refresh runs: killing the refresh", transition.event)
            self._refresh_task.cancel()
        if self._worker is None or self._worker.done():
            self._worker = asyncio.get_running_loop().create_task(self._drain(), name="electiond-hooks")

    async def wait_idle(self) -> None:
        while self._worker is not None and not self._worker.done():
            worker = self._worker
            try:
                # shield: a caller that gives up waiting must not cancel the hooks
                await asyncio.shield(worker)
            except asyncio.CancelledError:
                if worker.cancelled() and not _current_task_cancelling():
                    continue  # the worker was cancelled, not us
                raise

    async def close(self) -> None:
        """Finish what is queued (each command bounded by its timeout), then stop."""
        self._closed = True
        await self.wait_idle()

    # -- internals

    def commands_for(self, event: str, *, strict: bool = False) -> list[tuple[tuple[str, ...], str]]:
        """(argv, source) for an event: the configured command, then <directory>/<event>.d/.
        ``strict``: an unreadable hook directory raises (see ``directory_hooks``)."""
        commands: list[tuple[tuple[str, ...], str]] = []
        configured: tuple[str, ...] = getattr(self.config, event)
        if configured:
            commands.append((tuple(configured), "config"))
        if self.config.directory:
            for path in directory_hooks(self.config.directory, event, self._log, strict=strict):
                commands.append(((path,), "directory"))
        return commands

    def environment(self, transition: Transition) -> dict[str, str]:
        env = dict(os.environ)
        env.update(self._base_env)
        env.update(
            {
                "ELECTIOND_EVENT": transition.event,
                "ELECTIOND_LEADER": transition.leader or "",
                "ELECTIOND_TERM": str(transition.term),
                "ELECTIOND_PREVIOUS_LEADER": transition.previous_leader or "",
                "ELECTIOND_REASON": transition.reason,
                # lets a hook's background work stop when the daemon is gone
                "ELECTIOND_PID": str(os.getpid()),
                TOKEN_VARIABLE: self._token,
            }
        )
        return env

    async def kill_orphans(self) -> int:
        """Kill hook processes left by a previous daemon (see ``token_file``);
        returns how many. Runs once, before the first hook."""
        if self._orphans_checked:
            return 0
        self._orphans_checked = True
        assert self._token_file is not None
        previous = None
        try:
            with open(self._token_file) as f:
                previous = f.read().strip() or None
        except FileNotFoundError:
            pass
        except OSError as exc:
            self._log.warning("hooks: cannot read %s: %s", self._token_file, exc.strerror or exc)
        killed = 0
        if previous and previous != self._token:
            killed = await asyncio.to_thread(kill_token_holders, previous, self.config.kill_grace_s, self._log)
        try:
            directory = os.path.dirname(self._token_file) or "."
            os.makedirs(directory, mode=0o750, exist_ok=True)
            tmp = f"{self._token_file}.tmp"
            with open(tmp, "w") as f:
                f.write(self._token + "\n")
            os.replace(tmp, self._token_file)
        except OSError as exc:
            self._log.warning("hooks: cannot write %s: %s (orphaned hooks will not be found after a crash)",
                              self._token_file, exc.strerror or exc)
        return killed

    async def _drain(self) -> None:
        try:
            if not self._orphans_checked:
                try:
                    await self.kill_orphans()
                except Exception:  # cannot start a thread, say: the hooks still run
                    self._log.exception("hooks: looking for orphaned hook processes failed")
            while self._pending:
                try:
                    plan = plan_with_refresh(self._applied, self._applied_term, self._pending)
                except Exception:
                    # a bug in planning: running everything in order is safe, if slow
                    self._log.exception("hooks: planning failed; running every queued transition")
                    plan = list(self._pending)
                dropped = len(self._pending) - len(plan)
                if dropped:
                    self.coalesced += dropped
                    self._log.info(
                        "hooks: coalesced queued %s into %s",
                        [t.event for t in self._pending],
                        [t.event for t in plan] or "nothing (already in that state)",
                    )
                if not plan:
                    self._pending.clear()
                    break
                # run one step, then re-plan with whatever arrived meanwhile
                self._pending = plan[1:]
                step = plan[0]
                try:
                    await self._run_transition(step)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    # a bug must not leave a transition without a result: a
                    # promote that "succeeded" silently would lead without its VIP
                    self._log.exception("hooks: runner failed during %s (term %d)", step.event, step.term)
                    self._applied = None
                    self._report(self._failure(step, f"{step.event} hooks", "runner", f"internal error: {exc!r}"))
        finally:
            self._running = None

    async def _run_one(self, transition: Transition, argv: tuple[str, ...], env: dict[str, str],
                       tag: str) -> ProcessOutcome:
        run = run_command(
            argv,
            env=env,
            timeout_s=self.config.timeout_s,
            kill_grace_s=self.config.kill_grace_s,
            logger=self._log,
            tag=tag,
            extra={"hook": tag, "hook_event": transition.event},
            reserve=self._reserve,
        )
        if transition.event != EVENT_REFRESH:
            return await run
        # a refresh is cut short when leadership goes (submit cancels it):
        # the demote must not wait for a re-announcement of what it removes
        task = asyncio.ensure_future(run)
        self._refresh_task = task
        t0 = time.monotonic()
        try:
            return await task
        except asyncio.CancelledError:
            if not task.cancelled() or _current_task_cancelling():
                raise  # the runner itself is being cancelled
            return ProcessOutcome(None, None, False, "cut short: leadership is going (a demote or fault is queued)",
                                  time.monotonic() - t0, time.time(), "")
        finally:
            self._refresh_task = None

    def _failure(self, transition: Transition, command: str, source: str, error: str) -> HookResult:
        return HookResult(
            event=transition.event, command=command, exit_code=None, duration_s=0.0, reason=transition.reason,
            term=transition.term, timed_out=False, started_at=time.time(), hook=f"{transition.event}:{source}",
            source=source, error=error,
        )

    def _report(self, result: HookResult) -> None:
        self.recent.append(result)
        try:
            self._on_result(result)
        except Exception:
            self._log.exception("hooks: on_result callback failed")

    def _prepare(self, transition: Transition) -> tuple[list[tuple[tuple[str, ...], str]], dict[str, str]]:
        """The commands and environment of a transition, listing the hook
        directory again with the reserve released if descriptors ran out."""

        def prepare() -> tuple[list[tuple[tuple[str, ...], str]], dict[str, str]]:
            return self.commands_for(transition.event, strict=True), self.environment(transition)

        if self._reserve is None:
            return prepare()
        return self._reserve.call(prepare, f"hooks: listing {transition.event} hooks")

    async def _run_transition(self, transition: Transition) -> None:
        all_ok = True
        try:
            try:
                commands, env = self._prepare(transition)
            except Exception as exc:
                all_ok = False
                error = f"cannot prepare hooks: {describe_error(exc)}"
                self._log.error("hooks: %s (term %d, reason %s): %s",
                                transition.event, transition.term, transition.reason, error)
                self._report(self._failure(transition, f"{transition.event} hooks", "prepare", error))
                return
            all_ok = await self._run_commands(transition, commands, env)
        finally:
            if transition.event == EVENT_REFRESH:
                pass  # not a change of state: what the promote acquired is still held
            elif transition.event == EVENT_PROMOTE:
                # even a failed promote may have acquired something: a later down
                # event must run, which "promote" guarantees in plan_transitions
                self._applied = EVENT_PROMOTE
                self._applied_term = transition.term
            else:
                # a failed demote/fault leaves the state unknown so the next down
                # event runs again instead of being coalesced away
                self._applied = transition.event if all_ok else None
                self._applied_term = None

    async def _run_commands(
        self, transition: Transition, commands: list[tuple[tuple[str, ...], str]], env: dict[str, str]
    ) -> bool:
        all_ok = True
        self._log.info(
            "hooks: %s (term %d, reason %s): %d command(s)",
            transition.event, transition.term, transition.reason, len(commands),
        )
        for index, (argv, source) in enumerate(commands):
            if (
                transition.event in (EVENT_PROMOTE, EVENT_REFRESH)
                and index > 0
                and any(p.event in DOWN_EVENTS for p in self._pending)
            ):
                # leadership was lost while promoting: the rest is pointless and
                # the demote should start as soon as possible
                self._log.warning("hooks: leadership lost during %s, skipping %d remaining %s hook(s)",
                                  transition.event, len(commands) - index, transition.event)
                break
            name = os.path.basename(argv[0]) if argv else "?"
            tag = f"{transition.event}:{name}"
            self._running = (transition, tag)
            try:
                outcome = await self._run_one(transition, argv, env, tag)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # run_command does not raise; if it ever does, it failed
                self._log.exception("hook %s: running it failed", tag)
                outcome = ProcessOutcome(None, None, False, f"internal error: {exc!r}", 0.0, time.time(), "")
            finally:
                self._running = None
            result = HookResult(
                event=transition.event,
                command=" ".join(argv),
                exit_code=outcome.exit_code,
                duration_s=outcome.duration_s,
                reason=transition.reason,
                term=transition.term,
                timed_out=outcome.timed_out,
                started_at=outcome.started_at,
                hook=tag,
                source=source,
                signal=outcome.signal,
                error=outcome.error,
            )
            level = logging.INFO if result.ok else logging.ERROR
            self._log.log(level, "hook %s: %s after %.2fs", tag, describe_outcome(outcome), outcome.duration_s)
            self._report(result)
            if not result.ok:
                all_ok = False
                if transition.event == EVENT_PROMOTE:
                    # the node is going to step down: do not keep acquiring
                    break
        return all_ok
