"""A simulated cluster: the real ``Node`` glue on simulated hosts.

One event queue on true time drives everything. Each host has its own clock
(``SimClock``), a disk that survives crashes, and at most one armed timer (the
node's ``deadline()``, converted to true time). Effects are carried out in the
order the node lists them, as the daemon's runtime does: a Persist reaches the
disk before any later Send leaves.

Disk faults: while a host's disk fails (``disk_fail``) a Persist does not
land (the disk keeps its old state, as with ENOSPC or EROFS): the rest of
the list is carried out as the runtime does (``local_facts``) and the node
hears ``persist_done(False)``. ``crash_in_write`` makes the host's next
Persist crash it between the write and the rename: the old state stays and
the daemon is gone at that instant.
"""

from __future__ import annotations

from heapq import heapify, heappop, heappush
import random
from typing import Any, Callable, Final, Mapping

from electiond.node import Node
from electiond.protocols.base import (
    ROLE_LEADER,
    Demote,
    ElectionProtocol,
    LeaderChanged,
    Message,
    Persist,
    PersistedState,
    Promote,
    Send,
    Settings,
    SplitBrain,
    local_facts,
    TokenRaised,
)
from electiond.protocols.lease import REQUEST_VOTE, VOTE
from electiond.sim.checker import Checker, InvariantSet
from electiond.sim.clock import SimClock
from electiond.sim.network import Links, NetworkModel

# (true time, sequence number: first queued first out at one instant, kind, a, b)
QueueEntry = tuple[float, int, int, Any, Any]
DELIVER: Final = 0
TIMER: Final = 1
ACTION: Final = 2
FAULT: Final = 3  # an action the liveness phase cancels

INBOX_LIMIT: Final = 512  # a frozen process's socket buffer: later datagrams are lost
SPIN_LIMIT: Final = 100  # on_tick calls at one instant before we call it a busy loop
INF: Final = float("inf")


def _fmt_body(body: dict) -> str:
    if not body:
        return ""
    return " " + " ".join(f"{k}={body[k]!r}" for k in sorted(body))


class Host:
    """One simulated machine: clock, disk, and the daemon when it runs."""

    __slots__ = ("index", "name", "settings", "clock", "node", "disk", "paused", "inbox", "timer_local",
                 "timer_version", "timer_true", "spin_t", "spin_count", "pending_done", "disk_failing",
                 "crash_in_write", "write_failed")

    def __init__(self, index: int, settings: Settings, clock: SimClock) -> None:
        self.index = index
        self.name = settings.node_name
        self.settings = settings
        self.clock = clock
        self.node: Node | None = None
        self.disk: PersistedState | None = None
        self.paused = False
        self.inbox: list[Message] = []
        self.timer_local = float("inf")
        self.timer_version = 0
        self.timer_true = float("inf")  # when the live queue entry fires
        self.spin_t = -1.0
        self.spin_count = 0
        self.pending_done = False  # demote hooks finished while frozen
        self.disk_failing = False  # writes do not land (the disk keeps its state)
        self.crash_in_write = -1.0  # >= 0: the next write crashes the host, down this long (-1: off)
        self.write_failed = False  # its last write failed: it stands again only once one lands


