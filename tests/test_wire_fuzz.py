"""Property and fuzz tests of the decoder and the replay window (issue #13).

Every input is rejected with exactly one counted reason or accepted as a
message the receiver can handle (its numbers in range, re-encodable), never
raises out of decode, and costs bounded time. CI runs a small budget; a long
campaign: ELECTIOND_FUZZ_EXAMPLES=1000000 (hypothesis examples per property
and inputs of the seeded mutation campaign).
"""

import gc
import hashlib
import hmac
import os
import random
import time

import msgpack
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from electiond import wire
from electiond.node import PRESENCE, PROTOCOLS
from electiond.protocols.base import Send

EXAMPLES = int(os.environ.get("ELECTIOND_FUZZ_EXAMPLES", "200"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
KEY = b"k" * 32
SCHEMAS = {PRESENCE: {}}
for proto in PROTOCOLS.values():
    SCHEMAS.update(proto.MESSAGE_SCHEMAS)  # kinds shared by name get one protocol's schema: fine here
KINDS = sorted(SCHEMAS)
# one decode is microseconds; this only catches pathological (O(value)) work
SLOW_DECODE_S = 0.5


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def receiver(key=KEY):
    clock = Clock()
    codec = wire.Codec("c", "n2", {"n1", "n2", "n3"}, key, SCHEMAS, 1, unicast_port=4001,
                       current_term=lambda: 5, clock=clock)
    return codec, clock


def sealed(fields, key=KEY):
    inner = msgpack.packb(fields, use_bin_type=True)
    mac = hmac.new(key, inner, hashlib.sha256).digest() if key else b""
    # wire v2: [inner, key_id, mac]; a bare bytes key is the Codec's key "default"
    return msgpack.packb([inner, "default" if key else "", mac], use_bin_type=True)


def check_one(codec, datagram):
    """decode must return or drop with exactly one reason, quickly; what it
    accepts must be safe to act on and to answer."""
    before = sum(codec.dropped.values())
    # CPU time, and no collection of hypothesis's heap inside the timed call:
    # neither a descheduled test process nor a full GC is a slow decode
    gc.disable()
    try:
        started = time.thread_time()
        got = codec.decode(datagram)
        elapsed_s = time.thread_time() - started
    finally:
        gc.enable()
    assert elapsed_s < SLOW_DECODE_S, f"decode took {elapsed_s:.3f}s"
    dropped = sum(codec.dropped.values()) - before
    if got is None:
        assert dropped == 1
        return None
    assert dropped == 0
    msg = got.message
    assert 0 <= msg.term <= wire.MAX_WIRE_INT and 1 <= got.unicast_port <= 65535
    assert 0 <= got.incarnation <= wire.MAX_WIRE_INT
    # the brick: whatever was accepted can be echoed back without overflow
    try:
        codec.encode(Send(msg.kind, msg.term, msg.body, to=msg.sender))
    except wire.EncodeError:
        pass  # too big to echo is a clean refusal, not a crash
    return got


ints = st.one_of(
    st.integers(min_value=-(2**64), max_value=2**64),
    st.sampled_from([0, 1, -1, 2**31, 2**32, 2**53, 2**53 + 1, 2**63 - 1, 2**64 - 1, -(2**63)]),
)
scalars = st.one_of(st.none(), st.booleans(), ints, st.floats(allow_nan=True), st.text(max_size=20),
                    st.binary(max_size=20))
anything = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=5),
                                                         st.dictionaries(st.text(max_size=8), inner, max_size=5)),
                        max_leaves=30)


def _msgpackable(value):
    try:
        msgpack.packb(value, use_bin_type=True)
        return True
    except (OverflowError, ValueError, TypeError):
        return False


@FUZZ
@given(st.binary(max_size=1500))
def test_random_bytes(data):
    codec, _ = receiver()
    assert check_one(codec, data) is None


@FUZZ
@given(
    kind=st.one_of(st.sampled_from(KINDS), anything),
    sender=st.one_of(st.sampled_from(["n1", "n3", "n2", "x"]), anything),
    incarnation=st.one_of(ints, anything), seq=st.one_of(ints, anything), term=st.one_of(ints, anything),
    recipient=st.one_of(st.none(), st.sampled_from(["n2", "n1"]), anything),
    port=st.one_of(st.integers(-10, 70000), anything),
    body=st.one_of(st.dictionaries(st.sampled_from(["round", "priority", "granted", "retry_ms", "ok", "ids",
                                                     "path", "hop", "nonce", "initiator", "leader", "origin"]),
                                   anything, max_size=8), anything),
    key=st.sampled_from([KEY, None]),
)
def test_authentic_envelopes_with_hostile_fields(kind, sender, incarnation, seq, term, recipient, port, body, key):
    """MAC'd correctly (as by a buggy or compromised member, or anyone in an
    unkeyed cluster) so every check behind the MAC is reached."""
    fields = [wire.VERSION, "c", kind, sender, incarnation, seq, term, recipient, port, body]
    if not _msgpackable(fields):
        return
    codec, _ = receiver(key)
    check_one(codec, sealed(fields, key))


