"""protocol = etcd: the coordination primitives on etcd's own KV.

Keys live under ``<prefix minus its slash>.coord/`` (for the default prefix
``/electiond/<cluster>/``: ``/electiond/<cluster>.coord/``), outside the
election prefix, so the election's watch and reads never see them.

- Locks: ``locks/<name>``, created only if absent (txn on create_revision
  = 0) under a lease of the requested TTL; the token is the key's create
  revision, which etcd makes strictly increasing across the whole etcd
  cluster. Renewal finds the key, checks its create revision is the token
  and keeps its lease alive; release deletes it by a txn on the same check
  and revokes the lease. Renewal and release are stateless here, so a
  holder whose daemon restarted can still renew.
- Config: ``config/<key>``; version = the key's mod revision (a deleted key
  reads as version 0), cas = txn on mod_revision; watch = etcd's watch from
  ``from_version + 1``, so a stream has no gaps (until etcd compacts).
- Barriers: ``barriers/<name>/in/<participant>`` under the daemon's own
  election lease (its session: the lease its member key lives by), so the
  entry is ephemeral as in ZooKeeper's double barrier: a participant whose
  daemon or host dies disappears when the member does, and the others'
  ``--leave`` goes on. The count is the number of such keys. The first
  participant to see the count reached writes ``barriers/<name>/ready``
  (under a lease of READY_LINGER_S) so that one who looks later still passes.
  Without a session lease yet (etcd just became reachable) a lease of
  BARRIER_LEASE_S kept alive by this daemon stands in.
- Members: the election's own keys (``<prefix>election/<lease>`` = node
  name): a node is a member while one of its keys lives; versions are etcd
  revisions, the same on every host. Suspected: ``suspects/<lease>`` (value
  the node) under that member's own lease, written by any daemon watching
  members once the lease has less than half its TTL left (``overdue``) and
  deleted once it was refreshed; it goes with the lease, at the revision the
  member's key goes.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import math
import time
from collections.abc import AsyncIterator
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
from electiond.coord.host import encode_view, member_changes
from electiond.etcdclient import EtcdClient, EtcdError, b64, prefix_end, unb64

log = logging.getLogger("electiond.coord")
POLL_S = 0.1  # how often a waiting lock or barrier looks again
READY_LINGER_S = 30  # a reached barrier stays passable this long
BARRIER_LEASE_S = 10  # a participant's lease (kept alive every third of it)
ELECTION_PREFIX = "election/"
SUSPECTS_PREFIX = "suspects/"  # under the coord prefix: suspects/<member lease hex> = node name
SUSPECT_POLL_S = 0.25  # how often a watching daemon looks at the member leases' remaining TTL


def _int(value: Any) -> int:
    try:
        return int(value or 0)
    except (TypeError, ValueError):
        return 0


def coord_prefix(election_prefix: str) -> str:
    return election_prefix.rstrip("/") + ".coord/"


def overdue(remaining_ttl_s: int, granted_ttl_s: int) -> bool:
    """A member lease is suspected once less than half its granted TTL is
    left: its holder keeps it alive every third of the TTL, so its refresh is
    then overdue by more than a sixth of the TTL (etcd counts in whole
    seconds: with a 3 s TTL, 1 s left; with 6 s, 2 s)."""
    return granted_ttl_s > 0 and 2 * remaining_ttl_s < granted_ttl_s


class MemberState:
    """Member leases and suspicion markers as one read or watch shows them."""

    def __init__(self) -> None:
        self.nodes: dict[str, str] = {}  # lease (hex) of an election key -> node name
        self.marked: dict[str, str] = {}  # lease (hex) with a suspicion marker -> node name

    def apply(self, kind: str, change: str, lease_hex: str, value: str) -> None:
        table = self.nodes if kind == "election" else self.marked if kind == "suspect" else None
        if table is None:
            return
        if change == "put":
            table[lease_hex] = value
        else:
            table.pop(lease_hex, None)

    def view(self) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """(live, suspected): a node is suspected when every live key of it is
        marked (a restarted node's fresh key keeps it live while its old
        lease runs out), a member while any of its keys lives."""
        fresh = {n for lease, n in self.nodes.items() if lease not in self.marked}
        everyone = set(self.nodes.values())
        return tuple(sorted(fresh)), tuple(sorted(everyone - fresh))


class EtcdBackend(CoordBackend):
    def __init__(self, client: EtcdClient, election_prefix: str,
                 session_lease: Callable[[], int] | None = None) -> None:
        """``session_lease``: the election's current lease id (0: none yet)."""
        self.client = client
        self.election_prefix = election_prefix
        self.prefix = coord_prefix(election_prefix)
        self._session_lease = session_lease or (lambda: 0)
        # (name, participant) -> (a lease of our own, its keeper), or (0, None) under the session lease
        self._barrier_leases: dict[tuple[str, str], tuple[int, asyncio.Task | None]] = {}

    # ---- helpers ------------------------------------------------------------------

    async def _call(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        try:
            return await self.client.call(path, body)
        except EtcdError as exc:
            raise Unavailable(f"etcd: {exc}") from None

    async def _range(self, key: str, prefix: bool = False, count_only: bool = False) -> dict[str, Any]:
        body: dict[str, Any] = {"key": b64(key)}
        if prefix:
            body["range_end"] = prefix_end(key)
        if count_only:
            body["count_only"] = True
        return await self._call("/v3/kv/range", body)

    async def _grant(self, ttl_s: float) -> tuple[int, int]:
        a = await self._call("/v3/lease/grant", {"TTL": max(1, math.ceil(ttl_s))})
        if not _int(a.get("ID")):
            raise Unavailable("etcd granted no lease")
        return _int(a.get("ID")), _int(a.get("TTL"))

    async def _keepalive(self, lease_id: int) -> int:
        a = await self._call("/v3/lease/keepalive", {"ID": lease_id})
        return _int(a.get("TTL"))  # 0: the lease is gone

    async def _revoke(self, lease_id: int) -> None:
        try:
            await self.client.call("/v3/lease/revoke", {"ID": lease_id})
        except EtcdError as exc:
            log.debug("revoking lease %x: %s (it runs out by itself)", lease_id, exc)

    @staticmethod
    def _revision(answer: dict[str, Any]) -> int:
        return _int((answer.get("header") or {}).get("revision"))

    # ---- locks ----------------------------------------------------------------------

    def _lock_key(self, name: str) -> str:
        return f"{self.prefix}locks/{name}"

    async def lock_acquire(self, name: str, owner: str, ttl_s: float, wait_s: float) -> LockGrant:
        key = b64(self._lock_key(name))
        deadline = time.monotonic() + wait_s
        lease_id, granted = await self._grant(ttl_s)
        refreshed_at = time.monotonic()
        acquired = False
        try:
            while True:
                if time.monotonic() - refreshed_at > ttl_s / 3:
                    # a long wait must not let the lease we would take the lock with run out
                    sent = time.monotonic()
                    if await self._keepalive(lease_id) == 0:
                        lease_id, granted = await self._grant(ttl_s)
                    refreshed_at = sent
                a = await self._call("/v3/kv/txn", {
                    "compare": [{"key": key, "target": "CREATE", "create_revision": 0}],
                    "success": [{"request_put": {"key": key, "value": b64(owner), "lease": lease_id}}],
                })
                if a.get("succeeded"):
                    acquired = True
                    return LockGrant(name, self._revision(a), float(min(granted, math.ceil(ttl_s))))
                if time.monotonic() + POLL_S > deadline:
                    raise NotAcquired(f"lock {name!r} is held by another (waited {wait_s:g}s)")
                await asyncio.sleep(POLL_S)
        finally:
            if not acquired:
                await asyncio.shield(self._revoke(lease_id))

    async def _holding(self, name: str, token: int) -> dict[str, Any]:
        kvs = (await self._range(self._lock_key(name))).get("kvs") or []
        if not kvs or _int(kvs[0].get("create_revision")) != token:
            raise LockLost(f"lock {name!r} is not held with token {token}")
        return kvs[0]

    async def lock_renew(self, name: str, token: int, ttl_s: float) -> LockGrant:
        kv = await self._holding(name, token)
        ttl = await self._keepalive(_int(kv.get("lease")))
        if ttl == 0:
            raise LockLost(f"lock {name!r}: its lease ran out")
        # the lease's TTL was fixed when granted; etcd counts it from this keep-alive
        return LockGrant(name, token, float(ttl))

    async def lock_release(self, name: str, token: int) -> None:
        kv = await self._holding(name, token)
        key = b64(self._lock_key(name))
        a = await self._call("/v3/kv/txn", {
            "compare": [{"key": key, "target": "CREATE", "create_revision": token}],
            "success": [{"request_delete_range": {"key": key}}],
        })
        if not a.get("succeeded"):
            raise LockLost(f"lock {name!r} is not held with token {token}")
        await self._revoke(_int(kv.get("lease")))

    # ---- barriers ---------------------------------------------------------------------

    def _barrier(self, name: str) -> str:
        return f"{self.prefix}barriers/{name}/"

    async def _keep_alive_loop(self, lease_id: int) -> None:
        while True:
            await asyncio.sleep(BARRIER_LEASE_S / 3)
            try:
                if await self._keepalive(lease_id) == 0:
                    return
            except CoordError:
                pass  # etcd unreachable for now: retry; the lease may run out meanwhile

    async def _count(self, name: str) -> int:
        return _int((await self._range(self._barrier(name) + "in/", prefix=True, count_only=True)).get("count"))

    async def barrier_enter(self, name: str, participant: str, count: int, timeout_s: float) -> int:
        base = self._barrier(name)
        if (name, participant) not in self._barrier_leases:
            lease_id = self._session_lease()
            if lease_id:
                self._barrier_leases[(name, participant)] = (0, None)
            else:
                lease_id, _ = await self._grant(BARRIER_LEASE_S)
                keeper = asyncio.get_running_loop().create_task(self._keep_alive_loop(lease_id))
                self._barrier_leases[(name, participant)] = (lease_id, keeper)
            await self._call("/v3/kv/put", {"key": b64(base + "in/" + participant), "value": b64(participant),
                                            "lease": lease_id})
        deadline = time.monotonic() + timeout_s
        entered = False
        try:
            while True:
                ready = (await self._range(base + "ready")).get("kvs")
                seen = await self._count(name)
                if ready or seen >= count:
                    if not ready:
                        lease_id, _ = await self._grant(READY_LINGER_S)
                        await self._call("/v3/kv/put", {"key": b64(base + "ready"), "value": b64(str(seen)),
                                                        "lease": lease_id})
                    entered = True
                    return max(seen, count)
                if time.monotonic() + POLL_S > deadline:
                    raise NotAcquired(f"barrier {name!r}: {seen} of {count} entered within {timeout_s:g}s")
                await asyncio.sleep(POLL_S)
        finally:
            if not entered:
                # a participant that gave up (or whose client died) is not counted
                await asyncio.shield(self._withdraw(name, participant))

    async def _withdraw(self, name: str, participant: str) -> None:
        held = self._barrier_leases.pop((name, participant), None)
        if held is None:
            return
        if held[1] is not None:
            held[1].cancel()
            await self._revoke(held[0])
        else:
            # under the session lease: the key goes, the lease stays (the election lives by it)
            try:
                await self._call("/v3/kv/deleterange", {"key": b64(self._barrier(name) + "in/" + participant)})
            except CoordError as exc:
                log.warning("barrier %r: withdrawing %s failed (%s); it goes with this daemon's lease",
                            name, participant, exc)

    async def barrier_leave(self, name: str, participant: str, timeout_s: float) -> int:
        await self._withdraw(name, participant)
        await self._call("/v3/kv/deleterange", {"key": b64(self._barrier(name) + "in/" + participant)})
        deadline = time.monotonic() + timeout_s
        while True:
            left = await self._count(name)
            if left == 0:
                await self._call("/v3/kv/deleterange", {"key": b64(self._barrier(name) + "ready")})
                return 0
            if time.monotonic() + POLL_S > deadline:
                raise NotAcquired(f"barrier {name!r}: {left} participants still in after {timeout_s:g}s")
            await asyncio.sleep(POLL_S)

    # ---- members ------------------------------------------------------------------------

    def _suspects(self) -> str:
        return f"{self.prefix}{SUSPECTS_PREFIX}"

    def _member_range(self) -> tuple[str, str]:
        """One key range (start, b64 end) holding both the election keys and
        the suspicion markers, so one read or one watch sees both at one
        revision (other keys in between are skipped)."""
        ours, theirs = self._suspects(), self.election_prefix + ELECTION_PREFIX
        ends = sorted([(ours, prefix_end(ours)), (theirs, prefix_end(theirs))])
        start = ends[0][0]
        end = max(ends[0][1], ends[1][1], key=lambda e: base64.b64decode(e))
        return start, end

    def _member_kind(self, key: str) -> tuple[str, str]:
        """("election" | "suspect" | "", the lease id in hex) of a key in the member range."""
        for kind, prefix in (("election", self.election_prefix + ELECTION_PREFIX), ("suspect", self._suspects())):
            if key.startswith(prefix):
                return kind, key[len(prefix):]
        return "", ""

    async def _member_state(self) -> tuple[MemberState, int]:
        start, end = self._member_range()
        a = await self._call("/v3/kv/range", {"key": b64(start), "range_end": end})
        st = MemberState()
        for kv in a.get("kvs") or []:
            kind, lease_hex = self._member_kind(unb64(kv.get("key")))
            st.apply(kind, "put", lease_hex, unb64(kv.get("value")))
        return st, self._revision(a)

    async def members(self) -> MemberEvent:
        st, revision = await self._member_state()
        live, suspected = st.view()
        return MemberEvent(revision, "", "view", live, suspected)

    async def members_watch(self, from_version: int) -> AsyncIterator[MemberEvent]:
        """The current view, then one event per joined / suspected / left
        node. Suspicion is a marker key written (by any watching daemon, see
        ``_suspicion_loop``) under the suspected member's own lease: its
        versions are etcd revisions like the rest, and it goes with the lease."""
        st, revision = await self._member_state()
        live, suspected = st.view()
        yield MemberEvent(revision, "", "view", live, suspected)
        checker = asyncio.get_running_loop().create_task(self._suspicion_loop())
        start, end = self._member_range()
        try:
            before = encode_view(live, suspected)
            async for batch in self._watch_messages(start, revision + 1, end):
                # one view per revision: a lease's expiry deletes its key and its marker at once
                for rev in sorted({mod for _, _, _, mod in batch}):
                    for kind, key, value, mod in batch:
                        k, lease_hex = self._member_kind(key)
                        if mod == rev and k:
                            st.apply(k, kind, lease_hex, value)
                    for ev in self._changes(before, st, rev, from_version):
                        yield ev
                    before = encode_view(*st.view())
        finally:
            checker.cancel()

    @staticmethod
    def _changes(before: str, st: "MemberState", revision: int, from_version: int) -> list[MemberEvent]:
        live, suspected = st.view()
        if revision <= from_version:
            return []
        return [MemberEvent(revision, node, change, live, suspected)
                for node, change in member_changes(before, encode_view(live, suspected))]

    async def _suspicion_loop(self) -> None:
        """While someone watches members: every SUSPECT_POLL_S look at each
        member lease's remaining TTL; mark a lease suspected (create-if-absent,
        under that lease) once ``overdue``, unmark it once refreshed. Several
        watching daemons do the same idempotent writes."""
        while True:
            try:
                st, _ = await self._member_state()
                for lease_hex in sorted(st.nodes):
                    try:
                        lease_id = int(lease_hex, 16)
                    except ValueError:
                        continue  # an election key not named by a hex lease id: not ours to judge
                    a = await self._call("/v3/lease/timetolive", {"ID": lease_id})
                    remaining, granted = _int(a.get("TTL")), _int(a.get("grantedTTL"))
                    marker = b64(self._suspects() + lease_hex)
                    if remaining > 0 and overdue(remaining, granted) and lease_hex not in st.marked:
                        await self._call("/v3/kv/txn", {
                            "compare": [{"key": marker, "target": "CREATE", "create_revision": 0}],
                            "success": [{"request_put": {"key": marker, "value": b64(st.nodes[lease_hex]),
                                                         "lease": lease_id}}]})
                    elif remaining > 0 and not overdue(remaining, granted) and lease_hex in st.marked:
                        await self._call("/v3/kv/deleterange", {"key": marker})
            except CoordError as exc:
                log.debug("member suspicion check: %s", exc)  # a lease that just ended, etcd away: next round
            await asyncio.sleep(SUSPECT_POLL_S)

    async def _watch(self, key_prefix: str, start_revision: int,
                     range_end: str | None = None) -> AsyncIterator[tuple[str, str, str, int]]:
        """(kind, key, value, mod revision) for every change from start_revision on, in order."""
        async for events in self._watch_messages(key_prefix, start_revision, range_end):
            for event in events:
                yield event

    async def _watch_messages(self, key_prefix: str, start_revision: int,
                              range_end: str | None = None) -> AsyncIterator[list[tuple[str, str, str, int]]]:
        """The events of each watch message together (etcd sends a revision's events in one)."""
        body = {"create_request": {"key": b64(key_prefix), "range_end": range_end or prefix_end(key_prefix),
                                   "start_revision": start_revision}}
        try:
            async for message in self.client.watch(body):
                if "error" in message:
                    raise Unavailable(f"etcd watch: {message['error']}")
                result = message.get("result") or {}
                if result.get("canceled"):
                    if _int(result.get("compact_revision")):
                        raise Compacted(f"required revision has been compacted (etcd keeps revisions from "
                                        f"{result['compact_revision']} on): read the keys again and watch from "
                                        f"{result['compact_revision']}")
                    raise Unavailable(f"etcd watch canceled: {result.get('cancel_reason') or '?'}")
                batch = []
                for e in result.get("events") or []:
                    kv = e.get("kv") or {}
                    kind = "delete" if e.get("type") == "DELETE" else "put"
                    batch.append((kind, unb64(kv.get("key")), unb64(kv.get("value")), _int(kv.get("mod_revision"))))
                if batch:
                    yield batch
        except EtcdError as exc:
            self.client.rotate()
            raise Unavailable(f"etcd watch: {exc}") from None
        raise Unavailable("etcd ended the watch")

    # ---- config ---------------------------------------------------------------------------

    def _config_key(self, key: str) -> str:
        return f"{self.prefix}config/{key}"

    async def config_get(self, key: str) -> ConfigEntry:
        kvs = (await self._range(self._config_key(key))).get("kvs") or []
        if not kvs:
            return ConfigEntry(key, None, 0)
        return ConfigEntry(key, unb64(kvs[0].get("value")), _int(kvs[0].get("mod_revision")))

    async def config_set(self, key: str, value: str) -> ConfigEntry:
        a = await self._call("/v3/kv/put", {"key": b64(self._config_key(key)), "value": b64(value)})
        return ConfigEntry(key, value, self._revision(a))

    async def config_cas(self, key: str, value: str, version: int) -> ConfigEntry:
        k = b64(self._config_key(key))
        a = await self._call("/v3/kv/txn", {
            "compare": [{"key": k, "target": "MOD", "mod_revision": version}],
            "success": [{"request_put": {"key": k, "value": b64(value)}}],
            "failure": [{"request_range": {"key": k}}],
        })
        if a.get("succeeded"):
            return ConfigEntry(key, value, self._revision(a))
        kvs = ((a.get("responses") or [{}])[0].get("response_range") or {}).get("kvs") or []
        current = _int(kvs[0].get("mod_revision")) if kvs else 0
        raise VersionMismatch(f"config {key!r} is at version {current}, not {version}")

    async def config_delete(self, key: str) -> ConfigEntry:
        a = await self._call("/v3/kv/deleterange", {"key": b64(self._config_key(key))})
        return ConfigEntry(key, None, self._revision(a))

    async def config_watch(self, prefix: str, from_version: int) -> AsyncIterator[ConfigEntry]:
        base = self._config_key("")
        async for kind, key, value, mod in self._watch(base + prefix, from_version + 1):
            yield ConfigEntry(key[len(base):], None if kind == "delete" else value, mod)

    def close(self) -> Any:
        for _, keeper in self._barrier_leases.values():
            if keeper is not None:
                keeper.cancel()  # the leases run out; the participants leave with this daemon
        self._barrier_leases.clear()
        return None
