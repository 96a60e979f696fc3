"""Health tracking: processes, a check script and interfaces that gate leadership.

Every ``interval_s`` each configured check is probed. A check turns unhealthy
after ``fall`` failed probes in a row and healthy again after ``rise`` good ones
(hysteresis, so one slow probe does not move a VIP). The first probe after start
sets a check's state directly: a node whose database is not running must not
stand for election while it counts to ``fall``.

The node is healthy when every check is. ``on_change(False, reason)`` is called
when it turns unhealthy, ``on_change(True, "recovered")`` when all checks are
healthy again; the runtime then calls ``node.set_eligible`` and submits the
``fault`` transition. ``snapshot()`` feeds ``electionctl status``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import psutil

from electiond.config import HealthConfig
from electiond.hooks import describe_outcome, run_command

# a check script that ignores SIGTERM is killed this long after its timeout
SCRIPT_KILL_GRACE_S = 1.0
# pattern characters that make a track_process entry a plain process name
_PLAIN_NAME = re.compile(r"^[A-Za-z0-9_.@:+-]+$")
_SYS_CLASS_NET = "/sys/class/net"


class Hysteresis:
    """rise/fall counting for one check (pure)."""

    def __init__(self, rise: int, fall: int) -> None:
        if rise < 1 or fall < 1:
            raise ValueError("rise and fall must be at least 1")
        self.rise = rise
        self.fall = fall
        self.healthy: bool | None = None  # unknown until the first probe
        self.consecutive_ok = 0
        self.consecutive_fail = 0

    def observe(self, ok: bool) -> bool:
        """Record one probe; return True when the healthy state changed."""
        if ok:
            self.consecutive_ok += 1
            self.consecutive_fail = 0
        else:
            self.consecutive_fail += 1
            self.consecutive_ok = 0
        before = self.healthy
        if before is None:
            self.healthy = ok
        elif before and self.consecutive_fail >= self.fall:
            self.healthy = False
        elif not before and self.consecutive_ok >= self.rise:
            self.healthy = True
        return self.healthy != before


class Check:
    kind = ""

    def __init__(self, name: str) -> None:
        self.name = name

    async def probe(self) -> tuple[bool, str]:
        raise NotImplementedError


class ProcessCheck(Check):
    """A process is running: a plain name matches the process name or the
    basename of argv[0]; anything else is a regex searched in the name and
    in the full command line."""

    kind = "process"

    def __init__(self, pattern: str) -> None:
        super().__init__(pattern)
        self.pattern = pattern
        if not pattern:
            raise ValueError("empty process pattern")
        try:
            self.regex = None if _PLAIN_NAME.match(pattern) else re.compile(pattern)
        except re.error as exc:
            # config validation calls this too, so the message names the problem
            raise ValueError(f"bad process pattern {pattern!r}: {exc}") from None

    def matches(self, name: str, cmdline: Sequence[str]) -> bool:
        if self.regex is None:
            return name == self.pattern or bool(cmdline and os.path.basename(cmdline[0]) == self.pattern)
        return bool(self.regex.search(name) or self.regex.search(" ".join(cmdline)))

    def scan(self) -> list[int]:
        me = os.getpid()
        found = []
        for proc in psutil.process_iter(["pid", "name", "cmdline", "status"]):
            info = proc.info
            if info["pid"] == me or info["status"] == psutil.STATUS_ZOMBIE:
                continue
            if self.matches(info["name"] or "", info["cmdline"] or []):
                found.append(info["pid"])
        return found

    async def probe(self) -> tuple[bool, str]:
        # reading /proc for every process is slow enough to keep off the loop
        pids = await asyncio.to_thread(self.scan)
        if not pids:
            return False, f"no process matches {self.pattern!r}"
        shown = ", ".join(str(p) for p in pids[:5]) + (", ..." if len(pids) > 5 else "")
        return True, f"{len(pids)} running (pid {shown})"


class ScriptCheck(Check):
    """A command that exits 0 when healthy; killed with its group on timeout."""

    kind = "script"

    def __init__(self, argv: Sequence[str], timeout_s: float, logger: logging.Logger, env: dict[str, str] | None) -> None:
        super().__init__(" ".join(argv))
        self.argv = tuple(argv)
        self.timeout_s = timeout_s
        self.logger = logger
        self.env = env

    async def probe(self) -> tuple[bool, str]:
        outcome = await run_command(
            self.argv,
            env=self.env,
            timeout_s=self.timeout_s,
            kill_grace_s=SCRIPT_KILL_GRACE_S,
            logger=self.logger,
            tag=f"health:{os.path.basename(self.argv[0])}",
            output_level=logging.DEBUG,
        )
        detail = describe_outcome(outcome)
        if outcome.last_line:
            detail += f": {outcome.last_line[:200]}"
        return outcome.ok, detail


class InterfaceCheck(Check):
    """An interface is up with a link (IFF_UP and IFF_RUNNING), asked through
    ioctl in this process's own network namespace; /sys adds the operstate."""

    kind = "interface"

    def __init__(self, ifname: str, sys_class_net: str = _SYS_CLASS_NET) -> None:
        if not ifname or "/" in ifname or ifname in (".", ".."):
            raise ValueError(f"invalid interface name {ifname!r}")
        super().__init__(ifname)
        self.ifname = ifname
        self.sys_class_net = sys_class_net

    def read(self) -> tuple[bool, str]:
        stats = psutil.net_if_stats().get(self.ifname)
        if stats is None:
            return False, f"no interface {self.ifname}"
        flags = set(stats.flags.split(",")) if stats.flags else set()
        operstate = self._operstate()
        if "up" not in flags:
            return False, "administratively down"
        if "running" not in flags:
            return False, f"no link (operstate {operstate or 'unknown'})"
        return True, f"up (operstate {operstate or 'unknown'})"

    def _operstate(self) -> str:
        try:
            with open(os.path.join(self.sys_class_net, self.ifname, "operstate")) as f:
                return f.read().strip()
        except OSError:
            return ""

    async def probe(self) -> tuple[bool, str]:
        return self.read()


