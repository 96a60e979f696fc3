"""Invariants, checked on the simulator's true clock.

The rules differ by protocol, so they live in a table keyed by protocol name
(``INVARIANTS``); a new protocol plugs in by adding a row, and a mutant
subclass is checked with the row of the protocol it mutates.

Why checking "after every event" is enough for lease overlap: a node's
``is_leader(now)`` can only turn True because of an input (a message or a
tick), never by time passing alone, while a node that is frozen is excluded
(DESIGN §3: its leadership counts as ended when it froze; on resume it is
ticked before anything else and checked right after). So if two leases ever
overlap, they overlap at the later of the two inputs that made them true, and
that input is an event we check at.
"""

from __future__ import annotations

from bisect import insort
from dataclasses import dataclass, field
from typing import Callable

from electiond.node import clock_check_wait_s
from electiond.protocols.base import ROLE_LEADER, ElectionProtocol, PersistedState, Send, Settings
from electiond.protocols.lease import REQUEST_VOTE, VOTE, QuorumLease


def _bully_round_s(s: Settings) -> float:
    """One election round: notice the leader is gone, ask, wait for the answer
    and for the coordinator announcement."""
    return max(s.election_timeout_max_s, s.max_suspicion_timeout_s) + s.answer_timeout_s + s.election_timeout_max_s


def _bully_settle_s(s: Settings) -> float:
    # a failure detector timeout, an election round and the worst retry backoff
    return _bully_round_s(s) + s.backoff_max_s + s.backoff_jitter_s


def _bully_preempt_settle_s(s: Settings) -> float:
    # bully also preempts preempt_delay after a (re)start: the sitting leader
    # yields only when it hears the new one's COORDINATOR, a delivery later
    return _bully_settle_s(s) + s.preempt_delay_s * s.preempt


def _bully_liveness_s(s: Settings) -> float:
    return 3 * _bully_round_s(s) + s.backoff_max_s + s.backoff_jitter_s + s.preempt_delay_s * s.preempt


def _lease_liveness_s(s: Settings) -> float:
    # a restarted node sits out its start-up clock check (which covers L_f,
    # the quarantine, as well: counted both, to be generous); then a few
    # randomized election timeouts
    return (
        clock_check_wait_s(s)
        + s.follower_promise_s()
        + 4 * max(s.election_timeout_max_s, s.max_suspicion_timeout_s)
        + s.backoff_max_s
        + s.backoff_jitter_s
        + s.preempt_delay_s * s.preempt
    )


@dataclass(frozen=True, slots=True)
class InvariantSet:
    """What a protocol promises, and so what the checker asserts.

    leases: never two (running) nodes with is_leader(now) at one true instant,
        whatever the faults.
    votes: a node never votes for two candidates in one term (seen in its
        Persist effects), across restarts that keep the disk; and
        "vote-not-durable": whenever a granted VOTE (or a candidacy's
        REQUEST_VOTE) leaves host i in term T, i's simulated disk holds
        (T, that vote), whatever the disk faults (writes that fail, a crash
        between write and rename). "term-reused" (no two leaders in one
        term) is asserted under disk faults too, with terms_always.
        Persist effects), across restarts that keep the disk.
    (every protocol) promoted-twice: a node that promoted promotes again only after a
        Demote or a crash; a leader whose token must grow raises it (TokenRaised).
    terms_always: fencing tokens (Promote.term) strictly increase and are never
        reused, even with partitions and loss; otherwise only asserted until
        the first partition, lost or late datagram or delay spike of a run,
        and not for a promotion made while no other running node knew the
        newest token (every node that saw it was down). Never asserted once a node lost its disk: a node
        that forgets its term cannot be expected to fence. "fencing" (never
        promote with a token no newer than that of a leader one followed)
        holds across a restart only for what reached the node's disk: a
        follow whose epoch failed to land (a disk fault) is forgotten on a
        crash like a lost disk (quorum-lease's "term-reused" still stands).
    settle_s: bully-style protocols, partition-free runs: two leaders at once
        are a violation once this long has passed after the last fault.
    liveness_bound_s: after heal, exactly one agreed leader within this long.
    lease_coverage: quorum-lease's own reason for "leases": a node that claims
        leadership at true time t has a majority bound to it until
        max(t, the true end of its lease). Bound means promised to it (the
        protocol's ``promise``) or quarantined (``quarantine_until``), on that
        node's clock; a crashed node votes for nobody (it restarts
        quarantined), so it counts as bound. It fails as soon as a rule is
        missing, before two claims happen to overlap. With it comes
        "promise-forgotten": a node that restarts while a promise it made
        before crashing still runs must come back bound (quarantined) at
        least until that promise would have ended.
    """

    leases: bool
    votes: bool
    terms_always: bool
    settle_s: Callable[[Settings], float] | None
    liveness_bound_s: Callable[[Settings], float]
    lease_coverage: bool = False


