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


def craft(fields, key=KEY, mac=None, key_id=None):
    inner = msgpack.packb(fields, use_bin_type=True)
    if mac is None:
        import hashlib, hmac
        mac = hmac.new(key, inner, hashlib.sha256).digest() if key else b""
    if key_id is None:
        key_id = "default" if key else ""
    return msgpack.packb([inner, key_id, mac], use_bin_type=True)


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
    (msgpack.packb([b"\xc1", "", b""]), "bad_encoding"),
    (b"x" * 1401, "oversize"),
    (msgpack.packb({"a": 1}), "bad_schema"),
    (msgpack.packb([b"ab", "notbytes"]), "bad_schema"),
    (msgpack.packb([b"ab", "default", "notbytes"]), "bad_schema"),
    (msgpack.packb([b"ab", b"version 1: [inner, mac]"]), "wrong_version"),
    (craft(GOOD[:5]), "bad_schema"),
    (craft(fields(version=1)), "wrong_version"),
    (craft(fields(version=3)), "wrong_version"),
    (craft(fields(cluster="other")), "wrong_cluster"),
    (craft(fields(sender="n2", port=4000)), "self"),  # our incarnation and unicast port: our loopback
    (craft(fields(sender="mallory")), "unknown_sender"),
    (craft(GOOD, mac=b"\0" * 32), "bad_mac"),
    (craft(GOOD, mac=b""), "bad_mac"),
    (craft(GOOD, key=b"x" * 32), "bad_mac"),
    (craft(GOOD, key_id="other"), "unknown_key"),
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


# ---- keys: several per node, chosen by id ---------------------------------

from electiond.keys import Key  # noqa: E402

OLD, NEW = Key("old", b"o" * 32), Key("new", b"n" * 32)


def keyed(name, keys, incarnation=1, port=4000, previous=0):
    return wire.Codec("c", name, {"n1", "n2", "n3"}, keys, SCHEMAS, incarnation, unicast_port=port,
                      previous_incarnation=previous)


def test_first_key_signs_any_listed_key_verifies():
    sender, receiver = keyed("n1", (NEW, OLD)), keyed("n2", (OLD, NEW))
    datagram = sender.encode(Send(PRESENCE, 1))
    assert msgpack.unpackb(datagram)[1] == "new"
    assert receiver.decode(datagram) is not None
    assert reason_of(keyed("n3", (OLD,)), sender.encode(Send(PRESENCE, 1))) == "unknown_key"


def test_key_id_selects_the_key_a_wrong_secret_under_it_fails():
    forged = keyed("n1", (Key("old", b"x" * 32),))
    assert reason_of(keyed("n2", (OLD, NEW)), forged.encode(Send(PRESENCE, 1))) == "bad_mac"


def test_unkeyed_sender_to_keyed_receiver_and_back():
    assert reason_of(keyed("n2", (OLD,)), keyed("n1", None).encode(Send(PRESENCE, 1))) == "unknown_key"
    assert reason_of(keyed("n2", None), keyed("n1", (OLD,)).encode(Send(PRESENCE, 1))) == "bad_mac"


def test_set_keys_takes_effect_with_the_next_datagram():
    sender, receiver = keyed("n1", (OLD,)), keyed("n2", (OLD,))
    sender.set_keys((NEW, OLD))
    assert receiver.decode(sender.encode(Send(PRESENCE, 1))) is None and receiver.dropped["unknown_key"] == 1
    receiver.set_keys((OLD, NEW))
    assert receiver.decode(sender.encode(Send(PRESENCE, 1))) is not None
    assert sender.signing_key_id == "new" and receiver.signing_key_id == "old"


def test_rotation_in_three_reloads_never_drops_a_datagram_whatever_the_reload_order():
    """The documented steps, each applied node by node: at every moment every
    node's datagrams verify at every other node."""
    steps = [(OLD, NEW), (NEW, OLD), (NEW,)]
    codecs = {n: keyed(n, (OLD,), port=4000 + i) for i, n in enumerate(("n1", "n2", "n3"))}

    def all_pairs_verify():
        for a, sender in codecs.items():
            for b, receiver in codecs.items():
                if a != b:
                    assert receiver.decode(sender.encode(Send(PRESENCE, 1))) is not None, (a, b, receiver.dropped)

    all_pairs_verify()
    for order in (("n1", "n2", "n3"), ("n3", "n1", "n2"), ("n2", "n3", "n1")):
        for ring in steps:
            for name in order:
                codecs[name].set_keys(ring)
                all_pairs_verify()
        for name in order:  # back to the start for the next order
            codecs[name].set_keys((OLD, NEW))
        for name in order:
            codecs[name].set_keys((OLD,))
    assert all(c.dropped["bad_mac"] == 0 and c.dropped["unknown_key"] == 0 for c in codecs.values())


def test_skipping_the_add_step_loses_datagrams():
    # moving a new key first before every node lists it: the others cannot check it
    a, b = keyed("n1", (NEW, OLD)), keyed("n2", (OLD,))
    assert reason_of(b, a.encode(Send(PRESENCE, 1))) == "unknown_key"


# ---- our name from another process; a member's name from two processes ------

