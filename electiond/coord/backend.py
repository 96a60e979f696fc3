"""The one interface every coordination backend implements.

The daemon's control socket maps the ``lock.*``, ``barrier.*``, ``members``
and ``config.*`` commands onto these methods; ``electionctl`` and
``electiond.client`` only ever speak to the local daemon's socket, so a script
does not care which backend serves it.

All durations are seconds on the serving daemon's monotonic clock. A method
either returns its documented value or raises one of the errors below; a
backend never answers "maybe": a write whose outcome is unknown (the leader
changed mid-write) raises ``Unavailable`` and the client retries.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from electiond.protocols.base import CommandError


class CoordError(CommandError):
    """A refused coordination request; ``code`` goes into the control reply."""

    code = "coord"


class NotAcquired(CoordError):
    code = "not_acquired"  # a lock or barrier not obtained within the wait


class LockLost(CoordError):
    code = "lock_lost"  # a renewal for a token that no longer holds the lock


class VersionMismatch(CoordError):
    code = "version_mismatch"  # cas against a version that is not the current one


class Compacted(CoordError):
    code = "compacted"  # a watch from a version older than the backend keeps: read again, watch from later


class Unavailable(CoordError):
    code = "unavailable"  # no leader / no quorum / etcd unreachable now: retry later


@dataclass(frozen=True, slots=True)
class LockGrant:
    name: str
    token: int  # strictly increasing per lock name, cluster-wide, across leaders
    ttl_s: float  # the lease the server granted, counted from when it received the request


@dataclass(frozen=True, slots=True)
class ConfigEntry:
    key: str
    value: str | None  # None: deleted
    version: int  # cluster-wide, strictly increasing; never reused with another value


@dataclass(frozen=True, slots=True)
class MemberEvent:
    version: int  # agreed across the cluster: the same version means the same view
    node: str
    change: str  # "joined" | "left" | "suspected"
    members: tuple[str, ...]  # the live view after the change
    suspected: tuple[str, ...] = ()  # not heard for a while, not yet left


class CoordBackend(ABC):
    @abstractmethod
    async def lock_acquire(self, name: str, owner: str, ttl_s: float, wait_s: float) -> LockGrant: ...

    @abstractmethod
    async def lock_renew(self, name: str, token: int, ttl_s: float) -> LockGrant: ...

    @abstractmethod
    async def lock_release(self, name: str, token: int) -> None: ...

    @abstractmethod
    async def barrier_enter(self, name: str, participant: str, count: int, timeout_s: float) -> int:
        """Returns once ``count`` live participants have entered (the count)."""

    @abstractmethod
    async def barrier_leave(self, name: str, participant: str, timeout_s: float) -> int:
        """Double barrier: returns once every participant has left (0)."""

    @abstractmethod
    async def members(self) -> MemberEvent: ...

    @abstractmethod
    def members_watch(self, from_version: int) -> AsyncIterator[MemberEvent]: ...

    @abstractmethod
    async def config_get(self, key: str) -> ConfigEntry: ...

    @abstractmethod
    async def config_set(self, key: str, value: str) -> ConfigEntry: ...

    @abstractmethod
    async def config_cas(self, key: str, value: str, version: int) -> ConfigEntry: ...

    @abstractmethod
    async def config_delete(self, key: str) -> ConfigEntry: ...

    @abstractmethod
    def config_watch(self, prefix: str, from_version: int) -> AsyncIterator[ConfigEntry]:
        """Every change to keys under ``prefix`` with a version above
        ``from_version``, in version order, with no gaps."""

    def close(self) -> Any:
        return None
