"""Control socket bounds: a connection cap, an idle timeout, a clear refusal."""

from __future__ import annotations

import asyncio
import json
import os
import resource
import socket
from pathlib import Path

import pytest
from test_config import BASE, write

from electiond import config
from electiond.cli import Unreachable, request
from electiond.control import ControlServer

DEADLINE_S = 10.0


def handler(cmd: str, args: dict) -> object:
    return {"cmd": cmd}


async def connect(path: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_unix_connection(path)


async def ask(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, cmd: str) -> dict:
    writer.write(json.dumps({"cmd": cmd}).encode() + b"\n")
    await writer.drain()
    return json.loads(await asyncio.wait_for(reader.readline(), DEADLINE_S))


def loop_factories() -> list:
    factories = [pytest.param(asyncio.new_event_loop, id="asyncio")]
    try:
        import uvloop
    except ImportError:
        factories.append(pytest.param(None, id="uvloop", marks=pytest.mark.skip(reason="uvloop not installed")))
    else:
        factories.append(pytest.param(uvloop.new_event_loop, id=f"uvloop-{uvloop.__version__}"))
    return factories


def run(tmp_path: Path, body, loop_factory=asyncio.new_event_loop, **kwargs) -> None:
    async def go() -> None:
        server = ControlServer(str(tmp_path / "c.sock"), 0o600, handler, **kwargs)
        await server.start()
        try:
            await body(server)
        finally:
            await server.stop()

    loop = loop_factory()
    try:
        loop.run_until_complete(go())
    finally:
        loop.close()


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_connections_beyond_the_cap_are_refused_at_once_with_one_line(tmp_path: Path) -> None:
    async def body(server: ControlServer) -> None:
        held = [await connect(server.path) for _ in range(3)]
        for reader, writer in held:  # each is really being served
            assert (await ask(reader, writer, "status"))["ok"] is True
        assert server.connections == 3
        reader, writer = await connect(server.path)
        line = await asyncio.wait_for(reader.readline(), DEADLINE_S)
        reply = json.loads(line)
        assert reply["ok"] is False and reply["code"] == "busy" and "too many control connections" in reply["error"]
        assert await asyncio.wait_for(reader.read(), DEADLINE_S) == b""  # closed right after the line
        writer.close()
        assert server.refused == 1
        # one held connection goes away: a new client is served again
        held[0][1].close()
        await held[0][1].wait_closed()
        deadline = asyncio.get_running_loop().time() + DEADLINE_S
        while server.connections != 2:
            assert asyncio.get_running_loop().time() < deadline
            await asyncio.sleep(0.01)
        reader, writer = await connect(server.path)
        assert (await ask(reader, writer, "status"))["result"] == {"cmd": "status"}
        for _, w in held[1:] + [(reader, writer)]:
            w.close()

    run(tmp_path, body, max_connections=3)


def test_idle_connections_are_closed_and_active_ones_are_not(tmp_path: Path) -> None:
    async def body(server: ControlServer) -> None:
        idle_reader, idle_writer = await connect(server.path)
        partial_reader, partial_writer = await connect(server.path)
        partial_writer.write(b'{"cmd": "sta')  # never completes its request
        active = await connect(server.path)
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        # the active client keeps asking more often than the timeout, for longer than it
        while loop.time() - t0 < 1.0:
            assert (await ask(*active, "status"))["ok"] is True
            await asyncio.sleep(0.1)
        for reader in (idle_reader, partial_reader):
            line = await asyncio.wait_for(reader.readline(), DEADLINE_S)
            assert "no request within 0.4s" in json.loads(line)["error"]
            assert await asyncio.wait_for(reader.read(), DEADLINE_S) == b""
        assert server.idle_closed == 2 and server.connections == 1
        for w in (idle_writer, partial_writer, active[1]):
            w.close()

    run(tmp_path, body, idle_timeout_s=0.4)


def test_a_client_that_never_reads_its_replies_is_dropped(tmp_path: Path) -> None:
    big = "x" * 60000

    def bulky(cmd: str, args: dict) -> object:
        return big

    async def go() -> None:
        server = ControlServer(str(tmp_path / "c.sock"), 0o600, bulky, idle_timeout_s=0.3)
        await server.start()
        try:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.connect(server.path)
            sock.setblocking(False)
            loop = asyncio.get_running_loop()
            for _ in range(20):  # far more reply than the socket buffers hold
                try:
                    sock.send(b'{"cmd": "status"}\n')
                except BlockingIOError:
                    break
            deadline = loop.time() + DEADLINE_S
            while not server.connections:  # until the server took it
                assert loop.time() < deadline
                await asyncio.sleep(0.01)
            while server.connections:
                assert loop.time() < deadline, "a client that stopped reading kept its connection"
                await asyncio.sleep(0.05)
            assert server.idle_closed == 1, server.stats()
            sock.close()
        finally:
            await server.stop()

    asyncio.run(go())


@pytest.mark.parametrize("loop_factory", loop_factories())
def test_refused_connections_hold_no_descriptor_even_in_a_burst(tmp_path: Path, loop_factory) -> None:
    """300 clients connect at once against a cap of 4: the server never holds
    more than the cap (the refusal happens inside the accept), and each refused
    client still reads its one busy line."""
    async def body(server: ControlServer) -> None:
        base = open_fds()
        loop = asyncio.get_running_loop()
        clients: list[socket.socket] = []
        peak = 0
        try:
            for _ in range(300):
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                sock.setblocking(False)
                clients.append(sock)
                deadline = loop.time() + DEADLINE_S
                while True:
                    try:
                        sock.connect(server.path)
                        break
                    except BlockingIOError:  # the backlog is full: let the server accept
                        assert loop.time() < deadline
                        await asyncio.sleep(0.001)
                peak = max(peak, open_fds() - len(clients) - base)
            await asyncio.sleep(0.2)  # every wake-up the burst caused has run
            peak = max(peak, open_fds() - len(clients) - base)
            assert peak <= 4 + 2, f"the server held {peak} descriptors with a cap of 4"
            assert server.refused == 296 and server.connections == 4
            busy = 0
            for sock in clients:
                sock.setblocking(True)
                sock.settimeout(0.05)
                try:
                    busy += b'"code": "busy"' in sock.recv(4096)
                except TimeoutError:
                    pass  # one of the four being served: it has not asked anything
            assert busy == 296
        finally:
            for sock in clients:
                sock.close()

    run(tmp_path, body, loop_factory, max_connections=4)


@pytest.mark.parametrize("loop_factory", loop_factories())
def test_out_of_descriptors_the_clients_wait_in_the_backlog(tmp_path: Path, loop_factory) -> None:
    """accept() failing with EMFILE pauses accepting (no spin, no client closed
    unanswered); once descriptors are back the waiting clients are served."""
    async def body(server: ControlServer) -> None:
        loop = asyncio.get_running_loop()
        clients = [socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) for _ in range(3)]
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        fillers: list[int] = []
        try:
            # no descriptor left for accept() (connecting needs none): lower the
            # limit to what is open, then fill the holes below it
            resource.setrlimit(resource.RLIMIT_NOFILE, (open_fds() + 8, hard))
            for _ in range(64):
                try:
                    fillers.append(os.open(os.devnull, os.O_RDONLY))
                except OSError:
                    break
            for sock in clients:
                sock.connect(server.path)
            deadline = loop.time() + DEADLINE_S
            while server.accept_exhausted < 2:  # retried later, not once and given up
                assert loop.time() < deadline
                await asyncio.sleep(0.02)
            assert server.connections == 0
            retries = server.accept_exhausted
            await asyncio.sleep(0.3)
            # paused between retries (ACCEPT_RETRY_S), not spinning on a readable socket
            assert server.accept_exhausted - retries <= 0.3 / 0.1 + 2
        finally:
            for fd in fillers:
                os.close(fd)
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        try:
            for sock in clients:
                sock.setblocking(False)
                await loop.sock_sendall(sock, b'{"cmd": "status"}\n')
                reply = await asyncio.wait_for(loop.sock_recv(sock, 4096), DEADLINE_S)
                assert json.loads(reply)["result"] == {"cmd": "status"}
            assert server.stats()["accept_exhausted"] == server.accept_exhausted >= 2
        finally:
            for sock in clients:
                sock.close()

    run(tmp_path, body, loop_factory)


