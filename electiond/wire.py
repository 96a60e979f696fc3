"""The datagram format: msgpack envelope, HMAC-SHA256, replay guard, checks.

A datagram is msgpack ``[inner, key_id, mac]`` where ``inner`` is the msgpack
bytes of ``[version, cluster, kind, sender, incarnation, seq, term, recipient,
unicast_port, body]``. The MAC is HMAC-SHA256 under the key named ``key_id``
and covers exactly the ``inner`` bytes, so no re-encoding ambiguity can make a
forged envelope verify; a receiver tries only the key the id names (one HMAC
per datagram however many keys a rotation lists). Without keys, ``key_id`` is
"" and ``mac`` empty. Version 1 had no key id (``[inner, mac]``); such a
datagram is dropped as ``wrong_version``. Receivers never raise on bad input:
they drop the datagram and count the reason.

A datagram claiming our own name is our multicast loopback when it carries
our incarnation and unicast port (the MAC binds both, so a replay of our own
traffic from elsewhere is still just ours). One with an incarnation no newer
than our previous start's is our own past, replayed (or a process older than
our last start, which hears our newer incarnation and faults itself), so an
attacker replaying captured traffic cannot fault us. Anything else that
authenticates is another live process using our name.
"""

from __future__ import annotations

import hashlib
import hmac
import math
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import msgpack

from electiond.keys import Key
from electiond.protocols.base import Message, Send

VERSION = 2
MAX_DATAGRAM_BYTES = 1400
MAC_BYTES = 32
REPLAY_WINDOW = 64  # tolerate this much reordering per sender, as IPsec does
# A replaced incarnation that sends this many datagrams in a row, with none
# from its successor in between, is the live one again (the successor was a
# copy that has gone): followed again, without a clock in the codec.
TAKEOVER_STREAK = 3

# Every integer a peer sends stays within +-2**53: exact as a float (JSON,
# status, Prometheus), and far inside msgpack's 64 bits, so re-encoding a term
# or an echoed body field can never overflow. 2**53 ms is 285,000 years of
# incarnations; 2**53 terms outlast any real cluster by the same margin.
MAX_WIRE_INT = 2**53
# A term may run ahead of ours by this much and be adopted at once. An
# election raises the term by one or two (pre-vote stops a partitioned node
# inflating it), so 2**20 is over a million elections: a day of elections
# every 100 ms. A bigger jump needs the same sender to repeat it between
# TERM_CONFIRM_MIN_S and TERM_CONFIRM_MAX_S later (a live leader or voter
# does; one forged datagram cannot), so a node returning to a cluster that
# moved on further still catches up, about a second late. Even confirmed, a
# jump is at most 2**32 (no cluster runs that many elections), so two forged
# datagrams cannot lift an unkeyed cluster to the 2**53 ceiling, where it
# could elect no more: that would take 2**21 confirmed pairs, weeks of forgery.
MAX_TERM_JUMP = 2**20
MAX_CONFIRMED_TERM_JUMP = 2**32
TERM_CONFIRM_MIN_S = 1.0
TERM_CONFIRM_MAX_S = 10.0
# A sender's sequence number may jump this far past the highest seen (64k
# missed datagrams: nearly an hour of 50 ms heartbeats) and be accepted; a
# bigger jump is dropped until the next datagram confirms it (one lost
# datagram after a very long partition), so one datagram cannot move the
# window arbitrarily far.
MAX_SEQ_JUMP = 2**16
# An incarnation is its daemon's start time in ms since the epoch; a clock a
# year wrong is broken, and one further ahead is a forgery (2**53 ms: 285,000 years)
MAX_INCARNATION_AHEAD_MS = 366 * 24 * 3600 * 1000
# Without a key the replay window is only a duplicate filter (see ReplayWindow)
UNKEYED_REANCHOR_S = 2.0

DROP_REASONS = (
    "oversize",
    "bad_encoding",
    "bad_schema",
    "wrong_version",
    "wrong_cluster",
    "unknown_sender",
    "unknown_kind",
    "bad_mac",
    "unknown_key",  # signed with a key id we do not list (a rotation step skipped on some node?)
    "replay",
    "self",
    # authentic, but our name from another process, or a member's name from two
    # live incarnations at once: shown to the runtime, never fed to the protocol
    "duplicate_name",
    "out_of_range",
    "term_jump",
    "seq_jump",
    "rate_limited",
    # transport = unicast: not from the address and port configured for the member it names
    "wrong_source",
)

Schemas = dict[str, dict[str, Any]]


class EncodeError(Exception):
    """A message this node built does not fit the wire (a bug, never peer input)."""


@dataclass(frozen=True, slots=True)
class Received:
    message: Message
    incarnation: int
    unicast_port: int
    # the sender's name is in use by two processes (counted as dropped
    # "duplicate_name"): the runtime reports it and must not feed the message on
    duplicate: bool = False


