"""Glue between a quorum-lease Node and its coordination store (pure).

Both shells (the runtime, the coordination simulator) hold one of these next
to the Node: COORD_* messages go to the replica, everything else to the node;
after every input the replica follows the protocol's view (leading or not,
the term) and the protocol learns the store's last (term, version), which
its votes carry (Raft's up-to-date rule, ``QuorumLease.coord_last``).
"""

from __future__ import annotations

from typing import Any

from electiond.coord.replica import MESSAGE_SCHEMAS, ConfigReplica, StoreState, View
from electiond.node import Node
from electiond.protocols.base import Message
from electiond.protocols.lease import QuorumLease


class CoordHost:
    def __init__(self, node: Node, store: StoreState | None = None) -> None:
        if not isinstance(node.protocol, QuorumLease):
            raise ValueError("the embedded coordination store needs protocol = quorum-lease")
        self.node = node
        self.lease: QuorumLease = node.protocol
        s = node.settings
        self.replica = ConfigReplica(s.node_name, tuple(m.name for m in s.members), s.heartbeat_interval_s, store,
                                      s.clock_drift_ppm)
        self.lease.coord_last = self.replica.last

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
        """Call after every node input: the replica follows leadership changes."""
        return self._done(self.replica.on_tick(self.view(now), now))

    def deadline(self) -> float:
        return self.replica.deadline()

    def request(self, req: str, op: str, key: str, value: str | None, version: int, now: float,
                ttl_ms: int = 0) -> list[Any]:
        return self._done(self.replica.request(self.view(now), req, op, key, value, version, now, ttl_ms=ttl_ms))
