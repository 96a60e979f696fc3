"""Two processes under one name in a quorum-lease cluster, driven as pure Nodes.

A small event loop stands in for the network and the shell: n1, n2, n3 and,
from a random moment, a second "n1". A datagram whose sender name equals the
receiver's is what the codec reports as another process using our name
(``Node.heard_own_name``); peers are fed BOTH n1s' messages (harsher than
the codec, which follows one incarnation). Directed sends go to the process
last heard under that name, else to every process with it (as the group
would). Checked at every event: never two processes leading, and no grant
(vote, pre-vote, lease ack) from an n1 process while both n1s are in FAULT;
after the copy leaves, n1 clears and the cluster has a leader again.
"""

from __future__ import annotations

import heapq
import random

import pytest

from electiond.node import DUPLICATE_NAME, Node
from electiond.protocols.base import Member, Message, Send, Settings

MEMBERS = tuple(Member(f"n{i}", i) for i in (1, 2, 3))
GRANTS = {"VOTE": "granted", "PREVOTE_REPLY": "granted", "LEASE_ACK": "ok"}


class Net:
    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.t = 0.0
        self.procs: list[Node | None] = []
        self.queue: list[tuple[float, int, str, int, object]] = []
        self.seq = 0
        self.armed: dict[int, float] = {}
        self.last_heard: dict[tuple[int, str], int] = {}  # (receiver, name) -> sender process
        self.grants_in_double_fault = 0

    def name(self, i: int) -> str:
        return self.procs[i].settings.node_name

    def spawn(self, name: str) -> int:
        # the copy is spawned 0.5-3 s in, timed for a cluster without the
        # start-up clock check (tests/test_node_clock_check.py covers that)
        settings = Settings(cluster="c", node_name=name, members=MEMBERS, clock_check_s=0.0)
        self.procs.append(Node(settings, "quorum-lease", random.Random(self.rng.random()), self.t))
        i = len(self.procs) - 1
        self.apply(i, self.procs[i].on_tick(self.t))
        return i

    def remove(self, i: int) -> None:
        self.procs[i] = None

    def push(self, at: float, kind: str, i: int, payload: object = None) -> None:
        self.seq += 1
        heapq.heappush(self.queue, (at, self.seq, kind, i, payload))

    def arm(self, i: int) -> None:
        node = self.procs[i]
        if node is None:
            return
        at = max(self.t, node.deadline())
        if self.armed.get(i) != at:
            self.armed[i] = at
            self.push(at, "wake", i)

    def both_n1_faulted(self) -> bool:
        n1s = [p for p in self.procs if p is not None and p.settings.node_name == "n1"]
        return len(n1s) == 2 and all(DUPLICATE_NAME in p.blockers for p in n1s)

    def apply(self, i: int, effects: list) -> None:
        for e in effects:
            if not isinstance(e, Send):
                continue
            if self.name(i) == "n1" and e.kind in GRANTS and e.body.get(GRANTS[e.kind]) and self.both_n1_faulted():
                self.grants_in_double_fault += 1
            msg = Message(e.kind, self.name(i), e.term, e.body, e.to)
            for j, other in enumerate(self.procs):
                if j == i or other is None:
                    continue
                if e.to is not None:
                    if other.settings.node_name != e.to:
                        continue
                    target = self.last_heard.get((i, e.to))
                    if target is not None and target != j and self.procs[target] is not None:
                        continue
                self.push(self.t + self.rng.uniform(0.0005, 0.003), "deliver", j, (i, msg))
        self.arm(i)

    def run_until(self, t_end: float) -> None:
        while self.queue and self.queue[0][0] <= t_end:
            at, _, kind, i, payload = heapq.heappop(self.queue)
            self.t = at
            node = self.procs[i]
            if node is None:
                continue
            if kind == "wake":
                if self.armed.get(i) != at:
                    continue
                self.armed.pop(i)
                self.apply(i, node.on_tick(at))
            else:
                sender, msg = payload
                self.last_heard[(i, msg.sender)] = sender
                self.apply(i, node.on_tick(at))
                if msg.sender == node.settings.node_name:
                    self.apply(i, node.heard_own_name(at, f"process {sender}"))
                else:
                    self.apply(i, node.on_message(msg, at))
            leaders = [j for j, p in enumerate(self.procs) if p is not None and p.is_leader(at)]
            assert len(leaders) <= 1, f"two leaders at {at:.4f}: {leaders}"
        self.t = t_end

    def leader(self) -> str | None:
        leaders = [p.settings.node_name for p in self.procs if p is not None and p.is_leader(self.t)]
        return leaders[0] if len(leaders) == 1 else None


@pytest.mark.parametrize("seed", range(12))
def test_two_processes_named_n1_never_make_two_leaders_and_n1_rejoins(seed):
    net = Net(seed)
    original = net.spawn("n1")
    net.spawn("n2")
    net.spawn("n3")
    net.run_until(net.rng.uniform(0.5, 3.0))
    copy = net.spawn("n1")
    net.run_until(net.t + 0.05)
    net.run_until(net.t + net.rng.uniform(1.0, 4.0))
    assert net.both_n1_faulted()
    assert net.grants_in_double_fault == 0
    assert net.leader() in ("n2", "n3")
    net.remove(copy)
    net.run_until(net.t + 6.0)  # the copy's silence clears n1; elections settle
    assert net.procs[original].blockers == {}
    assert net.leader() is not None
    assert net.grants_in_double_fault == 0


def test_the_check_sees_grants_when_a_faulted_node_keeps_feeding_its_protocol(monkeypatch):
    """Not vacuous: without the deafness rule both n1s keep granting."""
    def feeds_anyway(self, msg, now):
        self.membership.saw(msg.sender, now)
        return self._observe(self.protocol.on_message(msg, now), now)

    monkeypatch.setattr(Node, "on_message", feeds_anyway)
    net = Net(0)
    net.spawn("n1")
    net.spawn("n2")
    net.spawn("n3")
    net.run_until(1.0)
    net.spawn("n1")
    net.run_until(4.0)
    assert net.both_n1_faulted() and net.grants_in_double_fault > 0
