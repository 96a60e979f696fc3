"""A small in-memory CoordBackend for the surface tests (control socket,
electionctl, electiond.client): one process, one clock, no replication."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

from electiond.coord.backend import (
    Compacted,
    ConfigEntry,
    CoordBackend,
    LockGrant,
    LockLost,
    MemberEvent,
    NotAcquired,
    VersionMismatch,
)

POLL_S = 0.02


class FakeBackend(CoordBackend):
    def __init__(self) -> None:
        self.version = 0
        self.locks: dict[str, tuple[int, float]] = {}  # name -> (token, expires at, monotonic)
        self.config: dict[str, ConfigEntry] = {}
        self.history: list[ConfigEntry] = []
        self.barriers: dict[str, set[str]] = {}
        self.member_events: list[MemberEvent] = [MemberEvent(1, "n1", "joined", ("n1",))]
        self.renewals = 0
        self.refuse_renewals = False
        self.oldest_watchable = 0  # a watch from below it is refused (compacted), as the real backends do

    def _next(self) -> int:
        self.version += 1
        return self.version

    async def lock_acquire(self, name: str, owner: str, ttl_s: float, wait_s: float) -> LockGrant:
        deadline = time.monotonic() + wait_s
        while True:
            held = self.locks.get(name)
            if held is None or held[1] <= time.monotonic():
                token = self._next()
                self.locks[name] = (token, time.monotonic() + ttl_s)
                return LockGrant(name, token, ttl_s)
            if time.monotonic() >= deadline:
                raise NotAcquired(f"lock {name!r} is held")
            await asyncio.sleep(POLL_S)

    async def lock_renew(self, name: str, token: int, ttl_s: float) -> LockGrant:
        held = self.locks.get(name)
        if self.refuse_renewals or held is None or held[0] != token or held[1] <= time.monotonic():
            raise LockLost(f"lock {name!r} is not held with token {token}")
        self.renewals += 1
        self.locks[name] = (token, time.monotonic() + ttl_s)
        return LockGrant(name, token, ttl_s)

    async def lock_release(self, name: str, token: int) -> None:
        held = self.locks.get(name)
        if held is None or held[0] != token:
            raise LockLost(f"lock {name!r} is not held with token {token}")
        del self.locks[name]

    async def barrier_enter(self, name: str, participant: str, count: int, timeout_s: float) -> int:
        entered = self.barriers.setdefault(name, set())
        entered.add(participant)
        deadline = time.monotonic() + timeout_s
        passed = False
        try:
            while len(entered) < count:
                if time.monotonic() >= deadline:
                    raise NotAcquired(f"barrier {name!r}: {len(entered)} of {count}")
                await asyncio.sleep(POLL_S)
            passed = True
            return len(entered)
        finally:
            if not passed:
                entered.discard(participant)

    async def barrier_leave(self, name: str, participant: str, timeout_s: float) -> int:
        entered = self.barriers.setdefault(name, set())
        entered.discard(participant)
        deadline = time.monotonic() + timeout_s
        while entered:
            if time.monotonic() >= deadline:
                raise NotAcquired(f"barrier {name!r}: {len(entered)} still in")
            await asyncio.sleep(POLL_S)
        return 0

    async def members(self) -> MemberEvent:
        return self.member_events[-1]

    async def members_watch(self, from_version: int) -> AsyncIterator[MemberEvent]:
        sent = 0
        while True:
            # counted one by one: events appended while we were suspended at a yield are still sent
            while sent < len(self.member_events):
                event = self.member_events[sent]
                sent += 1
                if event.version > from_version:
                    yield event
            await asyncio.sleep(POLL_S)

    async def config_get(self, key: str) -> ConfigEntry:
        return self.config.get(key, ConfigEntry(key, None, 0))

    def _write(self, key: str, value: str | None) -> ConfigEntry:
        entry = ConfigEntry(key, value, self._next())
        self.config[key] = entry
        self.history.append(entry)
        return entry

    async def config_set(self, key: str, value: str) -> ConfigEntry:
        return self._write(key, value)

    async def config_cas(self, key: str, value: str, version: int) -> ConfigEntry:
        current = self.config.get(key, ConfigEntry(key, None, 0))
        if current.version != version:
            raise VersionMismatch(f"config {key!r} is at version {current.version}, not {version}")
        return self._write(key, value)

    async def config_delete(self, key: str) -> ConfigEntry:
        return self._write(key, None)

    async def config_watch(self, prefix: str, from_version: int) -> AsyncIterator[ConfigEntry]:
        if from_version < self.oldest_watchable:
            raise Compacted(f"required version {from_version} has been compacted")
        sent = 0
        while True:
            while sent < len(self.history):
                entry = self.history[sent]
                sent += 1
                if entry.key.startswith(prefix) and entry.version > from_version:
                    yield entry
            await asyncio.sleep(POLL_S)
