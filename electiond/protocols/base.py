"""Types shared by every protocol: settings, messages, effects, the interface.

A protocol is a pure state machine. The shell (runtime, simulator, tests)
feeds it messages and clock ticks with an explicit ``now`` (monotonic
seconds on the node's own clock) and carries out the effects it returns, in
order. Persist effects must be carried out before any later Send in the same
list: that ordering is what makes a vote durable before it is announced.
"""

from __future__ import annotations

import abc
import random
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Final, TypeVar, Union

_C = TypeVar("_C", bound=type)

try:
    from mypy_extensions import mypyc_attr
except ImportError:  # without mypy installed (the daemon, the .deb) nothing is compiled

    def mypyc_attr(*args: object, **kwargs: object) -> Callable[[_C], _C]:  # type: ignore[misc]
        return lambda cls: cls

ROLE_LEADER: Final = "leader"
ROLE_FOLLOWER: Final = "follower"
ROLE_CANDIDATE: Final = "candidate"


@dataclass(frozen=True, slots=True)
class Member:
    name: str
    id: int


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything a protocol needs to know, already validated by config.py."""

    cluster: str
    node_name: str
    members: tuple[Member, ...]
    heartbeat_interval_s: float = 0.05
    election_timeout_min_s: float = 0.15
    election_timeout_max_s: float = 0.30
    preempt: bool = True
    preempt_delay_s: float = 5.0
    priority: int = 0
    # quorum-lease
    lease_s: float = 0.15
    # the longest lease a leader may announce when it sees its heartbeats or
    # acks delayed (adaptive lease, lease.py); 0.0 or below lease_s: lease_s (off)
    lease_max_s: float = 0.0
    clock_drift_ppm: float = 1000.0
    lease_guard_s: float = 0.02
    # etcd: the TTL (whole seconds) of each candidate's etcd lease
    etcd_lease_ttl_s: int = 5
    # start-up clock check (node.py): no standing or lease grant until our
    # clock agreed with enough peers' over at least this span of beacons;
    # 0 turns it off (the exhaustive explorer, unit tests of the protocol)
    clock_check_s: float = 2.0
    # failure detector
    suspicion_threshold: float = 8.0
    min_suspicion_timeout_s: float = 0.1
    max_suspicion_timeout_s: float = 1.0
    # election retries: backoff_base_s * 2**attempt + U(0, backoff_jitter_s), capped
    backoff_base_s: float = 0.05
    backoff_max_s: float = 2.0
    backoff_jitter_s: float = 0.05
    # bully: how long a candidate waits for ANSWER from a higher id
    answer_timeout_s: float = 0.1
    # quorum-lease: members that vote and acknowledge heartbeats but never
    # stand, never lead and are never a transfer target ([node] role = witness)
    witnesses: tuple[str, ...] = ()
    # derived in __post_init__: protocols look members up on every message
    _by_name: dict[str, Member] = field(init=False, repr=False, compare=False)
    self_id: int = field(init=False, repr=False, compare=False)
    quorum: int = field(init=False, repr=False, compare=False)  # a strict majority of the members
    _follower_promise_s: float = field(init=False, repr=False, compare=False)
    _lease_ceiling_s: float = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        names = [m.name for m in self.members]
        if self.node_name not in names:
            raise ValueError(f"node {self.node_name!r} is not a member")
        if len(set(names)) != len(names) or len({m.id for m in self.members}) != len(names):
            raise ValueError("member names and ids must be unique")
        for w in self.witnesses:
            if w not in names:
                raise ValueError(f"witness {w!r} is not a member")
        by_name = {m.name: m for m in self.members}
        object.__setattr__(self, "_by_name", by_name)
        object.__setattr__(self, "self_id", by_name[self.node_name].id)
        object.__setattr__(self, "quorum", len(self.members) // 2 + 1)
        ceiling_s = self.lease_max_s if self.lease_max_s > self.lease_s else self.lease_s
        object.__setattr__(self, "_lease_ceiling_s", ceiling_s)
        object.__setattr__(self, "_follower_promise_s", self.follower_promise_for_s(ceiling_s))

    def member(self, name: str) -> Member:
        return self._by_name[name]  # KeyError for a stranger

    def is_member(self, name: str) -> bool:
        return name in self._by_name

    def id_of(self, name: str) -> int:
        return self._by_name[name].id

    def is_witness(self, name: str) -> bool:
        return name in self.witnesses

    def peers(self) -> tuple[Member, ...]:
        return tuple(m for m in self.members if m.name != self.node_name)

    def follower_promise_s(self) -> float:
        """L_f for the longest lease any leader may announce (lease_max_s):
        what a restarted node must sit out, since it may have made such a
        promise before it crashed, and what bounds every promise.

        L_f >= L*(1+rho)/(1-rho) + eps, so that even if the follower's clock
        runs fast and the leader's slow by rho, the promise outlasts the lease.
        (Computed once in __post_init__.)
        """
        return self._follower_promise_s

    def follower_promise_for_s(self, lease_s: float) -> float:
        """L_f for a grant that backs a lease of ``lease_s``."""
        rho = self.clock_drift_ppm / 1e6
        epsilon_s = max(0.001, 0.05 * lease_s)
        return lease_s * (1 + rho) / (1 - rho) + epsilon_s

    def lease_ceiling_s(self) -> float:
        """The longest lease a leader announces and a follower promises for."""
        return self._lease_ceiling_s


# Message and Send are built on every delivery. Their __init__ is written out
# because mypyc compiles it to direct slot stores, where the one dataclass
# generates stays interpreted: 7x faster compiled, the same speed interpreted.
# (mypyc turns object.__setattr__ spelt out, not an alias of it, into a store.)


@dataclass(frozen=True, slots=True, init=False)
class Message:
    """A decoded, authenticated protocol message (the wire envelope's payload)."""

    kind: str
    sender: str
    term: int
    body: dict[str, Any]
    recipient: str | None

    def __init__(self, kind: str, sender: str, term: int, body: dict[str, Any] | None = None,
                 recipient: str | None = None) -> None:
        object.__setattr__(self, "kind", kind)
        object.__setattr__(self, "sender", sender)
        object.__setattr__(self, "term", term)
        object.__setattr__(self, "body", {} if body is None else body)
        object.__setattr__(self, "recipient", recipient)


# voted_for after a lost state file was recovered (quorum-lease): "this node
# may have voted in this term; it grants nobody a vote in it". Not a member
# name (config.py names are plain identifiers).
VOTE_WITHHELD: Final = "#withheld"


@dataclass(frozen=True, slots=True)
class PersistedState:
    """What must survive a restart: the term (epoch) and the vote cast in it.

    ``recovering``: the state file was lost and rebuilt (``electiond
    --recover-state``): the term and vote are not known, see each protocol
    for what it does until it has learnt enough from its peers."""

    term: int = 0
    voted_for: str | None = None
    # set by `electiond --recover-state`: this node lost its vote history and
    # must learn the current term from its peers before it votes again
    recovering: bool = False


# ---- effects -------------------------------------------------------------


@dataclass(frozen=True, slots=True, init=False)
class Send:
    """Send a message; ``to=None`` means the multicast group."""

    kind: str
    term: int
    body: dict[str, Any]
    to: str | None

    def __init__(self, kind: str, term: int, body: dict[str, Any] | None = None, to: str | None = None) -> None:
        object.__setattr__(self, "kind", kind)
        object.__setattr__(self, "term", term)
        object.__setattr__(self, "body", {} if body is None else body)
        object.__setattr__(self, "to", to)


@dataclass(frozen=True, slots=True)
class Persist:
    """Durably store state before carrying out any later effect."""

    state: PersistedState


@dataclass(frozen=True, slots=True)
class Promote:
    """This node became leader; ``term`` is the fencing token."""

    term: int
    reason: str


@dataclass(frozen=True, slots=True)
class TokenRaised:
    """This node stays leader under a new, higher fencing token ``term``.

    Bully and ring raise a sitting leader's token when another claim shows a
    token at least as new (a split brain's rival, a follower that saw one).
    It is not a change of leader: no hooks run. Downstream learns the token
    from the status (``fencing_token``), the history and the log."""

    term: int
    reason: str


@dataclass(frozen=True, slots=True)
class Demote:
    """This node stopped being leader."""

    term: int
    reason: str


@dataclass(frozen=True, slots=True)
class LeaderChanged:
    """This node's view of who leads changed (None: nobody known)."""

    leader: str | None
    term: int


@dataclass(frozen=True, slots=True)
class SplitBrain:
    """Two leaders heard each other (bully, ring): recorded and counted."""

    other: str
    term: int
    yielded: bool


Effect = Union[Send, Persist, Promote, TokenRaised, Demote, LeaderChanged, SplitBrain]


def local_facts(effects: list[Effect]) -> list[Effect]:
    """What a shell still carries out of an event's effects after one of its
    Persists failed: only what is true here whatever the disk says (a Demote
    must never be lost). The Sends and Promotes that follow may depend on the
    state that did not land, and so do later Persists (the protocol retries
    with its current state)."""
    return [e for e in effects if type(e) is Demote or type(e) is LeaderChanged or type(e) is SplitBrain]


# a failed write is retried DISK_RETRY_FIRST_S later, doubling up to DISK_RETRY_MAX_S
DISK_RETRY_FIRST_S: Final = 0.1
DISK_RETRY_MAX_S: Final = 5.0


class DiskWrites:
    """Whether this node's last Persist landed, and when to try again if not.

    Pure bookkeeping every protocol shares: the shell reports each outcome
    (``persist_done``); the protocol refuses whatever needs a durable state
    while ``ok`` is False and asks for a retry at ``retry_at``."""

    __slots__ = ("ok", "error", "failures", "episodes", "retry_at", "_delay_s")

    def __init__(self) -> None:
        self.ok = True
        self.error: str | None = None
        self.failures = 0  # failed writes since start
        self.episodes = 0  # times the disk went from working to failing
        self.retry_at = float("inf")
        self._delay_s = DISK_RETRY_FIRST_S

    def failed(self, now: float, error: str | None) -> None:
        if self.ok:
            self.episodes += 1
            self._delay_s = DISK_RETRY_FIRST_S
        self.ok = False
        self.error = error or "write failed"
        self.failures += 1
        self.retry_at = now + self._delay_s
        self._delay_s = min(self._delay_s * 2, DISK_RETRY_MAX_S)

    def succeeded(self) -> bool:
        """A write landed; True if that ends a failure episode."""
        healed = not self.ok
        self.ok = True
        self.retry_at = float("inf")
        self._delay_s = DISK_RETRY_FIRST_S
        return healed

    def retry_due(self, now: float) -> bool:
        return not self.ok and now >= self.retry_at

    def snapshot(self, now: float) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "error": None if self.ok else self.error,
            "last_error": self.error,
            "failures": self.failures,
            "episodes": self.episodes,
            "retry_in_ms": None if self.ok else round(max(0.0, self.retry_at - now) * 1000, 1),
        }


