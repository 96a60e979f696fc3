"""The embedded coordination store's replicated config register (sans-IO).

The quorum-lease cluster itself serves versioned config keys. Every change is
an entry of a small Raft-style log whose index is the cluster-wide version:

- Only the leader of the election protocol's current term appends. It lists
  ``StorePersist`` (its whole store) before the ``COORD_APPEND`` Sends: the
  shell carries effects out in order, so an entry leaves only once it is on
  the leader's disk (persist-then-send, as for votes).
- A follower accepts an entry only from a term at least its own and only if
  its log holds the entry before it with the same term (Raft's consistency
  check); a conflicting uncommitted tail is cut. It persists, then acks.
- The leader commits version v once a majority (itself included) acked v or
  later and v's entry carries its own term (Raft's rule: an older term's
  entry is committed only by a newer one above it). A new leader therefore
  appends a no-op first and serves nothing before that no-op is committed:
  that is the "re-replicate its latest writes to a majority" step.
- Votes carry the store's last (term, version) and a voter refuses a
  candidate that is behind (``QuorumLease.coord_last``, Raft's up-to-date
  rule): every majority holds each acknowledged entry, so no candidate
  lacking one can win, and versions are never reused with other values.
- Reads are answered by the leader from the committed state while its lease
  is valid (quorum-lease: at most one leader at any instant of real time,
  and a new one starts only after its no-op committed): linearizable.
- Watches read any node's committed log, which is a prefix of the one
  committed sequence: gap-free. The log keeps the last ``LOG_KEEP``
  committed entries; a watch from before them gets ``compacted``, never a gap.
- Compaction watermark = ``base_version``, the kept log's start. Entries
  below it are folded into the base, which keeps only each live key's last
  value: older versions and deletes (tombstones) are dropped there. That is
  safe exactly there because nothing can ask for them any more: a watch
  from below the watermark is refused (``compacted``), and a read of a
  deleted key needs only "absent" (version 0, as etcd answers; a cas from 0
  re-creates it either way). While the delete is still in the kept log a
  read answers the delete's version.
- Client requests carry a request id, stored in the entry: a retry (to the
  same or a new leader) of a request already in the log gets that entry's
  outcome instead of being applied twice.

A failed store write must stop the daemon (fail-stop): the in-memory store
would otherwise be ahead of the disk it acknowledges from.

- A follower further behind than the kept log (it was down for more than
  ``log_keep`` committed writes) gets a snapshot: the leader freezes its base
  (the committed state folded at version V, term T: live keys with their
  versions, the last grant of each lock) and streams it in batches: each
  ``COORD_SNAP`` carries item i in its single-item fields plus, in the
  ``more_*`` lists, as many following items as fit ``SNAP_BATCH_BYTES``
  (at most ``SNAP_BATCH_MAX``), well inside a datagram; the follower acks
  how many it holds with ``COORD_SNAP_ACK``. (A follower without batches
  reads only the first item and acks one: the stream still completes, one
  item per round trip.) Only when it holds all of them does the follower
  install it: base = the snapshot, its log cut to what follows V (nothing, as
  it was behind), commit = V; it persists that, then acks V like an append,
  and the leader streams the log from V + 1. A half-received snapshot is
  never installed nor persisted (a restart asks again); a new snapshot id
  (V, T) restarts the stream. A watch from before V on that follower then
  gets ``compacted``, as anywhere.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Final

from electiond.protocols.base import Send, mypyc_attr

COORD_APPEND: Final = "COORD_APPEND"  # leader -> follower: one entry (or none) + commit
COORD_ACK: Final = "COORD_ACK"  # follower -> leader: how far its log matches
COORD_REQUEST: Final = "COORD_REQUEST"  # follower -> leader: a client's request, forwarded
COORD_REPLY: Final = "COORD_REPLY"  # leader -> follower: the outcome for its client
COORD_SNAP: Final = "COORD_SNAP"  # leader -> follower: item i of n of the snapshot at (v, t)
COORD_SNAP_ACK: Final = "COORD_SNAP_ACK"  # follower -> leader: items [0, next) of (v, t) held
SNAP_KEY: Final = "k"  # a live key: key, value, ver
# a snapshot message's items beyond its first, estimated as key + value + SNAP_ITEM_OVERHEAD bytes,
# stay within this (a single item may be up to MAX_KEY_BYTES + MAX_VALUE_BYTES alone): with the
# envelope, MAC and field names a batch encodes to about 1100 bytes at most, under the 1400 of
# wire.MAX_DATAGRAM_BYTES; and msgpack arrays on the wire hold at most 64 entries
SNAP_BATCH_BYTES: Final = 800
SNAP_BATCH_MAX: Final = 48
SNAP_ITEM_OVERHEAD: Final = 24
SNAP_LOCK: Final = "l"  # a lock's last grant: key = name, value = owner, ver = token, ttl_ms

OP_SET: Final = "set"
OP_DELETE: Final = "delete"
OP_CAS: Final = "cas"
OP_GET: Final = "get"
OP_NOOP: Final = "noop"
OP_LOCK: Final = "lock"  # a grant: the entry's version is the fencing token
OP_RENEW: Final = "renew"  # answered by the leader alone (see the lock rule)
OP_UNLOCK: Final = "unlock"
OP_BARRIER: Final = "barrier"  # a participant's poll: key = name, value = participant, version = count
OP_BARRIER_LEAVE: Final = "barrier_leave"  # the double barrier's leave poll: key = name, value = participant
BARRIER_PREFIX: Final = "_coord/barrier/"  # the trip record: a replicated key listing who passed
BARRIER_LEASE_S: Final = 1.0  # a participant not polling for this long is not counted
BARRIER_DONE: Final = "done"
BARRIER_WAITING: Final = "waiting"

# error codes: those of electiond.coord.backend's errors
ERR_UNAVAILABLE: Final = "unavailable"
ERR_VERSION: Final = "version_mismatch"
ERR_COMPACTED: Final = "compacted"
ERR_TOO_BIG: Final = "too_big"
ERR_NOT_ACQUIRED: Final = "not_acquired"
ERR_LOCK_LOST: Final = "lock_lost"
MAX_TTL_MS: Final = 3_600_000

QUIET_TICKS: Final = 4  # an idle follower still hears the commit point this often (in retry ticks)
LOG_KEEP: Final = 512  # committed entries kept for watches and catch-up
MAX_KEY_BYTES: Final = 128
MAX_VALUE_BYTES: Final = 700  # an entry must fit one datagram (wire.MAX_DATAGRAM_BYTES)
MAX_REQ_ID_BYTES: Final = 64

MESSAGE_SCHEMAS: Final[dict[str, dict[str, Any]]] = {
    COORD_APPEND: {"prev_v": int, "prev_t": int, "commit": int, "has": bool, "t": int, "ttl_ms": int, "op": str, "key": str,
                   "value": (str, type(None)), "req": str},
    COORD_ACK: {"ok": bool, "match": int},
    COORD_REQUEST: {"req": str, "op": str, "key": str, "value": (str, type(None)), "version": int, "ttl_ms": int},
    COORD_REPLY: {"req": str, "ok": bool, "error": str, "key": str, "value": (str, type(None)), "version": int},
    COORD_SNAP: {"v": int, "t": int, "i": int, "n": int, "kind": str, "key": str, "value": (str, type(None)),
                 "ver": int, "ttl_ms": int},
    COORD_SNAP_ACK: {"v": int, "t": int, "next": int},
}


def snap_batch(items: tuple[tuple[str, str, str | None, int, int], ...],
               start: int) -> list[tuple[str, str, str | None, int, int]]:
    """The items from ``start`` on that ride along in one COORD_SNAP after its
    first: as many as fit SNAP_BATCH_BYTES (estimated), at most SNAP_BATCH_MAX - 1."""
    out: list[tuple[str, str, str | None, int, int]] = []
    budget = SNAP_BATCH_BYTES
    if start >= 1 and start - 1 < len(items):
        first = items[start - 1]
        budget -= len(first[1].encode()) + len(first[2].encode() if first[2] is not None else b"") + SNAP_ITEM_OVERHEAD
    for j in range(start, min(len(items), start + SNAP_BATCH_MAX - 1)):
        it = items[j]
        size = len(it[1].encode()) + len(it[2].encode() if it[2] is not None else b"") + SNAP_ITEM_OVERHEAD
        if size > budget:
            break
        budget -= size
        out.append(it)
    return out


def snap_items_of(body: dict[str, Any]) -> list[tuple[str, str, str | None, int, int]]:
    """Every item a COORD_SNAP carries, its first and the ``more_*`` lists
    (absent from a sender without batches; malformed lists are ignored)."""
    value = body["value"]
    out: list[tuple[str, str, str | None, int, int]] = [
        (str(body["kind"]), str(body["key"]), value if isinstance(value, str) else None, int(body["ver"]),
         int(body["ttl_ms"]))]
    kinds = body.get("more_kinds")
    keys = body.get("more_keys")
    values = body.get("more_values")
    vers = body.get("more_vers")
    ttls = body.get("more_ttls")
    if not (isinstance(kinds, list) and isinstance(keys, list) and isinstance(values, list)
            and isinstance(vers, list) and isinstance(ttls, list)):
        return out
    if not len(kinds) == len(keys) == len(values) == len(vers) == len(ttls):
        return out
    for j in range(len(kinds)):
        k, key, val, ver, ttl = kinds[j], keys[j], values[j], vers[j], ttls[j]
        if not (isinstance(k, str) and isinstance(key, str) and (val is None or isinstance(val, str))
                and type(ver) is int and type(ttl) is int):
            return out[:1]  # one bad item: take only the first, the rest comes again
        out.append((k, key, val, ver, ttl))
    return out


@dataclass(frozen=True, slots=True)
class Entry:
    version: int
    term: int
    op: str  # OP_SET | OP_DELETE | OP_NOOP (a cas is stored as the set it became)
    key: str
    value: str | None
    req: str  # the client's request id ("" for a no-op)
    ttl_ms: int = 0  # OP_LOCK: the lease asked for


@dataclass(frozen=True, slots=True)
class StoreState:
    """What a node persists: entries folded into ``base`` up to
    ``base_version``, the log above it, the commit point and the highest
    term whose leader it heard (it acks no older one after a restart)."""

    term: int = 0
    commit: int = 0
    base_version: int = 0
    base_term: int = 0
    # (key, value, version) of every live key at base_version (deleted keys are dropped: the
    # compaction watermark is base_version; a store from before that may still list (key, None, v))
    base: tuple[tuple[str, str | None, int], ...] = ()
    log: tuple[Entry, ...] = ()
    # the last grant of each lock folded into the base: (name, owner, token, ttl_ms)
    locks: tuple[tuple[str, str, int, int], ...] = ()


@dataclass(frozen=True, slots=True)
class StorePersist:
    """Durably store the coordination store before any later effect."""

    state: StoreState


@dataclass(frozen=True, slots=True)
class Reply:
    """The outcome of a local client's request ``req``."""

    req: str
    ok: bool
    error: str  # "" when ok
    key: str
    value: str | None
    version: int  # the key's version (0: absent); for a write, the entry's