def test_own_loopback_is_self_another_process_is_duplicate():
    me = keyed("n1", (OLD,), incarnation=10, port=4000, previous=5)
    assert reason_of(me, me.encode(Send(PRESENCE, 1))) == "self"
    # a copy started later (a second daemon) and one started before us
    for incarnation, port in ((11, 4001), (8, 4002)):
        got = keyed("n2", (OLD,)).decode(keyed("n1", (OLD,), incarnation, port).encode(Send(PRESENCE, 1)))
        assert got is not None and not got.duplicate  # to a peer: an ordinary member
        me = keyed("n1", (OLD,), incarnation=10, port=4000, previous=5)
        got = me.decode(keyed("n1", (OLD,), incarnation, port).encode(Send(PRESENCE, 1)))
        assert got is not None and got.duplicate and got.incarnation == incarnation
        assert me.dropped["duplicate_name"] == 1
    # our incarnation from another port: a relayed (or, unkeyed, forged) copy of
    # our own traffic, never a second process (none starts in our millisecond),
    # so it cannot fault us
    me = keyed("n1", (OLD,), incarnation=10, port=4000, previous=5)
    assert reason_of(me, keyed("n1", (OLD,), incarnation=10, port=4003).encode(Send(PRESENCE, 1))) == "self"
    assert me.dropped["duplicate_name"] == 0


def test_our_own_past_replayed_cannot_fault_us():
    before_restart = keyed("n1", (OLD,), incarnation=5, port=4000)
    captured = [before_restart.encode(Send(PRESENCE, 1)) for _ in range(3)]
    me = keyed("n1", (OLD,), incarnation=10, port=4001, previous=5)
    for datagram in captured:
        assert reason_of(me, datagram) == "replay"
    assert me.dropped["duplicate_name"] == 0


def test_duplicate_of_our_name_must_authenticate_and_is_replay_checked():
    me = keyed("n1", (OLD,), incarnation=10)
    forged = keyed("n1", (Key("old", b"x" * 32),), incarnation=11, port=4001)
    assert reason_of(me, forged.encode(Send(PRESENCE, 1))) == "bad_mac"
    copy = keyed("n1", (OLD,), incarnation=11, port=4001)
    datagram = copy.encode(Send(PRESENCE, 1))
    assert me.decode(datagram).duplicate
    assert reason_of(me, datagram) == "replay"  # a captured copy does not keep us in FAULT


def test_member_heard_from_two_live_incarnations_is_flagged_not_fed_as_replay():
    receiver = keyed("n2", (OLD,))
    first, second = keyed("n1", (OLD,), incarnation=5), keyed("n1", (OLD,), incarnation=7, port=4001)
    assert not receiver.decode(first.encode(Send(PRESENCE, 1))).duplicate
    assert not receiver.decode(second.encode(Send(PRESENCE, 1))).duplicate  # looks like a restart
    old_traffic = first.encode(Send(PRESENCE, 1))
    got = receiver.decode(old_traffic)  # ...but the first one is still talking
    assert got is not None and got.duplicate and receiver.dropped["duplicate_name"] == 1
    assert reason_of(receiver, old_traffic) == "replay"
    assert not receiver.decode(second.encode(Send(PRESENCE, 1))).duplicate  # the newest is followed


def test_restart_replaces_an_incarnation_and_its_old_datagrams_stay_replays():
    receiver = keyed("n2", (OLD,))
    before = keyed("n1", (OLD,), incarnation=5)
    captured = [before.encode(Send(PRESENCE, 1)) for _ in range(3)]
    for d in captured:
        assert receiver.decode(d) is not None
    assert receiver.decode(keyed("n1", (OLD,), incarnation=6).encode(Send(PRESENCE, 1))) is not None
    for d in captured:
        assert reason_of(receiver, d) == "replay"
    assert receiver.dropped["duplicate_name"] == 0


def test_a_replaced_incarnation_that_keeps_talking_alone_is_followed_again():
    """A copy with a newer incarnation came and went: the real member must not
    stay muted at its peers."""
    receiver = keyed("n2", (OLD,))
    real, copy = keyed("n1", (OLD,), incarnation=5), keyed("n1", (OLD,), incarnation=7, port=4001)
    assert receiver.decode(real.encode(Send(PRESENCE, 1))) is not None
    replayable = copy.encode(Send(PRESENCE, 1))
    assert not receiver.decode(replayable).duplicate
    for _ in range(wire.TAKEOVER_STREAK - 1):  # both live: the real one's traffic is flagged...
        assert receiver.decode(real.encode(Send(PRESENCE, 1))).duplicate
        assert not receiver.decode(copy.encode(Send(PRESENCE, 1))).duplicate  # ...the streak restarts
    # the copy is gone: a streak of the real one's datagrams and it is followed again
    got = [receiver.decode(real.encode(Send(PRESENCE, 1))) for _ in range(wire.TAKEOVER_STREAK)]
    assert [g.duplicate for g in got] == [True] * (wire.TAKEOVER_STREAK - 1) + [False]
    assert not receiver.decode(real.encode(Send(PRESENCE, 1))).duplicate
    # the copy's captured traffic is still a replay, and a live copy takes over again
    assert reason_of(receiver, replayable) == "replay"
    assert not receiver.decode(copy.encode(Send(PRESENCE, 1))).duplicate
    assert receiver.decode(real.encode(Send(PRESENCE, 1))).duplicate
