"""Runtime.start in-process: a datagram read between start()'s awaits is
counted, never acted on half-started (no hook runner or send transport yet),
and the wait for a missing interface (net.wait_for_sockets)."""

import asyncio
import logging
import types

import pytest

from cluster import Cluster
from electiond import config as configmod, net
from electiond.runtime import Runtime


def load_config(tmp_path, monkeypatch, **replace):
    c = Cluster(tmp_path, 1, protocol="bully")
    for old, new in replace.items():
        c.config_text = c.config_text.replace(old, new)
    monkeypatch.setenv("HOOK_LOG", str(c.hook_log))
    return configmod.load(str(c.config_path("n1")), "n1")


def test_a_datagram_arriving_while_start_binds_is_counted_not_fatal(tmp_path, monkeypatch):
    cfg = load_config(tmp_path, monkeypatch)

    async def scenario():
        loop = asyncio.get_running_loop()
        real_endpoint = loop.create_datagram_endpoint
        delivered = []

        async def endpoint_then_datagram(factory, **kwargs):
            transport, protocol = await real_endpoint(factory, **kwargs)
            # the worst moment: the loop reads a datagram before start() resumes
            protocol.datagram_received(b"\xc1 not msgpack", ("127.0.0.1", 9))
            delivered.append(kwargs["sock"].getsockname())
            return transport, protocol

        monkeypatch.setattr(loop, "create_datagram_endpoint", endpoint_then_datagram)
        runtime = Runtime(cfg)
        assert await runtime.start()
        status = runtime.status()
        await runtime.stop()
        return delivered, status

    delivered, status = asyncio.run(scenario())
    assert len(delivered) == 2
    # dropped before decoding: a valid one could have made the node send
    # through a transport not yet assigned (seen as an AttributeError under load)
    assert status["dropped"]["not_ready"] == 2 and status["dropped"]["bad_encoding"] == 0


def test_a_datagram_before_start_is_counted_as_not_ready(tmp_path, monkeypatch):
    runtime = Runtime(load_config(tmp_path, monkeypatch))
    runtime._on_datagram(b"anything", ("127.0.0.1", 9))
    assert runtime.dropped_not_ready == 1


def test_start_waits_for_the_interface_and_gives_up_when_stopping(tmp_path, monkeypatch):
    cfg = load_config(tmp_path, monkeypatch, **{"interface = 127.0.0.1": "interface = eldnone1"})
    monkeypatch.setattr(net, "RETRY_INTERVAL_S", 0.02)
    statuses = []

    async def scenario():
        stopping = asyncio.Event()
        runtime = Runtime(cfg, on_status=statuses.append)
        asyncio.get_running_loop().call_later(0.3, stopping.set)
        return runtime, await asyncio.wait_for(runtime.start(stopping), 10)

    runtime, started = asyncio.run(scenario())
    assert started is False and runtime.node is None and runtime.codec is None
    assert statuses == ["waiting for the network: interface 'eldnone1' does not exist"]
    assert not (tmp_path / "hooks.log").read_text()  # no startup hook while waiting


@pytest.mark.parametrize("relog_s, logged", [(3600.0, 1), (0.0, 4)])
def test_wait_for_sockets_retries_transient_errors_and_relogs_rarely(monkeypatch, caplog, relog_s, logged):
    monkeypatch.setattr(net, "RETRY_INTERVAL_S", 0.01)
    monkeypatch.setattr(net, "RELOG_INTERVAL_S", relog_s)
    attempts = []
    ready = types.SimpleNamespace(local_address="10.0.0.1")

    def flaky_open(interface, group, port):
        attempts.append(interface)
        if len(attempts) < 5:
            raise net.NetError("interface 'x' does not exist", transient=True)
        return ready

    monkeypatch.setattr(net, "open_sockets", flaky_open)
    logger = logging.getLogger("test.wait")
    with caplog.at_level(logging.INFO, logger="test.wait"):
        result = asyncio.run(net.wait_for_sockets("x", "239.1.1.1", 1, asyncio.Event(), logger))
    assert result is ready and len(attempts) == 5
    waits = [r for r in caplog.records if "waiting for the network" in r.getMessage()]
    assert len(waits) == logged
    assert all("waited" in r.getMessage() for r in waits[1:])
    assert any("network ready after" in r.getMessage() for r in caplog.records)


def test_wait_for_sockets_raises_a_permanent_error(monkeypatch):
    def refuse(interface, group, port):
        raise net.NetError("cannot bind: Permission denied", transient=False)

    monkeypatch.setattr(net, "open_sockets", refuse)
    with pytest.raises(net.NetError, match="Permission denied"):
        asyncio.run(net.wait_for_sockets("x", "239.1.1.1", 1, asyncio.Event(), logging.getLogger("t")))


def test_check_interface_reports_absent_names_and_addresses():
    assert net.check_interface("127.0.0.1") is None
    absent = net.check_interface("eldnone2")
    assert "does not exist" in str(absent) and absent.transient
    # 192.0.2.0/24 is TEST-NET-1: not assigned here, so binding it fails, for now
    unassigned = net.check_interface("192.0.2.77")
    assert "Cannot assign requested address" in str(unassigned) and unassigned.transient
