"""The asyncio shell around the pure Node.

It reads the clock once per event, lets the node look at the time first (so a
process woken from SIGSTOP drops a stale lease before it does anything else),
then feeds the event and carries out the effects in the order given:
persisting happens before the sends that follow it.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import math
import os
import random
import socket
import time
from collections.abc import Callable
from typing import TYPE_CHECKING
from typing import Any

from electiond import metrics
from electiond import net
from electiond import pausefile
from electiond import sockfilter
from electiond import trace
from electiond.budget import SourceBudget, rates_for
from electiond.config import Config
from electiond.coord import commands as coordcmds
from electiond.coord.backend import CoordBackend
from electiond.fdreserve import DescriptorReserve
from electiond.health import HealthMonitor
from electiond.hooks import HookResult, HookRunner, Transition
from electiond.looplag import LoopLag
from electiond.refresh import REASON_INTERVAL, REASON_SPLIT_BRAIN, RefreshSchedule
from electiond.control import BadRequest
from electiond.coord.embedded import EmbeddedBackend
from electiond.coord.handover import SupervisorRegistry
from electiond.coord.host import CoordHost
from electiond.coord.replica import Reply, StorePersist
from electiond.node import DUPLICATE_NAME, Node
from electiond.protocols.base import (
    CommandError,
    Demote,
    Effect,
    LeaderChanged,
    Persist,
    Promote,
    Send,
    SplitBrain,
    local_facts,
    TokenRaised,
)
from electiond.protocols.etcd import EtcdRequest
from electiond.state import RECOVERING_MEANS, StateError, StateStore
from electiond.udpsend import DatagramSender
from electiond.wire import Codec, Received

if TYPE_CHECKING:
    from electiond import etcddriver

log = logging.getLogger("electiond")

# how stale systemd's STATUS= alive count may get (role, leader, term never are)
STATUS_ALIVE_REFRESH_S = 1.0


def errno_name(code: int) -> str:
    return errno.errorcode.get(code, f"errno {code}")


def node_environment(config: Config) -> dict[str, str]:
    """What every hook and health script learns about this node."""
    return {
        "ELECTIOND_NODE": config.settings.node_name,
        "ELECTIOND_PROTOCOL": config.protocol,
        "ELECTIOND_CLUSTER": config.settings.cluster,
    }


def make_hook_runner(
    config: Config, on_result: Callable[[HookResult], None], reserve: DescriptorReserve | None = None
) -> HookRunner:
    """The daemon's hook runner; --cleanup builds the same one, so a crashed
    daemon's leftover hook processes are found by the same token file."""
    return HookRunner(
        config.hooks,
        node_environment(config),
        on_result,
        logging.getLogger("electiond.hooks"),
        token_file=os.path.join(config.state_directory, "hooks.token"),
        reserve=reserve,
    )


def _iso(wall_s: float) -> str:
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(wall_s))
    return f"{stamp}.{int(wall_s % 1 * 1000):03d}Z"


def _wait_arg(args: dict[str, Any]) -> float | None:
    wait_s = args.get("wait_s")
    if wait_s is None:
        return None
    if isinstance(wait_s, bool) or not isinstance(wait_s, (int, float)) or not 0 < wait_s <= 3600:
        raise BadRequest(f"wait_s must be a number of seconds in (0, 3600], got {wait_s!r}")
    return float(wait_s)


class _Datagrams(asyncio.DatagramProtocol):
    """Reads only (udpsend sends on the socket itself)."""

    def __init__(self, handler: Callable[[bytes, tuple[str, int]], None],
                 on_lost: Callable[[Exception | None], None]) -> None:
        self._handler = handler
        self._on_lost = on_lost

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        try:
            self._handler(data, addr)
        except Exception:
            # uvloop closes the transport (and its socket) on an exception
            # from this callback: a bug must cost that datagram, not the socket
            log.exception("error handling a datagram from %s", addr)

    def error_received(self, exc: Exception) -> None:
        log.debug("socket error: %s", exc)

    def connection_lost(self, exc: Exception | None) -> None:
        self._on_lost(exc)


