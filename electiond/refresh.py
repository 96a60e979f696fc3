"""When the refresh hook is due: every [hooks] refresh_interval while leader.

Pure bookkeeping; the runtime passes its clock. Keepalived users' stale ARP
caches come from switches and routers that ignore or lose the gratuitous
ARPs sent at promotion, so the leader re-announces on a period, and at once
when a split brain heals in its favour (the loser's ARPs may have won the
caches meanwhile).
"""

from __future__ import annotations

INF = float("inf")

REASON_INTERVAL = "interval"
REASON_SPLIT_BRAIN = "split_brain_healed"


class RefreshSchedule:
    def __init__(self, interval_s: float) -> None:
        self.interval_s = interval_s
        self.term: int | None = None  # the promote's term while leader, else None
        self.next_at = INF

    def promoted(self, term: int, now: float) -> None:
        # the promote hook announces; the first refresh is one interval later
        self.term = term
        self.next_at = now + self.interval_s

    def demoted(self) -> None:
        self.term = None
        self.next_at = INF

    def due(self, now: float) -> int | None:
        """The term to refresh now, if a refresh is due (then the next is
        one interval from now: intervals missed while busy are not made up)."""
        if self.term is None or now < self.next_at:
            return None
        self.next_at = now + self.interval_s
        return self.term

    def at_once(self, now: float) -> int | None:
        """A refresh out of turn (a split brain healed); restarts the period."""
        if self.term is None:
            return None
        self.next_at = now + self.interval_s
        return self.term