@FUZZ
@given(depth=st.integers(2, 2000), where=st.sampled_from(["outer", "inner", "body"]))
def test_deep_nesting(depth, where):
    nested = b"\x91" * depth + b"\x01"
    codec, _ = receiver()
    if where == "outer":
        data = nested
    else:
        inner = (b"\x9a\x01\xa1c\xa8PRESENCE\xa2n1\x01\x01\x01\xc0\xcd\x0f\xa0" + b"\x81\xa1x" + nested
                 if where == "body" else nested)
        data = msgpack.packb([inner, hmac.new(KEY, inner, hashlib.sha256).digest()], use_bin_type=True)
    assert check_one(codec, data) is None


def _genuine_datagrams(n=40):
    rng = random.Random(7)
    out = []
    for proto in PROTOCOLS.values():
        for kind, schema in proto.MESSAGE_SCHEMAS.items():
            sender = wire.Codec("c", "n1", {"n1", "n2", "n3"}, KEY, {kind: schema}, 1, unicast_port=4000)
            values = {int: 7, str: "n1", bool: True, list: [1, 2, 3], float: 1.5}
            body = {f: values.get(t[0] if isinstance(t, tuple) else t) for f, t in schema.items()}
            out.append(sender.encode(Send(kind, rng.randint(0, 9), body, to=rng.choice([None, "n2"]))))
    return out[:n]


GENUINE = _genuine_datagrams()


@FUZZ
@given(index=st.integers(0, len(GENUINE) - 1),
       edits=st.lists(st.tuples(st.integers(0, 2000), st.integers(0, 255), st.sampled_from(["set", "del", "ins"])),
                      min_size=1, max_size=8),
       truncate=st.one_of(st.none(), st.integers(0, 200)))
def test_mutated_genuine_datagrams(index, edits, truncate):
    original = GENUINE[index]
    data = bytearray(original)
    for at, value, op in edits:
        at %= max(1, len(data))
        if op == "set" and data:
            data[at] = value
        elif op == "del" and data:
            del data[at]
        else:
            data.insert(at, value)
    if truncate is not None:
        del data[truncate:]
    codec, _ = receiver()
    got = check_one(codec, bytes(data))
    if got is not None:
        # only framing can change and still verify: the message is the genuine one
        assert got == receiver()[0].decode(original)


@FUZZ
@given(st.lists(st.tuples(st.integers(0, 2**53), st.integers(0, 2**53), st.floats(0, 5)), max_size=60),
       st.booleans())
def test_replay_window_bounded_and_never_twice_when_keyed(steps, strict):
    window = wire.ReplayWindow(strict)
    accepted = set()
    now = 0.0
    for incarnation, seq, dt in steps:
        now += dt
        started = time.thread_time()
        reason = window.check(incarnation, seq, now)
        assert time.thread_time() - started < 0.01
        assert reason in (None, "replay", "seq_jump")
        assert 0 <= window.seen_mask < 1 << wire.REPLAY_WINDOW
        if reason is None and strict:
            assert (incarnation, seq) not in accepted
            accepted.add((incarnation, seq))


@FUZZ
@given(st.integers(0, 2**40), st.lists(st.integers(1, wire.MAX_SEQ_JUMP), max_size=50))
def test_replay_window_accepts_every_increasing_sequence(start, gaps):
    window = wire.ReplayWindow()
    seq = start
    assert window.accept(3, seq)
    for gap in gaps:
        seq += gap
        assert window.accept(3, seq)
        assert not window.accept(3, seq)


def test_seeded_mutation_campaign():
    """Fast, hypothesis-free: EXAMPLES inputs (CI: a few thousand)."""
    rng = random.Random(int(os.environ.get("ELECTIOND_FUZZ_SEED", "13")))
    count = max(EXAMPLES * 10, 3000)
    codec, clock = receiver()
    hostile = [0, -1, 2**53, 2**53 + 1, 2**63 - 1, 2**64 - 1, -(2**63), True, None, "x", 1.5, [1], {"a": 1}]
    worst_s = 0.0
    for i in range(count):
        clock.now += 0.001
        choice = rng.random()
        if choice < 0.5:
            data = bytearray(rng.choice(GENUINE))
            for _ in range(rng.randint(1, 5)):
                data[rng.randrange(len(data))] = rng.randrange(256)
            data = bytes(data)
        elif choice < 0.9:
            fields = [wire.VERSION, "c", rng.choice(KINDS), rng.choice(["n1", "n3"]), rng.choice(hostile),
                      rng.choice(hostile), rng.choice(hostile), None, rng.choice([4000, 0, 70000, True]),
                      {"round": rng.choice(hostile), "ids": [rng.choice(hostile)]}]
            data = sealed(fields)
        else:
            data = rng.randbytes(rng.randint(0, 1500))
        started = time.thread_time()
        check_one(codec, data)
        worst_s = max(worst_s, time.thread_time() - started)
    assert worst_s < SLOW_DECODE_S
    assert sum(codec.dropped.values()) > count // 2
