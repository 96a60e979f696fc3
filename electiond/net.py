"""Socket creation: the multicast group socket and this node's unicast socket.

At boot the configured interface or address may not exist yet (a VLAN still
being created, DHCP not done): the daemon waits for it instead of exiting,
because systemd would restart an exiting daemon every second forever.
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import logging
import socket
import struct
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import psutil

# errors that a later attempt may not meet: the interface or address appears
_TRANSIENT_ERRNOS = frozenset({errno.EADDRNOTAVAIL, errno.ENODEV, errno.ENETDOWN, errno.ENETUNREACH})
RETRY_INTERVAL_S = 1.0
RELOG_INTERVAL_S = 60.0


class NetError(Exception):
    def __init__(self, message: str, transient: bool = False) -> None:
        super().__init__(message)
        self.transient = transient


@dataclass(frozen=True, slots=True)
class Sockets:
    local_address: str
    unicast: socket.socket
    group: socket.socket | None  # None with transport = unicast: every peer is sent to directly


def is_ipv6(address: str) -> bool:
    return ":" in address


def open_sockets(interface: str, group: str, port: int, own: tuple[str, int] | None = None) -> Sockets:
    """One attempt at resolving the interface and binding both sockets; with
    ``own`` (transport = unicast) one socket bound to that address and port."""
    if own is not None:
        return Sockets(own[0], peer_socket(*own), None)
    link = resolve_link(interface, socket.AF_INET6 if is_ipv6(group) else socket.AF_INET)
    unicast = unicast_socket(link)
    try:
        group_sock = group_socket(group, port, link)
    except NetError:
        unicast.close()
        raise
    return Sockets(link.local_address, unicast, group_sock)


def group_destination(group: str, port: int, interface: str) -> tuple:
    """Where group traffic is sent: IPv6 link-scope groups need the link's index."""
    if is_ipv6(group):
        return (group, port, 0, socket.if_nametoindex(interface))
    return (group, port)


@dataclass(frozen=True, slots=True)
class Link:
    """What one family's sockets need of the interface."""

    family: int
    local_address: str  # IPv4, or IPv6 with its %interface scope if link-local
    index: int  # IPv6: the interface's index (multicast and scope); 0 with IPv4


def resolve_link(interface: str, family: int) -> Link:
    if family == socket.AF_INET:
        return Link(family, interface_address(interface), 0)
    try:
        index = socket.if_nametoindex(interface)
    except OSError:
        raise NetError(f"interface {interface!r} does not exist", transient=True) from None
    return Link(family, interface_address(interface, family), index)


_Option = tuple[int, int, int | bytes]  # setsockopt(level, name, value)


def _udp_socket(family: int, bind_to: tuple, what: str, before: Sequence[_Option] = (), after: Sequence[_Option] = (),
                not_local: str = "") -> socket.socket:
    """A bound non-blocking UDP socket: ``before`` set before the bind
    (sharing the port), ``after`` once bound (multicast); an error is a
    NetError saying ``what`` failed (``not_local`` instead for EADDRNOTAVAIL)."""
    sock = socket.socket(family, socket.SOCK_DGRAM, socket.IPPROTO_UDP)
    try:
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        for option in before:
            sock.setsockopt(*option)
        sock.bind(bind_to)
        for option in after:
            sock.setsockopt(*option)
        sock.setblocking(False)
    except OSError as exc:
        sock.close()
        if not_local and exc.errno == errno.EADDRNOTAVAIL:
            raise NetError(not_local, transient=True) from None
        raise NetError(f"{what}: {exc.strerror}", transient=exc.errno in _TRANSIENT_ERRNOS) from None
    return sock


def unicast_socket(link: Link, port: int = 0) -> socket.socket:
    """Sends to the group (TTL 1: never routed off the LAN) and receives
    directed replies; on any free port unless given one."""
    what = f"cannot bind a unicast socket on {link.local_address}"
    if link.family == socket.AF_INET:
        address = link.local_address
        return _udp_socket(socket.AF_INET, (address, port), what, after=[
            (socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton(address)),
            (socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 1),
            (socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP, 1),
        ])
    address, _, scope = link.local_address.partition("%")
    # a link-local source needs its link; a global one ignores the index
    return _udp_socket(socket.AF_INET6, (address, port, 0, link.index if scope else 0), what, after=[
        (socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_IF, link.index),
        (socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_HOPS, 1),
        (socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_LOOP, 1),
    ])


