"""net's socket builders on loopback (no root): the options each role needs,
for both families, and the errors that name what failed."""

from __future__ import annotations

import socket

import pytest

from electiond import net
from electiond.devcluster import free_udp_port


def test_ipv4_unicast_and_group_sockets_carry_their_options():
    link = net.resolve_link("127.0.0.1", socket.AF_INET)
    assert link == net.Link(socket.AF_INET, "127.0.0.1", 0)
    unicast = net.unicast_socket(link)
    group = net.group_socket("239.255.76.76", free_udp_port(), link)
    try:
        assert unicast.getsockname()[0] == "127.0.0.1" and unicast.getsockname()[1] > 0
        assert unicast.getsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL) == 1  # never routed off the LAN
        assert unicast.getsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP) == 1
        assert unicast.getblocking() is False and group.getblocking() is False
        assert group.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT) == 1
    finally:
        unicast.close()
        group.close()


def test_ipv6_unicast_socket_is_v6only_with_one_hop():
    if not socket.has_ipv6:
        pytest.skip("no IPv6")
    link = net.resolve_link("lo", socket.AF_INET6)
    assert link.family == socket.AF_INET6 and link.index == socket.if_nametoindex("lo")
    assert link.local_address == "::1"
    sock = net.unicast_socket(link)
    try:
        assert sock.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY) == 1
        assert sock.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_HOPS) == 1
        assert sock.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_IF) == link.index
    finally:
        sock.close()


def test_errors_name_what_failed_and_whether_to_wait():
    with pytest.raises(net.NetError, match="address 192.0.2.1 is not configured on this host") as not_local:
        net.peer_socket("192.0.2.1", 0)
    assert not_local.value.transient  # the address may come (DHCP, a late VLAN)
    with pytest.raises(net.NetError, match="interface 'eldnone9' does not exist") as absent:
        net.resolve_link("eldnone9", socket.AF_INET6)
    assert absent.value.transient
    taken = net.peer_socket("127.0.0.1", 0)
    try:
        with pytest.raises(net.NetError, match=r"cannot bind 127\.0\.0\.1 port \d+: Address already in use") as busy:
            net.peer_socket("127.0.0.1", taken.getsockname()[1])
        assert not busy.value.transient
    finally:
        taken.close()