@dataclass(slots=True)
class _Tracked:
    check: Check
    state: Hysteresis
    detail: str = "not checked yet"
    checked_at: float | None = None  # wall clock


class HealthMonitor:
    def __init__(
        self,
        config: HealthConfig,
        on_change: Callable[[bool, str], None],
        logger: logging.Logger,
        env: dict[str, str] | None = None,
    ) -> None:
        self.config = config
        self._on_change = on_change
        self._log = logger
        checks: list[Check] = [ProcessCheck(p) for p in config.track_process]
        if config.track_script:
            checks.append(ScriptCheck(config.track_script, config.timeout_s, logger, env))
        checks.extend(InterfaceCheck(i) for i in config.track_interface)
        self._tracked = [_Tracked(c, Hysteresis(config.rise, config.fall)) for c in checks]
        self._healthy = True
        self._task: asyncio.Task[None] | None = None
        self.rounds = 0

    @property
    def healthy(self) -> bool:
        return self._healthy

    @property
    def enabled(self) -> bool:
        return bool(self._tracked)

    def reason(self) -> str:
        bad = [t for t in self._tracked if t.state.healthy is False]
        return "; ".join(f"{t.check.kind} {t.check.name}: {t.detail}" for t in bad)

    def snapshot(self) -> list[dict[str, Any]]:
        return [
            {
                "name": t.check.name,
                "kind": t.check.kind,
                "healthy": t.state.healthy,
                "consecutive_ok": t.state.consecutive_ok,
                "consecutive_fail": t.state.consecutive_fail,
                "detail": t.detail,
                "checked_at": t.checked_at,
            }
            for t in self._tracked
        ]

    async def start(self) -> None:
        """Probe every check once (bounded by the script timeout), then keep
        probing every interval in the background. ``healthy`` is meaningful
        when this returns; an unhealthy start is reported through on_change."""
        if not self._tracked or self._task is not None:
            return
        await self.check_now()
        self._task = asyncio.get_running_loop().create_task(self._loop(), name="electiond-health")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()  # a running check script is killed with its group
            try:
                await task
            except asyncio.CancelledError:
                pass

    async def check_now(self) -> None:
        """One round: probe all checks concurrently and apply rise/fall."""
        results = await asyncio.gather(*(self._probe(t.check) for t in self._tracked))
        now = time.time()
        for tracked, (ok, detail) in zip(self._tracked, results):
            tracked.detail = detail
            tracked.checked_at = now
            if tracked.state.observe(ok):
                level = logging.INFO if tracked.state.healthy else logging.WARNING
                self._log.log(level, "health: %s %s is now %s: %s", tracked.check.kind, tracked.check.name,
                              "healthy" if tracked.state.healthy else "unhealthy", detail)
        self.rounds += 1
        healthy = all(t.state.healthy for t in self._tracked)
        if healthy != self._healthy:
            self._healthy = healthy
            reason = "recovered" if healthy else self.reason()
            try:
                self._on_change(healthy, reason)
            except Exception:
                self._log.exception("health: on_change callback failed")

    async def _probe(self, check: Check) -> tuple[bool, str]:
        try:
            return await check.probe()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a broken check counts as failing, never crashes the loop
            self._log.exception("health: %s %s failed to run", check.kind, check.name)
            return False, f"check error: {exc}"

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        next_at = loop.time() + self.config.interval_s
        while True:
            await asyncio.sleep(max(0.0, next_at - loop.time()))
            # a round that overran the interval does not cause a burst of rounds
            next_at = max(next_at + self.config.interval_s, loop.time())
            await self.check_now()
