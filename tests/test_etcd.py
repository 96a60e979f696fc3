"""The etcd protocol's pure core, driven with made-up etcd answers and times."""

from __future__ import annotations

import random

import pytest

from electiond.protocols.base import CommandError, Demote, LeaderChanged, Member, Promote, Settings
from electiond.protocols.etcd import (
    OP_CAMPAIGN,
    OP_DELETE,
    OP_GRANT,
    OP_KEEPALIVE,
    OP_PUT,
    OP_RANGE,
    OP_REVOKE,
    OP_WATCH,
    TRANSFER_KEY,
    EtcdElection,
    EtcdKv,
    EtcdReply,
    EtcdRequest,
    WatchEvent,
    WatchUpdate,
    lease_key,
)

MEMBERS = (Member("n1", 1), Member("n2", 2), Member("n3", 3))
LEASE = 0x1A


def settings(name: str = "n1", ttl: int = 5, drift_ppm: float = 1000.0, guard_s: float = 0.5) -> Settings:
    return Settings(cluster="c", node_name=name, members=MEMBERS, etcd_lease_ttl_s=ttl,
                    clock_drift_ppm=drift_ppm, lease_guard_s=guard_s)


def requests(effects, op=None):
    return [e for e in effects if isinstance(e, EtcdRequest) and (op is None or e.op == op)]


def one(effects, op):
    found = requests(effects, op)
    assert len(found) == 1, f"expected one {op} in {effects}"
    return found[0]


def kind(effects, cls):
    return [e for e in effects if isinstance(e, cls)]


class Harness:
    """One node's core plus the bookkeeping a test needs to answer it."""

    def __init__(self, name: str = "n1", **kw) -> None:
        self.p = EtcdElection(settings(name, **kw), random.Random(1), 0.0)
        self.watch_call = 0

    def tick(self, now):
        return self.p.on_tick(now)

    def answer(self, request, now, **fields):
        return self.p.on_service(EtcdReply(request.call_id, True, **fields), now)

    def fail(self, request, now, error="unreachable"):
        return self.p.on_service(EtcdReply(request.call_id, False, error=error), now)

    def queue(self, *entries, transfer=None):
        kvs = [EtcdKv(lease_key(lease), name, rev, lease) for name, rev, lease in entries]
        if transfer:
            kvs.append(EtcdKv(TRANSFER_KEY, transfer, 99, 7))
        return tuple(kvs)

    def leased(self, now=0.0):
        """Grant our lease and queue our key at create revision 10."""
        effects = self.tick(now)
        grant = one(effects, OP_GRANT)
        rng = one(effects, OP_RANGE)
        self.answer(rng, now, revision=5, kvs=())
        self.answer(grant, now, lease_id=LEASE, ttl_s=self.p.ttl_s, revision=5)
        effects = self.tick(now)
        campaign = one(effects, OP_CAMPAIGN)
        assert campaign.key == lease_key(LEASE) and campaign.value == self.p.settings.node_name
        watch = one(effects, OP_WATCH)
        assert watch.start_revision == 6  # from the revision after the last one read
        self.watch_call = watch.call_id
        self.answer(campaign, now, create_revision=10, revision=10)
        return effects

    def watch_up(self, now, revision=10):
        return self.p.on_service(WatchUpdate(self.watch_call, created=True, revision=revision), now)

    def range_now(self, now, *entries, transfer=None, revision=20):
        effects = self.tick(now)
        if not requests(effects, OP_RANGE) and self.watch_call:
            # what makes a node read again: a change under the prefix
            event = WatchEvent("delete", lease_key(0xFF), 1, revision)
            self.p.on_service(WatchUpdate(self.watch_call, events=(event,), revision=revision), now)
            effects = self.tick(now)
        rng = one(effects, OP_RANGE)
        return self.answer(rng, now, revision=revision, kvs=self.queue(*entries, transfer=transfer))

    def leader(self, now=0.0):
        self.leased(now)
        self.watch_up(now)
        effects = self.range_now(now, ("n1", 10, LEASE), ("n2", 11, 0x2B))
        assert kind(effects, Promote) == [Promote(10, "elected")]
        return effects