def group_socket(group: str, port: int, link: Link) -> socket.socket:
    """Receives the group's datagrams (bound to the group: nothing else
    arrives here); several daemons on one host may share the port."""
    share = [(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1), (socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)]
    if link.family == socket.AF_INET:
        membership = socket.inet_aton(group) + socket.inet_aton(link.local_address)
        return _udp_socket(socket.AF_INET, (group, port), f"cannot join {group}:{port} on {link.local_address}",
                           before=share, after=[(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, membership)])
    membership = socket.inet_pton(socket.AF_INET6, group) + struct.pack("@I", link.index)
    return _udp_socket(socket.AF_INET6, (group, port, 0, link.index),
                       f"cannot join {group} port {port} on interface index {link.index}",
                       before=share, after=[(socket.IPPROTO_IPV6, socket.IPV6_JOIN_GROUP, membership)])


def peer_socket(address: str, port: int) -> socket.socket:
    """transport = unicast: sends to every peer and receives from them on
    the configured address and port (peers check that the source is it)."""
    family = socket.AF_INET6 if is_ipv6(address) else socket.AF_INET
    return _udp_socket(family, (address, port), f"cannot bind {address} port {port}",
                       not_local=f"address {address} is not configured on this host")


def reopen_socket(role: str, interface: str, group: str, port: int, own: tuple[str, int] | None,
                  unicast_port: int) -> socket.socket:
    """The socket of one role ("unicast" or "group") again, on the address
    and port it had: peers know them (configured, or learned from envelopes)."""
    if own is not None:
        return peer_socket(*own)
    link = resolve_link(interface, socket.AF_INET6 if is_ipv6(group) else socket.AF_INET)
    return unicast_socket(link, unicast_port) if role == "unicast" else group_socket(group, port, link)


async def wait_for_sockets(
    interface: str, group: str, port: int, stopping: asyncio.Event, logger: logging.Logger,
    on_waiting: Callable[[str], None] = lambda text: None, own: tuple[str, int] | None = None,
) -> Sockets | None:
    """open_sockets, retried every second while the error is transient; None
    if ``stopping`` is set first. Logs once, then at most once a minute."""
    first_s = last_log_s = time.monotonic()
    logged = False
    while True:
        try:
            sockets = open_sockets(interface, group, port) if own is None else \
                open_sockets(interface, group, port, own)
        except NetError as exc:
            if not exc.transient:
                raise
            now_s = time.monotonic()
            if not logged or now_s - last_log_s >= RELOG_INTERVAL_S:
                waited = f" (waited {now_s - first_s:.0f} s)" if logged else ""
                logger.warning("waiting for the network: %s; retrying every %g s%s",
                               exc, RETRY_INTERVAL_S, waited)
                on_waiting(f"waiting for the network: {exc}")
                logged, last_log_s = True, now_s
            try:
                await asyncio.wait_for(stopping.wait(), RETRY_INTERVAL_S)
                return None
            except asyncio.TimeoutError:
                continue
        if logged:
            logger.info("network ready after %.1f s: %s", time.monotonic() - first_s, sockets.local_address)
        return sockets


def check_interface(interface: str, group: str = "", own: tuple[str, int] | None = None) -> NetError | None:
    """For --check-config: why the interface (or, with unicast, this node's
    address) cannot be used right now, or None."""
    try:
        if own is not None:
            # port 0: the daemon may be running on the real one right now
            peer_socket(own[0], 0).close()
        elif is_ipv6(group):
            resolve_link(interface, socket.AF_INET6)
        else:
            unicast_socket(resolve_link(interface, socket.AF_INET)).close()
    except NetError as exc:
        return exc
    return None


def interface_address(interface: str, family: int = socket.AF_INET) -> str:
    """An IPv4 address as given, or the first address of that family of an
    interface name (IPv6: a global one if any, else the link-local one, with
    its %interface scope)."""
    if family == socket.AF_INET:
        try:
            ipaddress.IPv4Address(interface)
            return interface
        except ValueError:
            pass
    addrs = psutil.net_if_addrs().get(interface)
    if addrs is None:
        raise NetError(f"interface {interface!r} does not exist", transient=True)
    found = [addr.address for addr in addrs if addr.family == family]
    if family == socket.AF_INET6:
        # a link-local one alone is enough on one link, but a global one names the host better
        found.sort(key=lambda a: ipaddress.ip_address(a.split("%")[0]).is_link_local)
        found = [a if "%" not in a and not ipaddress.ip_address(a).is_link_local else
                 f"{a.split('%')[0]}%{interface}" for a in found]
    if found:
        return found[0]
    kind = "IPv6" if family == socket.AF_INET6 else "IPv4"
    raise NetError(f"interface {interface!r} has no {kind} address", transient=True)
