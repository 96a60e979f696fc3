"""The shell half of protocol = etcd: carries EtcdRequest effects out.

The runtime hands every EtcdRequest here; each becomes one call through
``etcdclient`` in its own task, and its answer goes back into the node as an
``EtcdReply`` (or, for the watch, ``WatchUpdate``s) through the runtime's
``_process``, which lets time pass first: a reply that arrives after a freeze
finds the lease already checked. Nothing here decides anything.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from electiond.etcdclient import ClientOptions, EtcdClient, EtcdError, b64, prefix_end, unb64
from electiond.protocols.etcd import (
    OP_CAMPAIGN,
    OP_DELETE,
    OP_GRANT,
    OP_KEEPALIVE,
    OP_PUT,
    OP_RANGE,
    OP_REVOKE,
    OP_WATCH,
    EtcdKv,
    EtcdReply,
    EtcdRequest,
    WatchEvent,
    WatchUpdate,
)

log = logging.getLogger("electiond.etcd")
CLOSE_WAIT_S = 2.0  # on shutdown: how long the last calls (resign, revoke) may take


def _int(value: Any) -> int:
    try:
        return int(value or 0)  # the gateway writes 64-bit numbers as strings
    except (TypeError, ValueError):
        return 0


class EtcdDriver:
    def __init__(self, options: ClientOptions, prefix: str,
                 deliver: Callable[[object], None]) -> None:
        self.client = EtcdClient(options)
        self.prefix = prefix
        self._deliver = deliver  # feeds one reply or watch update into the node
        self._tasks: set[asyncio.Task] = set()
        self._watch: asyncio.Task | None = None
        self._closed = False
        self._errors_logged: set[str] = set()

    @classmethod
    def for_config(cls, etcd: Any, deliver: Callable[[object], None]) -> "EtcdDriver":
        """From config.EtcdConfig."""
        options = ClientOptions(etcd.endpoints, etcd.request_timeout_s, etcd.ca_file, etcd.cert_file,
                                etcd.key_file, etcd.user, etcd.password)
        return cls(options, etcd.prefix, deliver)

    def carry_out(self, request: EtcdRequest) -> None:
        if self._closed and request.op not in (OP_DELETE, OP_REVOKE):
            return
        if request.op == OP_WATCH:
            if self._watch is not None:
                self._watch.cancel()
            self._watch = self._spawn(self._run_watch(request))
        else:
            self._spawn(self._run_call(request))

    async def close(self) -> None:
        """Let the last calls (a resign, the revoke) finish, briefly; drop the watch."""
        self._closed = True
        if self._watch is not None:
            self._watch.cancel()
        pending = [t for t in self._tasks if t is not self._watch and not t.done()]
        if pending:
            await asyncio.wait(pending, timeout=CLOSE_WAIT_S)
        for task in list(self._tasks):
            task.cancel()

    def status(self) -> list[dict[str, Any]]:
        return self.client.status()

    # ---- inside ---------------------------------------------------------------------

    def _spawn(self, coro: Any) -> asyncio.Task:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)  # the loop holds tasks only weakly
        task.add_done_callback(self._tasks.discard)
        return task

    def _give(self, event: object) -> None:
        if not self._closed:
            self._deliver(event)

    async def _run_call(self, request: EtcdRequest) -> None:
        try:
            reply = await self._call(request)
        except EtcdError as exc:
            reply = EtcdReply(request.call_id, False, error=str(exc))
            if str(exc) not in self._errors_logged and len(self._errors_logged) < 20:
                # once per distinct error until etcd answers again: a refused
                # password or a lost quorum repeats on every retry
                self._errors_logged.add(str(exc))
                log.warning("etcd %s failed: %s", request.op, exc)
        else:
            if self._errors_logged:
                log.info("etcd answers again (%s)", request.op)
                self._errors_logged.clear()
        self._give(reply)

    async def _call(self, r: EtcdRequest) -> EtcdReply:
        key = self.prefix + r.key
        if r.op == OP_GRANT:
            a = await self.client.call("/v3/lease/grant", {"TTL": r.ttl_s})
            return EtcdReply(r.call_id, True, revision=self._revision(a), lease_id=_int(a.get("ID")),
                             ttl_s=_int(a.get("TTL")))
        if r.op == OP_KEEPALIVE:
            a = await self.client.call("/v3/lease/keepalive", {"ID": r.lease_id})
            # no TTL in the answer: etcd does not know the lease (it expired)
            return EtcdReply(r.call_id, True, revision=self._revision(a), lease_id=_int(a.get("ID")),
                             ttl_s=_int(a.get("TTL")))
        if r.op == OP_CAMPAIGN:
            a = await self.client.call("/v3/kv/txn", {
                "compare": [{"key": b64(key), "target": "CREATE", "create_revision": 0}],
                "success": [{"request_put": {"key": b64(key), "value": b64(r.value), "lease": r.lease_id}}],
                "failure": [{"request_range": {"key": b64(key)}}],
            })
            revision = self._revision(a)
            if a.get("succeeded"):
                return EtcdReply(r.call_id, True, revision=revision, create_revision=revision)
            kvs = (a.get("responses") or [{}])[0].get("response_range", {}).get("kvs") or []
            created = _int(kvs[0].get("create_revision")) if kvs else 0
            return EtcdReply(r.call_id, created > 0, error="" if created else "key vanished",
                             revision=revision, create_revision=created, succeeded=False)
        if r.op == OP_RANGE:
            a = await self.client.call("/v3/kv/range", {"key": b64(self.prefix), "range_end": prefix_end(self.prefix)})
            kvs = tuple(self._kv(kv) for kv in a.get("kvs") or [])
            return EtcdReply(r.call_id, True, revision=self._revision(a), kvs=kvs)
        if r.op == OP_PUT:
            a = await self.client.call("/v3/kv/put", {"key": b64(key), "value": b64(r.value), "lease": r.lease_id})
            return EtcdReply(r.call_id, True, revision=self._revision(a))
        if r.op == OP_DELETE:
            a = await self.client.call("/v3/kv/deleterange", {"key": b64(key)})
            return EtcdReply(r.call_id, True, revision=self._revision(a))
        if r.op == OP_REVOKE:
            a = await self.client.call("/v3/lease/revoke", {"ID": r.lease_id})
            return EtcdReply(r.call_id, True, revision=self._revision(a))
        return EtcdReply(r.call_id, False, error=f"unknown operation {r.op!r}")

    async def _run_watch(self, r: EtcdRequest) -> None:
        body = {"create_request": {"key": b64(self.prefix), "range_end": prefix_end(self.prefix),
                                   "start_revision": r.start_revision, "progress_notify": True}}
        error = "ended"
        compact = 0
        try:
            async for message in self.client.watch(body):
                if "error" in message:
                    err = message["error"]
                    error = str(err.get("message", err) if isinstance(err, dict) else err)
                    break
                result = message.get("result") or {}
                revision = self._revision(result)
                if result.get("canceled"):
                    compact = _int(result.get("compact_revision"))
                    error = str(result.get("cancel_reason") or "canceled by etcd")
                    break
                events = tuple(
                    WatchEvent("delete" if e.get("type") == "DELETE" else "put",
                               self._strip(unb64((e.get("kv") or {}).get("key"))),
                               _int((e.get("kv") or {}).get("create_revision")),
                               _int((e.get("kv") or {}).get("mod_revision")))
                    for e in result.get("events") or []
                )
                self._give(WatchUpdate(r.call_id, created=bool(result.get("created")), events=events,
                                       revision=revision))
        except asyncio.CancelledError:
            raise
        except (EtcdError, OSError, ValueError, asyncio.TimeoutError) as exc:
            error = str(exc) or type(exc).__name__
            self.client.rotate()
        self._give(WatchUpdate(r.call_id, ended=True, error=error, compact_revision=compact))

    def _strip(self, key: str) -> str:
        return key[len(self.prefix):] if key.startswith(self.prefix) else key

    def _kv(self, kv: dict[str, Any]) -> EtcdKv:
        return EtcdKv(self._strip(unb64(kv.get("key"))), unb64(kv.get("value")), _int(kv.get("create_revision")),
                      _int(kv.get("lease")))

    @staticmethod
    def _revision(answer: dict[str, Any]) -> int:
        return _int((answer.get("header") or {}).get("revision"))
