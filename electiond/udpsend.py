"""Sending datagrams straight on the non-blocking socket, one error costing
at most that datagram.

Why not ``DatagramTransport.sendto``: uvloop before 0.21 (Debian 12 ships
0.17) treats an error from a send it tries at once (ENETUNREACH while the
link is down, EPERM from a firewall's reject) as fatal: it closes the
transport and its socket and calls ``connection_lost``; every later
``sendto`` is dropped with asyncio's "socket.send() raised exception."
warning and nothing is received any more, so the node stays mute after the
link comes back. asyncio's own transport and uvloop 0.21 report the error to
``error_received`` instead. Sending on the socket ourselves behaves the same
on all three: the transports then only ever read.

A datagram the kernel will not take (EAGAIN: the send buffer is full) is
dropped and counted too: these are beacons and votes, which the protocols
already repeat; queueing stale ones behind a full buffer would only delay
the fresh ones.
"""

from __future__ import annotations

import errno
import logging
import socket
from typing import Any

# while sends keep failing, say so again at most this often
RELOG_INTERVAL_S = 60.0


def _errno_name(exc: OSError) -> str:
    return errno.errorcode.get(exc.errno, str(exc.errno)) if exc.errno is not None else type(exc).__name__


class DatagramSender:
    """Counts failed sends by errno name (``errors``); logs the first failure
    of a run of them, then at most once a minute, and once when a send
    succeeds again."""

    def __init__(self, logger: logging.Logger) -> None:
        self._log = logger
        self.errors: dict[str, int] = {}
        self._failing_since_s: float | None = None  # the first failure of the current run
        self._failed_in_run = 0
        self._last_log_s = 0.0

    def send(self, sock: socket.socket, datagram: bytes, address: Any, now_s: float) -> bool:
        """True if the kernel took the datagram."""
        try:
            sock.sendto(datagram, address)
        except OSError as exc:  # BlockingIOError included
            name = _errno_name(exc)
            self.errors[name] = self.errors.get(name, 0) + 1
            self._failed_in_run += 1
            if self._failing_since_s is None or now_s - self._last_log_s >= RELOG_INTERVAL_S:
                again = "" if self._failing_since_s is None else \
                    f" (still failing: {self._failed_in_run} datagrams in {now_s - self._failing_since_s:.0f} s)"
                self._log.warning("send to %s failed: %s (%s); that datagram is dropped, the socket is kept%s",
                                  _where(address), name, exc.strerror or exc, again)
                self._last_log_s = now_s
                if self._failing_since_s is None:
                    self._failing_since_s = now_s
            return False
        if self._failing_since_s is not None:
            self._log.info("sends succeed again after %d failed in %.1f s",
                           self._failed_in_run, now_s - self._failing_since_s)
            self._failing_since_s, self._failed_in_run = None, 0
        return True


def _where(address: Any) -> str:
    host, port = address[0], address[1]
    return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"
