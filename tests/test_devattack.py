"""The attacker used by the flood bench and the process tests keeps to the network rule."""

import socket

import pytest

from electiond import devattack


@pytest.mark.parametrize("host", ["8.8.8.8", "10.0.0.1", "192.168.1.1"])
def test_refuses_destinations_off_the_machine(host):
    with pytest.raises(SystemExit, match="refusing"):
        devattack.flood([(host, 9)], [b"x"], 0.1, "127.0.0.66")


@pytest.mark.parametrize("host", ["10.213.100.11", "192.168.1.1"])
def test_refuses_private_lan_addresses_outside_a_test_namespace(host, monkeypatch):
    monkeypatch.setattr(devattack, "in_own_netns", lambda: False)
    with pytest.raises(SystemExit, match="refusing"):
        devattack.flood([(host, 9)], [b"x"], 0.1, "127.0.0.66")


def test_inside_a_test_namespace_only_private_addresses_are_allowed(monkeypatch):
    monkeypatch.setattr(devattack, "in_own_netns", lambda: True)
    devattack._check_destination("10.213.100.11")  # a namespace LAN host: allowed
    with pytest.raises(SystemExit, match="refusing"):
        devattack._check_destination("8.8.8.8")  # public: never, wherever it runs


def test_pytest_itself_is_not_in_a_named_namespace():
    # the tests run in the machine's own namespace: LAN addresses stay refused here
    assert devattack.in_own_netns() is False


def test_multicasts_with_ttl_1_from_its_own_loopback_source():
    sock = devattack.attacker_socket("127.0.0.66")
    try:
        assert sock.getsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL) == 1
        assert sock.getsockname()[0] == "127.0.0.66"
    finally:
        sock.close()


def test_stops_by_itself():
    receiver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    receiver.bind(("127.0.0.1", 0))
    try:
        result = devattack.flood([receiver.getsockname()], [b"x"], 0.3, "127.0.0.66")
        assert result["sent"] > 0 and result["seconds"] < 5
        capped = devattack.flood([receiver.getsockname()], [b"x"], 30, "127.0.0.66", max_datagrams=500)
        assert capped["sent"] == 500
    finally:
        receiver.close()


def test_crafted_attacks_decode_as_the_attacks_they_are():
    from electiond import wire
    from electiond.node import PRESENCE, PROTOCOLS
    schemas = {PRESENCE: {}, **PROTOCOLS["quorum-lease"].MESSAGE_SCHEMAS}
    codec = wire.Codec("c", "n2", {"n1", "n2"}, None, schemas, 1, current_term=lambda: 3)
    attacks = devattack.brick_mute_stall("c", "quorum-lease", "n1", 10**12, 100)
    assert codec.decode(devattack.envelope("c", PRESENCE, "n1", 10**12, 100, 3)) is not None
    for name, data in attacks.items():
        assert codec.decode(data) is None, name
    assert codec.dropped["out_of_range"] == 2 and codec.dropped["seq_jump"] == 1
