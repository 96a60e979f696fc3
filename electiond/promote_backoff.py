"""How long a node whose promote hooks keep failing stays out of elections.

Pure bookkeeping for Node: each consecutive failure doubles the wait
(``base_s * 2**(failures-1)``, capped, plus up to half of it as jitter so
that nodes failing together do not return together); after
``max_failures`` in a row the node is ``exhausted`` and stays in FAULT
until something gives a reason to believe the hook would now succeed.
A success resets everything.
"""

from __future__ import annotations

import random


class PromoteBackoff:
    __slots__ = ("max_failures", "base_s", "cap_s", "failures", "until", "_rng")

    def __init__(self, max_failures: int, base_s: float, cap_s: float, rng: random.Random) -> None:
        self.max_failures = max_failures  # 0: never FAULT, only back off
        self.base_s = base_s
        self.cap_s = cap_s
        self.failures = 0  # consecutive
        self.until = float("-inf")  # local time the current wait ends
        self._rng = rng

    @property
    def exhausted(self) -> bool:
        return self.max_failures > 0 and self.failures >= self.max_failures

    def failed(self, now: float) -> float:
        """Count one failure; return the wait before standing again (seconds)."""
        self.failures += 1
        wait_s = min(self.cap_s, self.base_s * 2 ** (self.failures - 1))
        wait_s += self._rng.uniform(0.0, wait_s / 2)
        self.until = now + wait_s
        return wait_s

    def reset(self) -> None:
        self.failures = 0
        self.until = float("-inf")
