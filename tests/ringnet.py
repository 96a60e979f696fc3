"""A tiny deterministic network for protocol tests: Nodes, a clock, a queue.

Every datagram takes ``delay_s`` (plus optional seeded jitter); a test can
drop chosen datagrams with a predicate, kill and restart nodes. All times are
made up; nothing here sleeps or touches a socket.
"""

from __future__ import annotations

import heapq
import random
from dataclasses import dataclass
from typing import Callable

from electiond.node import Node
from electiond.protocols.base import (
    ROLE_LEADER,
    Effect,
    Member,
    Message,
    Persist,
    PersistedState,
    Send,
    Settings,
)


@dataclass(frozen=True, slots=True)
class Sent:
    at: float
    sender: str
    receiver: str | None  # None: multicast
    kind: str
    term: int
    body: dict


class Net:
    def __init__(
        self,
        n: int,
        protocol: str = "ring",
        seed: int = 1,
        delay_s: float = 0.001,
        jitter_s: float = 0.0,
        **settings_kw,
    ) -> None:
        self.members = tuple(Member(f"n{i}", i) for i in range(1, n + 1))
        self.protocol = protocol
        self.rng = random.Random(seed)
        self.delay_s = delay_s
        self.jitter_s = jitter_s
        self.settings_kw = settings_kw
        self.now = 0.0
        self.nodes: dict[str, Node] = {}
        self.alive: set[str] = set()
        self.disk: dict[str, PersistedState] = {}
        self.log: list[Sent] = []
        self.effects: list[tuple[float, str, Effect]] = []
        self.drop: Callable[[Sent], bool] = lambda sent: False
        self._queue: list[tuple[float, int, str, Message]] = []
        self._seq = 0
        for m in self.members:
            self.start(m.name)

    # ---- cluster control ----------------------------------------------------

    def settings(self, name: str) -> Settings:
        return Settings(cluster="t", node_name=name, members=self.members, **self.settings_kw)

    def start(self, name: str) -> Node:
        node = Node(
            self.settings(name),
            self.protocol,
            random.Random(self.rng.getrandbits(32)),
            self.now,
            self.disk.get(name),
        )
        self.nodes[name] = node
        self.alive.add(name)
        return node

    def kill(self, name: str) -> None:
        self.alive.discard(name)

    # ---- running ----------------------------------------------------------------

    def _apply(self, name: str, effects: list[Effect]) -> None:
        for e in effects:
            self.effects.append((self.now, name, e))
            if isinstance(e, Persist):
                self.disk[name] = e.state
            elif isinstance(e, Send):
                receivers = [e.to] if e.to is not None else [m.name for m in self.members if m.name != name]
                for r in receivers:
                    sent = Sent(self.now, name, e.to, e.kind, e.term, dict(e.body))
                    if r == receivers[0]:
                        self.log.append(sent)
                    if self.drop(Sent(self.now, name, r, e.kind, e.term, dict(e.body))):
                        continue
                    at = self.now + self.delay_s + (self.rng.uniform(0, self.jitter_s) if self.jitter_s else 0.0)
                    msg = Message(e.kind, name, e.term, dict(e.body), e.to)
                    self._seq += 1
                    heapq.heappush(self._queue, (at, self._seq, r, msg))

    def step(self, until: float) -> bool:
        """Run the next event at or before ``until``; False when there is none."""
        next_tick = min(
            ((self.nodes[n].deadline(), n) for n in sorted(self.alive)), default=(float("inf"), "")
        )
        next_msg = self._queue[0][0] if self._queue else float("inf")
        t = min(next_tick[0], next_msg)
        if t > until:
            return False
        self.now = max(self.now, t)
        if next_msg <= next_tick[0]:
            _, _, receiver, msg = heapq.heappop(self._queue)
            if receiver in self.alive:
                self._apply(receiver, self.nodes[receiver].on_message(msg, self.now))
        else:
            name = next_tick[1]
            self._apply(name, self.nodes[name].on_tick(self.now))
        return True

    def run(self, duration_s: float, max_events: int = 200_000) -> None:
        until = self.now + duration_s
        for _ in range(max_events):
            if not self.step(until):
                self.now = until
                return
        raise AssertionError("event budget exhausted: a message storm?")

    def run_until(self, pred: Callable[[], bool], limit_s: float, max_events: int = 200_000) -> float:
        """Run until ``pred()`` holds; returns the time it took."""
        start = self.now
        until = self.now + limit_s
        for _ in range(max_events):
            if pred():
                return self.now - start
            if not self.step(until):
                break
        raise AssertionError(f"condition not reached within {limit_s}s (t={self.now:.3f})")

    # ---- views ----------------------------------------------------------------------

    def leaders(self) -> list[str]:
        return sorted(n for n in self.alive if self.nodes[n].protocol.role == ROLE_LEADER)

    def agreed_leader(self) -> str | None:
        """The one leader every live node follows, else None."""
        leaders = self.leaders()
        if len(leaders) != 1:
            return None
        if all(self.nodes[n].protocol.leader == leaders[0] for n in self.alive):
            return leaders[0]
        return None

    def sent(self, kind: str | None = None, since: float = 0.0) -> list[Sent]:
        return [s for s in self.log if s.at >= since and (kind is None or s.kind == kind)]