BULLY_INVARIANTS = InvariantSet(
    leases=False, votes=False, terms_always=False, settle_s=_bully_settle_s, liveness_bound_s=_bully_liveness_s
)
LEASE_INVARIANTS = InvariantSet(
    leases=True, votes=True, terms_always=True, settle_s=None, liveness_bound_s=_lease_liveness_s,
    lease_coverage=True,
)

# the same rules, with bully's settle time covering its delayed preemption
BULLY_PREEMPT_INVARIANTS = InvariantSet(
    leases=False, votes=False, terms_always=False, settle_s=_bully_preempt_settle_s,
    liveness_bound_s=_bully_liveness_s,
)

INVARIANTS: dict[str, InvariantSet] = {
    "bully": BULLY_PREEMPT_INVARIANTS,
    "ring": BULLY_INVARIANTS,
    "quorum-lease": LEASE_INVARIANTS,
}


def invariants_for(protocol: str) -> InvariantSet:
    try:
        return INVARIANTS[protocol]
    except KeyError:
        raise ValueError(f"no invariants registered for protocol {protocol!r} (add a row to sim.checker.INVARIANTS)")


def _no_true_time(i: int, local: float) -> float:
    raise AssertionError("lease coverage needs the hosts' clocks (true_time_of)")


def _lease_views(proto: ElectionProtocol | None) -> QuorumLease | None:
    """lease_coverage judges the protocol that shows its lease and promises
    (quorum-lease, mutants included); judging another protocol by the lease
    row skips it."""
    return proto if isinstance(proto, QuorumLease) else None


class _RawBinding:
    """What bound a node when the coverage check last looked (its own clock).

    Updated in place on every event: compiled, its float fields stay unboxed."""

    __slots__ = ("proto", "to", "until", "quarantine")

    def __init__(self, proto: QuorumLease, to: str | None, until: float, quarantine: float) -> None:
        self.proto = proto
        self.to = to
        self.until = until
        self.quarantine = quarantine


class _Count:
    """A leader's last full coverage count: whose promises back its lease
    (``bound``) until ``need`` (true time), for this protocol object and lease."""

    __slots__ = ("need", "bound", "proto", "lease_until")

    def __init__(self, need: float, bound: set[int], proto: QuorumLease, lease_until: float) -> None:
        self.need = need
        self.bound = bound
        self.proto = proto
        self.lease_until = lease_until


@dataclass(frozen=True, slots=True)
class Violation:
    t: float
    rule: str
    detail: str

    def __str__(self) -> str:
        return f"t={self.t:.6f} VIOLATION {self.rule}: {self.detail}"


@dataclass(slots=True)
class SplitBrainLog:
    intervals: list[tuple[float, float]] = field(default_factory=list)
    open_since: float | None = None

    def total_s(self) -> float:
        return sum(end - start for start, end in self.intervals)


