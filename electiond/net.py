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
import time
from collections.abc import Callable
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
    group: socket.socket


def open_sockets(interface: str, group: str, port: int) -> Sockets:
    """One attempt at resolving the interface and binding both sockets."""
    local_address = interface_address(interface)
    unicast = unicast_socket(local_address)
    try:
        group_sock = group_socket(group, port, local_address)
    except NetError:
        unicast.close()
        raise
    return Sockets(local_address, unicast, group_sock)


async def wait_for_sockets(
    interface: str, group: str, port: int, stopping: asyncio.Event, logger: logging.Logger,
    on_waiting: Callable[[str], None] = lambda text: None,
) -> Sockets | None:
    """open_sockets, retried every second while the error is transient; None
    if ``stopping`` is set first. Logs once, then at most once a minute."""
    first_s = last_log_s = time.monotonic()
    logged = False
    while True:
        try:
            sockets = open_sockets(interface, group, port)
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


def check_interface(interface: str) -> NetError | None:
    """For --check-config: why the interface cannot be used right now, or None."""
    try:
        address = interface_address(interface)
        unicast_socket(address).close()
    except NetError as exc:
        return exc
    return None


def interface_address(interface: str) -> str:
    """An IPv4 address as given, or the first IPv4 address of an interface name."""
    try:
        ipaddress.IPv4Address(interface)
        return interface
    except ValueError:
        pass
    addrs = psutil.net_if_addrs().get(interface)
    if addrs is None:
        raise NetError(f"interface {interface!r} does not exist", transient=True)
    for addr in addrs:
        if addr.family == socket.AF_INET:
            return addr.address
    raise NetError(f"interface {interface!r} has no IPv4 address", transient=True)


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
        raise NetError(f"cannot join {group}:{port} on {local_address}: {exc.strerror}",
                       transient=exc.errno in _TRANSIENT_ERRNOS) from None
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
        raise NetError(f"cannot bind a unicast socket on {local_address}: {exc.strerror}",
                       transient=exc.errno in _TRANSIENT_ERRNOS) from None
    return sock
