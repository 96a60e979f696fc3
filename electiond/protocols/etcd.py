"""protocol = etcd: leadership from an etcd cluster's leases (sans-IO core).

etcd's own election recipe (clientv3/concurrency): every candidate holds a
lease and writes ``election/<lease id>`` under it, if absent; the key with the
lowest create revision leads, and its create revision is the fencing token
(revisions grow across the whole etcd cluster, so a later leader always holds
a larger token). A key lives exactly as long as its lease.

This module decides; the shell (``etcddriver.py``) only makes the calls. The
core lists ``EtcdRequest`` effects and is fed ``EtcdReply`` and ``WatchUpdate``
inputs (``on_service``) with ``now``. Keys here are relative to the configured
prefix; the client adds and strips it.

Safety argument in one paragraph. The leader never asks etcd whether it still
leads: it counts. Its lease is valid on its own clock until the *send* time of
the last keep-alive etcd answered plus the TTL etcd granted, shrunk by the
drift bound (etcd's clock may run fast and ours slow) and a guard:

    valid_until = sent_at + ttl * (1 - rho) / (1 + rho) - guard

etcd measures the TTL from when it *received* that keep-alive, which is after
``sent_at``, so etcd cannot expire the lease -- and delete the leader's key,
which is the only way another key becomes the lowest -- before ``valid_until``.
``is_leader`` answers from the clock, and ``on_tick`` (which the shell runs
before every event) demotes first, so a leader cut off from etcd, or frozen
and woken, stops before anyone can take over. A candidate promotes only on a
linearizable range read (never on a watch event alone) that shows its key
lowest, made while its watch is up, with its own lease valid: keys with a
lower create revision cannot appear later, so it stays lowest while its lease
lives. While the watch is down nobody promotes.

Hand-over (stepdown, transfer, becoming ineligible): the leader demotes at
once but deletes its key (resigns) only when the shell reports its demote
hooks finished, so old and new leaders' hooks never overlap. A transfer first
writes ``transfer`` (value: the target) under a short lease of its own; every
other node withdraws its key while that key exists and stands again when it
is gone (the target deletes it on promoting; otherwise its lease runs out), so
the target is the lowest key once the leader resigns.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Any, Final

from electiond.protocols.base import (
    ROLE_CANDIDATE,
    ROLE_FOLLOWER,
    ROLE_LEADER,
    CommandError,
    Demote,
    Effect,
    ElectionProtocol,
    LeaderChanged,
    Message,
    PersistedState,
    Promote,
    Settings,
)

ELECTION_PREFIX: Final = "election/"
TRANSFER_KEY: Final = "transfer"
INF: Final = float("inf")

# request operations the shell carries out (etcddriver.py maps each to a call)
OP_GRANT: Final = "grant"  # ttl_s -> reply.lease_id, reply.ttl_s
OP_KEEPALIVE: Final = "keepalive"  # lease_id -> reply.ttl_s (0: the lease is gone)
OP_CAMPAIGN: Final = "campaign"  # key, value, lease_id: create if absent -> reply.create_revision
OP_RANGE: Final = "range"  # every key under the prefix -> reply.kvs, reply.revision
OP_PUT: Final = "put"  # key, value, lease_id
OP_DELETE: Final = "delete"  # key
OP_REVOKE: Final = "revoke"  # lease_id
OP_WATCH: Final = "watch"  # the whole prefix from start_revision -> WatchUpdate inputs


@dataclass(frozen=True, slots=True)
class EtcdRequest:
    """An effect: make one etcd call. Its answer comes back as an EtcdReply
    (a watch's as WatchUpdates) carrying the same ``call_id``."""

    call_id: int
    op: str
    key: str = ""
    value: str = ""
    lease_id: int = 0
    ttl_s: int = 0
    start_revision: int = 0


@dataclass(frozen=True, slots=True)
class EtcdKv:
    key: str  # relative to the prefix
    value: str
    create_revision: int
    lease_id: int = 0


@dataclass(frozen=True, slots=True)
class EtcdReply:
    """An input: the answer to an EtcdRequest (ok=False: no answer, ``error`` says why)."""

    call_id: int
    ok: bool
    error: str = ""
    revision: int = 0  # the response header's revision
    lease_id: int = 0
    ttl_s: int = 0
    create_revision: int = 0
    kvs: tuple[EtcdKv, ...] = ()
    succeeded: bool = True  # a transaction's compare held


@dataclass(frozen=True, slots=True)
class WatchEvent:
    kind: str  # "put" or "delete"
    key: str
    create_revision: int
    mod_revision: int


@dataclass(frozen=True, slots=True)
class WatchUpdate:
    """An input from an open watch: created, events, or its end (``ended``)."""

    call_id: int
    created: bool = False
    events: tuple[WatchEvent, ...] = ()
    revision: int = 0
    ended: bool = False
    error: str = ""
    compact_revision: int = 0


def lease_key(lease_id: int) -> str:
    return f"{ELECTION_PREFIX}{lease_id:x}"


class EtcdElection(ElectionProtocol):
    name = "etcd"
    MESSAGE_SCHEMAS: dict[str, dict[str, type | tuple[type, ...]]] = {}  # nothing travels over UDP

    def __init__(self, settings: Settings, rng: random.Random, now: float,
                 persisted: PersistedState | None = None) -> None:
        super().__init__(settings, rng, now, persisted)
        ttl = settings.etcd_lease_ttl_s
        rho = settings.clock_drift_ppm / 1e6
        self.ttl_s = ttl
        self.guard_s = settings.lease_guard_s
        self._rho = rho
        self.keepalive_interval_s = ttl / 3.0  # etcd's own clients renew at a third of the TTL
        self.retry_s = min(0.5, ttl / 6.0)
        self.refresh_s = float(ttl)  # a follower re-reads the queue this often even if no watch event came
        self.hold_ttl_s = max(2, ttl)  # the transfer key's lease: how long the others hold back
        self.stepdown_hold_s = float(ttl)
        self._next_id = 0
        self._pending: dict[int, str] = {}  # call id -> purpose
        self._sent_at: dict[int, float] = {}  # grant and keep-alive call id -> local send time
        self._call_lease: dict[int, int] = {}  # keep-alive/campaign call id -> lease it was for
        self._role = ROLE_FOLLOWER
        self._leader: str | None = None
        self._term = 0  # the leading key's create revision, as last read
        self._eligible = True
        # our lease
        self.lease_id = 0
        self._granting = False
        self._valid_until = -INF
        self._next_keepalive_at = INF
        self._keepalives_ok = 0
        self._keepalives_failed = 0
        self._last_keepalive_error = ""
        # our key
        self._key = ""
        self._create_revision = 0
        self._campaigning = False
        self._stand_after = now  # no campaign before this (after a stepdown)
        # the queue, as the last range read showed it
        self._queue: list[EtcdKv] = []
        self._transfer_target: str | None = None
        self._revision = 0  # the highest revision seen in any reply or event
        self._range_call = 0
        self._range_wanted = True
        self._next_range_at = now
        # the watch
        self._watch_call = 0
        self._watch_up = False
        self._watch_generation = 0
        self._range_generation: dict[int, int] = {}
        self._watch_retry_at = now
        self._watch_failures = 0
        # hand-over
        self._resign_after_hooks = False
        self._hooks_done = True
        self._transfer_placing = False  # the transfer key's lease or put is in flight
        self._deleting = 0  # the call deleting our key, while in flight
        self._hold_lease_id = 0
        self._retry_at = now
        self._last_error = ""

    # ---- the interface --------------------------------------------------------

    @property
    def role(self) -> str:
        return self._role

    @property
    def leader(self) -> str | None:
        return self._leader

    @property
    def term(self) -> int:
        return self._term

    def is_leader(self, now: float) -> bool:
        # answered from the clock: a process woken from a freeze must not claim
        # a lease that ran out while it was stopped, even before its next tick
        return self._role == ROLE_LEADER and now < self._valid_until

    def on_message(self, msg: Message, now: float) -> list[Effect]:
        return []  # peers say nothing to us: etcd decides

    def lease_valid_for_s(self, granted_ttl_s: int) -> float:
        """How long after a keep-alive's send time the lease surely still lives."""
        return granted_ttl_s * (1 - self._rho) / (1 + self._rho) - self.guard_s

    def on_tick(self, now: float) -> list[Effect]:
        effects: list[Effect] = self._check_lease(now)  # first: a woken leader demotes before anything else
        if self.lease_id == 0:
            if not self._granting and now >= self._retry_at:
                self._granting = True
                call = self._call(OP_GRANT, effects, ttl_s=self.ttl_s)
                self._sent_at[call] = now
        elif now >= self._next_keepalive_at:
            self._next_keepalive_at = now + self.keepalive_interval_s
            call = self._call(OP_KEEPALIVE, effects, lease_id=self.lease_id)
            self._sent_at[call] = now
            self._call_lease[call] = self.lease_id
        if self._may_campaign(now):
            self._campaigning = True
            self._key = lease_key(self.lease_id)
            call = self._call(OP_CAMPAIGN, effects, key=self._key, value=self.settings.node_name,
                              lease_id=self.lease_id)
            self._call_lease[call] = self.lease_id
        if self._watch_call == 0 and self._revision > 0 and now >= self._watch_retry_at:
            # from the revision after the last one read: nothing in between is missed
            self._watch_call = self._call(OP_WATCH, effects, start_revision=self._revision + 1)
        if self._range_call == 0 and now >= self._retry_at and (self._range_wanted or now >= self._next_range_at):
            self._range_wanted = False
            self._next_range_at = now + self.refresh_s
            self._range_call = self._call(OP_RANGE, effects)
            self._range_generation[self._range_call] = self._watch_generation if self._watch_up else -1
        return effects

    def deadline(self) -> float:
        # only times at which on_tick would act: a past time that leads to
        # nothing would spin the shell's timer
        d = self._next_keepalive_at if self.lease_id else (INF if self._granting else self._retry_at)
        if self._role == ROLE_LEADER and self._valid_until < d:
            d = self._valid_until
        if self._range_call == 0:
            d = min(d, self._retry_at if self._range_wanted else max(self._retry_at, self._next_range_at))
        if self._watch_call == 0 and self._revision > 0:
            d = min(d, self._watch_retry_at)
        return min(d, self._campaign_at())

    def _campaign_at(self) -> float:
        me = self.settings.node_name
        if (self.lease_id == 0 or self._key or self._campaigning or self._deleting or not self._eligible
                or self._resign_after_hooks
                or self._transfer_target not in (None, me) or self._role == ROLE_LEADER):
            return INF
        at = max(self._stand_after, self._retry_at)
        return at if at < self._valid_until else INF

    def on_service(self, event: object, now: float) -> list[Effect]:
        effects = self._check_lease(now)
        if isinstance(event, WatchUpdate):
            return effects + self._on_watch(event, now)
        if not isinstance(event, EtcdReply):
            return effects
        if event.call_id == self._watch_call and event.call_id:
            # a watch that failed before it streamed anything: the same as its end
            return effects + self._on_watch(WatchUpdate(event.call_id, ended=True, error=event.error), now)
        purpose = self._pending.pop(event.call_id, "")
        if not event.ok and purpose not in ("", OP_WATCH):
            self._last_error = f"{purpose}: {event.error}"
        if purpose == OP_GRANT:
            effects += self._on_grant(event, now)
        elif purpose == OP_KEEPALIVE:
            effects += self._on_keepalive(event, now)
        elif purpose == OP_CAMPAIGN:
            effects += self._on_campaign(event, now)
        elif purpose == OP_RANGE:
            effects += self._on_range(event, now)
        elif purpose == "resign":
            effects += self._on_resigned(event, now)
        elif purpose == "hold_grant":
            effects += self._on_hold_grant(event, now)
        elif purpose == "transfer_put":
            self._transfer_placing = False
            if not event.ok:
                self._last_error = f"transfer: {event.error}"
            effects += self._resign_if_ready(now)
        elif purpose == "clear_transfer":
            pass  # best effort: the key's own lease ends it otherwise
        self._sent_at.pop(event.call_id, None)
        self._call_lease.pop(event.call_id, None)
        return effects

    # ---- local requests -----------------------------------------------------------

    def stepdown(self, now: float, reason: str = "stepdown") -> list[Effect]:
        effects = self._check_lease(now)
        if not self.is_leader(now):
            raise CommandError("not the leader")
        self._stand_after = now + self.stepdown_hold_s
        return effects + self._hand_over(now, reason)

    def transfer(self, target: str | None, now: float, reason: str = "transfer") -> list[Effect]:
        effects = self._check_lease(now)
        if not self.is_leader(now):
            raise CommandError("not the leader")
        others = [kv for kv in self._queue if kv.key != self._key]
        if target is None:
            if not others:
                raise CommandError("no other member is campaigning in etcd")
            # the next in line takes over as soon as we resign: no transfer key needed
            return effects + self._hand_over(now, reason)
        else:
            if not self.settings.is_member(target):
                raise CommandError(f"unknown node {target!r}")
            if target == self.settings.node_name:
                raise CommandError("cannot transfer leadership to this node itself")
            if all(kv.value != target for kv in others):
                raise CommandError(f"{target} has no key in etcd (it is not campaigning)")
        self._transfer_target = target
        self._transfer_placing = True
        self._call(OP_GRANT, effects, ttl_s=self.hold_ttl_s, purpose="hold_grant")
        return effects + self._hand_over(now, reason)

    def set_eligible(self, eligible: bool, now: float, reason: str) -> list[Effect]:
        effects = self._check_lease(now)
        if eligible == self._eligible:
            return effects
        self._eligible = eligible
        if eligible:
            return effects
        if self._role == ROLE_LEADER:
            return effects + self._hand_over(now, reason)
        return effects + self._withdraw()

    def demote_hooks_done(self, now: float) -> list[Effect]:
        self._hooks_done = True
        return self._resign_if_ready(now)

    def release(self, now: float) -> list[Effect]:
        """Shutting down: give the lease back, which deletes our key at once
        (the next candidate need not wait for the TTL). Demote first if leading."""
        effects = self._check_lease(now)
        if self._role == ROLE_LEADER:
            effects += self._demote(now, "shutdown")
        if self.lease_id:
            self._call(OP_REVOKE, effects, lease_id=self.lease_id)
            self._forget_lease()
        self._eligible = False
        return effects

    def extra_status(self, now: float) -> dict[str, Any]:
        position = None
        for k, kv in enumerate(self._queue):
            if kv.key == self._key and self._key:
                position = k
        remaining = self._valid_until - now if self.lease_id else -INF
        return {
            "eligible": self._eligible,
            "fencing_token": self._create_revision if self._role == ROLE_LEADER else None,
            "etcd": {
                "lease_id": f"{self.lease_id:x}" if self.lease_id else None,
                "lease_ttl_s": self.ttl_s,
                "lease_remaining_ms": round(remaining * 1000, 1) if remaining > 0 else 0.0,
                "key": self._key or None,
                "create_revision": self._create_revision or None,
                "queue_position": position,
                "queue": [kv.value for kv in self._queue],
                "revision": self._revision,
                "watch": "up" if self._watch_up else "down",
                "watch_failures": self._watch_failures,
                "keepalives_ok": self._keepalives_ok,
                "keepalives_failed": self._keepalives_failed,
                "transfer_to": self._transfer_target,
                "last_error": self._last_error or None,
            },
        }

    # ---- replies ----------------------------------------------------------------

    def _on_grant(self, reply: EtcdReply, now: float) -> list[Effect]:
        self._granting = False
        sent_at = self._sent_at.get(reply.call_id, now)
        if not reply.ok or reply.lease_id == 0 or reply.ttl_s <= 0:
            self._retry_at = now + self.retry_s
            return []
        self.lease_id = reply.lease_id
        self._valid_until = sent_at + self.lease_valid_for_s(reply.ttl_s)
        self._next_keepalive_at = now + self.keepalive_interval_s
        return []

    def _on_keepalive(self, reply: EtcdReply, now: float) -> list[Effect]:
        if self._call_lease.get(reply.call_id) != self.lease_id or self.lease_id == 0:
            return []  # for a lease we already gave up
        if not reply.ok:
            self._keepalives_failed += 1
            self._last_keepalive_error = reply.error
            return []  # the clock decides: the lease runs out at _valid_until
        if reply.ttl_s <= 0:
            # etcd no longer knows the lease: our key is gone with it
            self._keepalives_failed += 1
            effects: list[Effect] = []
            if self._role == ROLE_LEADER:
                effects += self._demote(now, "lease_lost")
            self._forget_lease()
            self._range_wanted = True
            return effects
        self._keepalives_ok += 1
        sent_at = self._sent_at.get(reply.call_id, now)
        self._valid_until = max(self._valid_until, sent_at + self.lease_valid_for_s(reply.ttl_s))
        if self._role != ROLE_LEADER and self._key:
            self._range_wanted = True  # a lease back from the dead: see whether we lead
        return []

    def _on_campaign(self, reply: EtcdReply, now: float) -> list[Effect]:
        self._campaigning = False
        if self._call_lease.get(reply.call_id) != self.lease_id or self.lease_id == 0:
            return []
        if not reply.ok or reply.create_revision <= 0:
            if "lease not found" in reply.error:
                self._forget_lease()
            else:
                self._key = ""
            self._retry_at = now + self.retry_s
            return []
        self._create_revision = reply.create_revision
        self._note_revision(reply.revision)
        self._range_wanted = True
        return []

    def _on_range(self, reply: EtcdReply, now: float) -> list[Effect]:
        generation = self._range_generation.pop(reply.call_id, -1)
        if reply.call_id == self._range_call:
            self._range_call = 0
        if not reply.ok:
            self._range_wanted = True
            self._retry_at = now + self.retry_s
            return []
        self._note_revision(reply.revision)
        if self._campaigning or (self._create_revision and reply.revision < self._create_revision):
            # a read from before our key (re)appeared says nothing about it: an
            # older key of the same name (our lease's, before a resign) may be in it
            self._range_wanted = True
            return []
        queue = sorted((kv for kv in reply.kvs if kv.key.startswith(ELECTION_PREFIX)),
                       key=lambda kv: kv.create_revision)
        transfer = [kv.value for kv in reply.kvs if kv.key == TRANSFER_KEY]
        self._queue = queue
        effects: list[Effect] = []
        me = self.settings.node_name
        target = transfer[0] if transfer else None
        self._transfer_target = target
        if self._key and self._create_revision and reply.revision >= self._create_revision:
            if all(kv.key != self._key for kv in queue):
                # deleted (by its lease's end or by hand): we are not queued any more
                if self._role == ROLE_LEADER:
                    effects += self._demote(now, "key_lost")
                self._key, self._create_revision = "", 0
        head = queue[0] if queue else None
        if self._role == ROLE_LEADER and head is not None and head.key != self._key:
            effects += self._demote(now, "not_lowest")
        if (target is not None and target != me and self._role != ROLE_LEADER and self._key and not self._campaigning
                and not self._resign_after_hooks):
            effects += self._withdraw()
        elif (self._role != ROLE_LEADER and head is not None and head.key == self._key and self._key
              and head.create_revision == self._create_revision
              and self._eligible and not self._resign_after_hooks and target in (None, me)
              and self._watch_up and generation == self._watch_generation and now < self._valid_until):
            return effects + self._promote(head, now, target == me)
        new_leader = head.value if head is not None else None
        new_term = head.create_revision if head is not None else self._term
        if self._role == ROLE_LEADER:
            new_leader, new_term = me, self._create_revision
        if new_leader != self._leader or new_term != self._term:
            self._leader, self._term = new_leader, new_term
            effects.append(LeaderChanged(new_leader, new_term))
        return effects

    def _on_watch(self, update: WatchUpdate, now: float) -> list[Effect]:
        if update.call_id != self._watch_call:
            return []
        effects: list[Effect] = []
        if update.created:
            self._watch_up = True
            self._watch_generation += 1
            self._watch_failures = 0
            self._range_wanted = True  # decide on a read made while the watch is up
        self._note_revision(update.revision)
        for event in update.events:
            self._note_revision(event.mod_revision)
            if (event.kind == "delete" and event.key == self._key and self._key
                    and event.mod_revision > self._create_revision):  # not an older key of the same name
                # our own key went away: no read needed to stop leading
                if self._role == ROLE_LEADER:
                    effects += self._demote(now, "key_deleted")
                self._key, self._create_revision = "", 0
            if event.kind == "delete" or event.key == TRANSFER_KEY:
                self._range_wanted = True
        if update.ended:
            self._pending.pop(update.call_id, None)
            self._watch_up = False
            self._watch_call = 0
            self._watch_failures += 1
            self._last_error = f"watch: {update.error or 'ended'}"
            self._watch_retry_at = now + min(self.retry_s * self._watch_failures, float(self.ttl_s))
            if update.compact_revision:
                # events we never saw were compacted away: read afresh, watch from there
                self._revision = 0
            self._range_wanted = True
        return effects

    def _on_hold_grant(self, reply: EtcdReply, now: float) -> list[Effect]:
        if not reply.ok or reply.lease_id == 0 or self._transfer_target is None:
            self._transfer_placing = False
            return self._resign_if_ready(now)  # hand over without a preference
        self._hold_lease_id = reply.lease_id
        effects: list[Effect] = []
        self._call(OP_PUT, effects, key=TRANSFER_KEY, value=self._transfer_target, lease_id=reply.lease_id,
                   purpose="transfer_put")
        return effects

    def _on_resigned(self, reply: EtcdReply, now: float) -> list[Effect]:
        self._deleting = 0
        if not reply.ok:
            # the key stays until the lease ends; we no longer renew it
            self._forget_lease()
        self._key, self._create_revision = "", 0
        self._range_wanted = True
        return []

    # ---- transitions --------------------------------------------------------------

    def _check_lease(self, now: float) -> list[Effect]:
        if self._role == ROLE_LEADER and now >= self._valid_until:
            return self._demote(now, "lease_expired")
        return []

    def _promote(self, head: EtcdKv, now: float, was_target: bool) -> list[Effect]:
        self._role = ROLE_LEADER
        self._leader = self.settings.node_name
        self._term = head.create_revision
        effects: list[Effect] = [Promote(head.create_revision, "transfer" if was_target else "elected"),
                                 LeaderChanged(self._leader, self._term)]
        if was_target:
            self._call(OP_DELETE, effects, key=TRANSFER_KEY, purpose="clear_transfer")
        return effects

    def _demote(self, now: float, reason: str) -> list[Effect]:
        self._role = ROLE_FOLLOWER
        self._hooks_done = False
        token = self._create_revision or self._term
        # who leads next is for a fresh read to say
        self._leader = None
        return [Demote(token, reason), LeaderChanged(None, token)]

    def _hand_over(self, now: float, reason: str) -> list[Effect]:
        """Demote now; resign once the demote hooks are done (and a transfer key is placed)."""
        effects = self._demote(now, reason)
        self._resign_after_hooks = True
        return effects

    def _resign_if_ready(self, now: float) -> list[Effect]:
        if not self._resign_after_hooks or not self._hooks_done or self._transfer_placing:
            return []
        self._resign_after_hooks = False
        return self._withdraw()

    def _withdraw(self) -> list[Effect]:
        """Delete our key. We forget it at once, so no read still in flight can
        promote us on it, and do not queue again until etcd has answered: the
        new key has the same name, and a campaign overtaking the delete would
        revive the old key just before the delete removes it."""
        effects: list[Effect] = []
        if self._key:
            self._deleting = self._call(OP_DELETE, effects, key=self._key, purpose="resign")
            self._key, self._create_revision = "", 0
        return effects

    def _may_campaign(self, now: float) -> bool:
        return now >= self._campaign_at()

    def _forget_lease(self) -> None:
        self.lease_id = 0
        self._valid_until = -INF
        self._next_keepalive_at = INF
        self._key, self._create_revision = "", 0
        self._campaigning = False

    def _note_revision(self, revision: int) -> None:
        if revision > self._revision:
            self._revision = revision

    def _call(self, op: str, effects: list[Effect], key: str = "", value: str = "", lease_id: int = 0,
              ttl_s: int = 0, start_revision: int = 0, purpose: str = "") -> int:
        self._next_id += 1
        call = self._next_id
        self._pending[call] = purpose or op
        effects.append(EtcdRequest(call, op, key, value, lease_id, ttl_s, start_revision))  # type: ignore[arg-type]
        return call


def ttl_from_seconds(seconds: float) -> int:
    """etcd leases are whole seconds: round a configured TTL up."""
    return max(1, math.ceil(seconds - 1e-9))
