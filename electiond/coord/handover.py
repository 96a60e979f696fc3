"""Run-as-leader supervisors that a voluntary hand-over waits for (asyncio side).

``electionctl run-as-leader`` registers over a control stream
(``leader.supervise {stop_within_s}``) while its CMD runs and hangs up once
CMD is dead. When this node hands leadership over (stepdown, transfer,
pause, becoming ineligible, shutdown), the runtime tells the protocol that
its demote work is done (which releases the followers and wakes the target)
only after the demote hooks finished AND every registered supervisor hung
up, or the longest ``stop_within_s`` any of them announced has passed,
capped at MAX_WAIT_S: a supervisor that dies or hangs delays a hand-over by
a bounded time, never forever. The bound a supervisor announces is what it
needs to notice the demotion (one poll) and kill CMD (its grace).
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator
from typing import Any

MAX_WAIT_S = 10.0  # the longest any hand-over waits for supervisors


class SupervisorRegistry:
    def __init__(self) -> None:
        self._live: dict[int, float] = {}  # id -> stop_within_s
        self._ids = itertools.count(1)
        self._changed = asyncio.Event()
        self.waited = 0  # hand-overs that had to wait for a supervisor (status)
        self.timed_out = 0  # of those, ones whose supervisors did not hang up in time

    def count(self) -> int:
        return len(self._live)

    def status(self) -> dict[str, Any]:
        return {"registered": len(self._live), "handovers_waited": self.waited,
                "handovers_timed_out": self.timed_out}

    async def supervise(self, stop_within_s: float) -> AsyncIterator[dict[str, Any]]:
        """The ``leader.supervise`` stream: registered until the client hangs up
        (the control server then cancels and closes this generator)."""
        sid = next(self._ids)
        self._live[sid] = max(0.0, min(stop_within_s, MAX_WAIT_S))
        try:
            yield {"registered": sid}
            await asyncio.get_running_loop().create_future()  # never done: only the hang-up ends it
        finally:
            del self._live[sid]
            self._changed.set()

    async def wait_stopped(self) -> None:
        """Until no supervisor is registered, or the longest announced bound passed."""
        if not self._live:
            return
        self.waited += 1
        loop = asyncio.get_running_loop()
        give_up = loop.time() + max(self._live.values())
        while self._live:
            left = give_up - loop.time()
            if left <= 0:
                self.timed_out += 1
                return
            self._changed.clear()
            try:
                await asyncio.wait_for(self._changed.wait(), left)
            except asyncio.TimeoutError:
                pass