def test_valid_until_counts_from_the_keepalive_send_time_shrunk_by_drift_and_guard():
    h = Harness()
    h.leader(0.0)
    # granted at 0: valid for 5 * (1 - rho) / (1 + rho) - 0.5 = 4.49 s
    assert h.p.lease_valid_for_s(5) == pytest.approx(5 * 0.999 / 1.001 - 0.5)
    keepalive = one(h.tick(1.7), OP_KEEPALIVE)
    assert keepalive.lease_id == LEASE
    # etcd's answer comes late: the lease still counts from the send at 1.7
    h.answer(keepalive, 4.0, ttl_s=5)
    assert h.p.is_leader(1.7 + h.p.lease_valid_for_s(5) - 0.001)
    assert not h.p.is_leader(1.7 + h.p.lease_valid_for_s(5))


def test_leader_demotes_on_its_own_clock_when_keepalives_fail():
    h = Harness()
    h.leader(0.0)
    valid_until = h.p.lease_valid_for_s(5)
    now = 0.0
    while now < valid_until - 0.2:
        now += 0.1
        for k in requests(h.tick(now), OP_KEEPALIVE):
            h.fail(k, now + 0.05)
    assert h.p.is_leader(now)
    assert h.p.deadline() <= valid_until  # the shell's timer wakes it for the demote
    effects = h.tick(valid_until)
    assert kind(effects, Demote) == [Demote(10, "lease_expired")]
    assert effects[0] == Demote(10, "lease_expired")  # before any request
    assert not h.p.is_leader(valid_until)


def test_a_woken_leader_demotes_before_anything_else():
    h = Harness()
    h.leader(0.0)
    keepalive = one(h.tick(1.7), OP_KEEPALIVE)
    # SIGSTOP for a minute; the first thing on waking is the late answer
    assert not h.p.is_leader(61.0)  # even before any tick
    effects = h.answer(keepalive, 61.0, ttl_s=5)
    assert effects and effects[0] == Demote(10, "lease_expired")
    assert not h.p.is_leader(61.0)  # the answer to a keep-alive sent before the freeze extends nothing


def test_no_promotion_without_an_open_watch_or_on_a_read_made_before_it_opened():
    h = Harness()
    h.leased(0.0)
    # a read showing us first, but the watch is not up yet
    effects = h.range_now(0.1, ("n1", 10, LEASE))
    assert not kind(effects, Promote)
    assert kind(effects, LeaderChanged) == [LeaderChanged("n1", 10)]
    # a read issued before the watch opened, answered after: still not enough
    rng = one(h.tick(0.2 + h.p.refresh_s), OP_RANGE)
    h.watch_up(0.3)
    effects = h.answer(rng, 0.4, revision=20, kvs=h.queue(("n1", 10, LEASE)))
    assert not kind(effects, Promote)
    # the watch asked for a fresh read; that one may promote
    effects = h.range_now(0.5, ("n1", 10, LEASE))
    assert kind(effects, Promote) == [Promote(10, "elected")]


def test_followers_never_promote_while_the_watch_is_down():
    h = Harness("n2")
    h.leased(0.0)
    h.watch_up(0.0)
    h.range_now(0.0, ("n1", 9, 0x3C), ("n2", 10, LEASE))
    assert h.p.leader == "n1"
    h.p.on_service(WatchUpdate(h.watch_call, ended=True, error="connection reset"), 0.5)
    # n1's key is gone, but our watch is down: a read alone does not promote
    effects = h.range_now(0.6, ("n2", 10, LEASE), revision=30)
    assert not kind(effects, Promote)
    # the watch is re-opened from the last revision seen, then a fresh read decides
    effects = h.tick(0.6 + h.p.retry_s)
    watch = one(effects, OP_WATCH)
    assert watch.start_revision == 31
    h.watch_call = watch.call_id
    h.watch_up(1.0, revision=30)
    effects = h.range_now(1.0, ("n2", 10, LEASE), revision=30)
    assert kind(effects, Promote) == [Promote(10, "elected")]


def test_a_delete_event_triggers_a_read_not_a_promotion():
    h = Harness("n2")
    h.leased(0.0)
    h.watch_up(0.0)
    h.range_now(0.0, ("n1", 9, 0x3C), ("n2", 10, LEASE))
    event = WatchEvent("delete", lease_key(0x3C), 9, 25)
    effects = h.p.on_service(WatchUpdate(h.watch_call, events=(event,), revision=25), 1.0)
    assert not kind(effects, Promote)
    effects = h.tick(1.0)
    rng = one(effects, OP_RANGE)
    effects = h.answer(rng, 1.05, revision=25, kvs=h.queue(("n2", 10, LEASE)))
    assert kind(effects, Promote) == [Promote(10, "elected")]


