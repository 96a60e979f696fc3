"""A classic BPF socket filter: the kernel drops a flood before we wake.

Under a flood the daemon's single loop cannot even receive every datagram
(the syscall and the callback cost microseconds each); the socket queue
overflows and genuine heartbeats are lost with the garbage. A socket filter
runs in the kernel as each datagram arrives: this one passes every datagram
from the listed source addresses (members that sent authenticated traffic)
and one in ``sample_one_in`` of the rest, chosen at random, so a member
whose address is not listed yet still gets through (slower) and is listed.
IPv4 and IPv6 sockets each get a program reading their own header's source
address (an IPv6 socket is V6ONLY here, so it never sees IPv4 headers).
Linux only; needs no privilege.
"""

from __future__ import annotations

import ctypes
import ipaddress
import socket
import struct
from collections.abc import Callable

SO_ATTACH_FILTER = 26
SO_DETACH_FILTER = 27
MAX_ADDRESSES = 200  # a conditional jump reaches at most 255 instructions ahead

_LD_W_ABS = 0x20
_ALU_AND_K = 0x54
_JEQ_K = 0x15
_RET_K = 0x06
_SKF_NET_OFF = -0x100000
_SKF_AD_OFF = -0x1000
_SKF_AD_RANDOM = 56
_ACCEPT = 0xFFFFFFFF


def _insn(code: int, jt: int, jf: int, k: int) -> bytes:
    return struct.pack("HBBI", code, jt, jf, k & 0xFFFFFFFF)


def program(addresses: list[str], sample_one_in: int) -> bytes:
    """Instructions (8 bytes each) passing IPv4 sources in addresses, and
    the others with probability 1/sample_one_in (a power of two)."""
    if sample_one_in < 1 or sample_one_in & (sample_one_in - 1):
        raise ValueError("sample_one_in must be a power of two")
    listed = [int(ipaddress.IPv4Address(a)) for a in addresses[:MAX_ADDRESSES]]
    n = len(listed)
    accept_at = n + 5
    code = [_insn(_LD_W_ABS, 0, 0, _SKF_NET_OFF + 12)]  # the IPv4 source address
    for i, address in enumerate(listed, start=1):
        code.append(_insn(_JEQ_K, accept_at - (i + 1), 0, address))
    code += [
        _insn(_LD_W_ABS, 0, 0, _SKF_AD_OFF + _SKF_AD_RANDOM),
        _insn(_ALU_AND_K, 0, 0, sample_one_in - 1),
        _insn(_JEQ_K, 1, 0, 0),
        _insn(_RET_K, 0, 0, 0),  # drop
        _insn(_RET_K, 0, 0, _ACCEPT),
    ]
    return b"".join(code)


def _sampling_tail(sample_one_in: int) -> list[bytes]:
    return [
        _insn(_LD_W_ABS, 0, 0, _SKF_AD_OFF + _SKF_AD_RANDOM),
        _insn(_ALU_AND_K, 0, 0, sample_one_in - 1),
        _insn(_JEQ_K, 1, 0, 0),
        _insn(_RET_K, 0, 0, 0),  # drop
        _insn(_RET_K, 0, 0, _ACCEPT),
    ]


def program6(addresses: list[str], sample_one_in: int) -> bytes:
    """Like program(), for IPv6 sockets: the 128-bit source (offset 8 of the
    IPv6 header) is compared a word at a time; each listed address is one
    block of 9 instructions ending in its own accept, so every jump is short
    whatever the number of addresses."""
    if sample_one_in < 1 or sample_one_in & (sample_one_in - 1):
        raise ValueError("sample_one_in must be a power of two")
    code = []
    for address in addresses[:MAX_ADDRESSES]:
        packed = ipaddress.IPv6Address(address.split("%")[0]).packed
        words = struct.unpack("!4I", packed)
        for i, word in enumerate(words):
            code.append(_insn(_LD_W_ABS, 0, 0, _SKF_NET_OFF + 8 + 4 * i))
            # a mismatch skips the rest of this block (and its accept)
            code.append(_insn(_JEQ_K, 0, 7 - 2 * i, word))
        code.append(_insn(_RET_K, 0, 0, _ACCEPT))
    return b"".join(code + _sampling_tail(sample_one_in))


def attach(sock: socket.socket, addresses: list[str], sample_one_in: int) -> None:
    """Replace sock's filter (raises OSError where unsupported); only the
    addresses of sock's own family are listed."""
    if sock.family == socket.AF_INET6:
        code = program6([a for a in addresses if ":" in a], sample_one_in)
    else:
        code = program([a for a in addresses if ":" not in a], sample_one_in)
    buffer = ctypes.create_string_buffer(code, len(code))
    # struct sock_fprog { unsigned short len; struct sock_filter *filter; }:
    # the kernel copies the instructions during the call, so buffer may go after
    fprog = struct.pack("HL", len(code) // 8, ctypes.addressof(buffer))
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, fprog)


def detach(sock: socket.socket) -> None:
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_DETACH_FILTER, 0)
    except OSError:
        pass  # none attached


class FloodShield:
    """When to put the filter on and what it lists (driven with ``now``).

    Off while all is calm: at startup no member's address is known yet, and
    sampling strangers would slow the first election. ENGAGE_STRANGERS_PER_S
    datagrams within one second from addresses that never sent authenticated
    traffic put it on at once (a member not yet heard sends about 25/s; a
    flood from one address or from spoofed ones, each under its per-source
    budget, both count); while on, each stranger counts SAMPLE_ONE_IN times
    (only that share reaches us), and RELEASE_QUIET_S seconds in a row below
    the threshold take it off again.
    ``apply(addresses)`` installs the filter, ``apply(None)`` removes it.
    """

    ENGAGE_STRANGERS_PER_S = 2000
    RELEASE_QUIET_S = 10
    SAMPLE_ONE_IN = 64

    def __init__(self, apply: Callable[[list[str] | None], None]) -> None:
        self._apply = apply
        self.engaged = False
        self.engagements = 0
        self._second = 0
        self._strangers = 0  # strangers' datagrams counted in the current second
        self._quiet_seconds = 0
        self._members: list[str] = []

    def poll(self, now: float) -> None:
        """Call for every datagram (cheap): closes a second when one passed."""
        second = int(now)
        if second != self._second:
            self._close_second(second)

    def stranger(self, now: float) -> None:
        """A datagram from an address not (yet) known to send authenticated traffic."""
        self.poll(now)
        if self.engaged:
            self._strangers += self.SAMPLE_ONE_IN
            return
        self._strangers += 1
        if self._strangers >= self.ENGAGE_STRANGERS_PER_S:
            self.engaged = True
            self.engagements += 1
            self._quiet_seconds = 0
            self._apply(list(self._members))

    def member(self, address: str) -> None:
        """address sent authenticated traffic: the filter passes it in full."""
        if address in self._members or len(self._members) >= MAX_ADDRESSES:
            return
        try:
            ipaddress.ip_address(address.split("%")[0])
        except ValueError:
            return
        self._members.append(address)
        if self.engaged:
            self._apply(list(self._members))

    def _close_second(self, second: int) -> None:
        flooded = self._strangers >= self.ENGAGE_STRANGERS_PER_S
        gap = second - self._second  # seconds without a datagram were quiet ones
        self._second, self._strangers = second, 0
        if not self.engaged:
            return
        self._quiet_seconds = 0 if flooded else self._quiet_seconds + max(1, gap)
        if self._quiet_seconds >= self.RELEASE_QUIET_S:
            self.engaged = False
            self._apply(None)
