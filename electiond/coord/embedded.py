"""EmbeddedBackend: the quorum-lease cluster itself serves config keys and locks.

The runtime creates one when protocol = quorum-lease (``Runtime.coord_backend()``)
and feeds it COORD_* messages and the timer; the pure rules live in
``electiond.coord.replica``. This module is the asyncio side only: request
ids, futures, retries with the same id, the store file.

Store file: ``<state_directory>/coord-store.json``, written whole (temp file,
fsync, rename) before any effect after it. A failed write stops the daemon
(fail-stop, exit status 75): its acknowledgements would otherwise claim a
durability the disk does not have.

The live member view is the replicated key ``_coord/members`` (written by
the serving leader when its view of live members changes), so its versions
are agreed cluster-wide. Barriers: participants poll (see
``ConfigReplica._barrier_poll``); the double barrier's leave polls too
(``ConfigReplica._barrier_leave``).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, Callable

from electiond.coord.backend import (
    ConfigEntry,
    Compacted,
    CoordBackend,
    CoordError,
    LockGrant,
    LockLost,
    MemberEvent,
    NotAcquired,
    Unavailable,
    VersionMismatch,
)
from electiond.coord.host import MEMBERS_KEY, RESERVED_PREFIX, CoordHost, decode_view, member_changes
from electiond.coord.replica import (
    BARRIER_DONE,
    ERR_COMPACTED,
    ERR_LOCK_LOST,
    ERR_NOT_ACQUIRED,
    ERR_UNAVAILABLE,
    ERR_VERSION,
    OP_BARRIER,
    OP_BARRIER_LEAVE,
    OP_CAS,
    OP_DELETE,
    OP_GET,
    OP_LOCK,
    OP_RENEW,
    OP_SET,
    OP_UNLOCK,
    Entry,
    Reply,
    StoreState,
)
from electiond.node import Node
from electiond.protocols.base import Message

log = logging.getLogger("electiond.coord")

STORE_FILE = "coord-store.json"
RESEND_S = 0.5  # no answer (a datagram lost, a leader gone): ask again with the same id
RETRY_PAUSE_S = 0.05
REQUEST_TIMEOUT_S = 5.0  # then Unavailable: the caller decides
WATCH_POLL_S = 0.05
BARRIER_POLL_S = 0.2  # well inside replica.BARRIER_LEASE_S


def load_store(directory: str | Path) -> StoreState | None:
    path = Path(directory) / STORE_FILE
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    log_entries = tuple(Entry(int(e[0]), int(e[1]), str(e[2]), str(e[3]), e[4], str(e[5]), int(e[6]))
                        for e in data["log"])
    return StoreState(int(data["term"]), int(data["commit"]), int(data["base_version"]), int(data["base_term"]),
                      tuple((str(k), None if v is None else str(v), int(ver)) for k, v, ver in data["base"]),
                      log_entries,
                      tuple((str(n), str(o), int(t), int(ttl)) for n, o, t, ttl in data.get("locks", [])))


def save_store(directory: str | Path, st: StoreState) -> None:
    path = Path(directory) / STORE_FILE
    data = {"term": st.term, "commit": st.commit, "base_version": st.base_version, "base_term": st.base_term,
            "base": [list(b) for b in st.base],
            "log": [[e.version, e.term, e.op, e.key, e.value, e.req, e.ttl_ms] for e in st.log],
            "locks": [list(lk) for lk in st.locks]}
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, json.dumps(data, separators=(",", ":")).encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    dfd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def _raise_for(r: Reply) -> None:
    if r.error == ERR_VERSION:
        raise VersionMismatch(f"{r.key!r} is at version {r.version}")
    if r.error == ERR_NOT_ACQUIRED:
        raise NotAcquired(f"lock {r.key!r} is held (token {r.version})")
    if r.error == ERR_LOCK_LOST:
        raise LockLost(f"lock {r.key!r}: token {r.version} no longer holds it")
    if r.error == ERR_UNAVAILABLE:
        raise Unavailable("no leader serving the store now")
    raise CoordError(r.error)


class EmbeddedBackend(CoordBackend):
    def __init__(self, node: Node, state_directory: str | Path,
                 process: Callable[[Callable[[float], list[Any]]], float]) -> None:
        """``process``: the runtime's one-event entry (reads the clock, runs
        the handler, carries out its effects in order, re-arms the timer)."""
        self.directory = Path(state_directory)
        self.host = CoordHost(node, load_store(self.directory))
        self._process = process
        self._waiting: dict[str, asyncio.Future[Reply]] = {}

    # ---- the runtime's side ---------------------------------------------------------

    def save(self, st: StoreState) -> None:
        save_store(self.directory, st)

    def reply(self, r: Reply) -> None:
        fut = self._waiting.get(r.req)
        if fut is not None and not fut.done():
            fut.set_result(r)

    # ---- requests ------------------------------------------------------------------

    async def _call(self, op: str, key: str, value: str | None = None, version: int = 0, ttl_ms: int = 0,
                    timeout_s: float = REQUEST_TIMEOUT_S) -> Reply:
        """One request id, asked until it gets an answer other than unavailable
        or the time is up (then Unavailable: the outcome of a write is unknown)."""
        req = uuid.uuid4().hex
        loop = asyncio.get_running_loop()
        give_up = loop.time() + timeout_s
        try:
            while True:
                fut: asyncio.Future[Reply] = loop.create_future()
                self._waiting[req] = fut
                self._process(lambda now: self.host.request(req, op, key, value, version, now, ttl_ms=ttl_ms))
                left = give_up - loop.time()
                try:
                    r = await asyncio.wait_for(fut, timeout=max(0.01, min(RESEND_S, left)))
                except asyncio.TimeoutError:
                    r = None
                if r is not None and not (not r.ok and r.error == ERR_UNAVAILABLE):
                    return r
                if loop.time() >= give_up:
                    raise Unavailable(f"no answer for {op} {key!r} within {timeout_s:g}s (outcome unknown)")
                await asyncio.sleep(RETRY_PAUSE_S)
        finally:
            self._waiting.pop(req, None)

    async def _ok(self, op: str, key: str, value: str | None = None, version: int = 0,
                  ttl_ms: int = 0) -> Reply:
        if key.startswith(RESERVED_PREFIX) and op != OP_GET:
            raise CoordError(f"keys under {RESERVED_PREFIX!r} are the daemon's own")
        r = await self._call(op, key, value, version, ttl_ms)
        if not r.ok:
            _raise_for(r)
        return r

    # ---- config ----------------------------------------------------------------------

    async def config_get(self, key: str) -> ConfigEntry:
        r = await self._ok(OP_GET, key)
        return ConfigEntry(key, r.value, r.version)

    async def config_set(self, key: str, value: str) -> ConfigEntry:
        r = await self._ok(OP_SET, key, value)
        return ConfigEntry(key, r.value, r.version)

    async def config_cas(self, key: str, value: str, version: int) -> ConfigEntry:
        r = await self._ok(OP_CAS, key, value, version)
        return ConfigEntry(key, r.value, r.version)

    async def config_delete(self, key: str) -> ConfigEntry:
        r = await self._ok(OP_DELETE, key)
        return ConfigEntry(key, None, r.version)

    async def config_watch(self, prefix: str, from_version: int) -> AsyncIterator[ConfigEntry]:
        # this node's committed log is a prefix of the cluster's: gap-free
        last = from_version
        while True:
            got = self.host.replica.changes_since(last, prefix)
            if got == ERR_COMPACTED:
                raise Compacted(f"required version {last} has been compacted (the store keeps versions from "
                                f"{self.host.replica.status()['oldest_watchable']} on): read the keys again and "
                                f"watch from {self.host.replica.status()['oldest_watchable']}")
            assert not isinstance(got, str)
            for e in got:
                last = e.version
                if (e.op == OP_SET or e.op == OP_DELETE) and e.key.startswith(prefix):
                    yield ConfigEntry(e.key, e.value, e.version)
            if not got:
                await asyncio.sleep(WATCH_POLL_S)

    # ---- locks -------------------------------------------------------------------------

    async def lock_acquire(self, name: str, owner: str, ttl_s: float, wait_s: float) -> LockGrant:
        """The holder must count its lease from before it called this (its own
        send time), on its own clock: the server holds the lock from when the
        request first reached it for ttl*(1+rho)/(1-rho)."""
        loop = asyncio.get_running_loop()
        give_up = loop.time() + wait_s
        ttl_ms = max(1, int(ttl_s * 1000))
        while True:
            r = await self._call(OP_LOCK, name, owner, 0, ttl_ms)
            if r.ok:
                return LockGrant(name, r.version, ttl_ms / 1000.0)
            if r.error != ERR_NOT_ACQUIRED or loop.time() >= give_up:
                _raise_for(r)
            await asyncio.sleep(min(0.1, max(0.0, give_up - loop.time())))

    async def lock_renew(self, name: str, token: int, ttl_s: float) -> LockGrant:
        ttl_ms = max(1, int(ttl_s * 1000))
        r = await self._ok(OP_RENEW, name, None, token, ttl_ms)
        return LockGrant(name, token, ttl_ms / 1000.0)

    async def lock_release(self, name: str, token: int) -> None:
        await self._ok(OP_UNLOCK, name, None, token)

    # ---- not in the embedded backend yet ----------------------------------------------------

    async def barrier_enter(self, name: str, participant: str, count: int, timeout_s: float) -> int:
        """Poll every BARRIER_POLL_S (each poll keeps us counted, also by a
        new leader) until the trip record names us."""
        loop = asyncio.get_running_loop()
        give_up = loop.time() + timeout_s
        while True:
            left = give_up - loop.time()
            if left <= 0:
                raise NotAcquired(f"barrier {name!r}: fewer than {count} participants within {timeout_s:g}s")
            try:
                r = await self._call(OP_BARRIER, name, participant, count, timeout_s=left)
            except Unavailable:
                continue  # loops to the NotAcquired above once the time is up
            if not r.ok:
                _raise_for(r)
            if r.value == BARRIER_DONE:
                return r.version
            await asyncio.sleep(min(BARRIER_POLL_S, max(0.0, give_up - loop.time())))

    async def barrier_leave(self, name: str, participant: str, timeout_s: float) -> int:
        """Poll until the committed trip record is empty: every participant
        that passed the barrier has left (our first poll removes us)."""
        loop = asyncio.get_running_loop()
        give_up = loop.time() + timeout_s
        left_in = -1
        while True:
            left = give_up - loop.time()
            if left <= 0:
                raise NotAcquired(f"barrier {name!r}: {max(left_in, 0)} participants still in after {timeout_s:g}s")
            try:
                r = await self._call(OP_BARRIER_LEAVE, name, participant, timeout_s=left)
            except Unavailable:
                continue
            if not r.ok:
                _raise_for(r)
            if r.value == BARRIER_DONE:
                return 0
            left_in = r.version
            await asyncio.sleep(min(BARRIER_POLL_S, max(0.0, give_up - loop.time())))

    async def members(self) -> MemberEvent:
        r = await self._ok(OP_GET, MEMBERS_KEY)
        live, suspected = decode_view(r.value)
        return MemberEvent(r.version, "", "view", live, suspected)

    async def members_watch(self, from_version: int) -> AsyncIterator[MemberEvent]:
        """One event per node that joined, became suspected or left, each
        carrying the view's version (several events of one change share it;
        see ``host.member_changes``)."""
        replica = self.host.replica
        start = int(replica.status()["oldest_watchable"])
        before: str | None = replica.base_value(MEMBERS_KEY) if start else None
        async for e in self.config_watch(MEMBERS_KEY, start):
            if e.version > from_version:
                live, suspected = decode_view(e.value)
                for name, change in member_changes(before, e.value):
                    yield MemberEvent(e.version, name, change, live, suspected)
            before = e.value

