import msgpack
import pytest

from electiond import wire
from electiond.node import PRESENCE, PROTOCOLS
from electiond.protocols.base import Send

KEY = b"k" * 32
SCHEMAS = {PRESENCE: {}}
# every message kind of every protocol, with its own protocol's schema
KINDS = [(proto.name, kind, schema) for proto in PROTOCOLS.values() for kind, schema in proto.MESSAGE_SCHEMAS.items()]


def codec(name, key=KEY, incarnation=1, cluster="c", schemas=SCHEMAS):
    return wire.Codec(cluster, name, {"n1", "n2", "n3"}, key, schemas, incarnation, unicast_port=4000)


def sample_body(schema):
    values = {int: 7, str: "n2", float: 1.5, bool: True, list: [1, 2]}
    body = {}
    for field, typ in schema.items():
        typ = typ[0] if isinstance(typ, tuple) else typ
        body[field] = values.get(typ, None)
    return body


@pytest.mark.parametrize("protocol,kind,schema", KINDS, ids=[f"{p}-{k}" for p, k, _ in KINDS])
@pytest.mark.parametrize("key", [KEY, None])
def test_round_trip_every_kind(protocol, kind, schema, key):
    schemas = {kind: schema}
    a, b = codec("n1", key, schemas=schemas), codec("n2", key, schemas=schemas)
    body = sample_body(schema)
    got = b.decode(a.encode(Send(kind, 5, body, to="n2")))
    assert got is not None, b.dropped
    assert (got.message.kind, got.message.sender, got.message.term, got.message.body, got.message.recipient) == (
        kind, "n1", 5, body, "n2")
    assert got.unicast_port == 4000 and got.incarnation == 1


def reason_of(receiver, datagram):
    before = dict(receiver.dropped)
    assert receiver.decode(datagram) is None
    changed = [r for r in receiver.dropped if receiver.dropped[r] != before.get(r, 0)]
    assert len(changed) == 1
    return changed[0]


def craft(fields, key=KEY, mac=None):
    inner = msgpack.packb(fields, use_bin_type=True)
    if mac is None:
        import hashlib, hmac
        mac = hmac.new(key, inner, hashlib.sha256).digest() if key else b""
    return msgpack.packb([inner, mac], use_bin_type=True)


GOOD = [wire.VERSION, "c", PRESENCE, "n1", 1, 1, 3, None, 4000, {}]


def fields(**changes):
    names = ["version", "cluster", "kind", "sender", "incarnation", "seq", "term", "recipient", "port", "body"]
    out = list(GOOD)
    for k, v in changes.items():
        out[names.index(k)] = v
    return out


def test_crafted_good_datagram_accepted():
    assert codec("n2").decode(craft(GOOD)) is not None


@pytest.mark.parametrize("datagram,reason", [
    (b"\xc1garbage", "bad_encoding"),
    (msgpack.packb([b"\xc1", b""]), "bad_encoding"),
    (b"x" * 1401, "oversize"),
    (msgpack.packb({"a": 1}), "bad_schema"),
    (msgpack.packb([b"ab", "notbytes"]), "bad_schema"),
    (craft(GOOD[:5]), "bad_schema"),
    (craft(fields(version=2)), "wrong_version"),
    (craft(fields(cluster="other")), "wrong_cluster"),
    (craft(fields(sender="n2")), "self"),
    (craft(fields(sender="mallory")), "unknown_sender"),
    (craft(GOOD, mac=b"\0" * 32), "bad_mac"),
    (craft(GOOD, mac=b""), "bad_mac"),
    (craft(GOOD, key=b"x" * 32), "bad_mac"),
    (craft(fields(kind="NOPE")), "unknown_kind"),
    (craft(fields(term="3")), "bad_schema"),
    (craft(fields(term=True)), "bad_schema"),
    (craft(fields(seq=-1.5)), "bad_schema"),
    (craft(fields(body=[1])), "bad_schema"),
    (craft(fields(port=70000)), "out_of_range"),
])
def test_each_drop_reason(datagram, reason):
    assert reason_of(codec("n2"), datagram) == reason


def test_body_schema_checked():
    receiver = wire.Codec("c", "n2", {"n1", "n2"}, KEY, {"VOTE": {"term": int, "granted": bool}}, 1)
    assert receiver.decode(craft(fields(kind="VOTE", body={"term": 1, "granted": True})))
    assert reason_of(receiver, craft(fields(kind="VOTE", seq=2, body={"term": 1}))) == "bad_schema"
    assert reason_of(receiver, craft(fields(kind="VOTE", seq=3, body={"term": "1", "granted": True}))) == "bad_schema"


def test_unauthenticated_cluster_rejects_keyed_peer():
    assert reason_of(codec("n2", key=None), craft(GOOD)) == "bad_mac"


def test_replay_and_reordering():
    a, b = codec("n1"), codec("n2")
    d1, d2, d3 = (a.encode(Send(PRESENCE, 1)) for _ in range(3))
    assert b.decode(d1) and b.decode(d3)
    assert b.decode(d2) is not None  # late but new: within the window
    assert reason_of(b, d2) == "replay"
    assert reason_of(b, d1) == "replay"


def test_old_incarnation_is_stale_new_one_resets():
    old, b = codec("n1", incarnation=5), codec("n2")
    stale = old.encode(Send(PRESENCE, 1))
    new = codec("n1", incarnation=6)
    assert b.decode(new.encode(Send(PRESENCE, 1)))
    assert reason_of(b, stale) == "replay"


def test_replay_window_too_old():
    w = wire.ReplayWindow()
    assert w.accept(1, 100)
    assert not w.accept(1, 100 - wire.REPLAY_WINDOW)
    assert w.accept(1, 99) and not w.accept(1, 99)


def test_encode_refuses_oversize():
    with pytest.raises(wire.EncodeError):
        codec("n1").encode(Send(PRESENCE, 1, {"pad": "x" * 2000}))


def test_garbage_never_raises():
    import random
    rng = random.Random(1)
    c = codec("n2")
    good = craft(GOOD)
    for _ in range(3000):
        data = bytearray(good)
        for _ in range(rng.randint(1, 4)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        c.decode(bytes(data))
    for _ in range(500):
        c.decode(bytes(rng.randrange(256) for _ in range(rng.randint(0, 64))))
