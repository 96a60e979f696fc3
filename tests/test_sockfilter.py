"""The kernel socket filter and the policy that engages it under a flood."""

import socket

import pytest

from electiond import sockfilter
from electiond.sockfilter import FloodShield


def _drain(sock: socket.socket) -> dict[bytes, int]:
    got: dict[bytes, int] = {}
    sock.settimeout(0.3)
    try:
        for _ in range(100_000):
            data = sock.recv(16)
            got[data] = got.get(data, 0) + 1
    except socket.timeout:
        pass
    return got


def _udp(address: str) -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((address, 0))
    return s


def test_filter_passes_listed_sources_and_samples_the_rest():
    receiver, member, stranger = _udp("127.0.0.1"), _udp("127.0.0.1"), _udp("127.0.0.66")
    receiver.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    try:
        sockfilter.attach(receiver, ["10.9.8.7", "127.0.0.1"], 16)
        for _ in range(200):
            member.sendto(b"member", receiver.getsockname())
        for _ in range(3200):
            stranger.sendto(b"stranger", receiver.getsockname())
        got = _drain(receiver)
        assert got.get(b"member") == 200
        assert 100 <= got.get(b"stranger", 0) <= 320  # 200 expected: 1 in 16
        sockfilter.detach(receiver)
        for _ in range(50):
            stranger.sendto(b"stranger", receiver.getsockname())
        assert _drain(receiver).get(b"stranger") == 50
    finally:
        for s in (receiver, member, stranger):
            s.close()


def test_program_shape():
    code = sockfilter.program(["127.0.0.1"], 64)
    assert len(code) == 8 * (1 + 1 + 5)  # load, one compare, sample and return
    with pytest.raises(ValueError):
        sockfilter.program([], 3)
    # more addresses than a jump can reach are cut, not an error
    assert len(sockfilter.program([f"10.0.{i // 256}.{i % 256}" for i in range(300)], 1)) == 8 * (
        sockfilter.MAX_ADDRESSES + 6)


class Recorder:
    def __init__(self):
        self.calls = []

    def __call__(self, members):
        self.calls.append(members)


def test_shield_engages_within_the_second_and_releases_after_quiet():
    applied = Recorder()
    shield = FloodShield(applied)
    shield.member("127.0.0.1")
    assert applied.calls == []  # calm: nothing installed
    now = 100.0
    for i in range(FloodShield.ENGAGE_STRANGERS_PER_S - 1):
        shield.stranger(now + i * 1e-5)
    assert not shield.engaged
    shield.stranger(now + 0.02)
    assert shield.engaged and applied.calls == [["127.0.0.1"]]
    shield.member("10.0.0.2")  # a member heard while engaged is listed at once
    assert applied.calls[-1] == ["127.0.0.1", "10.0.0.2"]
    # the flood goes on: sampled refusals keep it engaged
    for second in range(1, 30):
        for i in range(FloodShield.ENGAGE_STRANGERS_PER_S // FloodShield.SAMPLE_ONE_IN + 1):
            shield.stranger(now + second + i * 1e-3)
    assert shield.engaged
    # it stops: genuine traffic only
    for second in range(30, 30 + FloodShield.RELEASE_QUIET_S + 1):
        shield.poll(now + second)
    assert not shield.engaged and applied.calls[-1] is None
    assert shield.engagements == 1


def test_spoofed_sources_each_under_budget_still_engage_it():
    """One datagram from each of many addresses: no address's bucket runs
    dry, but strangers' volume gives the flood away."""
    from electiond.budget import SourceBudget, rates_for

    budget, applied = SourceBudget(*rates_for(3, 0.05)), Recorder()
    shield = FloodShield(applied)
    for i in range(FloodShield.ENGAGE_STRANGERS_PER_S):
        source = f"10.{i // 65536 % 256}.{i // 256 % 256}.{i % 256}"
        budget.allow(source, 50.0 + i * 1e-6)  # no source's own bucket runs dry
        shield.stranger(50.0 + i * 1e-6)
    assert shield.engaged


def test_shield_stays_off_for_a_trickle():
    applied = Recorder()
    shield = FloodShield(applied)
    for second in range(60):
        for i in range(FloodShield.ENGAGE_STRANGERS_PER_S // 2):
            shield.stranger(second + i / 1000)
    assert not shield.engaged and applied.calls == []


def test_shield_releases_even_if_nothing_arrives_for_long():
    applied = Recorder()
    shield = FloodShield(applied)
    for i in range(FloodShield.ENGAGE_STRANGERS_PER_S):
        shield.stranger(5.0 + i * 1e-6)
    assert shield.engaged
    shield.poll(6.1)  # closes the flooded second
    shield.poll(6.1 + FloodShield.RELEASE_QUIET_S + 1)  # one datagram after a long silence
    assert not shield.engaged


def test_shield_lists_each_member_address_once_ipv4_and_ipv6_alike():
    # each socket's program takes the addresses of its own family (attach)
    shield = FloodShield(Recorder())
    shield.member("::1")
    shield.member("127.0.0.1")
    shield.member("127.0.0.1")
    shield.member("garbage")
    assert shield._members == ["::1", "127.0.0.1"]


def _has_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


@pytest.mark.skipif(not _has_ipv6_loopback(), reason="no IPv6 on loopback")
def test_ipv6_filter_passes_listed_sources_and_samples_the_rest():
    """Only ::1 exists on loopback: sent from it, listed it passes in full;
    with other addresses listed (one differing in its last word only, one in
    its first) it is a stranger and sampled."""
    receiver = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    sender = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    receiver.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    try:
        receiver.bind(("::1", 0))
        sender.bind(("::1", 0))
        where = receiver.getsockname()[:2]
        # IPv4 addresses in the list are ignored for an IPv6 socket
        sockfilter.attach(receiver, ["127.0.0.1", "2001:db8::5", "::1"], 16)
        for _ in range(200):
            sender.sendto(b"member", where)
        assert _drain(receiver).get(b"member") == 200
        sockfilter.attach(receiver, ["::2", "1::1", "127.0.0.1"], 16)
        for _ in range(3200):
            sender.sendto(b"stranger", where)
        assert 100 <= _drain(receiver).get(b"stranger", 0) <= 320  # 200 expected: 1 in 16
        sockfilter.detach(receiver)
        for _ in range(50):
            sender.sendto(b"stranger", where)
        assert _drain(receiver).get(b"stranger") == 50
    finally:
        receiver.close()
        sender.close()


def test_ipv6_program_shape():
    assert len(sockfilter.program6(["::1"], 64)) == 8 * (9 + 5)
    assert len(sockfilter.program6([f"2001:db8::{i:x}" for i in range(300)], 1)) == 8 * (
        9 * sockfilter.MAX_ADDRESSES + 5)
    applied = Recorder()
    shield = FloodShield(applied)
    shield.member("2001:db8::1")
    shield.member("not an address")
    for i in range(FloodShield.ENGAGE_STRANGERS_PER_S):
        shield.stranger(7.0 + i * 1e-6)
    assert applied.calls == [["2001:db8::1"]]