class ReplayWindow:
    """Accepts each (incarnation, seq) at most once; older incarnations are stale.

    Work is O(REPLAY_WINDOW) bits whatever the numbers: a jump past the
    window starts a fresh mask instead of shifting the old one that far.

    ``strict`` (keyed clusters): stale datagrams are dropped. Without a key
    anyone can forge a fresh envelope, so refusing stale ones protects
    nothing and would let one forged far-ahead (incarnation, seq) mute a
    member: unkeyed windows only drop duplicates inside the window, accept
    stale datagrams, and re-anchor on one after UNKEYED_REANCHOR_S without an
    accepted datagram at the window's position (so duplicates are caught
    again once a forger stops).
    """

    __slots__ = ("incarnation", "highest", "seen_mask", "accepted_at", "pending_seq", "strict")

    def __init__(self, strict: bool = True) -> None:
        self.incarnation = -1
        self.highest = -1
        self.seen_mask = 0  # bit i set: seq (highest - i) was seen
        self.accepted_at = -math.inf  # when the window's position last moved or filled a bit
        self.pending_seq = -1  # a too-big jump waiting for the next datagram to confirm it
        self.strict = strict

    def check(self, incarnation: int, seq: int, now: float) -> str | None:
        """None if fresh (and now remembered), else the drop reason."""
        if incarnation == self.incarnation:
            if seq > self.highest:
                shift = seq - self.highest
                confirmed = self.pending_seq >= 0 and 0 < seq - self.pending_seq <= REPLAY_WINDOW
                if shift > MAX_SEQ_JUMP and not confirmed:
                    self.pending_seq = seq
                    return "seq_jump"
                if confirmed:
                    self.pending_seq = -1
                self._advance(seq, shift, now)
                return None
            offset = self.highest - seq
            if offset < REPLAY_WINDOW:
                if self.seen_mask & (1 << offset):
                    return "replay"
                self.seen_mask |= 1 << offset
                self.accepted_at = now
                return None
        elif incarnation > self.incarnation:
            self._reset(incarnation, seq, now)
            return None
        # stale: an older incarnation, or older than the window
        if self.strict:
            return "replay"
        if now - self.accepted_at >= UNKEYED_REANCHOR_S:
            self._reset(incarnation, seq, now)
        return None

    def accept(self, incarnation: int, seq: int, now: float = 0.0) -> bool:
        return self.check(incarnation, seq, now) is None

    def _reset(self, incarnation: int, seq: int, now: float) -> None:
        self.incarnation, self.highest, self.seen_mask = incarnation, seq, 1
        self.pending_seq = -1
        self.accepted_at = now

    def _advance(self, seq: int, shift: int, now: float) -> None:
        if shift >= REPLAY_WINDOW:
            self.seen_mask = 1  # nothing of the old window is inside the new one
        else:
            self.seen_mask = ((self.seen_mask << shift) | 1) & ((1 << REPLAY_WINDOW) - 1)
        self.highest = seq
        self.accepted_at = now


def _wire_int(value: Any, low: int = 0) -> bool:
    return type(value) is int and low <= value <= MAX_WIRE_INT


def _scalar_ok(value: Any) -> bool:
    kind = type(value)
    if kind is int:
        return -MAX_WIRE_INT <= value <= MAX_WIRE_INT
    if kind is float:
        return math.isfinite(value)
    return kind is str or kind is bool or kind is bytes or value is None


def _body_ok(body: dict[str, Any]) -> bool:
    """Bodies hold scalars and flat lists of scalars: no protocol sends more,
    and refusing nesting keeps checking (and any later walk) linear."""
    for value in body.values():
        if type(value) is list:
            for item in value:
                if not _scalar_ok(item):
                    return False
        elif not _scalar_ok(value):
            return False
    return True


def _type_ok(value: Any, expected: Any) -> bool:
    # bool is an int in Python; a schema asking for int must not take True
    if expected is int or expected == (int,):
        return isinstance(value, int) and not isinstance(value, bool)
    if expected is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    return isinstance(value, expected)