def test_lease_unknown_to_etcd_demotes_and_starts_over():
    h = Harness()
    h.leader(0.0)
    keepalive = one(h.tick(1.7), OP_KEEPALIVE)
    effects = h.answer(keepalive, 1.8, ttl_s=0)
    assert kind(effects, Demote) == [Demote(10, "lease_lost")]
    assert one(h.tick(1.8 + h.p.retry_s), OP_GRANT).ttl_s == 5


def test_own_key_deleted_demotes_at_once():
    h = Harness()
    h.leader(0.0)
    event = WatchEvent("delete", lease_key(LEASE), 10, 30)
    effects = h.p.on_service(WatchUpdate(h.watch_call, events=(event,), revision=30), 1.0)
    assert kind(effects, Demote) == [Demote(10, "key_deleted")]
    # while the lease lives, it queues again at the back
    assert one(h.tick(1.0), OP_CAMPAIGN).lease_id == LEASE


def test_stepdown_resigns_only_after_the_demote_hooks():
    h = Harness()
    h.leader(0.0)
    effects = h.p.stepdown(1.0)
    assert kind(effects, Demote) == [Demote(10, "stepdown")]
    assert not requests(effects, OP_DELETE)
    # while the hooks run our key stays first: nobody else can promote yet
    assert not requests(h.tick(1.1), OP_DELETE)
    effects = h.p.demote_hooks_done(1.5)
    delete = one(effects, OP_DELETE)
    assert delete.key == lease_key(LEASE)
    h.answer(delete, 1.6, revision=31)
    # it stands again only after the hold, so another member takes over
    now, campaigned_at = 1.6, None
    while campaigned_at is None and now < 10.0:
        now += 0.1
        effects = h.tick(now)
        for k in requests(effects, OP_KEEPALIVE):
            h.answer(k, now, ttl_s=5)
        if requests(effects, OP_CAMPAIGN):
            campaigned_at = now
    assert campaigned_at is not None and campaigned_at >= 1.0 + h.p.stepdown_hold_s


def test_stepdown_and_transfer_need_leadership():
    h = Harness()
    h.leased(0.0)
    with pytest.raises(CommandError):
        h.p.stepdown(0.1)
    with pytest.raises(CommandError):
        h.p.transfer("n2", 0.1)


def test_transfer_checks_its_target():
    h = Harness()
    h.leader(0.0)
    with pytest.raises(CommandError, match="unknown node"):
        h.p.transfer("zz", 0.1)
    with pytest.raises(CommandError, match="itself"):
        h.p.transfer("n1", 0.1)
    with pytest.raises(CommandError, match="not campaigning"):
        h.p.transfer("n3", 0.1)  # no key of n3's in the queue


def test_transfer_places_the_key_then_resigns_after_hooks():
    h = Harness()
    h.leader(0.0)
    effects = h.p.transfer("n2", 1.0)
    assert kind(effects, Demote) == [Demote(10, "transfer")]
    hold = one(effects, OP_GRANT)
    assert hold.ttl_s >= 2
    # hooks done first: the resign still waits for the transfer key
    assert not requests(h.p.demote_hooks_done(1.1), OP_DELETE)
    put = one(h.answer(hold, 1.2, lease_id=0x77, ttl_s=5), OP_PUT)
    assert (put.key, put.value, put.lease_id) == (TRANSFER_KEY, "n2", 0x77)
    delete = one(h.answer(put, 1.3, revision=40), OP_DELETE)
    assert delete.key == lease_key(LEASE)
    h.answer(delete, 1.4, revision=41)
    # with the transfer key naming someone else, it does not queue again
    effects = h.range_now(1.5, ("n2", 11, 0x2B), transfer="n2", revision=41)
    assert not kind(effects, Promote)
    assert not requests(h.tick(1.6), OP_CAMPAIGN)


def test_followers_other_than_the_target_withdraw_and_return_after():
    h = Harness("n3")
    h.leased(0.0)
    h.watch_up(0.0)
    h.range_now(0.0, ("n1", 8, 0x3C), ("n3", 10, LEASE), ("n2", 12, 0x2B))
    # n1 transfers to n2: we are ahead of n2 and must step out of its way
    effects = h.range_now(1.0, ("n1", 8, 0x3C), ("n3", 10, LEASE), ("n2", 12, 0x2B), transfer="n2", revision=40)
    delete = one(effects, OP_DELETE)
    assert delete.key == lease_key(LEASE)
    h.answer(delete, 1.1, revision=41)
    # even first in line with the transfer key present, we neither promote nor queue
    effects = h.range_now(1.2, ("n2", 12, 0x2B), transfer="n2", revision=42)
    assert not kind(effects, Promote)
    assert not requests(h.tick(1.3), OP_CAMPAIGN)
    # the transfer key is gone (n2 promoted): queue again
    h.range_now(1.5, ("n2", 12, 0x2B), revision=43)
    assert requests(h.tick(1.5), OP_CAMPAIGN)


