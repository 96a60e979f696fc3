"""How late the shell's timers fire: the event loop's lag (issue 17).

A starved loop (CPU load, a VM stall) delays every timer, and with it the
leader's heartbeats and the followers' acks. The shell notes, each time its
one timer fires, how long after the instant it asked for; this keeps the
last, the worst in a sliding window, and how many wake-ups were later than
one heartbeat interval, for `electionctl status` (`loop_lag`).
"""

from __future__ import annotations

from collections import deque

# the worst lag is reported over this long, so a stall a minute ago still shows
WINDOW_S = 60.0


class LoopLag:
    def __init__(self, late_after_s: float) -> None:
        self._late_after_s = late_after_s
        self.last_s = 0.0
        self.late = 0  # wake-ups later than late_after_s, since start
        self.wakeups = 0
        # (time, lag) of past wake-ups whose lag was the window's worst so far
        self._worst: deque[tuple[float, float]] = deque()

    def fired(self, due: float, now: float) -> None:
        """The timer asked for ``due`` fired at ``now`` (monotonic seconds)."""
        lag_s = max(0.0, now - due)
        self.last_s = lag_s
        self.wakeups += 1
        if lag_s > self._late_after_s:
            self.late += 1
        worst = self._worst
        # a sliding maximum: drop entries no larger than this one, then old ones
        while worst and worst[-1][1] <= lag_s:
            worst.pop()
        worst.append((now, lag_s))
        while worst[0][0] < now - WINDOW_S:
            worst.popleft()

    def max_s(self, now: float) -> float:
        worst = self._worst
        while worst and worst[0][0] < now - WINDOW_S:
            worst.popleft()
        return worst[0][1] if worst else 0.0

    def snapshot(self, now: float) -> dict[str, float | int]:
        return {
            "last_ms": round(self.last_s * 1000, 2),
            "max_ms_60s": round(self.max_s(now) * 1000, 2),
            "late_wakeups": self.late,
            "wakeups": self.wakeups,
        }