class Codec:
    def __init__(
        self,
        cluster: str,
        node_name: str,
        members: set[str],
        keys: Sequence[Key] | bytes | None,
        schemas: Schemas,
        incarnation: int,
        unicast_port: int = 0,
        previous_incarnation: int = 0,
        current_term: Callable[[], int] | None = None,
        clock: Callable[[], float] | None = None,
        wall_ms: Callable[[], int] | None = None,
        sources: dict[str, tuple[str, int]] | None = None,
    ) -> None:
        """current_term: the receiver's term, for the term-jump guard (None:
        no guard). clock: monotonic seconds (the runtime passes
        time.monotonic; tests a fake; None reads as 0, which only disables
        the time-based rules). sources (transport = unicast): member ->
        the (address, port) its datagrams must come from; None: any."""
        self.cluster = cluster
        self.sources = sources
        self.node_name = node_name
        self.members = members
        self.set_keys(keys)
        self.schemas = schemas
        self.incarnation = incarnation
        self.unicast_port = unicast_port
        self.previous_incarnation = previous_incarnation  # our last start's, from the state file
        self.dropped: Counter[str] = Counter({reason: 0 for reason in DROP_REASONS})
        self.accepted = 0  # datagrams that passed every check
        self._seq = 0
        self._windows: dict[str, ReplayWindow] = {}
        # a sender's incarnation before its latest: a second live process under
        # that name keeps using it, a restarted one never does
        self._older: dict[str, ReplayWindow] = {}
        self._older_streak: dict[str, int] = {}
        self._current_term = current_term
        self._clock = clock
        self._wall_ms = wall_ms  # wall-clock ms, to bound incarnations (None: no bound)
        # sender -> (term, first seen) of a term jump waiting for confirmation
        self._pending_terms: dict[str, tuple[int, float]] = {}

    def set_keys(self, keys: Sequence[Key] | bytes | None) -> None:
        """Sign with the first key, accept any; takes effect with the next datagram.
        A bare bytes key (tests, callers of version 1) gets the id "default"."""
        if isinstance(keys, bytes):
            keys = (Key("default", keys),)
        ring = tuple(keys or ())
        self.keys = ring
        self._signing = ring[0] if ring else None
        self._by_id = {k.id: k.secret for k in ring}

    @property
    def authenticated(self) -> bool:
        return self._signing is not None

    @property
    def signing_key_id(self) -> str | None:
        return self._signing.id if self._signing else None

    @staticmethod
    def _mac(secret: bytes, inner: bytes) -> bytes:
        return hmac.new(secret, inner, hashlib.sha256).digest()

    def encode(self, send: Send) -> bytes:
        self._seq += 1
        inner = msgpack.packb(
            [
                VERSION,
                self.cluster,
                send.kind,
                self.node_name,
                self.incarnation,
                self._seq,
                send.term,
                send.to,
                self.unicast_port,
                send.body,
            ],
            use_bin_type=True,
        )
        signing = self._signing
        if signing is None:
            outer = [inner, "", b""]
        else:
            outer = [inner, signing.id, self._mac(signing.secret, inner)]
        datagram = msgpack.packb(outer, use_bin_type=True)
        if len(datagram) > MAX_DATAGRAM_BYTES:
            raise EncodeError(f"{send.kind} encodes to {len(datagram)} bytes > {MAX_DATAGRAM_BYTES}")
        return datagram

    def _drop(self, reason: str) -> None:
        self.dropped[reason] += 1

    def decode(self, datagram: bytes, source: tuple[str, int] | None = None) -> Received | None:
        """The message, or None after counting why it was dropped. source:
        where the datagram came from (checked against ``sources``)."""
        if len(datagram) > MAX_DATAGRAM_BYTES:
            return self._drop("oversize")
        try:
            outer = msgpack.unpackb(datagram, raw=False, max_bin_len=MAX_DATAGRAM_BYTES,
                                    max_str_len=MAX_DATAGRAM_BYTES, max_array_len=64, max_map_len=64)
        except Exception:  # msgpack raises many types on garbage; none may escape
            return self._drop("bad_encoding")
        if (isinstance(outer, list) and len(outer) == 2
                and isinstance(outer[0], bytes) and isinstance(outer[1], bytes)):
            return self._drop("wrong_version")  # version 1's [inner, mac]
        if not (isinstance(outer, list) and len(outer) == 3 and isinstance(outer[0], bytes)
                and isinstance(outer[1], str) and isinstance(outer[2], bytes)):
            return self._drop("bad_schema")
        inner, key_id, mac = outer
        try:
            fields = msgpack.unpackb(inner, raw=False, strict_map_key=True, max_array_len=256, max_map_len=64)
        except Exception:
            return self._drop("bad_encoding")
        if not isinstance(fields, list) or len(fields) != 10:
            return self._drop("bad_schema")
        version, cluster, kind, sender, incarnation, seq, term, recipient, port, body = fields
        if not _type_ok(version, int):
            return self._drop("bad_schema")
        if version != VERSION:
            return self._drop("wrong_version")
        if not (isinstance(cluster, str) and isinstance(kind, str) and isinstance(sender, str)
                and _type_ok(incarnation, int) and _type_ok(seq, int) and _type_ok(term, int)
                and (recipient is None or isinstance(recipient, str))
                and _type_ok(port, int) and isinstance(body, dict)):
            return self._drop("bad_schema")
        # before the MAC: a value no honest peer sends costs one comparison
        if not (_wire_int(incarnation) and _wire_int(seq) and _wire_int(term) and 1 <= port <= 65535
                and _body_ok(body)):
            return self._drop("out_of_range")
        if self._wall_ms is not None and incarnation > self._wall_ms() + MAX_INCARNATION_AHEAD_MS:
            # incarnations are start times in ms (StateStore.begin_incarnation):
            # more than a year ahead of our clock is forged, and acting on it would
            # let one datagram pass for a second process under a member's name
            return self._drop("out_of_range")
        if cluster != self.cluster:
            return self._drop("wrong_cluster")
        if sender not in self.members:
            return self._drop("unknown_sender")
        if self.sources is not None and (source is None or self.sources.get(sender) != source):
            # before the MAC and the replay window: a member's key on the wrong host, or a
            # forger, neither costs an HMAC nor moves the real member's window
            return self._drop("wrong_source")
        if sender == self.node_name and incarnation == self.incarnation:
            # our own multicast loopback, or a copy of it (relayed, or forged
            # in an unkeyed cluster): no second process starts in our very
            # millisecond, so it is never a duplicate of our name
            return self._drop("self")
        # authenticate before looking any deeper, so forged input costs little
        if self._signing is not None:
            secret = self._by_id.get(key_id)
            if secret is None:
                return self._drop("unknown_key")
            if len(mac) != MAC_BYTES or not hmac.compare_digest(mac, self._mac(secret, inner)):
                return self._drop("bad_mac")
        elif mac or key_id:
            return self._drop("bad_mac")  # a keyed peer in an unkeyed cluster: misconfiguration
        schema = self.schemas.get(kind)
        if schema is None:
            return self._drop("unknown_kind")
        for name, expected in schema.items():
            if name not in body or not _type_ok(body[name], expected):
                return self._drop("bad_schema")
        if sender == self.node_name and incarnation <= self.previous_incarnation:
            return self._drop("replay")
        now = self._clock() if self._clock is not None else 0.0
        if self._current_term is not None and not self._term_plausible(sender, term, now):
            return self._drop("term_jump")
        verdict = self._freshness(sender, incarnation, seq, now)
        if verdict is not None and verdict != "duplicate_name":
            return self._drop(verdict)
        duplicate = sender == self.node_name or verdict == "duplicate_name"
        if duplicate:
            self._drop("duplicate_name")
        else:
            self.accepted += 1
        return Received(Message(kind, sender, term, body, recipient), incarnation, port, duplicate)

    def _freshness(self, sender: str, incarnation: int, seq: int, now: float) -> str | None:
        """None for a new (incarnation, seq), the drop reason ("replay",
        "seq_jump") for a repeat, stale or implausible one, "duplicate_name" for new traffic of an incarnation the sender
        already replaced: a second process is live under that name."""
        window = self._windows.get(sender)
        if window is None:
            window = self._windows[sender] = ReplayWindow(strict=self._signing is not None)
        older = self._older.get(sender)
        if incarnation < window.incarnation:
            if older is None or older.incarnation != incarnation or not older.accept(incarnation, seq, now):
                return "replay"
            streak = self._older_streak.get(sender, 0) + 1
            if streak < TAKEOVER_STREAK:
                self._older_streak[sender] = streak
                return "duplicate_name"
            self._windows[sender], self._older[sender] = older, window
            self._older_streak[sender] = 0
            return None
        if incarnation > window.incarnation >= 0:
            if older is not None and older.incarnation == incarnation:
                # the newer one we stopped following speaks again: its window, not a fresh one
                self._windows[sender], self._older[sender] = older, window
                window = older
            else:
                self._older[sender] = window
                window = self._windows[sender] = ReplayWindow(strict=self._signing is not None)
        reason = window.check(incarnation, seq, now)
        if reason is not None:
            return reason
        self._older_streak[sender] = 0
        return None

    def _term_plausible(self, sender: str, term: int, now: float) -> bool:
        """A term at most MAX_TERM_JUMP ahead of ours, or a jump of up to
        MAX_CONFIRMED_TERM_JUMP that the same sender repeated
        TERM_CONFIRM_MIN_S..MAX_S after first claiming it."""
        assert self._current_term is not None
        ours = self._current_term()
        if term - ours <= MAX_TERM_JUMP:
            return True
        if term - ours > MAX_CONFIRMED_TERM_JUMP:
            return False
        pending = self._pending_terms.get(sender)
        if pending is not None:
            claimed, first_at = pending
            waited_s = now - first_at
            if claimed <= term <= claimed + MAX_TERM_JUMP and TERM_CONFIRM_MIN_S <= waited_s <= TERM_CONFIRM_MAX_S:
                del self._pending_terms[sender]
                return True
            if waited_s <= TERM_CONFIRM_MAX_S:
                return False  # keep the first claim's clock running
        self._pending_terms[sender] = (term, now)
        return False
