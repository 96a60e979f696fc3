"""Per-node simulated clocks on top of the simulator's true time.

Each host's monotonic clock starts at its own offset and runs at a rate
1 + drift with |drift| <= the configured bound; a one-off rate change
(a VM migration, an NTP slew) starts a new linear segment. Readings never go
backwards.
"""

from __future__ import annotations

import math


class SimClock:
    __slots__ = ("_t0", "_local0", "rate")

    def __init__(self, offset_s: float, rate: float) -> None:
        self._t0 = 0.0
        self._local0 = offset_s
        self.rate = rate

    def local(self, true_s: float) -> float:
        """The node's clock reading at true time ``true_s``."""
        return self._local0 + (true_s - self._t0) * self.rate

    def true_time_of(self, local_s: float) -> float:
        """The first true time at which this clock reads at least ``local_s``.

        Rounding could land a hair early, and a timer fired early would see
        ``now < deadline`` and be re-armed forever; step up to the first float
        that really reaches it.
        """
        t = self._t0 + (local_s - self._local0) / self.rate
        for _ in range(64):
            if self.local(t) >= local_s:
                return t
            t = math.nextafter(t, math.inf)
        return t

    def set_rate(self, true_s: float, rate: float) -> None:
        self._local0 = self.local(true_s)
        self._t0 = true_s
        self.rate = rate
