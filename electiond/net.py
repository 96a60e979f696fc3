"""Socket creation: the multicast group socket and this node's unicast socket."""

from __future__ import annotations

import ipaddress
import socket

import psutil


class NetError(Exception):
    pass


def interface_address(interface: str) -> str:
    """An IPv4 address as given, or the first IPv4 address of an interface name."""
    try:
        ipaddress.IPv4Address(interface)
        return interface
    except ValueError:
        pass
    addrs = psutil.net_if_addrs().get(interface)
    if addrs is None:
        raise NetError(f"interface {interface!r} does not exist")
    for addr in addrs:
        if addr.family == socket.AF_INET:
            return addr.address
    raise NetError(f"interface {interface!r} has no IPv4 address")


def group_socket(group: str, port: int, local_address: str) -> socket.socket:
    """Receives the group's datagrams; several daemons on one host may share the port."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_UDP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((group, port))
        membership = socket.inet_aton(group) + socket.inet_aton(local_address)
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, membership)
        sock.setblocking(False)
    except OSError as exc:
        sock.close()
        raise NetError(f"cannot join {group}:{port} on {local_address}: {exc.strerror}") from None
    return sock


def unicast_socket(local_address: str) -> socket.socket:
    """Sends to the group (TTL 1: never routed off the LAN) and receives directed replies."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_UDP)
    try:
        sock.bind((local_address, 0))
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton(local_address))
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 1)
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP, 1)
        sock.setblocking(False)
    except OSError as exc:
        sock.close()
        raise NetError(f"cannot bind a unicast socket on {local_address}: {exc.strerror}") from None
    return sock