class CommandError(Exception):
    """A local request (transfer, stepdown) that cannot be carried out now."""


@mypyc_attr(allow_interpreted_subclasses=True)  # see the protocols that derive from it
class ElectionProtocol(abc.ABC):
    """The interface every protocol implements. All methods are pure."""

    name: ClassVar[str] = ""
    # message kind -> {body field: type}; wire.py checks incoming bodies against it
    MESSAGE_SCHEMAS: ClassVar[dict[str, dict[str, type | tuple[type, ...]]]] = {}

    def __init__(
        self,
        settings: Settings,
        rng: random.Random,
        now: float,
        persisted: PersistedState | None = None,
    ) -> None:
        self.settings = settings
        self.rng = rng
        self.disk = DiskWrites()

    @abc.abstractmethod
    def on_message(self, msg: Message, now: float) -> list[Effect]:
        """Handle one authenticated message from a peer."""

    @abc.abstractmethod
    def on_tick(self, now: float) -> list[Effect]:
        """Handle the passage of time.

        The shell calls this before every event, so it may come early: it must
        do nothing that is not yet due at ``now``."""

    @abc.abstractmethod
    def deadline(self) -> float:
        """The next local time at which on_tick must run."""

    @property
    @abc.abstractmethod
    def role(self) -> str: ...

    @property
    @abc.abstractmethod
    def leader(self) -> str | None: ...

    @property
    @abc.abstractmethod
    def term(self) -> int: ...

    def is_leader(self, now: float) -> bool:
        return self.role == ROLE_LEADER

    def set_eligible(self, eligible: bool, now: float, reason: str) -> list[Effect]:
        """Health or pause changed: an ineligible node never stands and a
        leader that becomes ineligible steps down."""
        raise CommandError(f"{self.name} does not support eligibility changes")

    def stepdown(self, now: float, reason: str = "stepdown") -> list[Effect]:
        raise CommandError(f"{self.name} does not support stepdown")

    def transfer(self, target: str | None, now: float, reason: str = "transfer") -> list[Effect]:
        """Hand over to ``target``; ``reason`` reaches the demote hooks (an
        operator's "transfer" sticks; a daemon's "shutdown" does not)."""
        raise CommandError(f"{self.name} does not support transfer")

    def persist_done(self, ok: bool, now: float, error: str | None = None) -> list[Effect]:
        """The shell carried out the Persists of the last effect list that held
        any: all of them landed (ok), or the first one failed with ``error``
        and the shell dropped that list's later Sends, Promotes and Persists
        (``local_facts`` says what it kept). The protocol must then treat
        the state as not durable, undo what that list claimed and refuse
        whatever needs a durable state until a retried write lands."""
        if ok:
            self.disk.succeeded()
        else:
            self.disk.failed(now, error)
        return []

    def on_service(self, event: object, now: float) -> list[Effect]:
        """A reply or watch event from an external coordination service
        (protocol = etcd); the protocols that speak only UDP ignore it."""
        return []

    def demote_hooks_done(self, now: float) -> list[Effect]:
        """The shell finished running the hooks of the last Demote (quorum-lease
        hands over only then, so old and new leader's hooks never overlap)."""
        return []

    def extra_status(self, now: float) -> dict[str, Any]:
        """Protocol-specific fields for `electionctl status`."""
        return {}