@dataclass(slots=True)
class View:
    """What the election protocol says now (passed in on every call)."""

    leader: str | None
    term: int
    is_leader: bool


@dataclass(slots=True)
class _Pending:
    req: str
    origin: str | None  # None: our own client
    key: str = ""
    value: str | None = None
    version: int = 0
    op: str = ""
    received_at: float = 0.0
    ttl_ms: int = 0


@dataclass(slots=True)
class _Lead:
    term: int
    noop_version: int
    next_v: dict[str, int] = field(default_factory=dict)
    match: dict[str, int] = field(default_factory=dict)
    told_commit: dict[str, int] = field(default_factory=dict)
    pending: dict[int, _Pending] = field(default_factory=dict)  # version -> request
    # lock name -> (token, owner, held until on our clock; inf while the grant is pending)
    locks: dict[str, tuple[int, str, float]] = field(default_factory=dict)
    # barrier name -> participant -> until when its last poll counts it (our clock)
    barriers: dict[str, dict[str, float]] = field(default_factory=dict)
    # peer -> the snapshot being streamed to it: (version, term, items, next item)
    snaps: dict[str, tuple[int, int, tuple[tuple[str, str, str | None, int, int], ...], int]] = field(
        default_factory=dict)
    quiet_ticks: dict[str, int] = field(default_factory=dict)  # peer -> ticks since we last sent it anything