class Runtime:
    def __init__(self, config: Config, on_status: Callable[[str], None] | None = None) -> None:
        self.config = config
        self.settings = config.settings
        self._on_status = on_status or (lambda text: None)
        self.store = StateStore(config.state_directory)
        # spare descriptors for the state write and the hook spawn (fdreserve.py)
        self.fd_reserve = DescriptorReserve()
        self.node: Node | None = None
        self.codec: Codec | None = None
        self.hooks: HookRunner | None = None
        self.health: HealthMonitor | None = None
        self.started_wall = time.time()
        self._peer_addresses: dict[str, tuple[str, int]] = {}
        self._group_destination: tuple | None = None  # None: transport = unicast
        self._timer: asyncio.TimerHandle | None = None
        self._timer_due = 0.0  # the monotonic instant the armed timer asked for
        self.loop_lag = LoopLag(late_after_s=self.settings.heartbeat_interval_s)
        self._transports: list[asyncio.DatagramTransport] = []
        self._unicast: asyncio.DatagramTransport | None = None
        self._send_sock: socket.socket | None = None  # sends go on it directly (udpsend)
        self.sender = DatagramSender(logging.getLogger("electiond.net"))
        self.transports_lost = 0  # closed by something other than stop()
        self._leader_seen: str | None = None
        self._last_status_line = ""
        self._status_key: tuple[str, str | None, int] | None = None  # (role, leader, term) of that line
        self._status_line_at = -math.inf
        self._transports_closed = False
        self._background: set[asyncio.Task] = set()
        self._persist_errors: dict[str, int] = {}  # failed state writes by errno name
        self._disk_failing = False
        self.dropped_not_ready = 0  # datagrams that arrived before start() finished
        # set once both transports, the codec and the hook runner exist: the loop
        # may read a socket between start()'s awaits, before it can answer
        self._accepting = False
        self._own_address = ""
        self._duplicate_fault = False  # in FAULT because another process uses our name
        self.budget = SourceBudget(*rates_for(len(self.settings.members), self.settings.heartbeat_interval_s))
        self.shield = sockfilter.FloodShield(self._apply_socket_filter)
        self._sockets: list[Any] = []
        self.counters = metrics.Counters()
        self._last_leader: str | None = None  # the last leader known (never None once one was): PREVIOUS_LEADER
        self._flapping = False  # one warning per crossing of [monitor] max_changes_per_hour
        self._promote_failed_terms: set[int] = set()  # a promote of this term had a failing hook
        self.etcd: etcddriver.EtcdDriver | None = None  # protocol = etcd: carries out its requests
        self._coord: CoordBackend | None = None  # etcd's, made on first use (coord_backend)
        self.refresh = RefreshSchedule(config.hooks.refresh_interval_s)  # [hooks] refresh while leader
        self.coord: EmbeddedBackend | None = None  # protocol = quorum-lease: the embedded coordination store
        self.supervisors = SupervisorRegistry()  # run-as-leader CMDs a hand-over waits for

    # ---- life cycle -----------------------------------------------------------

    async def start(self, stopping: asyncio.Event | None = None) -> bool:
        """Load state, wait for the network, bind, stand. False if ``stopping``
        was set while it waited for the interface (nothing was started)."""
        loop = asyncio.get_running_loop()
        persisted = self.store.load()  # StateError propagates: the daemon refuses to start
        sockets = await net.wait_for_sockets(
            self.config.interface, self.config.group, self.config.port, stopping or asyncio.Event(), log,
            self._on_status, own=self.config.own_address,
        )
        if sockets is None:
            return False
        local_address, unicast_sock, group_sock = sockets.local_address, sockets.unicast, sockets.group
        previous_incarnation = self.store.incarnation
        incarnation = self.store.begin_incarnation()
        now = time.monotonic()
        rng = random.Random(random.SystemRandom().getrandbits(64))
        trace.open_for(self.settings.node_name)
        self.node = Node(self.settings, self.config.protocol, rng, now, persisted,
                         max_promote_failures=self.config.hooks.max_promote_failures,
                         max_changes_per_hour=self.config.max_changes_per_hour)
        if self.config.protocol == "quorum-lease":
            self.coord = EmbeddedBackend(self.node, self.config.state_directory, self._process)
        if self.config.etcd is not None and self.config.protocol == "etcd":
            # imported only here: the etcd client (json, ssl, urllib) is RSS
            # every other protocol's daemon would carry for nothing
            from electiond.etcddriver import EtcdDriver

            self.etcd = EtcdDriver.for_config(
                self.config.etcd, lambda event: self._process(lambda now: self.node.on_service(event, now)))
        if pausefile.load(self.config.state_directory):  # PauseFileError (a StateError) refuses the start
            # maintenance survives a restart: blocked before the node can stand
            self.node.pause(now)
            log.warning("paused (maintenance, from %s): not standing for election until electionctl resume",
                        pausefile.path(self.config.state_directory))
        if persisted is not None and persisted.recovering:
            log.warning("recovering: state was reset by --recover-state; %s", RECOVERING_MEANS)
        # the codec exists before the loop reads a socket: a datagram that
        # arrived before it would have nothing to decode it with
        self.codec = Codec(
            cluster=self.settings.cluster,
            node_name=self.settings.node_name,
            members={m.name for m in self.settings.members},
            keys=self.config.keys,
            schemas={**self.node.message_schemas(), **(CoordHost.message_schemas() if self.coord else {})},
            incarnation=incarnation,
            unicast_port=unicast_sock.getsockname()[1],
            previous_incarnation=previous_incarnation,
            current_term=lambda: self.node.protocol.term,
            clock=time.monotonic,
            wall_ms=lambda: time.time_ns() // 1_000_000,
            sources=dict(self.config.member_addresses) if self.config.transport == "unicast" else None,
        )
        # the hook runner too: the loop may deliver a datagram (and so a
        # Promote) between the two endpoint awaits below
        self.hooks = make_hook_runner(self.config, self._on_hook_result, self.fd_reserve)
        # A daemon always starts as non-leader: give up whatever a crashed
        # predecessor may have held (a VIP) before standing for election.
        self.hooks.submit(Transition("demote", self.node.protocol.term, None, None, "startup"))
        self._unicast, _ = await loop.create_datagram_endpoint(lambda: self._reader("unicast"), sock=unicast_sock)
        self._transports, self._sockets = [self._unicast], [unicast_sock]
        self._send_sock = unicast_sock
        if group_sock is not None:
            group_transport, _ = await loop.create_datagram_endpoint(lambda: self._reader("group"), sock=group_sock)
            self._transports.append(group_transport)
            self._sockets.append(group_sock)
        # unicast: the configured addresses are the only ones; none is learned
        self._peer_addresses = {name: where for name, where in self.config.member_addresses.items()
                                if name != self.settings.node_name}
        self._group_destination = net.group_destination(self.config.group, self.config.port,
                                                        self.config.interface) if group_sock is not None else None
        self._own_address = f"{local_address}:{unicast_sock.getsockname()[1]}"
        self._accepting = True
        if not self.config.keys:
            log.warning("no [cluster] key_file: messages are NOT authenticated; any host on the LAN can forge them")

        self.node.record(now, "startup", incarnation=incarnation)
        health = HealthMonitor(
            self.config.health, self._on_health_change, logging.getLogger("electiond.health"),
            env={**os.environ, **node_environment(self.config)},
        )
        if health.enabled:
            self.health = health
            # probes every check once; an unhealthy start makes the node
            # ineligible (through _on_health_change) before it can stand
            await health.start()
        log.info(
            "started node=%s cluster=%s protocol=%s term=%d %s unicast=%s:%d",
            self.settings.node_name, self.settings.cluster, self.config.protocol, self.node.protocol.term,
            f"group={self.config.group}:{self.config.port}" if group_sock is not None else
            f"transport=unicast peers={len(self._peer_addresses)}",
            local_address, unicast_sock.getsockname()[1],
        )
        self._process(lambda now: [])
        return True

    async def stop(self) -> None:
        """Clean shutdown: hand over leadership where the protocol can, run demote hooks."""
        assert self.node is not None and self.hooks is not None
        if self.health is not None:
            await self.health.stop()
        now = time.monotonic()
        if self.node.is_leader(now):
            try:
                self._process(lambda now: self.node.transfer(None, now, "shutdown"))
            except CommandError:
                pass
            if self.node.is_leader(time.monotonic()):
                self._process(lambda now: self.node.stepdown(now, "shutdown"))
        if self.node.is_leader(time.monotonic()):
            self.hooks.submit(Transition("demote", self.node.protocol.term, None, self._leader_seen, "shutdown"))
        if self._timer:
            self._timer.cancel()
        await self.hooks.close()
        await self.supervisors.wait_stopped()  # run-as-leader CMDs dead (bounded) before the next leader starts
        # the demote hooks are done: hand over before the sockets close
        self._process(lambda now: self.node.demote_hooks_done(now))
        if self._coord is not None:
            self._coord.close()
        if self.etcd is not None:
            # give the lease back (our key goes with it) so the next leader need not wait for the TTL
            self._process(lambda now: self.node.protocol.release(now))  # type: ignore[attr-defined]
            await self.etcd.close()
        if self._timer:
            self._timer.cancel()
        self._transports_closed = True
        for transport in self._transports:
            transport.close()

    def reload(self, path: str) -> None:
        """SIGHUP: apply what can change safely (hooks, log level); refuse the rest."""
        from electiond import config as configmod

        try:
            new = configmod.load(path, self.settings.node_name)
        except configmod.ConfigError as exc:
            log.error("reload refused, keeping the running config: %s", exc)
            return
        fixed = ("protocol", "settings", "group", "port", "interface", "transport", "member_addresses",
                 "control_socket",
                 "control_socket_mode", "state_directory", "health", "metrics_listen", "etcd")
        changed = [name for name in fixed if getattr(new, name) != getattr(self.config, name)]
        if bool(new.keys) != bool(self.config.keys):
            # peers would drop our datagrams (or we theirs) until every node switched
            changed.append("key_file (authentication on/off)")
        if changed:
            log.error("reload refused: %s cannot change while running (restart the daemon)", ", ".join(changed))
            return
        if new.keys != self.config.keys and self.codec is not None:
            # one assignment: the next datagram is signed and checked with the new set
            self.codec.set_keys(new.keys)
            log.info("keys reloaded from %s: signing with %r, accepting %s", new.key_file,
                     new.keys[0].id, ", ".join(repr(k.id) for k in new.keys))
        hooks_changed = new.hooks != self.config.hooks
        self.config = new
        if self.hooks is not None:
            self.hooks.config = new.hooks
            self.refresh.interval_s = new.hooks.refresh_interval_s
        if self.node is not None:
            self.node.max_changes_per_hour = new.max_changes_per_hour
            self.node.promote_backoff.max_failures = new.hooks.max_promote_failures
        if hooks_changed and self.node is not None:
            # new hooks may succeed where the old ones failed
            node = self.node
            self._process(lambda now: node.forgive_promote_failures(now, "hooks reloaded"))
        logging.getLogger().setLevel(new.log_level.upper())
        log.info("reloaded %s", path)

    # ---- events ---------------------------------------------------------------

    def _on_datagram(self, data: bytes, addr: tuple[str, int]) -> None:
        if not self._accepting:
            self.dropped_not_ready += 1
            return
        # the budget first: a flood must cost a lookup, not a decode and an HMAC
        now = time.monotonic()
        if self.budget.is_member(addr[0]):
            self.shield.poll(now)
        else:
            self.shield.stranger(now)
        if not self.budget.allow(addr[0], now):
            self.codec.dropped["rate_limited"] += 1
            return
        received = self.codec.decode(data, (addr[0], addr[1]))
        if received is None:
            return
        if self.budget.authenticated(addr[0]):
            self.shield.member(addr[0])
        if received.duplicate:
            self._on_duplicate(received, addr)
            return
        msg = received.message
        if msg.recipient is not None and msg.recipient != self.settings.node_name:
            return
        if self._group_destination is not None:
            self._peer_addresses[msg.sender] = (addr[0], received.unicast_port)
        self.counters.received[msg.kind] = self.counters.received.get(msg.kind, 0) + 1
        if self.coord is not None and CoordHost.handles(msg.kind):
            coord = self.coord
            self._process(lambda now: coord.host.on_message(msg, now))
            return
        if trace.enabled():
            trace.message("rx", msg.kind, msg.sender, msg.term, msg.body)
        self._process(lambda now: self.node.on_message(msg, now))

    def _on_duplicate(self, received: Received, addr: tuple[str, int]) -> None:
        """Our name from another process: FAULT until it is silent. A member's
        name from two live processes: shown in its member table entry."""
        assert self.node is not None and self.hooks is not None
        node, sender = self.node, received.message.sender
        other = f"{addr[0]}:{addr[1]} (incarnation {received.incarnation})"
        if sender != self.settings.node_name:
            if not node.duplicate_peer(sender, time.monotonic()):
                log.error("duplicate name: member %s is sent from two processes at once; now also from %s "
                          "(the newest incarnation is followed, the other is dropped)", sender, other)
            node.saw_duplicate_peer(sender, time.monotonic())
            return
        was_blocked = self._duplicate_fault
        detail = f"another process uses our name {sender} from {other}; ours is {self._own_address}"
        self._duplicate_fault = True
        self._process(lambda now: node.heard_own_name(now, detail))
        if not was_blocked:
            log.error("duplicate name, entering FAULT: %s; give each host its own [node] name", detail)
            self.hooks.submit(Transition("fault", node.protocol.term, node.protocol.leader, self._leader_seen,
                                         "duplicate_name"))

    def _apply_socket_filter(self, members: list[str] | None) -> None:
        """FloodShield's effect: filter strangers in the kernel, or stop."""
        if members is None:
            log.warning("flood over: socket filter removed")
        else:
            log.warning("flood: only 1 in %d datagrams from addresses other than %s reach the daemon",
                        sockfilter.FloodShield.SAMPLE_ONE_IN, ", ".join(members) or "(none known yet)")
        for sock in self._sockets:
            try:
                if members is None:
                    sockfilter.detach(sock)
                else:
                    sockfilter.attach(sock, members, sockfilter.FloodShield.SAMPLE_ONE_IN)
            except OSError as exc:
                log.error("cannot set the socket filter: %s", exc)

    def _on_timer(self) -> None:
        self._timer = None
        self.loop_lag.fired(self._timer_due, time.monotonic())
        self._process(lambda now: [])

    def _process(self, handler: Callable[[float], list[Effect]]) -> float:
        """One event: read the clock once, let time pass first, then the event
        itself. Returns that reading, so answers about the event use it too."""
        assert self.node is not None
        now = time.monotonic()
        effects = self.node.on_tick(now)
        self._execute(effects, now)
        more = handler(now)
        self._execute(more, now)
        if self.coord is not None:
            self._execute(self.coord.host.after_node_event(now), now)  # the store follows leadership
        if self._duplicate_fault and DUPLICATE_NAME not in self.node.blockers:
            self._duplicate_fault = False
            log.warning("duplicate name cleared: no other process has used our name for a while; standing again")
        if trace.enabled():
            trace.state(self.node.protocol, now)
        self._log_clock_events()
        self._refresh_if_due(now, self.refresh.due(now), REASON_INTERVAL)
        self._schedule()
        return now

    def _log_clock_events(self) -> None:
        """A clock verdict changed (node.ClockEvent): once per episode. Our
        own clock found off is the error; a peer's, seen by us, a warning."""
        assert self.node is not None
        events = self.node.clock_events
        while events:
            event = events.popleft()
            if event.kind == "self-beyond":
                log.error("clock: %s", event.text)
            elif event.kind in ("peer-beyond", "check-waiting"):
                log.warning("clock: %s", event.text)
            else:
                log.info("clock: %s", event.text)

    def _schedule(self) -> None:
        assert self.node is not None
        if self._timer:
            self._timer.cancel()
        now = time.monotonic()
        deadline = min(self.node.deadline(), self.refresh.next_at)
        if self.coord is not None:
            deadline = min(deadline, self.coord.host.deadline())
        delay_s = min(max(0.0, deadline - now), 1.0)
        self._timer_due = now + delay_s
        self._timer = asyncio.get_running_loop().call_later(delay_s, self._on_timer)

    def _save(self, persist: Persist) -> str | None:
        """Store a Persist; None on success, else why not (logged once per episode)."""
        try:
            # out of descriptors, the write gets the reserve's: a vote must not
            # be lost for want of one (a second failure is a real one)
            self.fd_reserve.call(lambda: self.store.save(persist.state), "state write")
        except (OSError, StateError) as exc:
            key = getattr(exc, "errno", None)
            name = errno_name(key) if isinstance(key, int) else type(exc).__name__
            self._persist_errors[name] = self._persist_errors.get(name, 0) + 1
            error = f"{name}: {getattr(exc, 'strerror', None) or exc}"
            if not self._disk_failing:
                self._disk_failing = True
                log.error("cannot write state to %s (%s): refusing to vote or stand until a write succeeds",
                          self.store.path, error)
            return error
        if self._disk_failing:
            self._disk_failing = False
            log.info("state writes to %s work again (%d failed)", self.store.path, sum(self._persist_errors.values()))
        return None

    def _execute(self, effects: list[Effect], now: float) -> None:
        wrote = False
        failure: str | None = None
        k = 0
        while k < len(effects):
            effect = effects[k]
            k += 1
            if isinstance(effect, Persist):
                wrote = True
                failure = self._save(effect)
                if failure is not None:
                    # what follows may depend on the state that did not land
                    effects = effects[:k] + local_facts(effects[k:])
            elif isinstance(effect, Send):
                self._send(effect)
            elif isinstance(effect, Promote):
                log.info("promoted: leader of term %d (%s)", effect.term, effect.reason,
                         extra=self._role_fields("leader", effect.term, self.settings.node_name))
                self.hooks.submit(Transition("promote", effect.term, self.settings.node_name,
                                             self._last_leader, effect.reason))
                self.refresh.promoted(effect.term, now)
            elif isinstance(effect, TokenRaised):
                # still the leader: no hooks; status and history show the new token
                log.warning("fencing token raised to %d while leading (%s)", effect.term, effect.reason)
                # another leader's claim was seen (a split brain healing, even one whose
                # rival yielded before we heard it): re-announce what we hold at once
                self._refresh_if_due(now, self.refresh.at_once(now), REASON_SPLIT_BRAIN)
            elif isinstance(effect, Demote):
                log.info("demoted in term %d (%s)", effect.term, effect.reason,
                         extra=self._role_fields("follower", effect.term, None))
                self.refresh.demoted()
                self.hooks.submit(Transition("demote", effect.term, None, self.settings.node_name, effect.reason))
                # keep a reference: the loop holds tasks only weakly
                task = asyncio.get_running_loop().create_task(self._after_demote_hooks())
                self._background.add(task)
                task.add_done_callback(self._background.discard)
            elif isinstance(effect, LeaderChanged):
                if effect.leader != self._leader_seen:
                    log.info("leader is now %s (term %d)", effect.leader or "unknown", effect.term)
                    if effect.leader is not None:
                        self.counters.leadership_changes += 1
                self._leader_seen = effect.leader
                if effect.leader is not None and effect.leader != self.settings.node_name:
                    self._last_leader = effect.leader
                self._check_flapping(now)
            elif isinstance(effect, StorePersist):
                self._save_store(effect)
            elif isinstance(effect, Reply):
                if self.coord is not None:
                    self.coord.reply(effect)
            elif isinstance(effect, EtcdRequest):
                if self.etcd is not None:
                    self.etcd.carry_out(effect)
            elif isinstance(effect, SplitBrain):
                log.warning("split brain: %s also claimed leadership (term %d); %s",
                            effect.other, effect.term, "we yielded" if effect.yielded else "it must yield")
                if not effect.yielded:
                    # we won: re-announce now, the loser's ARPs may hold the caches
                    self._refresh_if_due(now, self.refresh.at_once(now), REASON_SPLIT_BRAIN)
        if wrote:
            self._execute(self.node.persist_done(failure is None, now, failure), now)
            return
        self._refresh_status_line(now)

    def _refresh_status_line(self, now: float) -> None:
        """systemd's STATUS= after an event: role, leader and term are looked at
        every time (cheap), the alive count (a walk over every member) at most
        every STATUS_ALIVE_REFRESH_S. Per datagram that walk was O(members):
        at 65 daemons the largest share of the per-datagram Python work."""
        assert self.node is not None
        key = (self.node.role(now), self.node.protocol.leader, self.node.protocol.term)
        if key == self._status_key and now < self._status_line_at + STATUS_ALIVE_REFRESH_S:
            return
        self._status_key = key
        self._status_line_at = now
        line = self.status_line()
        if line != self._last_status_line:
            self._last_status_line = line
            self._on_status(line)

    def _refresh_if_due(self, now: float, term: int | None, reason: str) -> None:
        """Queue the refresh hooks of ``term`` if there are any and we still lead."""
        if term is None or self.node is None or self.hooks is None or not self.node.is_leader(now):
            return
        hooks = self.config.hooks
        if not hooks.refresh and not (hooks.directory and os.path.isdir(os.path.join(hooks.directory, "refresh.d"))):
            return
        self.hooks.submit(Transition("refresh", term, self.settings.node_name, self._last_leader, reason))

    def _check_flapping(self, now: float) -> None:
        assert self.node is not None
        flapping = self.node.flapping(now)
        if flapping and not self._flapping:
            self.counters.flap_warnings += 1
            log.warning("leadership flapping: %d changes in the last hour, above [monitor] max_changes_per_hour = %d",
                        len(self.node.leader_changes), self.node.max_changes_per_hour)
        elif self._flapping and not flapping:
            log.info("leadership calm again: %d changes in the last hour", len(self.node.leader_changes))
        self._flapping = flapping

    async def _after_demote_hooks(self) -> None:
        """Tell the protocol once the demote hooks ran to completion (a
        graceful hand-over releases the followers only then)."""
        assert self.hooks is not None and self.node is not None
        await self.hooks.wait_idle()
        # and the local run-as-leader CMDs are dead (or their announced bound passed)
        await self.supervisors.wait_stopped()
        if not self._transports_closed:
            self._process(lambda now: self.node.demote_hooks_done(now))

    def _send(self, send: Send) -> None:
        assert self.codec is not None and self._send_sock is not None
        datagram = self.codec.encode(send)
        if trace.enabled():
            trace.message("tx", send.kind, send.to, send.term, send.body)
        self.counters.sent[send.kind] = self.counters.sent.get(send.kind, 0) + 1
        address = self._peer_addresses.get(send.to) if send.to else None
        now_s = time.monotonic()
        # on the socket, not the transport: see udpsend (uvloop < 0.21 loses the transport)
        if address is not None:
            self.sender.send(self._send_sock, datagram, address, now_s)
        elif self._group_destination is not None:
            # the group reaches every member; receivers ignore what is not addressed to them
            self.sender.send(self._send_sock, datagram, self._group_destination, now_s)
        else:
            # transport = unicast: what would go to the group goes to each peer
            for where in self._peer_addresses.values():
                self.sender.send(self._send_sock, datagram, where, now_s)

    # ---- the sockets' readers ---------------------------------------------

    def _reader(self, role: str) -> _Datagrams:
        """role: "unicast" (index 0 of _transports and _sockets) or "group" (1)."""
        return _Datagrams(self._on_datagram, lambda exc: self._on_transport_lost(role, exc))

    def _on_transport_lost(self, role: str, exc: Exception | None) -> None:
        if self._transports_closed:
            return  # our own close in stop()
        # sends no longer go through the transports, so nothing known closes
        # them; if something does, this node hears nothing on that socket
        self.transports_lost += 1
        log.error("the %s UDP transport was lost (%s); reopening it", role, exc or "closed")
        task = asyncio.get_running_loop().create_task(self._reopen(role))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _reopen(self, role: str) -> None:
        """Bind the lost socket's address and port again and read on; retried
        every second (the interface may be down right now) until stop()."""
        index = 0 if role == "unicast" else 1
        self._sockets[index].close()  # the transport closed it; if not, its port must be free
        own = self.config.own_address if self.config.transport == "unicast" else None
        assert self.codec is not None
        port = self.codec.unicast_port  # in every envelope we sent: peers reply there
        failing = False
        while not self._transports_closed:
            try:
                sock = net.reopen_socket(role, self.config.interface, self.config.group, self.config.port, own, port)
            except net.NetError as exc:
                if not failing:
                    log.error("cannot reopen the %s socket yet: %s; retrying every %g s", role, exc,
                              net.RETRY_INTERVAL_S)
                    failing = True
                await asyncio.sleep(net.RETRY_INTERVAL_S)
                continue
            transport, _ = await asyncio.get_running_loop().create_datagram_endpoint(
                lambda: self._reader(role), sock=sock)
            if self._transports_closed:  # stop() ran meanwhile
                transport.close()
                return
            self._transports[index], self._sockets[index] = transport, sock
            if role == "unicast":
                self._unicast, self._send_sock = transport, sock
            log.warning("the %s socket is open again on %s", role, self._own_address if role == "unicast" else
                        f"{self.config.group} port {self.config.port}")
            return

    # ---- hooks ------------------------------------------------------------

    def _on_hook_result(self, result: HookResult) -> None:
        assert self.node is not None
        now = time.monotonic()
        self.node.record(now, "hook", hook_event=result.event, command=result.command, exit_code=result.exit_code,
                         duration_ms=round(result.duration_s * 1000, 1), reason=result.reason,
                         timed_out=result.timed_out, error=result.error)
        self.counters.hook(result.event, result.ok, result.duration_s)
        if result.event != "promote":
            return
        node = self.node
        if not result.ok:
            self._promote_failed_terms.add(result.term)
            if self.config.hooks.on_promote_failure != "stepdown":
                return
            detail = result.error or ("timed out" if result.timed_out else f"exit {result.exit_code}")
            log.error("promote hook %s failed (%s); %s", result.command, detail,
                      "stepping down" if node.is_leader(now) else "backing off")
            self._process(lambda now: node.promote_hooks_done(False, result.term, now, f"{result.hook}: {detail}"))
        elif result.term not in self._promote_failed_terms and node.is_leader(now):
            # another hook of the same promote may still fail; the last one decides
            node.promote_hooks_done(True, result.term, now)
        else:
            return
        # tell the cluster at once (a `transfer --wait` elsewhere waits for this)
        self._process(lambda now: [node.announce(now)])

    # ---- health -------------------------------------------------------------

    def _on_health_change(self, healthy: bool, reason: str) -> None:
        """FAULT: refuse to stand, step down if leading (the protocol's demote
        runs first), then run the fault hooks. Recovery makes the node eligible
        again; no hook runs until it is next promoted."""
        assert self.node is not None and self.hooks is not None
        node = self.node
        if healthy:
            log.info("healthy again: standing for election")
        else:
            log.warning("unhealthy, entering FAULT: %s", reason)
        node.record(time.monotonic(), "health", healthy=healthy, reason=reason)
        try:
            self._process(lambda now: node.set_blocker("fault", not healthy, now, reason))
            if healthy:
                # a check rose: the promote hook may work again
                self._process(lambda now: node.forgive_promote_failures(now, "health check rose"))
        except CommandError as exc:
            log.error("%s cannot act on health changes: %s", self.config.protocol, exc)
        if not healthy:
            self.hooks.submit(Transition("fault", node.protocol.term, node.protocol.leader, self._leader_seen, "fault"))

    def _save_store(self, effect: StorePersist) -> None:
        assert self.coord is not None
        try:
            self.fd_reserve.call(lambda: self.coord.save(effect.state), "coordination store write")
        except OSError as exc:
            # fail-stop: acks after a lost write would claim durability we lack
            log.critical("cannot write the coordination store in %s (%s): stopping", self.config.state_directory, exc)
            logging.shutdown()
            os._exit(75)

    # ---- control requests ------------------------------------------------------

    def command(self, name: str, args: dict[str, Any]) -> Any:
        """Answer a control-socket request; raises CommandError for the client."""
        assert self.node is not None
        node = self.node
        if name == "status":
            return self.status()
        if name == "is-leader":
            now = self._process(lambda now: [])  # a woken process checks its lease before answering
            return {"leader": node.is_leader(now), "node": self.settings.node_name,
                    "valid_for_ms": self._leader_valid_for_ms(now)}
        if name == "history":
            mono, wall = time.monotonic(), time.time()
            return [
                {"at": _iso(wall - (mono - h.at)), "ago_s": round(mono - h.at, 3), "event": h.event, "term": h.term,
                 **h.detail}
                for h in node.history
            ]
        if name == "metrics":
            return self.metrics_text()
        if name in coordcmds.COORD_COMMANDS:
            return coordcmds.dispatch(self.coord_backend(), self.settings.node_name, self.settings.clock_drift_ppm,
                                      name, args, self.config.protocol)
        if name == "leader.supervise":
            stop_within_s = args.get("stop_within_s", 1.0)
            if isinstance(stop_within_s, bool) or not isinstance(stop_within_s, (int, float)) or stop_within_s < 0:
                raise BadRequest("'stop_within_s' must be a non-negative number")
            return self.supervisors.supervise(float(stop_within_s))
        if name in ("transfer", "stepdown"):
            wait_s = _wait_arg(args)
            target = args.get("target") if name == "transfer" else None
            if target is not None and (not isinstance(target, str) or not self.settings.is_member(target)):
                raise BadRequest(f"unknown node {target!r} (members: {', '.join(m.name for m in self.settings.members)})")
            if target is not None and self.settings.is_witness(target):
                raise BadRequest(f"{target} is a witness: it votes but never leads (transfer to a voter)")
            term = node.protocol.term
            if name == "transfer":
                self._process(lambda now: node.transfer(target, now))
            else:
                self._process(lambda now: node.stepdown(now))
            # the member the protocol picked when none was named (quorum-lease)
            target = target or getattr(node.protocol, "handover_target", None)
            handed = {"ok": True, "handed_over": True, "from": self.settings.node_name, "term": term, "target": target}
            if wait_s is None:
                return handed
            return self._wait_served(target, term, wait_s, handed)
        if name == "pause":
            return self._pause(_wait_arg(args) or 10.0)
        if name == "resume":
            was_paused = node.paused
            self._process(lambda now: node.resume(now))
            pausefile.clear(self.config.state_directory)
            if was_paused:
                log.info("resumed: standing for election again")
            return {"paused": False, "was_paused": was_paused}
        raise BadRequest(f"unknown command {name!r}")

    def _leader_valid_for_ms(self, now: float) -> float | None:
        """How long is_leader stays true without news (run-as-leader stops its
        CMD before then); None for protocols without a lease (bully, ring)."""
        assert self.node is not None
        protocol = self.node.protocol
        if not self.node.is_leader(now):
            return 0.0
        # the instants the lease-based protocols demote at (lease.py, protocols/etcd.py)
        until = protocol._step_down_at() if hasattr(protocol, "_step_down_at") else getattr(protocol, "_valid_until", None)
        return None if until is None else round(max(0.0, until - now) * 1000, 1)

    def coord_backend(self) -> CoordBackend | None:
        """What serves locks, barriers, members and config: the embedded store
        (quorum-lease), etcd's KV (protocol = etcd), None for bully, ring."""
        if self.coord is not None:
            return self.coord
        if self._coord is None and self.etcd is not None and self.config.etcd is not None:
            from electiond.coord.etcdbackend import EtcdBackend

            node = self.node
            # barrier entries live by the election's lease: they go when this member does
            self._coord = EtcdBackend(self.etcd.client, self.config.etcd.prefix,
                                      lambda: int(getattr(node.protocol, "lease_id", 0) or 0) if node else 0)
        return self._coord

    async def _pause(self, wait_s: float) -> dict[str, Any]:
        """Persist the pause first (a crash right after still comes back
        paused), block, and if leading wait until another node leads."""
        assert self.node is not None
        node = self.node
        was_leader = node.is_leader(time.monotonic())
        pausefile.save(self.config.state_directory)
        if not node.paused:
            log.warning("paused by the operator: not standing for election until electionctl resume")
        self._process(lambda now: node.pause(now))
        answer: dict[str, Any] = {"paused": True, "was_leader": was_leader, "leader": node.protocol.leader}
        if not was_leader:
            return answer
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            leader = node.protocol.leader
            if leader not in (None, self.settings.node_name):
                answer["leader"] = leader
                return answer
            await asyncio.sleep(0.02)
        answer["leader"] = None
        answer["warning"] = f"no other node took over within {wait_s:g}s"
        return answer

    async def _wait_served(self, target: str | None, old_term: int, wait_s: float,
                           answer: dict[str, Any]) -> dict[str, Any]:
        """Until a node (``target``, if named) announces it ran its promote
        hooks successfully in a term after ``old_term`` (PRESENCE
        served_term), or the wait runs out."""
        assert self.node is not None
        node = self.node
        deadline = time.monotonic() + wait_s
        while True:
            now = time.monotonic()
            status = node.status(now)
            for m in status["members"]:
                served = m.get("served_term", -1)
                if not m.get("self") and (target is None or m["name"] == target) and served > old_term:
                    return {**answer, "done": True, "leader": m["name"], "served_term": served}
            if now >= deadline:
                row = next((m for m in status["members"] if m["name"] == target), None) if target else None
                what = (f"the leader is {status['leader'] or 'unknown'} (term {status['term']})"
                        + (f"; {target} reports fault={row.get('fault')} served_term={row.get('served_term')}"
                           if row else ""))
                raise CommandError(f"hand-over not confirmed within {wait_s:g}s: {what}")
            await asyncio.sleep(0.02)

    def metrics_text(self) -> str:
        return metrics.render(self.status(), self.counters)

    def status(self) -> dict[str, Any]:
        assert self.node is not None and self.codec is not None
        now = self._process(lambda now: [])
        status = self.node.status(now)
        status.update({
            "authenticated": self.codec.authenticated,
            "signing_key": self.codec.signing_key_id,
            "accepted_keys": [k.id for k in self.codec.keys],
            "uptime_s": round(time.time() - self.started_wall, 3),
            "dropped": {**self.codec.dropped, "not_ready": self.dropped_not_ready},
            "received": self.codec.accepted,
            "flood_filter": {"engaged": self.shield.engaged, "engagements": self.shield.engagements},
            "hooks": self.hooks.status() if self.hooks else None,
            "healthy": self.health.healthy if self.health else True,
            "health": self.health.snapshot() if self.health else [],
            "persist_errors": dict(self._persist_errors),
            "send_errors": dict(self.sender.errors),
            "transports_lost": self.transports_lost,
            "leadership_changes_total": self.counters.leadership_changes,
            "transport": self.config.transport,
            "loop_lag": self.loop_lag.snapshot(now),
            "run_as_leader": self.supervisors.status(),
        })
        if self.etcd is not None:
            status["etcd_endpoints"] = self.etcd.status()
        if self.coord is not None:
            status["coord_store"] = self.coord.host.replica.status()  # this node's copy of the embedded store
        # what the state file says; the protocol may report its own view
        status.setdefault("recovering", self.store.state.recovering)
        return status

    def status_line(self) -> str:
        """systemd's STATUS=: role, cluster, term and how many members are heard."""
        assert self.node is not None
        now = time.monotonic()
        leader = self.node.protocol.leader
        role = self.node.role(now)
        members = self.settings.members
        alive = sum(1 for m in members if m.name == self.settings.node_name or self.node.membership.alive(m.name, now))
        where = f"of {self.settings.cluster}" if role == "leader" else \
            f"in {self.settings.cluster}, leader {leader or 'unknown'}"
        return f"{role} {where} (term {self.node.protocol.term}), {alive}/{len(members)} members alive"

    @staticmethod
    def _role_fields(role: str, term: int, leader: str | None) -> dict[str, str]:
        """Journal fields (JournalHandler sends upper-case extras as fields):
        `journalctl ELECTIOND_ROLE=leader` finds every promotion."""
        return {"ELECTIOND_ROLE": role, "ELECTIOND_TERM": str(term), "ELECTIOND_LEADER": leader or ""}