class Checker:
    """Fed by the cluster; ``local_now(i, t)``, ``running(i)``, ``protocol(i)``
    and ``name(i)`` read the cluster's state."""

    def __init__(
        self,
        invariants: InvariantSet,
        settings: Settings,
        names: list[str],
        local_now: Callable[[int, float], float],
        running: Callable[[int], bool],
        protocol_of: Callable[[int], ElectionProtocol | None],
        true_time_of: Callable[[int, float], float] | None = None,
    ) -> None:
        self.inv = invariants
        self._true_time_of = true_time_of if true_time_of is not None else _no_true_time
        # needs the hosts' clocks (true_time_of); a driver without them skips it
        self._coverage_enabled = invariants.lease_coverage and true_time_of is not None
        self.quorum = settings.quorum
        # by leader: its last full coverage count (None: count anew at its next input)
        self._coverage: list[_Count | None] = [None] * len(names)
        self._promise_at_crash: dict[int, tuple[str, float]] = {}  # node -> (to whom, true end)
        # by node: what bound it when the coverage check last looked
        # (a list by node, not a dict: this is read and written on every event)
        self._raw_binding: list[_RawBinding | None] = [None] * len(names)
        nodes = range(len(names))
        self._leader_first = [[i, *(k for k in nodes if k != i)] for i in nodes]
        self.names = names
        self._local_now = local_now
        self._running = running
        self._protocol_of = protocol_of
        self.settle_s = invariants.settle_s(settings) if invariants.settle_s else None
        self.violations: list[Violation] = []
        self.partitioned = False  # a partition happened at some point in this run
        # a datagram was lost or delayed past the protocol's timeouts: for
        # protocols without quorums that is a partition too, however brief
        self.lossy = False
        self.state_lost = False  # some node restarted with an empty disk
        self.last_fault_s = 0.0  # start-up counts as a fault: nobody leads yet
        # sorted (judged in index order); a list, as it holds one node nearly always
        self.role_leaders: list[int] = []
        self.split = SplitBrainLog()
        self.max_promoted_term = -1
        self.tokens_forgotten = 0  # promotions not judged: no running node knew the newest token
        # bully-style: node -> (deadline, stale token, newest token) awaiting a re-assertion
        self._stale: dict[int, tuple[float, int, int]] = {}
        self.reassert_grace_s = 0.1
        self.schedule: Callable[[float, Callable[[], None]], None] | None = None
        self.promotions: list[tuple[float, int, int]] = []  # (t, node, term)
        # by node: promoted, and neither demoted nor crashed since (a second Promote then
        # would re-run the promote hooks of a leader that never stopped leading)
        self._promote_open: list[bool] = [False] * len(names)
        self.raises: list[tuple[float, int, int]] = []  # (t, node, term): TokenRaised while leading
        self._term_owner: dict[int, int] = {}
        self._votes: dict[tuple[int, int], str] = {}  # (node, term) -> voted for
        self._followed: dict[int, int] = {}  # node -> highest term in which it followed another node

    # ---- notifications --------------------------------------------------

    def fault(self, t: float, until_s: float | None = None) -> None:
        self.last_fault_s = max(self.last_fault_s, t if until_s is None else until_s)

    def violate(self, t: float, rule: str, detail: str) -> None:
        self.violations.append(Violation(t, rule, detail))

    def crashing(self, t: float, i: int) -> None:
        """Node i is about to crash: remember the promise it may forget."""
        self._promote_open[i] = False
        proto = _lease_views(self._protocol_of(i))
        if not self._coverage_enabled or proto is None:
            return
        to, until = proto.promise
        end = self._true_time_of(i, until)
        if to is not None and to != self.names[i] and end > t:
            self._promise_at_crash[i] = (to, end)

    def booted(self, t: float, i: int) -> None:
        """Node i restarted: it must still honour what it promised before."""
        before = self._promise_at_crash.pop(i, None)
        if before is None or _lease_views(self._protocol_of(i)) is None or before[1] <= t:
            return
        to, end = before
        if self._bound_until(i, to) < end - 1e-9:
            self.violate(
                t, "promise-forgotten",
                f"{self.names[i]} restarted free to vote at t={self._bound_until(i, to):.6f} though before "
                f"crashing it had promised {to} to vote for nobody else until t={end:.6f}",
            )

    def check_coverage(self, t: float, j: int) -> None:
        """lease_coverage, after node j handled an input (or restarted).

        Only the leader's own inputs move the end of its claim, and only
        node j's inputs change what binds j; so unless j is a leader whose
        lease moved, or j covered a leader at its last full check and what
        binds j may have shrunk since, nothing needs recounting."""
        if not self._coverage_enabled:
            return
        grown = self._binding_grew(j)
        for i in self.role_leaders:
            count = self._coverage[i]
            if count is not None:
                if i != j:
                    if grown or j not in count.bound or self._bound_until(j, self.names[i]) >= count.need:
                        continue
                elif (t <= count.need and count.proto is self._protocol_of(i)
                      and count.proto.lease_until == count.lease_until):
                    # the leader's own input left its lease where it was, and
                    # it is still inside it: the count made then still holds
                    # (what binds the others moves only with their inputs)
                    continue
            self._full_coverage_check(t, i)

    def _binding_grew(self, j: int) -> bool:
        """Did what binds node j only stay or grow since it was last looked at?

        Compares the raw promise and quarantine (on j's own clock) with the
        last ones seen; true times are needed only when they shrank, when j
        restarted or when j's clock changed rate (``clock_changed`` forgets)."""
        running = self._protocol_of(j)
        if running is None:
            self._raw_binding[j] = None
            return True  # down: bound to everyone until it restarts quarantined
        proto = _lease_views(running)
        if proto is None:
            return False
        to, until = proto.promise
        quarantine = proto.quarantine_until
        seen = self._raw_binding[j]
        if seen is None or seen.proto is not proto:
            self._raw_binding[j] = _RawBinding(proto, to, until, quarantine)
            return False
        grew = seen.to == to and until >= seen.until and quarantine >= seen.quarantine
        seen.to = to
        seen.until = until
        seen.quarantine = quarantine
        return grew

    def clock_changed(self, t: float, i: int) -> None:
        """Node i's clock rate changed: the true ends of its lease and promises moved."""
        self._raw_binding[i] = None
        if self.role_leaders:
            self._coverage[i] = None
            self.check_coverage(t, i)

    def _full_coverage_check(self, t: float, i: int) -> None:
        proto = _lease_views(self._protocol_of(i))
        if proto is None or not proto.is_leader(self._local_now(i, t)):
            self._coverage[i] = None
            return
        # the lease itself, not just the claim (which ends a guard earlier):
        # what the leader believes it holds must be backed by promises
        lease_end = self._true_time_of(i, proto.lease_until)
        need = max(t, lease_end) - 1e-9
        leader = self.names[i]
        # a quorum of bound nodes is all the claim needs, and all that later
        # inputs must be watched for: stop counting there (the leader first)
        bound: set[int] = set()
        for k in self._leader_first[i]:
            if self._bound_until(k, leader) >= need:
                bound.add(k)
                self._binding_grew(k)  # the baseline later inputs of k are compared with
                if len(bound) == self.quorum:
                    break
        self._coverage[i] = _Count(need, bound, proto, proto.lease_until)
        if len(bound) < self.quorum:
            self.violate(
                t, "lease-uncovered",
                f"{leader} holds a lease until t={lease_end:.6f} but only "
                f"{[self.names[k] for k in sorted(bound)]} are bound to it that long (quorum {self.quorum})",
            )

    def _bound_until(self, j: int, leader: str) -> float:
        """True time until which node j grants no vote to anyone but ``leader``."""
        running = self._protocol_of(j)
        if running is None:
            return float("inf")  # down: no vote until it restarts, then quarantined
        proto = _lease_views(running)
        if proto is None:
            return float("-inf")
        to, until = proto.promise
        bound = self._true_time_of(j, proto.quarantine_until)
        if to == leader:
            bound = max(bound, self._true_time_of(j, until))
        return bound

    def node_gone(self, t: float, i: int) -> None:
        """Crashed or frozen: it leads nothing any more."""
        if i in self.role_leaders:
            self.role_leaders.remove(i)
            self._coverage[i] = None  # what bound others meanwhile went unwatched
            self._update_split(t)

    def disk_wiped(self, i: int) -> None:
        self.state_lost = True
        self._followed.pop(i, None)
        for key in [k for k in self._votes if k[0] == i]:
            del self._votes[key]

    def persisted(self, t: float, i: int, state: PersistedState) -> None:
        if not self.inv.votes or state.voted_for is None or self.state_lost:
            return
        key = (i, state.term)
        earlier = self._votes.get(key)
        if earlier is None:
            self._votes[key] = state.voted_for
        elif earlier != state.voted_for:
            self.violate(
                t, "double-vote", f"{self.names[i]} voted for {earlier} and then {state.voted_for} in term {state.term}"
            )

    def vote_sent(self, t: float, i: int, e: Send, disk: PersistedState | None) -> None:
        """A VOTE or REQUEST_VOTE leaves node i: the vote it carries must be on disk."""
        if e.kind == VOTE:
            if not e.body["granted"]:
                return  # a refusal promises nothing
            want = e.to
        else:
            want = self.names[i]
        if disk is None or disk.term != e.term or disk.voted_for != want:
            what = "granted a vote to" if e.kind == VOTE else "asked for votes as"
            self.violate(
                t, "vote-not-durable",
                f"{self.names[i]} {what} {want} in term {e.term} while its disk holds "
                f"{'nothing' if disk is None else f'term {disk.term} voted_for {disk.voted_for}'}",
            )

    def restarted_with(self, i: int, disk: PersistedState | None) -> None:
        """Node i boots with ``disk``: it remembers following no newer term than that."""
        remembered = disk.term if disk is not None else -1
        if self._followed.get(i, -1) > remembered:
            self._followed[i] = remembered

    def followed(self, i: int, leader: str, term: int) -> None:
        """Node i accepted ``leader`` (another node) as leader in ``term``."""
        if term > self._followed.get(i, -1):
            self._followed[i] = term

    def promoted(self, t: float, i: int, term: int) -> None:
        self.promotions.append((t, i, term))
        if self._promote_open[i]:
            self.violate(t, "promoted-twice", f"{self.names[i]} promoted in term {term} without a demote since "
                                              "its last promotion (hooks run again for the same leadership)")
        self._promote_open[i] = True
        self._new_token(t, i, term)

    def demoted(self, i: int) -> None:
        self._promote_open[i] = False

    def raised(self, t: float, i: int, term: int) -> None:
        """A sitting leader took a new token (TokenRaised): judged as a promotion's."""
        self.raises.append((t, i, term))
        self._new_token(t, i, term)

    def _new_token(self, t: float, i: int, term: int) -> None:
        followed = self._followed.get(i, -1)
        if term <= followed:
            # whatever the network did, a node never fences with a token no
            # newer than one it saw another leader use
            self.violate(
                t, "fencing", f"{self.names[i]} promoted with token {term} after following another leader in term {followed}"
            )
            return
        asserted = not self.state_lost and (self.inv.terms_always or not (self.partitioned or self.lossy))
        if asserted and not self.inv.terms_always and term <= self.max_promoted_term and not self._informed(i):
            # without quorums, the newest token lives only in the nodes that
            # saw it; with every one of them down, nobody can carry it on
            asserted = False
            self.tokens_forgotten += 1
        if asserted and not self.inv.terms_always and term <= self.max_promoted_term:
            # a bully-style leader cannot learn the newest token before it
            # crowns itself; its followers tell it and it must re-assert with
            # a fresh token within a round trip (or stop leading)
            self._stale[i] = (t + self.reassert_grace_s, term, self.max_promoted_term)
            if self.schedule is not None:
                self.schedule(t + self.reassert_grace_s, lambda: self._check_stale(t + self.reassert_grace_s))
            asserted = False
        elif i in self._stale and term > self._stale[i][2]:
            del self._stale[i]
        if asserted:
            owner = self._term_owner.get(term)
            if owner is not None and owner != i:
                self.violate(t, "term-reused", f"{self.names[i]} and {self.names[owner]} both led term {term}")
            elif term <= self.max_promoted_term:
                self.violate(
                    t,
                    "fencing",
                    f"{self.names[i]} promoted with token {term}, not above the last token {self.max_promoted_term}",
                )
        self._term_owner.setdefault(term, i)
        self.max_promoted_term = max(self.max_promoted_term, term)

    def _check_stale(self, t: float) -> None:
        for i, (until, term, newest) in list(self._stale.items()):
            if t < until:
                continue
            del self._stale[i]
            proto = self._protocol_of(i)
            if self._running(i) and proto is not None and proto.role == ROLE_LEADER:
                self.violate(
                    t,
                    "fencing",
                    f"{self.names[i]} promoted with token {term} (not above {newest}) and still leads with no "
                    f"fresh token {self.reassert_grace_s:.3f}s later",
                )

    def _informed(self, i: int) -> bool:
        """Does some other running node know the newest token issued?"""
        for j in range(len(self.names)):
            if j != i and self._running(j):
                proto = self._protocol_of(j)
                if proto is not None and proto.term >= self.max_promoted_term:
                    return True
        return False

    def after_event(self, t: float, i: int) -> None:
        """Node i just handled an input; only its leadership can have changed."""
        if self._stale and self.schedule is None:
            self._check_stale(t)
        proto = self._protocol_of(i)
        is_role_leader = proto is not None and self._running(i) and proto.role == ROLE_LEADER
        if is_role_leader:
            if i not in self.role_leaders:
                insort(self.role_leaders, i)
        elif i in self.role_leaders:
            self.role_leaders.remove(i)
            self._coverage[i] = None
        else:
            return
        self._update_split(t)

    # ---- checks -----------------------------------------------------------

    def leaders_at(self, t: float) -> list[int]:
        return [i for i in self.role_leaders if self._leads(i, t)]

    def _leads(self, i: int, t: float) -> bool:
        proto = self._protocol_of(i)
        return proto is not None and proto.is_leader(self._local_now(i, t))

    def _update_split(self, t: float) -> None:
        if len(self.role_leaders) < 2:
            if self.split.open_since is not None:
                self.split.intervals.append((self.split.open_since, t))
                self.split.open_since = None
            return
        leaders = self.leaders_at(t)
        if len(leaders) < 2:
            if self.split.open_since is not None:
                self.split.intervals.append((self.split.open_since, t))
                self.split.open_since = None
            return
        if self.split.open_since is None:
            self.split.open_since = t
        who = ", ".join(self.names[i] for i in leaders)
        if self.inv.leases:
            self.violate(t, "two-leaders", f"{who} all hold a valid lease")
        elif self.settle_s is not None and not self.partitioned and t - self.last_fault_s > self.settle_s:
            self.violate(
                t,
                "two-leaders",
                f"{who} lead at once {t - self.last_fault_s:.3f}s after the last fault "
                f"(detector timeouts settle in {self.settle_s:.3f}s)",
            )

    def recheck(self, t: float) -> None:
        """Re-evaluate at a time with no input (the end of a phase)."""
        self._update_split(t)

    def finish(self, t: float) -> None:
        if self.split.open_since is not None:
            self.split.intervals.append((self.split.open_since, t))
            self.split.open_since = None