def request_ok(op: str, key: str, value: str | None, req: str) -> str:
    """'' if a request is well-formed and within the bounds, else the error."""
    if op not in (OP_SET, OP_DELETE, OP_CAS, OP_GET, OP_LOCK, OP_RENEW, OP_UNLOCK, OP_BARRIER, OP_BARRIER_LEAVE):
        return "bad_request"
    if not key or len(key.encode()) > MAX_KEY_BYTES or len(req.encode()) > MAX_REQ_ID_BYTES or not req:
        return ERR_TOO_BIG if key else "bad_request"
    if value is not None and len(value.encode()) > MAX_VALUE_BYTES:
        return ERR_TOO_BIG
    if op in (OP_SET, OP_CAS, OP_LOCK, OP_BARRIER, OP_BARRIER_LEAVE) and value is None:
        return "bad_request"
    return ""


@mypyc_attr(allow_interpreted_subclasses=True)  # the mutants in tests/coord_mutants.py derive from it
class ConfigReplica:
    # the mutant in tests/coord_mutants.py lowers it to 1: acks before a majority persisted
    def commit_quorum(self) -> int:
        return len(self.members) // 2 + 1

    def __init__(self, node_name: str, members: tuple[str, ...], heartbeat_interval_s: float,
                 persisted: StoreState | None = None, clock_drift_ppm: float = 1000.0,
                 log_keep: int | None = None) -> None:
        self.name = node_name
        # committed entries kept above the base; the simulator shrinks it to exercise snapshots
        self.log_keep = LOG_KEEP if log_keep is None else max(1, log_keep)
        self.snapshots_installed = 0
        self.rho = clock_drift_ppm / 1e6
        self.members = members
        self.peers = tuple(m for m in members if m != node_name)
        self.retry_s = heartbeat_interval_s
        st = persisted or StoreState()
        self._term = st.term
        self._commit = st.commit
        self._base_version = st.base_version
        self._base_term = st.base_term
        # a store written before tombstones were compacted may hold some: they are below the watermark
        self._base: dict[str, tuple[str | None, int]] = {k: (v, ver) for k, v, ver in st.base if v is not None}
        self._log: list[Entry] = list(st.log)
        self._base_locks: dict[str, tuple[str, int, int]] = {n: (o, tok, ttl) for n, o, tok, ttl in st.locks}
        self._lead: _Lead | None = None
        self._next_send = float("inf")
        # a snapshot being received: (version, term) -> the items so far
        self._snap_in: tuple[int, int] = (-1, -1)
        self._snap_items: list[tuple[str, str, str | None, int, int]] = []

    # ---- views -------------------------------------------------------------

    @property
    def last(self) -> tuple[int, int]:
        """(term, version) of the last entry: what votes carry."""
        if self._log:
            e = self._log[-1]
            return (e.term, e.version)
        return (self._base_term, self._base_version)

    @property
    def commit(self) -> int:
        return self._commit

    def ready(self, view: View) -> bool:
        """Serving as leader: our lease holds and our no-op is committed."""
        lead = self._lead
        return lead is not None and view.is_leader and lead.term == view.term and self._commit >= lead.noop_version

    def state(self) -> StoreState:
        return StoreState(self._term, self._commit, self._base_version, self._base_term,
                          tuple((k, v, ver) for k, (v, ver) in sorted(self._base.items())), tuple(self._log),
                          tuple((n, o, tok, ttl) for n, (o, tok, ttl) in sorted(self._base_locks.items())))

    def status(self) -> dict[str, Any]:
        term, version = self.last
        st: dict[str, Any] = {"last_version": version, "last_term": term, "commit": self._commit,
                              "oldest_watchable": self._base_version, "leading": self._lead is not None,
                              "snapshots_installed": self.snapshots_installed}
        if self._lead is not None:
            st["match"] = dict(self._lead.match)
        return st

    def committed_get(self, key: str) -> tuple[str | None, int]:
        """(value, version) of ``key`` in the committed state ((None, 0): absent;
        a deleted key answers (None, version of the delete))."""
        for e in reversed(self._log):
            if e.version <= self._commit and e.key == key and (e.op == OP_SET or e.op == OP_DELETE):
                return (e.value, e.version)
        v = self._base.get(key)
        return (v[0], v[1]) if v is not None else (None, 0)

    def changes_since(self, from_version: int, prefix: str = "", limit: int = 64) -> list[Entry] | str:
        """Committed entries above ``from_version`` (no-ops included: a watcher
        sees every version, so a gap is visible), or ERR_COMPACTED."""
        if from_version < self._base_version:
            return ERR_COMPACTED
        out: list[Entry] = []
        for e in self._log:
            if e.version > self._commit or len(out) >= limit:
                break
            if e.version > from_version and (e.op == OP_NOOP or e.op == OP_LOCK or e.key.startswith(prefix)):
                out.append(e)
        return out

    def deadline(self) -> float:
        return self._next_send

    # ---- log helpers ---------------------------------------------------------

    def _term_at(self, version: int) -> int:
        """The term of the entry at ``version``; -1 if we do not hold it."""
        if version == self._base_version:
            return self._base_term
        if version < self._base_version:
            return -1
        i = version - self._base_version - 1
        return self._log[i].term if i < len(self._log) else -1

    def _entry(self, version: int) -> Entry | None:
        i = version - self._base_version - 1
        return self._log[i] if 0 <= i < len(self._log) else None

    def base_value(self, key: str) -> str | None:
        """``key``'s value folded into the base (where a watch from the oldest watchable version starts)."""
        v = self._base.get(key)
        return v[0] if v is not None else None

    def current(self, key: str) -> tuple[str | None, int]:
        """(value, version) with uncommitted entries (the leader's next write follows it)."""
        return self._current(key)

    def _current(self, key: str) -> tuple[str | None, int]:
        """(value, version) including uncommitted entries: what a new write follows."""
        for e in reversed(self._log):
            if e.key == key and (e.op == OP_SET or e.op == OP_DELETE):
                return (e.value, e.version)
        v = self._base.get(key)
        return (v[0], v[1]) if v is not None else (None, 0)

    def _compact(self) -> None:
        # fold committed entries beyond LOG_KEEP into the base
        while len(self._log) > self.log_keep and self._log[0].version <= self._commit:
            e = self._log.pop(0)
            if e.op == OP_SET and e.value is not None:
                self._base[e.key] = (e.value, e.version)
            elif e.op == OP_DELETE:
                # below the watermark (the kept log's start) a delete leaves nothing behind: no watch
                # can start under it, and a read of the key answers "absent, version 0"
                self._base.pop(e.key, None)
            elif e.op == OP_LOCK and e.value is not None:
                self._base_locks[e.key] = (e.value, e.version, e.ttl_ms)
            self._base_version = e.version
            self._base_term = e.term

    # ---- leadership ------------------------------------------------------------

    def sync(self, view: View, now: float) -> list[Any]:
        """Follow the election protocol: start or stop leading."""
        if view.term > self._term:
            self._term = view.term  # persisted with the next write
        lead = self._lead
        if lead is not None and (not view.is_leader or view.term != lead.term):
            return self._stop_leading()
        if lead is None and view.is_leader and view.term >= self._term:
            return self._start_leading(view, now)
        return []

    def _start_leading(self, view: View, now: float) -> list[Any]:
        self._term = view.term
        _, last_v = self.last
        noop = Entry(last_v + 1, view.term, OP_NOOP, "", None, "")
        lead = _Lead(view.term, noop.version)
        for p in self.peers:
            lead.next_v[p] = noop.version
            lead.match[p] = 0
            lead.told_commit[p] = -1
        self._lead = lead
        # Every grant in our log may still be held (an old leader's renewals
        # and releases are not replicated): held until now + W(ttl). Each was
        # received by its leader before that leader's lease ended, which was
        # before ours began, so this outlasts the holder's own deadline.
        for name, (owner, token, ttl_ms) in self._base_locks.items():
            lead.locks[name] = (token, owner, now + self.hold_s(ttl_ms))
        for e in self._log:
            if e.op == OP_LOCK and e.value is not None:
                lead.locks[e.key] = (e.version, e.value, now + self.hold_s(e.ttl_ms))
        self._log.append(noop)
        effects: list[Any] = [StorePersist(self.state())]
        effects += self._maybe_commit()  # a cluster of one
        for p in self.peers:
            effects += self._send_append(p)
        self._next_send = now + self.retry_s
        return effects

    def _stop_leading(self) -> list[Any]:
        lead = self._lead
        assert lead is not None
        self._lead = None
        self._next_send = float("inf")
        # outcome unknown: the entry may still commit under a later leader;
        # the client retries with the same request id and learns which
        effects: list[Any] = []
        for p in lead.pending.values():
            effects += self._answer(p, Reply(p.req, False, ERR_UNAVAILABLE, p.key, None, 0))
        return effects

    def _send_append(self, peer: str) -> list[Any]:
        lead = self._lead
        assert lead is not None
        nv = lead.next_v[peer]
        prev_v = nv - 1
        prev_t = self._term_at(prev_v)
        if prev_t < 0:
            return self._send_snap(peer)  # it needs entries we folded into the base
        lead.snaps.pop(peer, None)
        e = self._entry(nv)
        body: dict[str, Any] = {"prev_v": prev_v, "prev_t": prev_t, "commit": self._commit, "has": e is not None,
                                "t": e.term if e else 0, "ttl_ms": e.ttl_ms if e else 0, "op": e.op if e else "", "key": e.key if e else "",
                                "value": e.value if e else None, "req": e.req if e else ""}
        lead.told_commit[peer] = self._commit
        return [Send(COORD_APPEND, lead.term, body, to=peer)]

    # ---- snapshots ----------------------------------------------------------------

    def _snapshot_items(self) -> tuple[tuple[str, str, str | None, int, int], ...]:
        keys = tuple((SNAP_KEY, k, v, ver, 0) for k, (v, ver) in sorted(self._base.items()))
        locks = tuple((SNAP_LOCK, n, o, tok, ttl) for n, (o, tok, ttl) in sorted(self._base_locks.items()))
        return keys + locks

    def _send_snap(self, peer: str) -> list[Any]:
        lead = self._lead
        assert lead is not None
        snap = lead.snaps.get(peer)
        if snap is None or snap[0] != self._base_version:
            # frozen when the stream starts: later compaction does not change what this peer gets
            snap = (self._base_version, self._base_term, self._snapshot_items(), 0)
            lead.snaps[peer] = snap
        v, t, items, i = snap
        n = len(items)
        kind, key, value, ver, ttl_ms = items[i] if i < n else ("", "", None, 0, 0)
        body: dict[str, Any] = {"v": v, "t": t, "i": i, "n": n, "kind": kind, "key": key, "value": value,
                                "ver": ver, "ttl_ms": ttl_ms}
        more = snap_batch(items, i + 1)
        if more:
            body["more_kinds"] = [it[0] for it in more]
            body["more_keys"] = [it[1] for it in more]
            body["more_values"] = [it[2] for it in more]
            body["more_vers"] = [it[3] for it in more]
            body["more_ttls"] = [it[4] for it in more]
        lead.told_commit[peer] = self._commit
        return [Send(COORD_SNAP, lead.term, body, to=peer)]

    def _on_snap(self, sender: str, term: int, body: dict[str, Any]) -> list[Any]:
        changed = self._adopt_term(term)
        if changed is None:
            _, last_v = self.last
            return [Send(COORD_ACK, self._term, {"ok": False, "match": last_v}, to=sender)]
        v, t, i, n = int(body["v"]), int(body["t"]), int(body["i"]), int(body["n"])
        persist: list[Any] = [StorePersist(self.state())] if changed else []
        if v <= self._commit:
            # we hold that state already (our ack of the install was lost, or a duplicate): our
            # committed prefix is the leader's, so our log matches its up to v; it goes on from there
            return persist + [Send(COORD_ACK, term, {"ok": True, "match": v}, to=sender)]
        if v < self._snap_in[0]:
            return persist  # a late item of an older snapshot than the one we are receiving
        if self._snap_in != (v, t):
            self._snap_in = (v, t)
            self._snap_items = []
        have = len(self._snap_items)
        if i <= have < n:
            # items i, i+1, ... of the stream: keep those we do not hold yet, in order
            got = snap_items_of(body)
            self._snap_items.extend(got[have - i:n - i])
        if len(self._snap_items) < n:
            return persist + [Send(COORD_SNAP_ACK, term, {"v": v, "t": t, "next": len(self._snap_items)}, to=sender)]
        self._install(v, t)
        return [StorePersist(self.state()), Send(COORD_ACK, term, {"ok": True, "match": v}, to=sender)]

    def _install(self, v: int, t: int) -> None:
        """Replace our state by the complete snapshot at (v, t)."""
        self._base = {k: (val, ver) for kind, k, val, ver, _ in self._snap_items if kind == SNAP_KEY and val is not None}
        self._base_locks = {k: (val or "", ver, ttl) for kind, k, val, ver, ttl in self._snap_items if kind == SNAP_LOCK}
        # keep what follows v only if our entry at v is the snapshot's (Raft's rule); else all of it goes
        keep = self._term_at(v) == t
        self._log = [e for e in self._log if e.version > v] if keep else []
        self._base_version = v
        self._base_term = t
        self._commit = max(self._commit, v)
        self._snap_in = (-1, -1)
        self._snap_items = []
        self.snapshots_installed += 1

    def _on_snap_ack(self, sender: str, term: int, body: dict[str, Any]) -> list[Any]:
        lead = self._lead
        if lead is None or term != lead.term or sender not in lead.match:
            return []
        snap = lead.snaps.get(sender)
        if snap is None or snap[0] != int(body["v"]) or snap[1] != int(body["t"]):
            return []
        nxt = int(body["next"])
        if nxt == snap[3] or nxt > len(snap[2]):
            return []  # a duplicate: the tick resends what is missing
        # what the follower holds, even fewer than we thought (it lost a partial one): go on from there
        lead.snaps[sender] = (snap[0], snap[1], snap[2], nxt)
        return self._send_snap(sender)

    def on_tick(self, view: View, now: float) -> list[Any]:
        effects = self.sync(view, now)
        lead = self._lead
        if lead is None or now < self._next_send:
            return effects
        self._next_send = now + self.retry_s
        _, last_v = self.last
        for p in self.peers:
            # retransmit what is not acked (lost datagrams), and tell the commit point;
            # now and then also when nothing is new: the last commit news may have been lost
            lead.quiet_ticks[p] = lead.quiet_ticks.get(p, 0) + 1
            if lead.match[p] < last_v or lead.told_commit[p] < self._commit or lead.quiet_ticks[p] >= QUIET_TICKS:
                lead.quiet_ticks[p] = 0
                effects += self._send_append(p)
        return effects

    def _maybe_commit(self) -> list[Any]:
        lead = self._lead
        assert lead is not None
        _, last_v = self.last
        matches = sorted([last_v] + [lead.match[p] for p in self.peers])
        n = matches[len(matches) - self.commit_quorum()]
        if n <= self._commit or self._term_at(n) != lead.term:
            return []
        self._commit = n
        effects: list[Any] = []
        for v in sorted(v for v in lead.pending if v <= n):
            p = lead.pending.pop(v)
            if p.op == OP_LOCK:
                # counted from when the request reached us, not from the commit
                lead.locks[p.key] = (v, p.value or "", p.received_at + self.hold_s(p.ttl_ms))
            effects += self._answer(p, Reply(p.req, True, "", p.key, p.value, v))
        self._compact()
        return effects

    # ---- client requests -----------------------------------------------------------

    def request(self, view: View, req: str, op: str, key: str, value: str | None, version: int,
                now: float, origin: str | None = None, ttl_ms: int = 0) -> list[Any]:
        """A client's request: served here if we lead, else forwarded to the leader."""
        effects = self.sync(view, now)
        bad = request_ok(op, key, value, req)
        pend = _Pending(req, origin, key, op=op, received_at=now, ttl_ms=ttl_ms)
        if op in (OP_LOCK, OP_RENEW) and not 0 < ttl_ms <= MAX_TTL_MS:
            bad = bad or "bad_request"
        if bad:
            return effects + self._answer(pend, Reply(req, False, bad, key, None, 0))
        if self._lead is None:
            if origin is None and view.leader is not None and view.leader != self.name:
                return effects + [Send(COORD_REQUEST, view.term, {"req": req, "op": op, "key": key, "value": value,
                                                                    "version": version, "ttl_ms": ttl_ms},
                                       to=view.leader)]
            return effects + self._answer(pend, Reply(req, False, ERR_UNAVAILABLE, key, None, 0))
        if not self.ready(view):
            return effects + self._answer(pend, Reply(req, False, ERR_UNAVAILABLE, key, None, 0))
        if op == OP_GET:
            val, ver = self.committed_get(key)
            return effects + self._answer(pend, Reply(req, True, "", key, val, ver))
        if op in (OP_LOCK, OP_RENEW, OP_UNLOCK):
            return effects + self._lock_op(view, pend, op, key, value, version, now)
        if op == OP_BARRIER:
            return effects + self._barrier_poll(view, pend, key, value or "", version, now)
        if op == OP_BARRIER_LEAVE:
            return effects + self._barrier_leave(view, pend, key, value or "", now)
        return effects + self._write(view, pend, op, key, value, version, now)

    def _write(self, view: View, pend: _Pending, op: str, key: str, value: str | None, version: int,
               now: float) -> list[Any]:
        lead = self._lead
        assert lead is not None
        # a retry of a request already in the log: its outcome, not a second write
        for e in reversed(self._log):
            if e.req == pend.req:
                pend.value = e.value
                if e.version <= self._commit:
                    return self._answer(pend, Reply(pend.req, True, "", e.key, e.value, e.version))
                lead.pending[e.version] = pend
                return []
        if op == OP_CAS:
            cur_value, cur_version = self._current(key)
            if cur_value is None and cur_version != 0:
                cur_version = 0  # deleted: cas against 0 creates it again
            if cur_version != version:
                # judged against the last entry: an answer after every earlier write's outcome
                return self._answer(pend, Reply(pend.req, False, ERR_VERSION, key, None, cur_version))
            op = OP_SET
        _, last_v = self.last
        e = Entry(last_v + 1, lead.term, op, key, value if op in (OP_SET, OP_LOCK) else None, pend.req,
                  pend.ttl_ms if op == OP_LOCK else 0)
        v = self._append_entry(e)
        pend.value = e.value
        lead.pending[v] = pend
        effects: list[Any] = [StorePersist(self.state())]
        effects += self._maybe_commit()
        for p in self.peers:
            if lead.next_v[p] == v:
                effects += self._send_append(p)
        return effects

    def _append_entry(self, e: Entry) -> int:
        """The leader's append of a new entry; its version. (The mutant in
        tests/coord_mutants.py reuses an older version instead.)"""
        self._log.append(e)
        return e.version

    # ---- locks ----------------------------------------------------------------------

    def hold_s(self, ttl_ms: int) -> float:
        """W: how long, on this server's clock, a grant or renewal received now
        keeps the lock from anyone else. The holder stops at its own send
        time + ttl on its clock, at most ttl/(1-rho) of real time after the
        send; W/(1+rho) of real time passes here at least, so W =
        ttl*(1+rho)/(1-rho) plus a millisecond for rounding."""
        return ttl_ms / 1000.0 * (1 + self.rho) / (1 - self.rho) + 0.001

    def lock_holder(self, name: str, now: float) -> tuple[int, str] | None:
        lead = self._lead
        if lead is None:
            return None
        held = lead.locks.get(name)
        if held is None or now >= held[2]:
            return None
        return (held[0], held[1])

    def _lock_op(self, view: View, pend: _Pending, op: str, name: str, owner: str | None, token: int,
                 now: float) -> list[Any]:
        lead = self._lead
        assert lead is not None
        held = lead.locks.get(name)
        live = held is not None and now < held[2]
        if op == OP_LOCK:
            for e in reversed(self._log):  # a retried acquire: its own outcome
                if e.req == pend.req:
                    return self._write(view, pend, op, name, owner, 0, now)
            if live:
                assert held is not None
                return self._answer(pend, Reply(pend.req, False, ERR_NOT_ACQUIRED, name, None, held[0]))
            lead.locks[name] = (0, owner or "", float("inf"))  # pending: refuse others until committed
            return self._write(view, pend, op, name, owner, 0, now)
        if not live or held is None or held[0] != token:
            return self._answer(pend, Reply(pend.req, False, ERR_LOCK_LOST, name, None, token))
        if op == OP_RENEW:
            lead.locks[name] = (token, held[1], now + self.hold_s(pend.ttl_ms))
            return self._answer(pend, Reply(pend.req, True, "", name, held[1], token))
        del lead.locks[name]  # released: free at once here; a later leader waits W
        return self._answer(pend, Reply(pend.req, True, "", name, None, token))

    # ---- barriers ---------------------------------------------------------------------

    def barrier_need(self, count: int) -> int:
        return count  # the off-by-one mutant in tests/coord_mutants.py lowers it

    def _barrier_poll(self, view: View, pend: _Pending, name: str, participant: str, count: int,
                      now: float) -> list[Any]:
        """Participants poll; the leader counts those whose last poll is recent
        (a dead one drops out), one entry per participant (never twice). When
        ``count`` are live it writes the trip record, a replicated key; a
        participant is told "done" only once that record is committed and
        names it, so a new leader (whose polls re-register the rest) knows
        the barrier already tripped for them."""
        lead = self._lead
        assert lead is not None
        if count <= 0:
            return self._answer(pend, Reply(pend.req, False, "bad_request", name, None, 0))
        trip_key = BARRIER_PREFIX + name
        done, _ = self.committed_get(trip_key)
        passed = done.split(",") if done else []
        if participant in passed:
            return self._answer(pend, Reply(pend.req, True, "", name, BARRIER_DONE, len(passed)))
        pending_trip, _ = self.current(trip_key)
        tripping = pending_trip.split(",") if pending_trip and pending_trip != done else []
        if participant in tripping:
            # named by the trip record being committed: a late or duplicated poll must not count
            # it again in the name's next round (after everyone left and the record is gone)
            return self._answer(pend, Reply(pend.req, True, "", name, BARRIER_WAITING, len(tripping)))
        parts = lead.barriers.setdefault(name, {})
        parts[participant] = now + BARRIER_LEASE_S
        for p in [p for p, until in parts.items() if until <= now]:
            del parts[p]
        effects: list[Any] = []
        if len(parts) >= self.barrier_need(count) and (pending_trip is None or pending_trip == done):
            _, last_v = self.last
            trip = _Pending(f"trip-{last_v + 1}", None, trip_key, op=OP_SET)
            effects = self._write(view, trip, OP_SET, trip_key, ",".join(sorted(parts)), 0, now)
            effects = [e for e in effects if type(e) is not Reply]  # nobody waits on the record itself
            del lead.barriers[name]
        return effects + self._answer(pend, Reply(pend.req, True, "", name, BARRIER_WAITING, len(parts)))

    def leave_done(self, remaining: list[str], participant: str) -> bool:
        return not remaining  # the mutant in tests/coord_mutants.py only waits for its own removal

    def _barrier_leave(self, view: View, pend: _Pending, name: str, participant: str, now: float) -> list[Any]:
        """The double barrier's leave, polled like enter. The trip record lists
        who passed; a leave poll removes its participant from it (a replicated
        write, judged against the log's newest record so a second poll or a
        retry never removes twice) and is answered "done" only once the
        committed record is empty: every participant that passed has left.
        A new leader holds every committed removal, and a lost one is written
        again by the participant's next poll: nobody is lost or counted twice."""
        trip_key = BARRIER_PREFIX + name
        newest, _ = self.current(trip_key)
        inside = newest.split(",") if newest else []
        effects: list[Any] = []
        if participant in inside:
            rest = [p for p in inside if p != participant]
            _, last_v = self.last
            out = _Pending(f"leave-{last_v + 1}", None, trip_key, op=OP_SET if rest else OP_DELETE)
            effects = self._write(view, out, out.op, trip_key, ",".join(rest) if rest else None, 0, now)
            effects = [e for e in effects if type(e) is not Reply]  # nobody waits on the record itself
        done, _ = self.committed_get(trip_key)
        remaining = done.split(",") if done else []
        state = BARRIER_DONE if self.leave_done(remaining, participant) else BARRIER_WAITING
        return effects + self._answer(pend, Reply(pend.req, True, "", name, state, len(remaining)))

    def barrier_records(self) -> list[str]:
        """Names of the barriers whose trip record (with uncommitted entries) lists someone."""
        keys = {k for k in self._base if k.startswith(BARRIER_PREFIX)}
        keys |= {e.key for e in self._log if e.key.startswith(BARRIER_PREFIX)}
        return sorted(k[len(BARRIER_PREFIX):] for k in keys if self._current(k)[0])

    def barrier_prune(self, view: View, departed: tuple[str, ...], now: float) -> list[Any]:
        """The double barrier's ephemeral entries: a participant that passed
        and whose node has since left the member view (``departed``: not heard
        within the presence window, as ``host.live_members`` decides) is
        removed from the trip record, as if it had left. Participants are
        named ``node/id`` (the control socket prefixes the node's name); one
        without a node part is never pruned. The removal is a replicated write
        judged against the newest record, like a leave, so calling this again
        before it committed writes nothing twice."""
        if not departed or not self.ready(view):
            return []
        effects: list[Any] = []
        for name in self.barrier_records():
            trip_key = BARRIER_PREFIX + name
            newest, _ = self._current(trip_key)
            inside = newest.split(",") if newest else []
            rest = [p for p in inside if p.partition("/")[0] not in departed or "/" not in p]
            if len(rest) == len(inside):
                continue
            _, last_v = self.last
            out = _Pending(f"prune-{last_v + 1}", None, trip_key, op=OP_SET if rest else OP_DELETE)
            fx = self._write(view, out, out.op, trip_key, ",".join(rest) if rest else None, 0, now)
            effects += [e for e in fx if type(e) is not Reply]  # nobody waits on the record itself
        return effects

    def _answer(self, pend: _Pending, reply: Reply) -> list[Any]:
        if pend.origin is None:
            return [reply]
        return [Send(COORD_REPLY, self._term, {"req": reply.req, "ok": reply.ok, "error": reply.error,
                                                "key": reply.key, "value": reply.value, "version": reply.version},
                     to=pend.origin)]

    # ---- messages -------------------------------------------------------------------

    def on_message(self, view: View, kind: str, sender: str, term: int, body: dict[str, Any],
                   now: float) -> list[Any]:
        if sender == self.name or sender not in self.members:
            return []
        effects = self.sync(view, now)
        if kind == COORD_APPEND:
            return effects + self._on_append(sender, term, body)
        if kind == COORD_ACK:
            return effects + self._on_ack(sender, term, body)
        if kind == COORD_REQUEST:
            return effects + self.request(view, str(body["req"]), str(body["op"]), str(body["key"]),
                                          body["value"], int(body["version"]), now, origin=sender,
                                          ttl_ms=int(body["ttl_ms"]))
        if kind == COORD_SNAP:
            return effects + self._on_snap(sender, term, body)
        if kind == COORD_SNAP_ACK:
            return effects + self._on_snap_ack(sender, term, body)
        if kind == COORD_REPLY:
            return effects + [Reply(str(body["req"]), bool(body["ok"]), str(body["error"]), str(body["key"]),
                                    body["value"], int(body["version"]))]
        return effects

    def _adopt_term(self, term: int) -> bool | None:
        """The check every leader-to-follower message opens with: None if it is
        stale (an older term, or another node claiming our own leading term:
        refuse it, telling where our log ends); else adopt its term and say
        whether that changed ours (then it must be persisted)."""
        if term < self._term or (self._lead is not None and term == self._lead.term):
            return None
        changed = term > self._term
        self._term = term
        return changed

    def _on_append(self, sender: str, term: int, body: dict[str, Any]) -> list[Any]:
        changed = self._adopt_term(term)
        if changed is None:
            _, last_v = self.last
            return [Send(COORD_ACK, self._term, {"ok": False, "match": last_v}, to=sender)]
        prev_v = int(body["prev_v"])
        prev_t = int(body["prev_t"])
        _, last_v = self.last
        if prev_v < self._base_version:
            # already committed and folded here: only the commit point may be news
            return [Send(COORD_ACK, term, {"ok": False, "match": last_v}, to=sender)]
        if prev_v > last_v or self._term_at(prev_v) != prev_t:
            # our log does not match there yet: tell where it ends, the leader backs up
            hint = min(last_v, prev_v - 1)
            effects: list[Any] = [StorePersist(self.state())] if changed else []
            return effects + [Send(COORD_ACK, term, {"ok": False, "match": max(hint, self._commit)}, to=sender)]
        match = prev_v
        if body["has"]:
            op = str(body["op"])
            value = body["value"]
            # the entry keeps the term it was written in (an older leader's, when catching up)
            e = Entry(prev_v + 1, int(body["t"]), op, str(body["key"]), value if isinstance(value, str) else None,
                      str(body["req"]), int(body["ttl_ms"]))
            old = self._entry(e.version)
            if old is None or old.term != e.term:
                if old is not None:
                    # a conflicting tail: never committed (every later leader holds committed entries)
                    del self._log[e.version - self._base_version - 1:]
                self._log.append(e)
                changed = True
            match = e.version
        commit = min(int(body["commit"]), match)
        if commit > self._commit:
            self._commit = commit
            self._compact()
            changed = True
        effects = [StorePersist(self.state())] if changed else []
        return effects + [Send(COORD_ACK, term, {"ok": True, "match": match}, to=sender)]

    def _on_ack(self, sender: str, term: int, body: dict[str, Any]) -> list[Any]:
        lead = self._lead
        if lead is None or term != lead.term or sender not in lead.match:
            return []
        m = int(body["match"])
        _, last_v = self.last
        if body["ok"]:
            if m > lead.match[sender]:
                lead.match[sender] = m
            lead.next_v[sender] = max(lead.next_v[sender], m + 1)
            effects = self._maybe_commit()
            if lead.next_v[sender] <= last_v:
                effects += self._send_append(sender)  # stream the rest, one entry per round trip
            return effects
        # back up to just after where the follower's log may still match ours
        lead.next_v[sender] = max(lead.match[sender] + 1, min(lead.next_v[sender] - 1, m + 1))
        return self._send_append(sender)
