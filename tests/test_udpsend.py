"""udpsend: a send error costs that datagram only, never the socket, on
asyncio's loop and on uvloop's (uvloop < 0.21, Debian 12's 0.17, closed the
transport and its socket on such an error and the node went mute)."""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
import time

import pytest

from cluster import Cluster
from test_control import loop_factories
from electiond import config as configmod
from electiond.runtime import Runtime
from electiond.udpsend import RELOG_INTERVAL_S, DatagramSender

LOG = logging.getLogger("test.udpsend")


class FlakySocket:
    """sendto raises the queued errors in turn, then records what it sends."""

    def __init__(self, *errors: OSError) -> None:
        self.errors = list(errors)
        self.sent: list[tuple[bytes, object]] = []

    def sendto(self, data: bytes, address: object) -> int:
        if self.errors:
            raise self.errors.pop(0)
        self.sent.append((data, address))
        return len(data)


def _oserror(code: int) -> OSError:
    return OSError(code, "made up")


def test_errors_are_counted_by_errno_and_the_socket_keeps_sending(caplog):
    sock = FlakySocket(_oserror(errno.ENETUNREACH), _oserror(errno.EPERM), BlockingIOError(errno.EAGAIN, "full"),
                       _oserror(errno.ENETUNREACH))
    sender = DatagramSender(LOG)
    caplog.set_level(logging.INFO, logger="test.udpsend")
    results = [sender.send(sock, b"d%d" % i, ("10.0.0.2", 7676), 100.0 + i) for i in range(6)]
    assert results == [False, False, False, False, True, True]
    assert sender.errors == {"ENETUNREACH": 2, "EPERM": 1, "EAGAIN": 1}
    assert sock.sent == [(b"d4", ("10.0.0.2", 7676)), (b"d5", ("10.0.0.2", 7676))]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    # one warning for the run of failures, one line when sends succeed again
    assert len(warnings) == 1 and "10.0.0.2:7676" in warnings[0] and "ENETUNREACH" in warnings[0]
    infos = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    assert infos == ["sends succeed again after 4 failed in 4.0 s"]


