"""Programs' access to the local electiond's coordination: locks, barriers,
members and versioned config, blocking (``Client``) or asyncio (``AsyncClient``).

    client = Client()
    with client.lock("reindex", ttl_s=10) as holder:
        do_work(fencing_token=holder.token)
        if holder.lost.is_set(): ...        # renewal failed: stop touching the resource

Both talk to the control socket (``$ELECTIOND_SOCKET`` or
/run/electiond/control.sock), one connection per request. Refusals raise
``CoordRefused`` with the daemon's ``code`` (not_acquired, lock_lost,
version_mismatch, unavailable, unsupported, permission, bad_request). A
Python block cannot be killed the way ``electionctl lock`` kills its CMD, so
a holder here renews in the background and sets ``lost`` at its own
deadline (see coord/supervise.py); checking it, and passing the token to the
resource for fencing, is the program's job.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import threading
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

from electiond.coord.supervise import effective_ttl_s, holder_deadline_s, renew_at_s

DEFAULT_SOCKET = "/run/electiond/control.sock"
MAX_LINE_BYTES = 1024 * 1024
DEFAULT_KILL_GRACE_S = 2.0  # the margin a holder keeps before its lease could end
RETRY_S = 0.2


class ClientError(Exception):
    """The daemon could not be reached or answered nonsense."""


class CoordRefused(Exception):
    def __init__(self, message: str, code: str | None = None) -> None:
        super().__init__(message)
        self.code = code


def socket_path(path: str | None = None) -> str:
    return path or os.environ.get("ELECTIOND_SOCKET", DEFAULT_SOCKET)


def _line(cmd: str, args: dict[str, Any]) -> bytes:
    return json.dumps({"cmd": cmd, "args": args}).encode() + b"\n"


def _decode(line: bytes) -> dict[str, Any]:
    try:
        reply = json.loads(line)
        if not isinstance(reply, dict) or "ok" not in reply:
            raise ValueError
    except ValueError:
        raise ClientError(f"bad reply: {line[:200]!r}") from None
    if not reply["ok"]:
        if reply.get("code") == "busy":
            raise ClientError(f"daemon busy: {reply.get('error')}")
        raise CoordRefused(str(reply.get("error", "refused")), reply.get("code"))
    return reply


class _Holder:
    """What ``lock()`` yields: the token and whether the lock may be gone."""

    def __init__(self, name: str, token: int, deadline_s: float) -> None:
        self.name = name
        self.token = token
        self.deadline_s = deadline_s  # time.monotonic(): past it, act as if the lock were gone
        self.lost = threading.Event()

    def valid(self) -> bool:
        return not self.lost.is_set() and time.monotonic() < self.deadline_s


class Client:
    def __init__(self, path: str | None = None, timeout_s: float = 5.0) -> None:
        self.path = socket_path(path)
        self.timeout_s = timeout_s

    def call(self, cmd: str, args: dict[str, Any] | None = None, timeout_s: float | None = None) -> Any:
        with self._connect(timeout_s or self.timeout_s) as sock:
            sock.sendall(_line(cmd, args or {}))
            reader = sock.makefile("rb")
            line = reader.readline(MAX_LINE_BYTES)
        if not line:
            raise ClientError(f"{self.path}: closed without answering")
        return _decode(line).get("result")

    def stream(self, cmd: str, args: dict[str, Any] | None = None) -> Iterator[dict[str, Any]]:
        """Each event of a watch, as it comes; ends when the daemon ends it."""
        with self._connect(self.timeout_s) as sock:
            sock.sendall(_line(cmd, args or {}))
            sock.settimeout(None)  # a watch may be quiet for hours
            reader = sock.makefile("rb")
            while True:
                line = reader.readline(MAX_LINE_BYTES)
                if not line:
                    return
                yield _decode(line)["event"]

    def _connect(self, timeout_s: float) -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(timeout_s)
        try:
            sock.connect(self.path)
        except OSError as exc:
            sock.close()
            raise ClientError(f"cannot reach electiond at {self.path}: {exc}") from None
        return sock

    # ---- operations ------------------------------------------------------------------

    def acquire(self, name: str, ttl_s: float = 10.0, wait_s: float = 0.0, owner: str = "") -> dict[str, Any]:
        return self.call("lock.acquire", {"name": name, "ttl_s": ttl_s, "wait_s": wait_s,
                                          "owner": owner or f"pid{os.getpid()}"}, self.timeout_s + wait_s)

    def renew(self, name: str, token: int, ttl_s: float = 10.0, timeout_s: float | None = None) -> dict[str, Any]:
        return self.call("lock.renew", {"name": name, "token": token, "ttl_s": ttl_s}, timeout_s)

    def release(self, name: str, token: int) -> None:
        self.call("lock.release", {"name": name, "token": token})

    def lock(self, name: str, ttl_s: float = 10.0, wait_s: float = 30.0,
             kill_grace_s: float = DEFAULT_KILL_GRACE_S) -> "_LockContext":
        return _LockContext(self, name, ttl_s, wait_s, kill_grace_s)

    def barrier(self, name: str, count: int, timeout_s: float = 60.0, participant: str = "") -> int:
        return int(self.call("barrier.enter", {"name": name, "count": count, "timeout_s": timeout_s,
                                               "participant": participant or f"pid{os.getpid()}"},
                             self.timeout_s + timeout_s)["count"])

    def barrier_leave(self, name: str, timeout_s: float = 60.0, participant: str = "") -> int:
        return int(self.call("barrier.leave", {"name": name, "timeout_s": timeout_s,
                                               "participant": participant or f"pid{os.getpid()}"},
                             self.timeout_s + timeout_s)["count"])

    def members(self) -> dict[str, Any]:
        return self.call("members")

    def watch_members(self, from_version: int = 0) -> Iterator[dict[str, Any]]:
        return self.stream("members.watch", {"from_version": from_version})

    def get(self, key: str) -> dict[str, Any]:
        return self.call("config.get", {"key": key})

    def set(self, key: str, value: str) -> dict[str, Any]:
        return self.call("config.set", {"key": key, "value": value})

    def cas(self, key: str, value: str, version: int) -> dict[str, Any]:
        return self.call("config.cas", {"key": key, "value": value, "version": version})

    def delete(self, key: str) -> dict[str, Any]:
        return self.call("config.delete", {"key": key})

    def watch(self, prefix: str = "", from_version: int = 0) -> Iterator[dict[str, Any]]:
        return self.stream("config.watch", {"key": prefix, "from_version": from_version})


class _LockContext:
    def __init__(self, client: Client, name: str, ttl_s: float, wait_s: float, kill_grace_s: float) -> None:
        self.client, self.name, self.ttl_s, self.wait_s, self.kill_grace_s = client, name, ttl_s, wait_s, kill_grace_s
        self.holder: _Holder | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._drift_ppm = 1000.0

    def __enter__(self) -> _Holder:
        sent = time.monotonic()
        grant = self.client.acquire(self.name, self.ttl_s, self.wait_s)
        self._drift_ppm = float(grant.get("clock_drift_ppm", 1000.0))
        ttl = effective_ttl_s(self.ttl_s, float(grant["ttl_s"]))
        self.holder = _Holder(self.name, int(grant["token"]),
                              holder_deadline_s(sent, ttl, self._drift_ppm, self.kill_grace_s))
        self._thread = threading.Thread(target=self._renew, args=(sent,), daemon=True,
                                        name=f"electiond-lock-{self.name}")
        self._thread.start()
        return self.holder

    def _renew(self, sent: float) -> None:
        holder = self.holder
        assert holder is not None
        next_at = renew_at_s(sent, self.ttl_s)
        while not self._stop.is_set():
            now = time.monotonic()
            if now >= holder.deadline_s:
                holder.lost.set()
                return
            if now >= next_at:
                sent = time.monotonic()
                try:
                    grant = self.client.renew(self.name, holder.token, self.ttl_s,
                                              max(0.05, holder.deadline_s - sent))
                except CoordRefused as exc:
                    if exc.code == "lock_lost":
                        holder.lost.set()
                        return
                    next_at = now + RETRY_S
                except (ClientError, OSError):
                    next_at = now + RETRY_S
                else:
                    ttl = effective_ttl_s(self.ttl_s, float(grant["ttl_s"]))
                    holder.deadline_s = holder_deadline_s(sent, ttl, self._drift_ppm, self.kill_grace_s)
                    next_at = renew_at_s(sent, self.ttl_s)
            self._stop.wait(max(0.0, min(next_at, holder.deadline_s) - time.monotonic()))

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if self.holder is not None and not self.holder.lost.is_set():
            try:
                self.client.release(self.name, self.holder.token)
            except (CoordRefused, ClientError, OSError):
                pass  # the lease runs out by itself


class AsyncClient:
    """The same operations for asyncio programs."""

    def __init__(self, path: str | None = None, timeout_s: float = 5.0) -> None:
        self.path = socket_path(path)
        self.timeout_s = timeout_s

    async def call(self, cmd: str, args: dict[str, Any] | None = None, timeout_s: float | None = None) -> Any:
        return await asyncio.wait_for(self._call(cmd, args or {}), timeout_s or self.timeout_s)

    async def _call(self, cmd: str, args: dict[str, Any]) -> Any:
        try:
            reader, writer = await asyncio.open_unix_connection(self.path, limit=MAX_LINE_BYTES)
        except OSError as exc:
            raise ClientError(f"cannot reach electiond at {self.path}: {exc}") from None
        try:
            writer.write(_line(cmd, args))
            line = await reader.readline()
        finally:
            writer.close()
        if not line:
            raise ClientError(f"{self.path}: closed without answering")
        return _decode(line).get("result")

    async def stream(self, cmd: str, args: dict[str, Any] | None = None) -> AsyncIterator[dict[str, Any]]:
        try:
            reader, writer = await asyncio.open_unix_connection(self.path, limit=MAX_LINE_BYTES)
        except OSError as exc:
            raise ClientError(f"cannot reach electiond at {self.path}: {exc}") from None
        try:
            writer.write(_line(cmd, args or {}))
            while True:
                line = await reader.readline()
                if not line:
                    return
                yield _decode(line)["event"]
        finally:
            writer.close()

    def lock(self, name: str, ttl_s: float = 10.0, wait_s: float = 30.0,
             kill_grace_s: float = DEFAULT_KILL_GRACE_S) -> "_AsyncLock":
        return _AsyncLock(self, name, ttl_s, wait_s, kill_grace_s)

    async def barrier(self, name: str, count: int, timeout_s: float = 60.0, participant: str = "") -> int:
        return int((await self.call("barrier.enter", {"name": name, "count": count, "timeout_s": timeout_s,
                                                      "participant": participant or f"pid{os.getpid()}"},
                                    self.timeout_s + timeout_s))["count"])

    async def members(self) -> dict[str, Any]:
        return await self.call("members")

    def watch_members(self, from_version: int = 0) -> AsyncIterator[dict[str, Any]]:
        return self.stream("members.watch", {"from_version": from_version})

    async def get(self, key: str) -> dict[str, Any]:
        return await self.call("config.get", {"key": key})

    async def set(self, key: str, value: str) -> dict[str, Any]:
        return await self.call("config.set", {"key": key, "value": value})

    async def cas(self, key: str, value: str, version: int) -> dict[str, Any]:
        return await self.call("config.cas", {"key": key, "value": value, "version": version})

    async def delete(self, key: str) -> dict[str, Any]:
        return await self.call("config.delete", {"key": key})

    def watch(self, prefix: str = "", from_version: int = 0) -> AsyncIterator[dict[str, Any]]:
        return self.stream("config.watch", {"key": prefix, "from_version": from_version})


class _AsyncLock:
    def __init__(self, client: AsyncClient, name: str, ttl_s: float, wait_s: float, kill_grace_s: float) -> None:
        self.client, self.name, self.ttl_s, self.wait_s, self.kill_grace_s = client, name, ttl_s, wait_s, kill_grace_s
        self.holder: _Holder | None = None
        self._task: asyncio.Task | None = None
        self._drift_ppm = 1000.0

    async def __aenter__(self) -> _Holder:
        sent = time.monotonic()
        grant = await self.client.call("lock.acquire", {"name": self.name, "ttl_s": self.ttl_s, "wait_s": self.wait_s,
                                                        "owner": f"pid{os.getpid()}"},
                                       self.client.timeout_s + self.wait_s)
        self._drift_ppm = float(grant.get("clock_drift_ppm", 1000.0))
        ttl = effective_ttl_s(self.ttl_s, float(grant["ttl_s"]))
        self.holder = _Holder(self.name, int(grant["token"]),
                              holder_deadline_s(sent, ttl, self._drift_ppm, self.kill_grace_s))
        self._task = asyncio.get_running_loop().create_task(self._renew(sent))
        return self.holder

    async def _renew(self, sent: float) -> None:
        holder = self.holder
        assert holder is not None
        next_at = renew_at_s(sent, self.ttl_s)
        while True:
            now = time.monotonic()
            if now >= holder.deadline_s:
                holder.lost.set()
                return
            if now >= next_at:
                sent = time.monotonic()
                try:
                    grant = await self.client.call("lock.renew", {"name": self.name, "token": holder.token,
                                                                  "ttl_s": self.ttl_s},
                                                   max(0.05, holder.deadline_s - sent))
                except CoordRefused as exc:
                    if exc.code == "lock_lost":
                        holder.lost.set()
                        return
                    next_at = now + RETRY_S
                except (ClientError, OSError, asyncio.TimeoutError):
                    next_at = now + RETRY_S
                else:
                    ttl = effective_ttl_s(self.ttl_s, float(grant["ttl_s"]))
                    holder.deadline_s = holder_deadline_s(sent, ttl, self._drift_ppm, self.kill_grace_s)
                    next_at = renew_at_s(sent, self.ttl_s)
            await asyncio.sleep(max(0.0, min(next_at, holder.deadline_s) - time.monotonic()))

    async def __aexit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        if self.holder is not None and not self.holder.lost.is_set():
            try:
                await self.client.call("lock.release", {"name": self.name, "token": self.holder.token})
            except (CoordRefused, ClientError, OSError, asyncio.TimeoutError):
                pass