def test_electionctl_request_says_busy_and_is_unreachable(tmp_path: Path) -> None:
    async def body(server: ControlServer) -> None:
        held = await connect(server.path)
        with pytest.raises(Unreachable, match="daemon busy: too many control connections"):
            await asyncio.to_thread(request, server.path, "status", None, 5.0)
        held[1].close()

    run(tmp_path, body, max_connections=1)


def test_electionctl_request_on_a_connection_closed_without_answer(tmp_path: Path) -> None:
    async def body(path: str) -> None:
        with pytest.raises(Unreachable, match="closed the connection without answering"):
            await asyncio.to_thread(request, path, "status", None, 5.0)

    async def go() -> None:
        path = str(tmp_path / "mute.sock")

        async def mute(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            writer.close()

        server = await asyncio.start_unix_server(mute, path=path)
        async with server:
            await body(path)

    asyncio.run(go())


def test_config_keys(tmp_path: Path) -> None:
    cfg = config.load(write(tmp_path, BASE))
    assert cfg.control_max_connections == 64 and cfg.control_idle_timeout_s == 10.0
    text = BASE.replace("[control]\n", "[control]\nmax_connections = 8\nidle_timeout = 250ms\n")
    cfg = config.load(write(tmp_path, text))
    assert cfg.control_max_connections == 8 and cfg.control_idle_timeout_s == pytest.approx(0.25)
    for bad, message in (("max_connections = 0", "max_connections: must be between 1 and 4096"),
                         ("max_connections = many", "max_connections: expected an integer"),
                         ("idle_timeout = 10ms", "idle_timeout: must be at least 100ms"),
                         ("idle_timeout = soon", "idle_timeout")):
        with pytest.raises(config.ConfigError, match=message) as info:
            config.load(write(tmp_path, BASE.replace("[control]\n", f"[control]\n{bad}\n")))
        assert "[control]" in str(info.value)


def test_history_table_shows_a_hook_error_only_when_there_is_one(capsys: pytest.CaptureFixture[str]) -> None:
    from electiond.cli import print_history

    base = {"ago_s": 1.0, "event": "hook", "term": 3, "hook_event": "promote", "exit_code": None}
    print_history([{**base, "error": "cannot start: Too many open files (EMFILE)"}, {**base, "exit_code": 0,
                                                                                    "error": None}])
    failed, ok = capsys.readouterr().out.splitlines()
    assert "error=cannot start: Too many open files (EMFILE)" in failed
    assert "error" not in ok and "exit_code=0" in ok
