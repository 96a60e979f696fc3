"""The control socket's coordination commands, mapped onto a CoordBackend.

``dispatch`` checks the arguments (a wrong one is a BadRequest, before the
backend is asked anything) and returns either an awaitable (one reply) or an
async iterator (``members.watch``, ``config.watch``: one reply line per item,
see control.py). The backend comes from ``Runtime.coord_backend()``; None
means the protocol cannot coordinate (bully, ring have no replicated state).
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Awaitable
from typing import Any

from electiond.coord.backend import CoordBackend, CoordError

LOCK_COMMANDS = frozenset({"lock.acquire", "lock.renew", "lock.release"})
BARRIER_COMMANDS = frozenset({"barrier.enter", "barrier.leave"})
CONFIG_READS = frozenset({"config.get", "config.watch"})
CONFIG_WRITES = frozenset({"config.set", "config.cas", "config.delete"})
MEMBER_COMMANDS = frozenset({"members", "members.watch"})
STREAMING = frozenset({"members.watch", "config.watch"})
COORD_COMMANDS = LOCK_COMMANDS | BARRIER_COMMANDS | CONFIG_READS | CONFIG_WRITES | MEMBER_COMMANDS
# what a script can use to get in another host's way (hold a lock, block a
# barrier, change shared config): root or [control] admin_group, like transfer
COORD_MUTATING = LOCK_COMMANDS | BARRIER_COMMANDS | CONFIG_WRITES
NO_BACKEND = "coordination needs protocol = quorum-lease or etcd"
MAX_NAME_CHARS = 200
MAX_VALUE_BYTES = 32 * 1024  # well under the control socket's 64 KiB request bound
MAX_TTL_S = 3600.0
MAX_WAIT_S = 3600.0
MAX_BARRIER_COUNT = 10_000


class NoBackend(CoordError):
    code = "unsupported"


def _name(args: dict[str, Any], field: str = "name") -> str:
    from electiond.control import BadRequest

    value = args.get(field)
    if not isinstance(value, str) or not value or len(value) > MAX_NAME_CHARS or "\0" in value:
        raise BadRequest(f"'{field}' must be a non-empty string of at most {MAX_NAME_CHARS} characters")
    return value


def _number(args: dict[str, Any], field: str, default: float | None, low: float, high: float) -> float:
    from electiond.control import BadRequest

    value = args.get(field, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
        raise BadRequest(f"'{field}' must be a number from {low:g} to {high:g}")
    return float(value)


def _int(args: dict[str, Any], field: str, default: int | None, low: int, high: int) -> int:
    from electiond.control import BadRequest

    value = args.get(field, default)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise BadRequest(f"'{field}' must be an integer from {low} to {high}")
    return value


def _value(args: dict[str, Any]) -> str:
    from electiond.control import BadRequest

    value = args.get("value")
    if not isinstance(value, str) or len(value.encode()) > MAX_VALUE_BYTES:
        raise BadRequest(f"'value' must be a string of at most {MAX_VALUE_BYTES} bytes")
    return value


def as_dict(item: Any) -> dict[str, Any]:
    out = dataclasses.asdict(item)
    for key in ("members", "suspected"):
        if key in out:
            out[key] = list(out[key])
    return out


async def _one(awaitable: Awaitable[Any]) -> dict[str, Any]:
    return as_dict(await awaitable)


async def _stream(items: AsyncIterator[Any]) -> AsyncIterator[dict[str, Any]]:
    async for item in items:
        yield as_dict(item)


def dispatch(backend: CoordBackend | None, node_name: str, clock_drift_ppm: float, name: str,
             args: dict[str, Any], protocol: str = "") -> Any:
    """One coordination command; ``name`` is in COORD_COMMANDS."""
    if backend is None:
        raise NoBackend(f"{NO_BACKEND} (this cluster runs {protocol})" if protocol else NO_BACKEND)
    b = backend
    if name == "lock.acquire":
        lock, ttl_s = _name(args), _number(args, "ttl_s", 10.0, 1.0, MAX_TTL_S)
        wait_s = _number(args, "wait_s", 0.0, 0.0, MAX_WAIT_S)
        owner = f"{node_name}/{args.get('owner') or '?'}"[:MAX_NAME_CHARS]

        async def acquire() -> dict[str, Any]:
            grant = as_dict(await b.lock_acquire(lock, owner, ttl_s, wait_s))
            # the holder stops its CMD within its own lease, counted with this drift bound
            grant["clock_drift_ppm"] = clock_drift_ppm
            return grant
        return acquire()
    if name == "lock.renew":
        return _one(b.lock_renew(_name(args), _int(args, "token", None, 1, 2**63), _number(args, "ttl_s", 10.0, 1.0,
                                                                                          MAX_TTL_S)))
    if name == "lock.release":
        lock, token = _name(args), _int(args, "token", None, 1, 2**63)

        async def release() -> dict[str, Any]:
            await b.lock_release(lock, token)
            return {"released": True, "name": lock, "token": token}
        return release()
    if name in BARRIER_COMMANDS:
        barrier, who = _name(args), f"{node_name}/{_name(args, 'participant')}"
        timeout_s = _number(args, "timeout_s", 60.0, 0.0, MAX_WAIT_S)
        if name == "barrier.enter":
            count = _int(args, "count", None, 1, MAX_BARRIER_COUNT)

            async def enter() -> dict[str, Any]:
                return {"name": barrier, "count": await b.barrier_enter(barrier, who, count, timeout_s)}
            return enter()

        async def leave() -> dict[str, Any]:
            return {"name": barrier, "count": await b.barrier_leave(barrier, who, timeout_s)}
        return leave()
    if name == "members":
        return _one(b.members())
    if name == "members.watch":
        return _stream(b.members_watch(_int(args, "from_version", 0, 0, 2**63)))
    if name == "config.get":
        return _one(b.config_get(_name(args, "key")))
    if name == "config.set":
        return _one(b.config_set(_name(args, "key"), _value(args)))
    if name == "config.cas":
        return _one(b.config_cas(_name(args, "key"), _value(args), _int(args, "version", None, 0, 2**63)))
    if name == "config.delete":
        return _one(b.config_delete(_name(args, "key")))
    if name == "config.watch":
        prefix = args.get("key", "")
        if not isinstance(prefix, str) or len(prefix) > MAX_NAME_CHARS:
            from electiond.control import BadRequest

            raise BadRequest(f"'key' must be a string of at most {MAX_NAME_CHARS} characters")
        return _stream(b.config_watch(prefix, _int(args, "from_version", 0, 0, 2**63)))
    raise AssertionError(name)
