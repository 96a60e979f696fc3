"""Failure detection and election retry policy (pure).

FIRST CUT: a randomized fixed timeout (Raft style). The adaptive
(phi-accrual) detector replaces the inside of LeaderWatch without changing
its interface; protocols only call reset/heartbeat/deadline/suspects.
"""

from __future__ import annotations

import random

from electiond.protocols.base import Settings


class LeaderWatch:
    """Watches the heartbeats of one peer (the current leader)."""

    def __init__(self, settings: Settings, rng: random.Random) -> None:
        self._settings = settings
        self._rng = rng
        self._last_heartbeat = 0.0
        self._timeout_s = self._random_election_timeout()

    def _random_election_timeout(self) -> float:
        s = self._settings
        return self._rng.uniform(s.election_timeout_min_s, s.election_timeout_max_s)

    def reset(self, now: float) -> None:
        """Forget the past (new leader, no leader): wait a fresh randomized timeout."""
        self._last_heartbeat = now
        self._timeout_s = self._random_election_timeout()

    def heartbeat(self, now: float) -> None:
        self._last_heartbeat = now

    def timeout_s(self) -> float:
        return self._timeout_s

    def deadline(self) -> float:
        return self._last_heartbeat + self._timeout_s

    def suspects(self, now: float) -> bool:
        return now >= self.deadline()

    def phi(self, now: float) -> float:
        """Suspicion level; with a fixed timeout, elapsed / timeout scaled to the threshold."""
        elapsed = max(0.0, now - self._last_heartbeat)
        return self._settings.suspicion_threshold * elapsed / self._timeout_s


class Backoff:
    """base * 2**attempt + U(0, jitter), capped at backoff_max_s; reset on success."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self.attempt = 0

    def next_delay_s(self, rng: random.Random) -> float:
        s = self._settings
        delay_s = min(s.backoff_max_s, s.backoff_base_s * (2 ** self.attempt))
        self.attempt = min(self.attempt + 1, 30)
        return delay_s + rng.uniform(0.0, s.backoff_jitter_s)

    def reset(self) -> None:
        self.attempt = 0
