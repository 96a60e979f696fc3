"""Glue between a quorum-lease Node and its coordination store (pure).

Both shells (the runtime, the coordination simulator) hold one of these next
to the Node: COORD_* messages go to the replica, everything else to the node;
after every input the replica follows the protocol's view (leading or not,
the term) and the protocol learns the store's last (term, version), which
its votes carry (Raft's up-to-date rule, ``QuorumLease.coord_last``).
"""

from __future__ import annotations

from typing import Any

from electiond.coord.replica import MESSAGE_SCHEMAS, OP_SET, ConfigReplica, StoreState, View
from electiond.node import Node
from electiond.protocols.base import Message
from electiond.protocols.lease import QuorumLease


# The live member view is a key of the replicated store: its versions are
# log versions, so one version is one view on every node, and watching it is
# gap-free like any key. Users cannot write under RESERVED_PREFIX.
RESERVED_PREFIX = "_coord/"
MEMBERS_KEY = RESERVED_PREFIX + "members"
SUSPECTS_SEP = ";"  # the value: "live,live;suspected,suspected" (no ';' while nobody is suspected)


def suspect_after_s(settings: Any) -> float:
    """Silence after which the serving leader shows a peer as suspected: twice
    the longest election timeout (a follower answers every heartbeat, so this
    is many lost answers in a row), well inside the presence window after
    which it has left (3 presence intervals, ``Membership.alive``)."""
    return 2 * float(settings.election_timeout_max_s)


def encode_view(live: tuple[str, ...], suspected: tuple[str, ...]) -> str:
    return ",".join(live) + (SUSPECTS_SEP + ",".join(suspected) if suspected else "")


def decode_view(value: str | None) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(live, suspected) of a recorded view (None: no view recorded yet)."""
    live, _, suspected = (value or "").partition(SUSPECTS_SEP)
    return (tuple(n for n in live.split(",") if n), tuple(n for n in suspected.split(",") if n))


def member_changes(before: str | None, after: str | None) -> list[tuple[str, str]]:
    """(node, change) from one recorded view to the next: "joined" (into the
    live set, from absent or suspected), "suspected" (silent for
    ``suspect_after_s``, still within the presence window), "left" (silent
    for the presence window, or gone from the configuration)."""
    live0, sus0 = decode_view(before)
    live1, sus1 = decode_view(after)
    out = [(n, "joined") for n in sorted(set(live1) - set(live0))]
    out += [(n, "suspected") for n in sorted(set(sus1) - set(sus0))]
    out += [(n, "left") for n in sorted((set(live0) | set(sus0)) - (set(live1) | set(sus1)))]
    return out


class CoordHost:
    def __init__(self, node: Node, store: StoreState | None = None, log_keep: int | None = None) -> None:
        if not isinstance(node.protocol, QuorumLease):
            raise ValueError("the embedded coordination store needs protocol = quorum-lease")
        self.node = node
        self.lease: QuorumLease = node.protocol
        s = node.settings
        self.replica = ConfigReplica(s.node_name, tuple(m.name for m in s.members), s.heartbeat_interval_s, store,
                                      s.clock_drift_ppm, log_keep)
        self.lease.coord_last = self.replica.last
        self._members_retry_at = -1.0
        self._prune_at = -1.0
        # (term, when we first served in it): a departed peer is pruned from barriers only once
        # we have served a whole presence window, so "not heard" means silent, not "new leader"
        self._serving_since: tuple[int, float] = (-1, 0.0)

    @staticmethod
    def handles(kind: str) -> bool:
        return kind in MESSAGE_SCHEMAS

    @staticmethod
    def message_schemas() -> dict[str, dict[str, Any]]:
        return dict(MESSAGE_SCHEMAS)

    def view(self, now: float) -> View:
        return View(self.lease.leader, self.lease.term, self.node.is_leader(now))

    def _done(self, effects: list[Any]) -> list[Any]:
        self.lease.coord_last = self.replica.last
        return effects

    def on_message(self, msg: Message, now: float) -> list[Any]:
        """A COORD_* message (``handles(msg.kind)``)."""
        return self._done(self.replica.on_message(self.view(now), msg.kind, msg.sender, msg.term, msg.body, now))

    def after_node_event(self, now: float) -> list[Any]:
        """Call after every node input: the replica follows leadership changes,
        and a serving leader records a changed live member view."""
        view = self.view(now)
        effects = self.replica.on_tick(view, now)
        if self.replica.ready(view) and now >= self._members_retry_at:
            effects += self._record_members(view, now)
        if self.replica.ready(view) and now >= self._prune_at:
            effects += self._prune_barriers(view, now)
        return self._done(effects)

    def departed(self, now: float) -> tuple[str, ...]:
        """Members this node counts as left (the member view's rule: not heard
        within the presence window; suspected ones are not departed)."""
        live, suspected = decode_view(self.live_members(now))
        return tuple(m.name for m in self.node.settings.members if m.name not in live and m.name not in suspected)

    def _prune_barriers(self, view: View, now: float) -> list[Any]:
        if self._serving_since[0] != view.term:
            self._serving_since = (view.term, now)
        self._prune_at = now + 4 * self.node.settings.heartbeat_interval_s
        if now - self._serving_since[1] < self.node.membership.liveness_window_s():
            return []
        return self.replica.barrier_prune(view, self.departed(now), now)

    def live_members(self, now: float) -> str:
        """The view as this node sees it now, encoded (``encode_view``)."""
        s = self.node.settings
        membership = self.node.membership
        quiet_s = suspect_after_s(s)
        live: list[str] = []
        suspected: list[str] = []
        for m in s.members:
            seen = membership.last_seen(m.name)
            if m.name == s.node_name:
                live.append(m.name)
            elif seen is None or not membership.alive(m.name, now):
                continue  # left: not heard within the presence window
            elif now - seen > quiet_s:
                suspected.append(m.name)
            else:
                live.append(m.name)
        return encode_view(tuple(sorted(live)), tuple(sorted(suspected)))

    def _record_members(self, view: View, now: float) -> list[Any]:
        value = self.live_members(now)
        current, version = self.replica.current(MEMBERS_KEY)
        if current == value:
            return []
        # one write at a time: retried (same id) until it commits or the view moves on
        self._members_retry_at = now + 4 * self.node.settings.heartbeat_interval_s
        req = f"m{view.term}-{version}-{value}"[:64]
        return self.replica.request(view, req, OP_SET, MEMBERS_KEY, value, 0, now)

    def deadline(self) -> float:
        return self.replica.deadline()

    def request(self, req: str, op: str, key: str, value: str | None, version: int, now: float,
                ttl_ms: int = 0) -> list[Any]:
        return self._done(self.replica.request(self.view(now), req, op, key, value, version, now, ttl_ms=ttl_ms))