def test_the_target_promotes_and_clears_the_transfer_key():
    h = Harness("n2")
    h.leased(0.0)
    h.watch_up(0.0)
    effects = h.range_now(1.0, ("n2", 10, LEASE), transfer="n2", revision=40)
    assert kind(effects, Promote) == [Promote(10, "transfer")]
    assert one(effects, OP_DELETE).key == TRANSFER_KEY


def test_an_ineligible_follower_withdraws_and_does_not_stand():
    h = Harness("n2")
    h.leased(0.0)
    h.watch_up(0.0)
    h.range_now(0.0, ("n1", 9, 0x3C), ("n2", 10, LEASE))
    effects = h.p.set_eligible(False, 0.5, "fault")
    delete = one(effects, OP_DELETE)
    assert delete.key == lease_key(LEASE)
    effects = h.range_now(0.6, ("n2", 10, LEASE), revision=30)  # a read from before the delete landed
    assert not kind(effects, Promote)
    assert not requests(h.tick(0.7), OP_CAMPAIGN)
    h.p.set_eligible(True, 1.0, "recovered")
    # not before etcd confirmed the delete: the new key has the old one's name
    assert not requests(h.tick(1.0), OP_CAMPAIGN)
    h.answer(delete, 1.1, revision=31)
    assert requests(h.tick(1.1), OP_CAMPAIGN)


def test_a_leader_that_becomes_ineligible_hands_over():
    h = Harness()
    h.leader(0.0)
    effects = h.p.set_eligible(False, 1.0, "fault")
    assert kind(effects, Demote) == [Demote(10, "fault")]
    assert one(h.p.demote_hooks_done(1.2), OP_DELETE).key == lease_key(LEASE)


def test_compacted_watch_reads_afresh_before_watching_again():
    h = Harness("n2")
    h.leased(0.0)
    h.watch_up(0.0)
    h.p.on_service(WatchUpdate(h.watch_call, ended=True, error="compacted", compact_revision=50), 1.0)
    effects = h.tick(1.0 + h.p.retry_s)
    assert not requests(effects, OP_WATCH)  # no revision to watch from until a read gives one
    rng = one(effects, OP_RANGE)
    h.answer(rng, 1.2, revision=60, kvs=h.queue(("n1", 9, 0x3C), ("n2", 10, LEASE)))
    assert one(h.tick(1.2 + h.p.retry_s), OP_WATCH).start_revision == 61


def test_deadline_is_never_a_past_time_with_nothing_to_do():
    """A past deadline that triggers nothing would spin the shell's timer."""
    h = Harness("n2")
    h.leased(0.0)
    h.watch_up(0.0)
    h.range_now(0.0, ("n1", 9, 0x3C), ("n2", 10, LEASE))
    h.p.set_eligible(False, 0.1, "fault")
    now = 0.2
    for _ in range(200):
        effects = h.tick(now)
        for r in requests(effects):
            if r.op == OP_KEEPALIVE:
                h.answer(r, now, ttl_s=5)
            elif r.op == OP_RANGE:
                h.answer(r, now, revision=20, kvs=h.queue(("n1", 9, 0x3C)))
            elif r.op == OP_DELETE:
                h.answer(r, now, revision=20)
        assert h.p.deadline() > now
        now = h.p.deadline()
    assert now > 20.0  # it moved on in steps, not in a spin


def test_release_revokes_the_lease():
    h = Harness()
    h.leader(0.0)
    effects = h.p.release(1.0)
    assert effects[0] == Demote(10, "shutdown")
    assert one(effects, OP_REVOKE).lease_id == LEASE
    assert not requests(h.tick(2.0), OP_CAMPAIGN)


def test_status_shows_lease_queue_and_watch():
    h = Harness()
    h.leader(0.0)
    status = h.p.extra_status(1.0)
    etcd = status["etcd"]
    assert status["fencing_token"] == 10
    assert etcd["lease_id"] == "1a" and etcd["queue"] == ["n1", "n2"] and etcd["queue_position"] == 0
    assert etcd["watch"] == "up" and etcd["revision"] == 20
    assert 3000 < etcd["lease_remaining_ms"] < 4500