class Cluster:
    def __init__(
        self,
        settings: list[Settings],
        protocol: str,
        invariants: InvariantSet,
        rng: random.Random,
        clocks: list[SimClock] | None = None,
        network: NetworkModel | None = None,
        registry: Mapping[str, type[ElectionProtocol]] | None = None,
        trace: bool = False,
    ) -> None:
        self.protocol = protocol
        self.registry = registry
        self.rng = rng
        self.net_rng = random.Random(rng.getrandbits(64))
        self.network = network or NetworkModel()
        self.links = Links()
        clocks = clocks or [SimClock(0.0, 1.0) for _ in settings]
        self.hosts = [Host(i, s, clocks[i]) for i, s in enumerate(settings)]
        self.index_of = {h.name: h.index for h in self.hosts}
        self.names = [h.name for h in self.hosts]
        self.all_indices = list(range(len(self.hosts)))
        self._others = [[j for j in self.all_indices if j != i] for i in self.all_indices]  # multicast targets
        self.now = 0.0
        self._queue: list[QueueEntry] = []
        self._seq = 0
        self.events = 0
        self.delivered = 0
        self.dropped = 0
        self.tracing = trace
        self.trace: list[str] = []
        self.checker = Checker(
            invariants,
            settings[0],
            self.names,
            local_now=lambda i, t: self.hosts[i].clock.local(t),
            running=self.running,
            protocol_of=self._protocol_of,
            true_time_of=lambda i, local: self.hosts[i].clock.true_time_of(local),
        )
        self.checker.schedule = self.at
        # how long the demote hooks take, drawn per demotion (seconds)
        self.demote_hook_s = (0.002, 0.05)
        # a stale-token leader hears of it within a round trip, then re-asserts
        self.checker.reassert_grace_s = 2 * self.network.worst_delay_s() + 0.01
        # called after every event (the runner's liveness watch); None = off
        self.after_event: Callable[[float], None] | None = None
        self._check_votes_durable = invariants.votes
        self.disk_failures = 0  # writes that did not land, all hosts
        # clock verdicts beyond the bound (Node.clock_episodes + peer_clock_alarms)
        # of daemons that have since crashed; clock_alarms() adds the live ones
        self.retired_clock_alarms = 0

    # ---- state ----------------------------------------------------------------

    def running(self, i: int) -> bool:
        h = self.hosts[i]
        return h.node is not None and not h.paused

    def local_now(self, i: int) -> float:
        return self.hosts[i].clock.local(self.now)

    def note(self, text: str) -> None:
        if self.tracing:
            self.trace.append(f"t={self.now:.6f} {text}")

    # ---- the queue ------------------------------------------------------------

    def _push(self, t: float, kind: int, a, b) -> None:
        self._seq += 1
        heappush(self._queue, (t, self._seq, kind, a, b))

    def at(self, t: float, action: Callable[[], None], fault: bool = False) -> None:
        """Run ``action`` (a fault, a check) at true time t."""
        self._push(t, FAULT if fault else ACTION, action, None)

    def cancel_faults(self) -> None:
        self._queue = [e for e in self._queue if e[2] != FAULT]
        heapify(self._queue)

    def run_until(self, t_end: float, stop_on_violation: bool = True) -> None:
        # the hot loop (a campaign runs millions of events). Methods are
        # called on self, not through locals bound to them: compiled
        # (scripts/sim) that is a native call instead of a generic one, and
        # interpreted the lookup costs about as much as it saves
        q = self._queue
        violations = self.checker.violations
        hosts = self.hosts
        events = self.events
        try:
            while q and q[0][0] <= t_end:
                if stop_on_violation and violations:
                    return
                t, _, kind, a, b = heappop(q)
                self.now = t
                events += 1
                if kind == DELIVER:
                    self._deliver(a, b)
                elif kind == TIMER:
                    h = hosts[a]
                    if b != h.timer_version or h.node is None or h.paused:
                        continue
                    h.timer_true = INF
                    if h.timer_local > h.clock.local(t):
                        # the deadline moved later since this entry was queued
                        # (a heartbeat arrived): not due yet, queue the new time
                        self._arm(h, force=True)
                        continue
                    self._tick(h)
                else:
                    self.events = events  # an action may read the count
                    a()
                    continue
                if self.after_event is not None:
                    self.events = events
                    self.after_event(t)
        finally:
            self.events = events
        if not (stop_on_violation and violations):
            self.now = max(self.now, t_end)

    # ---- node inputs ------------------------------------------------------------

    def _deliver(self, i: int, msg: Message) -> None:
        h = self.hosts[i]
        if h.node is None:
            self.dropped += 1
            if self.tracing:
                self.note(f"{msg.sender} → {h.name} {msg.kind} term={msg.term} dropped (host down)")
            return
        if self.links.cut and not self.links.up(self.index_of[msg.sender], i):
            self.dropped += 1
            if self.tracing:
                self.note(f"{msg.sender} → {h.name} {msg.kind} term={msg.term} dropped (partition)")
            return
        if h.paused:
            if len(h.inbox) < INBOX_LIMIT:
                h.inbox.append(msg)
            return
        self._input_message(h, msg)

    def _input_message(self, h: Host, msg: Message) -> None:
        self.delivered += 1
        if self.tracing:
            self.note(f"{msg.sender} → {h.name} {msg.kind} term={msg.term}{_fmt_body(msg.body)}")
        node = h.node
        assert node is not None  # only a running host receives
        effects = node.on_message(msg, h.clock.local(self.now))
        if node.clock_events:
            self._note_clock_events(h, node)
        if effects:
            self._carry_out(h, effects)
            if h.node is None:
                return  # crashed in a write
        self._arm(h)
        self._check(h)

    def _note_clock_events(self, h: Host, node: Node) -> None:
        # the runtime logs these; here they go to the trace (and nowhere when not tracing)
        while node.clock_events:
            e = node.clock_events.popleft()
            if self.tracing:
                self.note(f"{h.name} CLOCK {e.kind}: {e.text}")

    def _check(self, h: Host) -> None:
        # only a node whose leadership may have changed, or a leader while
        # another node also claims to lead, needs the checker's attention
        checker = self.checker
        leaders = checker.role_leaders
        node = h.node
        assert node is not None
        if (node.protocol.role == ROLE_LEADER) != (h.index in leaders) or len(leaders) > 1:
            checker.after_event(self.now, h.index)
        if leaders and checker.inv.lease_coverage:
            # any node's input can change what binds it (a vote, a restart)
            checker.check_coverage(self.now, h.index)

    def _protocol_of(self, i: int) -> ElectionProtocol | None:
        node = self.hosts[i].node
        return node.protocol if node is not None else None

    def _tick(self, h: Host) -> None:
        local = h.clock.local(self.now)
        node = h.node
        assert node is not None
        effects = node.on_tick(local)
        if self.tracing and effects:
            self.note(f"{h.name} tick")
        if effects:
            self._carry_out(h, effects)
            if h.node is None:
                return  # crashed in a write
        if self.now == h.spin_t:
            h.spin_count += 1
            if h.spin_count > SPIN_LIMIT:
                self.checker.violate(self.now, "busy-loop", f"{h.name}: deadline() stays due after on_tick")
                return
        else:
            h.spin_t = self.now
            h.spin_count = 0
        self._arm(h, force=True)
        self._check(h)

    def _arm(self, h: Host, force: bool = False) -> None:
        """Make sure a queue entry fires no later than the node's deadline.

        A deadline that only moved later keeps the earlier entry: when that
        fires, the run loop sees the deadline is not due and queues the new
        one. Followers push their deadline on every heartbeat, so this saves
        most queue traffic.
        """
        node = h.node
        assert node is not None
        deadline = node.deadline()
        if not force:
            if deadline == h.timer_local:
                return
            if deadline > h.timer_local and h.timer_true != INF:
                h.timer_local = deadline  # the queued entry comes first
                return
        h.timer_local = deadline
        if deadline == INF:
            return  # a live entry, if any, will find nothing due
        t = h.clock.true_time_of(deadline)
        if t < self.now:
            t = self.now
        if t >= h.timer_true and not force:
            return
        h.timer_version += 1
        h.timer_true = t
        self._push(t, TIMER, h.index, h.timer_version)

    def _rearm(self, h: Host) -> None:
        """The clock's rate changed or the host resumed: the armed timer's true time moved."""
        h.timer_true = float("inf")
        h.timer_version += 1
        if h.node is not None and not h.paused:
            self._arm(h, force=True)

    # ---- effects ----------------------------------------------------------------

    def _carry_out(self, h: Host, effects: list) -> None:
        wrote = False
        for k in range(len(effects)):
            e = effects[k]
            et = type(e)
            if et is Send:
                self._send(h, e)
            elif et is Persist:
                if h.crash_in_write >= 0.0:
                    self._crash_in_write(h, e.state)
                    return
                if h.disk_failing:
                    self._write_failed(h, e.state, effects[k + 1:])
                    return
                wrote = True
                h.disk = e.state
                if h.write_failed:
                    # the node recovers from its disk fault only now, at the retry that
                    # lands (up to DISK_RETRY_MAX_S after the disk healed): from here it may
                    # stand again, and a bully preemption's hand-over (the new leader
                    # announces, the old one yields when that arrives) is the fault's aftermath
                    h.write_failed = False
                    self.checker.fault(self.now)
                self.checker.persisted(self.now, h.index, e.state)
                if self.tracing:
                    self.note(f"{h.name} persist term={e.state.term} voted_for={e.state.voted_for}"
                              + (" recovering" if e.state.recovering else ""))
            elif et is Promote:
                if self.tracing:
                    self.note(f"{h.name} PROMOTE term={e.term} ({e.reason})")
                self.checker.promoted(self.now, h.index, e.term)
                if h.settings.is_witness(h.name):
                    self.checker.violate(self.now, "witness-led", f"witness {h.name} promoted in term {e.term}")
            elif et is TokenRaised:
                if self.tracing:
                    self.note(f"{h.name} TOKEN-RAISED term={e.term} ({e.reason})")
                self.checker.raised(self.now, h.index, e.term)
            elif et is Demote:
                if self.tracing:
                    self.note(f"{h.name} DEMOTE term={e.term} ({e.reason})")
                self.checker.demoted(h.index)
                self._run_demote_hooks(h)
            elif et is LeaderChanged:
                if e.leader is not None and e.leader != h.name:
                    self.checker.followed(h.index, e.leader, e.term)
                if self.tracing:
                    self.note(f"{h.name} leader={e.leader} term={e.term}")
            elif et is SplitBrain:
                if self.tracing:
                    self.note(f"{h.name} SPLIT-BRAIN with {e.other} term={e.term} yielded={e.yielded}")
        if wrote:
            node = h.node
            assert node is not None
            more = node.persist_done(True, h.clock.local(self.now))
            if more:
                self._carry_out(h, more)

    def _write_failed(self, h: Host, state: PersistedState, rest: list) -> None:
        """The runtime's rule: keep the local facts, drop what may depend on the write."""
        self.disk_failures += 1
        h.write_failed = True
        self.checker.fault(self.now)
        if self.tracing:
            self.note(f"{h.name} persist term={state.term} voted_for={state.voted_for} FAILED (disk)")
        kept = local_facts(rest)
        if kept:
            self._carry_out(h, kept)
        node = h.node
        assert node is not None
        more = node.persist_done(False, h.clock.local(self.now), "ENOSPC (simulated)")
        if more:
            self._carry_out(h, more)

    def _crash_in_write(self, h: Host, state: PersistedState) -> None:
        """Power lost between the write and the rename: the old state stays."""
        down_s = h.crash_in_write
        h.crash_in_write = -1.0
        self.note(f"{h.name} persist term={state.term} voted_for={state.voted_for} never landed: CRASH IN WRITE")
        self.crash(h.index)
        self.at(self.now + down_s, lambda: self.boot(h.index), fault=True)

    def set_disk(self, i: int, failing: bool) -> None:
        h = self.hosts[i]
        if h.disk_failing != failing:
            h.disk_failing = failing
            self.checker.fault(self.now)
            self.note(f"{h.name} DISK {'FAILING' if failing else 'OK'}")

    def arm_crash_in_write(self, i: int, down_s: float) -> None:
        self.hosts[i].crash_in_write = down_s
        self.note(f"{self.hosts[i].name} will crash in its next write")

    def heal_disks(self) -> None:
        for h in self.hosts:
            self.set_disk(h.index, False)
            h.crash_in_write = -1.0

    def _run_demote_hooks(self, h: Host) -> None:
        """The shell runs demote hooks in child processes and tells the node
        when they finished (quorum-lease hands over only then)."""
        lo, hi = self.demote_hook_s
        node = h.node
        assert node is not None
        self.at(self.now + self.net_rng.uniform(lo, hi), lambda: self._demote_hooks_done(h, node))

    def _demote_hooks_done(self, h: Host, node: Node) -> None:
        if h.node is not node:
            return  # the daemon that ran them has since crashed
        if h.paused:
            h.pending_done = True  # noticed when the daemon wakes
            return
        self._input_hooks_done(h)

    def _input_hooks_done(self, h: Host) -> None:
        h.pending_done = False
        if self.tracing:
            self.note(f"{h.name} demote hooks done")
        node = h.node
        assert node is not None
        effects = node.demote_hooks_done(h.clock.local(self.now))
        if effects:
            self._carry_out(h, effects)
            if h.node is None:
                return
        self._arm(h)
        self._check(h)

    def _send(self, h: Host, e: Send) -> None:
        if self._check_votes_durable and (e.kind == VOTE or e.kind == REQUEST_VOTE):
            self.checker.vote_sent(self.now, h.index, e, h.disk)
        msg = Message(e.kind, h.name, e.term, e.body, e.to)
        if e.to is None:
            targets = self._others[h.index]
        else:
            j = self.index_of.get(e.to)
            if j is None or j == h.index:
                self.note(f"{h.name} → {e.to} {e.kind}: no such peer, not sent")
                return
            targets = [j]
        net = self.network
        rng = self.net_rng
        links = self.links
        src = h.index
        for j in targets:
            if links.cut and not links.up(src, j):
                self.dropped += 1
                if self.tracing:
                    self.note(f"{h.name} → {self.names[j]} {e.kind} term={e.term} dropped (partition)")
                continue
            if net.loss and rng.random() < net.loss:
                self.dropped += 1
                self.checker.fault(self.now)
                self.checker.lossy = True
                if self.tracing:
                    self.note(f"{h.name} → {self.names[j]} {e.kind} term={e.term} dropped (loss)")
                continue
            self._push(self._arrival(net, rng, src, j), DELIVER, j, msg)
            if net.duplicate and rng.random() < net.duplicate:
                self._push(self._arrival(net, rng, src, j), DELIVER, j, msg)

    def _arrival(self, net: NetworkModel, rng: random.Random, src: int, dst: int) -> float:
        delay_s = net.delay_s(rng)
        if net.slow_links:
            delay_s += net.slow_links.get((src, dst), 0.0)
        if delay_s > net.max_delay_s:
            # held up past what the protocol's timeouts assume: as good as
            # lost for protocols without quorums, until it lands
            self.checker.lossy = True
            self.checker.fault(self.now, self.now + delay_s)
        return self.now + delay_s

    # ---- host lifecycle (faults) ---------------------------------------------------

    def boot(self, i: int, keep_disk: bool = True) -> None:
        h = self.hosts[i]
        if h.node is not None:
            return
        if not keep_disk:
            h.disk = None
            self.checker.disk_wiped(i)
        self.checker.restarted_with(i, h.disk)
        seed = self.rng.getrandbits(64)
        h.node = Node(h.settings, self.protocol, random.Random(seed), h.clock.local(self.now), h.disk, self.registry)
        h.paused = False
        h.inbox.clear()
        self.checker.booted(self.now, i)
        self.note(f"{h.name} start ({'disk ' + repr(h.disk) if h.disk else 'empty disk'})")
        self.checker.fault(self.now)
        self._rearm(h)
        self.checker.after_event(self.now, i)
        if self.checker.inv.lease_coverage and self.checker.role_leaders:
            self.checker.check_coverage(self.now, i)  # a restart forgets promises

    def crash(self, i: int) -> None:
        h = self.hosts[i]
        if h.node is None:
            return
        self.checker.crashing(self.now, i)
        self.retired_clock_alarms += h.node.clock_episodes + h.node.peer_clock_alarms
        h.node = None
        h.paused = False
        h.pending_done = False
        h.inbox.clear()
        h.timer_version += 1
        h.timer_true = float("inf")
        self.note(f"{h.name} CRASH")
        self.checker.fault(self.now)
        self.checker.node_gone(self.now, i)

    def pause(self, i: int) -> None:
        h = self.hosts[i]
        if h.node is None or h.paused:
            return
        h.paused = True
        h.timer_version += 1
        h.timer_true = float("inf")
        self.note(f"{h.name} PAUSE")
        self.checker.fault(self.now)
        self.checker.node_gone(self.now, i)

    def resume(self, i: int) -> None:
        """Wake a frozen node: tick first (it must check its lease before
        anything else, as the daemon does), then hand it what queued up."""
        h = self.hosts[i]
        if h.node is None or not h.paused:
            return
        h.paused = False
        self.note(f"{h.name} RESUME ({len(h.inbox)} queued)")
        self.checker.fault(self.now)
        self._tick(h)
        # self.running, not h.node: compiled, a test of h.node above would
        # stay narrowed to "not None" though the tick may crash the host (a
        # crash in a write)
        if h.pending_done and self.running(i):
            self._input_hooks_done(h)
        inbox, h.inbox = h.inbox, []
        for msg in inbox:
            if not self.running(i):
                break
            self._input_message(h, msg)
        node = self.hosts[i].node
        if node is not None and not h.paused:
            # hooks kept running while the daemon was frozen; it hears now
            self._demote_hooks_done(h, node)

    def set_clock_rate(self, i: int, rate: float) -> None:
        h = self.hosts[i]
        h.clock.set_rate(self.now, rate)
        self.note(f"{h.name} clock rate {rate:.6f}")
        self._rearm(h)
        if h.node is not None and self.checker.inv.lease_coverage:
            self.checker.clock_changed(self.now, i)

    def partition(self, groups: list[list[int]]) -> None:
        self.links.partition(groups, self.all_indices)
        self.checker.partitioned = True
        self.checker.fault(self.now)
        self.note("PARTITION " + " | ".join(" ".join(self.names[i] for i in g) for g in groups))

    def cut(self, sources: list[int], destinations: list[int]) -> None:
        self.links.cut_one_way(sources, destinations)
        self.checker.partitioned = True
        self.checker.fault(self.now)
        self.note(
            "CUT " + " ".join(self.names[i] for i in sources) + " -> " + " ".join(self.names[i] for i in destinations)
        )

    def heal(self) -> None:
        if self.links.cut:
            self.links.heal()
            self.checker.fault(self.now)
            self.note("HEAL")

    # ---- views ------------------------------------------------------------------

    def leaders(self) -> list[int]:
        """Running nodes that consider themselves leader right now (own clocks)."""
        out = []
        for h in self.hosts:
            if h.node is not None and not h.paused and h.node.is_leader(h.clock.local(self.now)):
                out.append(h.index)
        return out

    def clock_alarms(self) -> int:
        """Clock verdicts beyond the bound so far, by every daemon that ran."""
        live = sum(h.node.clock_episodes + h.node.peer_clock_alarms for h in self.hosts if h.node is not None)
        return self.retired_clock_alarms + live

    def agreed_leader(self, among: list[int]) -> int | None:
        """The one leader every node in ``among`` follows, if there is one."""
        leaders = self.leaders()
        if len(leaders) != 1:
            return None
        name = self.names[leaders[0]]
        for i in among:
            h = self.hosts[i]
            if h.node is None or h.paused or h.node.protocol.leader != name:
                return None
        return leaders[0]
