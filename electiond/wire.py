"""The datagram format: msgpack envelope, HMAC-SHA256, replay guard, checks.

A datagram is msgpack ``[inner, mac]`` where ``inner`` is the msgpack bytes of
``[version, cluster, kind, sender, incarnation, seq, term, recipient,
unicast_port, body]``. The MAC covers exactly the ``inner`` bytes, so no
re-encoding ambiguity can make a forged envelope verify. Receivers never raise
on bad input: they drop the datagram and count the reason.
"""

from __future__ import annotations

import hashlib
import hmac
from collections import Counter
from dataclasses import dataclass
from typing import Any

import msgpack

from electiond.protocols.base import Message, Send

VERSION = 1
MAX_DATAGRAM_BYTES = 1400
MAC_BYTES = 32
REPLAY_WINDOW = 64  # tolerate this much reordering per sender, as IPsec does

DROP_REASONS = (
    "oversize",
    "bad_encoding",
    "bad_schema",
    "wrong_version",
    "wrong_cluster",
    "unknown_sender",
    "unknown_kind",
    "bad_mac",
    "replay",
    "self",
)

Schemas = dict[str, dict[str, Any]]


class EncodeError(Exception):
    """A message this node built does not fit the wire (a bug, never peer input)."""


@dataclass(frozen=True, slots=True)
class Received:
    message: Message
    incarnation: int
    unicast_port: int


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
        key: bytes | None,
        schemas: Schemas,
        incarnation: int,
        unicast_port: int = 0,
    ) -> None:
        self.cluster = cluster
        self.node_name = node_name
        self.members = members
        self.key = key
        self.schemas = schemas
        self.incarnation = incarnation
        self.unicast_port = unicast_port
        self.dropped: Counter[str] = Counter({reason: 0 for reason in DROP_REASONS})
        self._seq = 0
        self._windows: dict[str, ReplayWindow] = {}

    @property
    def authenticated(self) -> bool:
        return self.key is not None

    def _mac(self, inner: bytes) -> bytes:
        if self.key is None:
            return b""
        return hmac.new(self.key, inner, hashlib.sha256).digest()

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
        datagram = msgpack.packb([inner, self._mac(inner)], use_bin_type=True)
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
        if not (isinstance(outer, list) and len(outer) == 2
                and isinstance(outer[0], bytes) and isinstance(outer[1], bytes)):
            return self._drop("bad_schema")
        inner, mac = outer
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
        if sender == self.node_name:
            return self._drop("self")
        if sender not in self.members:
            return self._drop("unknown_sender")
        # authenticate before looking any deeper, so forged input costs little
        if self.key is not None:
            if len(mac) != MAC_BYTES or not hmac.compare_digest(mac, self._mac(inner)):
                return self._drop("bad_mac")
        elif mac:
            return self._drop("bad_mac")  # a keyed peer in an unkeyed cluster: misconfiguration
        schema = self.schemas.get(kind)
        if schema is None:
            return self._drop("unknown_kind")
        for name, expected in schema.items():
            if name not in body or not _type_ok(body[name], expected):
                return self._drop("bad_schema")
        window = self._windows.setdefault(sender, ReplayWindow())
        if not window.accept(incarnation, seq):
            return self._drop("replay")
        return Received(Message(kind, sender, term, body, recipient), incarnation, port)