def test_a_long_run_of_failures_is_logged_again_once_a_minute(caplog):
    sender = DatagramSender(LOG)
    caplog.set_level(logging.WARNING, logger="test.udpsend")
    sock = FlakySocket(*[_oserror(errno.ENETDOWN) for _ in range(200)])
    for i in range(200):  # 200 datagrams over 150 s
        sender.send(sock, b"x", ("ff02::1:7676", 7676, 0, 3), 1000.0 + i * 0.75)
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 1 + int(149.25 // RELOG_INTERVAL_S)
    assert "[ff02::1:7676]:7676" in warnings[0]
    assert "still failing" in warnings[1]
    assert sender.errors == {"ENETDOWN": 200}


def _config(tmp_path, monkeypatch, transport="multicast"):
    c = Cluster(tmp_path, 1, protocol="bully", transport=transport)
    monkeypatch.setenv("HOOK_LOG", str(c.hook_log))
    return configmod.load(str(c.config_path("n1")), "n1")


async def _until(check, what: str, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)


@pytest.mark.parametrize("loop_factory", loop_factories())
def test_a_daemon_whose_sends_fail_keeps_its_socket_and_hears_and_sends_afterwards(tmp_path, monkeypatch, loop_factory):
    """A real Runtime on a real loop: its group sends fail (the broadcast
    address without SO_BROADCAST: EACCES, on any host, no root needed), then
    go to a socket of ours; it must still send and receive afterwards."""
    cfg = _config(tmp_path, monkeypatch)
    receiver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    receiver.bind(("127.0.0.1", 0))
    receiver.setblocking(False)

    async def scenario():
        runtime = Runtime(cfg)
        assert await runtime.start()
        try:
            # a one-member bully cluster leads at once and beacons to the group
            runtime._group_destination = ("255.255.255.255", cfg.port)
            await _until(lambda: runtime.status()["send_errors"].get("EACCES", 0) >= 3, "failed sends")
            runtime._group_destination = receiver.getsockname()
            got: list[bytes] = []

            def read() -> bool:
                try:
                    got.append(receiver.recv(2048))
                except BlockingIOError:
                    pass
                return bool(got)

            await _until(read, "a datagram after the failures")
            # and it still reads: junk to its unicast socket is counted
            before = runtime.status()["dropped"]["bad_encoding"]
            receiver.sendto(b"\xc1 not msgpack", runtime._send_sock.getsockname())
            await _until(lambda: runtime.status()["dropped"]["bad_encoding"] > before, "the junk counted")
            status = runtime.status()
            assert status["transports_lost"] == 0
            assert all(not t.is_closing() for t in runtime._transports)
            assert 'electiond_send_errors_total{errno="EACCES"} ' in runtime.metrics_text()
        finally:
            await runtime.stop()

    with asyncio.Runner(loop_factory=loop_factory) as runner:
        runner.run(scenario())
    receiver.close()


@pytest.mark.parametrize("loop_factory", loop_factories())
def test_a_handler_exception_costs_the_datagram_not_the_transport(tmp_path, monkeypatch, loop_factory, caplog):
    """uvloop closes a datagram transport whose datagram_received raises."""
    cfg = _config(tmp_path, monkeypatch)
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)

    async def scenario():
        runtime = Runtime(cfg)
        assert await runtime.start()
        real = runtime._on_datagram
        calls = []  # its own group beacons come in too

        def fails_once(data, addr):
            calls.append(data)
            if data == b"first":
                raise RuntimeError("a bug in the receive path")
            real(data, addr)

        try:
            runtime._on_datagram = fails_once  # _Datagrams holds the bound method: patch the protocols
            for transport in runtime._transports:
                transport.get_protocol()._handler = fails_once
            where = runtime._send_sock.getsockname()
            sender.sendto(b"first", where)
            await _until(lambda: b"first" in calls, "the first datagram")
            before = runtime.status()["dropped"]["bad_encoding"]
            sender.sendto(b"\xc1 second", where)
            await _until(lambda: runtime.status()["dropped"]["bad_encoding"] > before, "the second datagram counted")
            assert runtime.status()["transports_lost"] == 0
        finally:
            await runtime.stop()

    caplog.set_level(logging.ERROR, logger="electiond")
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        runner.run(scenario())
    sender.close()
    assert any("error handling a datagram" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("transport, role", [("multicast", "unicast"), ("multicast", "group"),
                                             ("unicast", "unicast")])
@pytest.mark.parametrize("loop_factory", loop_factories())
def test_a_transport_closed_by_anything_but_stop_is_reopened_on_its_port(tmp_path, monkeypatch, loop_factory,
                                                                          transport, role, caplog):
    cfg = _config(tmp_path, monkeypatch, transport)
    index = 0 if role == "unicast" else 1
    junk = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    junk.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton("127.0.0.1"))  # the group is on lo

    async def scenario():
        runtime = Runtime(cfg)
        assert await runtime.start()
        try:
            lost = runtime._transports[index]
            where = runtime._sockets[index].getsockname()
            lost.close()
            await _until(lambda: runtime.transports_lost == 1 and runtime._transports[index] is not lost,
                         "the socket reopened")
            assert runtime._sockets[index].getsockname() == where
            # it reads again: junk to the reopened socket is counted
            before = runtime.status()["dropped"]["bad_encoding"]
            junk.sendto(b"\xc1 junk", where if role == "unicast" else (cfg.group, cfg.port))
            await _until(lambda: runtime.status()["dropped"]["bad_encoding"] > before, "the junk counted")
            if transport == "multicast" and role == "unicast":  # and sends on it
                assert runtime._send_sock is runtime._sockets[0]
                sent = sum(runtime.counters.sent.values())
                await _until(lambda: sum(runtime.counters.sent.values()) > sent, "a send")
                assert not runtime.sender.errors.get("EBADF")
            assert runtime.status()["transports_lost"] == 1
        finally:
            await runtime.stop()
        await asyncio.sleep(0.05)  # stop()'s own closes are neither losses nor reopened
        return runtime.transports_lost, all(t.is_closing() for t in runtime._transports)

    caplog.set_level(logging.INFO, logger="electiond")
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        assert runner.run(scenario()) == (1, True)
    junk.close()
    messages = [r.getMessage() for r in caplog.records]
    assert sum(f"the {role} UDP transport was lost" in m for m in messages) == 1
    assert sum(f"the {role} socket is open again" in m for m in messages) == 1


def test_a_reopen_that_fails_is_retried_and_logged_once(tmp_path, monkeypatch, caplog):
    from electiond import net

    cfg = _config(tmp_path, monkeypatch)
    monkeypatch.setattr(net, "RETRY_INTERVAL_S", 0.02)
    real = net.reopen_socket
    attempts = []

    def down_twice(*args):
        attempts.append(args)
        if len(attempts) <= 2:
            raise net.NetError("interface 'lo' has no IPv4 address", transient=True)
        return real(*args)

    monkeypatch.setattr(net, "reopen_socket", down_twice)

    async def scenario():
        runtime = Runtime(cfg)
        assert await runtime.start()
        try:
            lost = runtime._transports[1]
            lost.close()
            await _until(lambda: runtime._transports[1] is not lost, "the socket reopened")
        finally:
            await runtime.stop()

    caplog.set_level(logging.INFO, logger="electiond")
    asyncio.run(scenario())
    assert len(attempts) == 3
    assert sum("cannot reopen the group socket yet" in r.getMessage() for r in caplog.records) == 1
