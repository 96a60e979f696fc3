"""The wrong_source rule (transport = unicast): a datagram counts only from
the address and port configured for the member it names."""

from electiond.protocols.base import Send
from electiond.keys import Key
from electiond.wire import Codec

SOURCES = {"n1": ("10.0.0.1", 7676), "n2": ("10.0.0.2", 7676), "n3": ("2001:db8::3", 7703)}
SCHEMAS = {"PING": {}}


def codec(name, keys=None, sources=SOURCES, incarnation=1):
    return Codec(cluster="c", node_name=name, members=set(SOURCES), keys=keys, schemas=SCHEMAS,
                 incarnation=incarnation, unicast_port=7676, sources=sources)


def test_from_the_configured_address_and_port_it_is_accepted():
    receiver, sender = codec("n2"), codec("n1")
    got = receiver.decode(sender.encode(Send("PING", 1)), ("10.0.0.1", 7676))
    assert got is not None and got.message.sender == "n1" and receiver.dropped["wrong_source"] == 0
    v6 = codec("n3").encode(Send("PING", 1))
    assert receiver.decode(v6, ("2001:db8::3", 7703)) is not None


def test_another_address_or_port_is_dropped_and_counted_unauthenticated():
    receiver, sender = codec("n2"), codec("n1")
    datagram = sender.encode(Send("PING", 1))
    for source in (("10.0.0.9", 7676), ("10.0.0.1", 7677), ("10.0.0.3", 7676), None):
        assert receiver.decode(datagram, source) is None
    assert receiver.dropped["wrong_source"] == 4 and receiver.accepted == 0
    # the real member's replay window did not move: the same datagram from the right place passes
    assert receiver.decode(datagram, ("10.0.0.1", 7676)) is not None


def test_authenticated_datagrams_from_the_wrong_address_are_dropped_too():
    key = (Key("k1", b"s" * 32),)
    receiver, sender = codec("n2", key), codec("n1", key)
    datagram = sender.encode(Send("PING", 1))
    # another member's address: a host holding the key still cannot speak for n1
    assert receiver.decode(datagram, ("10.0.0.2", 7676)) is None
    assert receiver.dropped["wrong_source"] == 1 and receiver.dropped["bad_mac"] == 0
    assert receiver.decode(datagram, ("10.0.0.1", 7676)) is not None


def test_without_sources_any_address_is_fine():
    receiver, sender = codec("n2", sources=None), codec("n1", sources=None)
    assert receiver.decode(sender.encode(Send("PING", 1)), ("192.0.2.77", 40000)) is not None
    assert receiver.decode(sender.encode(Send("PING", 1))) is not None
