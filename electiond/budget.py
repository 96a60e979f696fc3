"""Per-source datagram budget: a token bucket per source address.

Checked before the MAC and before msgpack decoding, so a host without the key
that floods the group or our unicast port costs one dictionary lookup per
datagram instead of two decodes and an HMAC. The table is bounded (least
recently used sources are forgotten); addresses that sent authenticated
traffic are kept apart, so strangers cycling through source addresses cannot
evict a member's bucket. Each spoofed address does get a fresh burst: their
sheer volume is what sockfilter.FloodShield reacts to. A flood spoofing a
member's own address spends that member's bucket; nothing at this layer can
tell the two apart (the MAC can, at a cost per datagram).
"""

from __future__ import annotations

from collections import OrderedDict

MAX_SOURCES = 1024
MAX_MEMBER_SOURCES = 256


class _Bucket:
    __slots__ = ("tokens", "at")

    def __init__(self, tokens: float, at: float) -> None:
        self.tokens = tokens
        self.at = at


def _spend(bucket: _Bucket, now: float, rate_per_s: float, burst: float) -> bool:
    tokens = bucket.tokens + (now - bucket.at) * rate_per_s
    bucket.at = now
    if tokens > burst:
        tokens = burst
    if tokens < 1.0:
        bucket.tokens = tokens
        return False
    bucket.tokens = tokens - 1.0
    return True


def rates_for(members: int, heartbeat_interval_s: float) -> tuple[float, float]:
    """(rate per s, burst) one source address may use.

    A member sends about one datagram per heartbeat interval (a heartbeat, or
    an ack of one) plus beacons and, in elections, a handful of votes; several
    members can share an address (loopback clusters, containers). Eight per
    member per interval is 4x that with every member on one address, and a
    quarter second of it may come at once (a burst of votes after a leader
    failure). At the defaults (3 members, 50 ms) that is 480/s, burst 120.
    """
    rate_per_s = max(200.0, 8.0 * members / heartbeat_interval_s)
    return rate_per_s, max(64.0, rate_per_s / 4)


class SourceBudget:
    """Per-address buckets, plus one shared by every stranger (an address
    that never sent authenticated traffic): a flood from thousands of
    spoofed addresses, each within its own budget, still gets at most
    ``strangers_rate_per_s`` decodes a second. A member not heard from yet
    competes with such a flood for that share until its first datagram
    gets through and makes it a member."""

    def __init__(self, rate_per_s: float, burst: float, max_sources: int = MAX_SOURCES,
                 strangers_rate_per_s: float | None = None) -> None:
        self.rate_per_s = rate_per_s
        self.burst = burst
        self.max_sources = max_sources
        self.strangers_rate_per_s = 2 * rate_per_s if strangers_rate_per_s is None else strangers_rate_per_s
        self.strangers_burst = max(burst, self.strangers_rate_per_s / 4)
        self._strangers: OrderedDict[str, _Bucket] = OrderedDict()
        self._members: dict[str, _Bucket] = {}
        self._all_strangers = _Bucket(self.strangers_burst, 0.0)

    def allow(self, source: str, now: float) -> bool:
        """Spend one token of source's bucket; False when it has none left."""
        bucket = self._members.get(source)
        if bucket is not None:
            return _spend(bucket, now, self.rate_per_s, self.burst)
        bucket = self._strangers.get(source)
        if bucket is None:
            if len(self._strangers) >= self.max_sources:
                self._strangers.popitem(last=False)
            bucket = self._strangers[source] = _Bucket(self.burst, now)
        else:
            self._strangers.move_to_end(source)
        return (_spend(bucket, now, self.rate_per_s, self.burst)
                and _spend(self._all_strangers, now, self.strangers_rate_per_s, self.strangers_burst))

    def is_member(self, source: str) -> bool:
        """source has sent authenticated traffic."""
        return source in self._members

    def authenticated(self, source: str) -> bool:
        """source sent a datagram that passed every check: keep its bucket.
        True the first time (the caller may list it elsewhere too)."""
        if source in self._members or len(self._members) >= MAX_MEMBER_SOURCES:
            return False
        bucket = self._strangers.pop(source, None)
        self._members[source] = bucket if bucket is not None else _Bucket(self.burst, 0.0)
        return True

    def sources(self) -> int:
        return len(self._strangers) + len(self._members)
