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
from collections import Counter
from collections.abc import Sequence
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
    """Accepts each (incarnation, seq) at most once; older incarnations are stale."""

    __slots__ = ("incarnation", "highest", "seen_mask")

    def __init__(self) -> None:
        self.incarnation = -1
        self.highest = -1
        self.seen_mask = 0  # bit i set: seq (highest - i) was seen

    def accept(self, incarnation: int, seq: int) -> bool:
        if incarnation < self.incarnation:
            return False
        if incarnation > self.incarnation:
            self.incarnation, self.highest, self.seen_mask = incarnation, seq, 1
            return True
        if seq > self.highest:
            shift = seq - self.highest
            self.seen_mask = ((self.seen_mask << shift) | 1) & ((1 << REPLAY_WINDOW) - 1)
            self.highest = seq
            return True
        offset = self.highest - seq
        if offset >= REPLAY_WINDOW or self.seen_mask & (1 << offset):
            return False
        self.seen_mask |= 1 << offset
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
    ) -> None:
        self.cluster = cluster
        self.node_name = node_name
        self.members = members
        self.set_keys(keys)
        self.schemas = schemas
        self.incarnation = incarnation
        self.unicast_port = unicast_port
        self.previous_incarnation = previous_incarnation  # our last start's, from the state file
        self.dropped: Counter[str] = Counter({reason: 0 for reason in DROP_REASONS})
        self._seq = 0
        self._windows: dict[str, ReplayWindow] = {}
        # a sender's incarnation before its latest: a second live process under
        # that name keeps using it, a restarted one never does
        self._older: dict[str, ReplayWindow] = {}
        self._older_streak: dict[str, int] = {}

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

    def decode(self, datagram: bytes) -> Received | None:
        """The message, or None after counting why it was dropped."""
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
                and _type_ok(port, int) and 0 <= port <= 65535 and term >= 0
                and isinstance(body, dict)):
            return self._drop("bad_schema")
        if cluster != self.cluster:
            return self._drop("wrong_cluster")
        if sender not in self.members:
            return self._drop("unknown_sender")
        if sender == self.node_name and incarnation == self.incarnation and port == self.unicast_port:
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
        verdict = self._freshness(sender, incarnation, seq)
        if verdict == "replay":
            return self._drop("replay")
        duplicate = sender == self.node_name or verdict == "duplicate_name"
        if duplicate:
            self._drop("duplicate_name")
        return Received(Message(kind, sender, term, body, recipient), incarnation, port, duplicate)

    def _freshness(self, sender: str, incarnation: int, seq: int) -> str | None:
        """None for a new (incarnation, seq), "replay" for a repeat or stale
        one, "duplicate_name" for new traffic of an incarnation the sender
        already replaced: a second process is live under that name."""
        window = self._windows.get(sender)
        if window is None:
            window = self._windows[sender] = ReplayWindow()
        older = self._older.get(sender)
        if incarnation < window.incarnation:
            if older is None or older.incarnation != incarnation or not older.accept(incarnation, seq):
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
                window = self._windows[sender] = ReplayWindow()
        if not window.accept(incarnation, seq):
            return "replay"
        self._older_streak[sender] = 0
        return None
