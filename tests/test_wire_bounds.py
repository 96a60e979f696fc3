"""Values that must cost no more than a dropped datagram (issue #13).

Each attack below was found against real daemons: a term of 2**64-1 that
bricked every node's msgpack, an incarnation of 2**63-1 that muted a member,
a sequence jump of 2**32 that stalled the loop shifting a 512 MiB mask.
"""

import hashlib
import hmac
import time

import msgpack
import pytest

from electiond import wire
from electiond.node import PRESENCE
from electiond.protocols.base import Send

KEY = b"k" * 32
NAMES = ["version", "cluster", "kind", "sender", "incarnation", "seq", "term", "recipient", "port", "body"]
GOOD = [wire.VERSION, "c", PRESENCE, "n1", 1, 1, 3, None, 4000, {}]


class FakeClock:
    def __init__(self, now: float = 100.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def craft(key=KEY, **changes):
    fields = list(GOOD)
    for name, value in changes.items():
        fields[NAMES.index(name)] = value
    inner = msgpack.packb(fields, use_bin_type=True)
    mac = hmac.new(key, inner, hashlib.sha256).digest() if key else b""
    # wire v2: [inner, key_id, mac]; a bare bytes key is the Codec's key "default"
    return msgpack.packb([inner, "default" if key else "", mac], use_bin_type=True)


def receiver(key=KEY, term=3, clock=None, schemas=None):
    state = {"term": term}
    codec = wire.Codec("c", "n2", {"n1", "n2", "n3"}, key, schemas or {PRESENCE: {}, "X": {}}, 1,
                       unicast_port=4001, current_term=lambda: state["term"], clock=clock or FakeClock())
    return codec, state


def reason_of(codec, datagram):
    before = dict(codec.dropped)
    assert codec.decode(datagram) is None
    changed = [r for r in codec.dropped if codec.dropped[r] != before.get(r, 0)]
    assert len(changed) == 1, changed
    return changed[0]


@pytest.mark.parametrize("key", [KEY, None])
@pytest.mark.parametrize("field", ["incarnation", "seq", "term"])
@pytest.mark.parametrize("value", [2**64 - 1, 2**63 - 1, 2**53 + 1, -1])
def test_envelope_integers_out_of_range(key, field, value):
    codec, _ = receiver(key)
    assert reason_of(codec, craft(key, **{field: value})) == "out_of_range"
    assert codec.decode(craft(key, seq=2)) is not None  # nothing was remembered


@pytest.mark.parametrize("port", [0, 65536, 2**64 - 1, -5])
def test_port_out_of_range(port):
    codec, _ = receiver()
    assert reason_of(codec, craft(port=port)) == "out_of_range"


@pytest.mark.parametrize("field", ["incarnation", "seq", "term", "port", "version"])
def test_bools_are_not_ints(field):
    codec, _ = receiver()
    assert reason_of(codec, craft(**{field: True})) == "bad_schema"


@pytest.mark.parametrize("body", [
    {"x": 2**64 - 1}, {"x": -(2**63)}, {"x": 2**53 + 1}, {"x": [1, 2**60]}, {"x": [[1]]}, {"x": {"a": 1}},
    {"x": [{"a": 1}]}, {"x": float("nan")}, {"x": float("inf")}, {"x": [float("-inf")]},
])
def test_body_values_out_of_range(body):
    codec, _ = receiver()
    assert reason_of(codec, craft(kind="X", body=body)) == "out_of_range"


def test_body_values_in_range_accepted():
    codec, _ = receiver()
    body = {"a": -1, "b": 2**53, "c": [1, "n1", None, True], "d": 1.5, "e": "s", "f": b"b"}
    assert codec.decode(craft(kind="X", body=body)).message.body == body


def test_the_brick_term_is_dropped_and_the_receiver_still_encodes():
    codec, state = receiver()
    assert reason_of(codec, craft(term=2**64 - 1)) == "out_of_range"
    # the receiver's own traffic, at its unchanged term, still encodes
    assert codec.encode(Send(PRESENCE, state["term"]))


def test_term_jump_bound():
    clock = FakeClock()
    codec, state = receiver(clock=clock)
    assert codec.decode(craft(term=3 + wire.MAX_TERM_JUMP)) is not None
    assert reason_of(codec, craft(seq=2, term=4 + wire.MAX_TERM_JUMP)) == "term_jump"
    state["term"] = 10**9  # a receiver that moved on accepts the same jump relative to it
    assert codec.decode(craft(seq=3, term=10**9 + wire.MAX_TERM_JUMP)) is not None


def test_term_jump_confirmed_by_the_same_sender_later():
    """A node back after the cluster ran far ahead catches up about a second late."""
    clock = FakeClock()
    codec, state = receiver(clock=clock, term=0)
    far = 5 * wire.MAX_TERM_JUMP
    assert reason_of(codec, craft(seq=1, term=far)) == "term_jump"
    clock.now += 0.1
    assert reason_of(codec, craft(seq=2, term=far)) == "term_jump"  # too soon: not yet confirmed
    assert reason_of(codec, craft(seq=3, sender="n3", term=far)) == "term_jump"  # another sender's claim is its own
    clock.now += wire.TERM_CONFIRM_MIN_S
    assert codec.decode(craft(seq=4, term=far + 1)) is not None


def test_term_jump_beyond_the_confirmable_bound_never_accepted():
    clock = FakeClock()
    codec, _ = receiver(clock=clock, term=0)
    huge = wire.MAX_CONFIRMED_TERM_JUMP + 1
    for seq in range(1, 5):
        assert reason_of(codec, craft(seq=seq, term=huge)) == "term_jump"
        clock.now += wire.TERM_CONFIRM_MIN_S
    assert reason_of(codec, craft(seq=9, term=2**53)) == "term_jump"


def test_term_jump_claim_expires():
    clock = FakeClock()
    codec, _ = receiver(clock=clock, term=0)
    far = 5 * wire.MAX_TERM_JUMP
    assert reason_of(codec, craft(seq=1, term=far)) == "term_jump"
    clock.now += wire.TERM_CONFIRM_MAX_S + 1
    # the old claim is too old to confirm anything: this one starts a new wait
    assert reason_of(codec, craft(seq=2, term=far)) == "term_jump"
    clock.now += wire.TERM_CONFIRM_MIN_S
    assert codec.decode(craft(seq=3, term=far)) is not None


def test_replay_window_shift_is_bounded_work():
    w = wire.ReplayWindow()
    assert w.accept(1, 1)
    started = time.thread_time()  # CPU time: scheduling noise is not the shift
    for i in range(1, 200):  # each a confirmed jump of ~2**32: would shift a 512 MiB mask
        seq = i * 2**32
        assert w.check(1, seq, 0.0) == "seq_jump"
        assert w.check(1, seq + 1, 0.0) is None
    assert time.thread_time() - started < 1.0  # O(window): microseconds each
    assert w.seen_mask < 1 << wire.REPLAY_WINDOW
    assert not w.accept(1, 199 * 2**32 + 1)  # still a replay filter after the jumps
    assert w.accept(1, 199 * 2**32)  # the dropped pending one was never delivered


def test_seq_jump_within_bound_accepted_beyond_dropped_then_confirmed():
    w = wire.ReplayWindow()
    assert w.accept(7, 10)
    assert w.accept(7, 10 + wire.MAX_SEQ_JUMP)
    base = 10 + wire.MAX_SEQ_JUMP
    assert w.check(7, base + wire.MAX_SEQ_JUMP + 1, 0.0) == "seq_jump"
    assert w.check(7, base + 1, 0.0) is None  # ordinary traffic still flows meanwhile
    # the genuine sender's next datagram confirms the jump: one datagram lost
    assert w.check(7, base + wire.MAX_SEQ_JUMP + 2, 0.0) is None


def test_keyed_window_is_strict():
    w = wire.ReplayWindow(strict=True)
    assert w.check(2**40, 5, 0.0) is None
    assert w.check(1, 1, 10**6) == "replay"
    assert w.check(2**40, 5, 10**6) == "replay"


def test_unkeyed_forged_incarnation_mutes_nobody():
    clock = FakeClock()
    codec, _ = receiver(key=None, clock=clock)
    assert codec.decode(craft(None, incarnation=1000, seq=1)) is not None
    # the mute attempt: a far-future incarnation "from" n1
    assert codec.decode(craft(None, incarnation=2**53, seq=1)) is not None
    clock.now += 0.05
    assert codec.decode(craft(None, incarnation=1000, seq=2)) is not None  # stale, but accepted
    clock.now += wire.UNKEYED_REANCHOR_S
    assert codec.decode(craft(None, incarnation=1000, seq=3)) is not None  # re-anchors here
    clock.now += 0.05
    assert codec.decode(craft(None, incarnation=1000, seq=4)) is not None
    assert reason_of(codec, craft(None, incarnation=1000, seq=4)) == "replay"  # duplicates filtered again


def test_unkeyed_forged_seq_mutes_nobody():
    clock = FakeClock()
    codec, _ = receiver(key=None, clock=clock)
    assert codec.decode(craft(None, seq=1)) is not None
    assert codec.decode(craft(None, seq=1 + wire.MAX_SEQ_JUMP)) is not None
    clock.now += 0.3
    assert codec.decode(craft(None, seq=2)) is not None
    assert codec.decode(craft(None, seq=3)) is not None
    assert reason_of(codec, craft(None, seq=1 + wire.MAX_SEQ_JUMP)) == "replay"


def test_unkeyed_duplicates_inside_the_window_dropped():
    codec, _ = receiver(key=None)
    assert codec.decode(craft(None, seq=5)) is not None
    assert reason_of(codec, craft(None, seq=5)) == "replay"


def test_keyed_forged_incarnation_is_a_bad_mac():
    codec, _ = receiver()
    assert reason_of(codec, craft(b"x" * 32, incarnation=2**53)) == "bad_mac"
    assert codec.decode(craft(seq=5)) is not None


def test_drops_leave_the_window_untouched():
    codec, _ = receiver()
    assert codec.decode(craft(seq=10)) is not None
    assert reason_of(codec, craft(seq=11, term=2**60)) == "out_of_range"
    assert reason_of(codec, craft(seq=11, term=3 + 2 * wire.MAX_TERM_JUMP)) == "term_jump"
    assert codec.decode(craft(seq=11)) is not None


def test_every_reason_is_listed_and_starts_at_zero():
    codec, _ = receiver()
    assert set(codec.dropped) == set(wire.DROP_REASONS)
    assert not any(codec.dropped.values())


def test_accepted_counts_only_what_passed():
    codec, _ = receiver()
    assert codec.decode(craft(seq=1)) is not None
    assert codec.decode(craft(seq=1)) is None
    assert codec.decode(craft(term=2**64 - 1, seq=2)) is None
    assert codec.accepted == 1


def test_an_incarnation_more_than_a_year_ahead_of_our_wall_clock_is_forged():
    wall_ms = 1_800_000_000_000
    codec = wire.Codec("c", "n2", {"n1", "n2", "n3"}, KEY, {PRESENCE: {}}, 1, unicast_port=4001,
                       current_term=lambda: 3, clock=FakeClock(), wall_ms=lambda: wall_ms)
    ahead = wall_ms + wire.MAX_INCARNATION_AHEAD_MS
    assert codec.decode(craft(incarnation=ahead)) is not None  # a clock up to a year off still counts
    assert reason_of(codec, craft(incarnation=ahead + 1, seq=2)) == "out_of_range"
    assert reason_of(codec, craft(incarnation=2**53, seq=3)) == "out_of_range"
