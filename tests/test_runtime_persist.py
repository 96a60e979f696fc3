"""The runtime's side of the persist contract, without sockets: a failed
StateStore.save drops the event's later Sends and Promotes, keeps the local
facts, is logged once per episode, counted, and fed back to the node."""

from __future__ import annotations

import asyncio
import errno
import logging
import random
from types import SimpleNamespace

from electiond.node import Node
from electiond.protocols.base import Member, PersistedState, Send, Settings
from electiond.runtime import Runtime
from electiond.state import StateStore

MEMBERS = tuple(Member(f"n{i}", i) for i in range(1, 4))


class FakeHooks:
    def __init__(self) -> None:
        self.events: list[str] = []

    def submit(self, transition) -> None:
        self.events.append(transition.event)

    async def wait_idle(self) -> None:
        return None


def _runtime(tmp_path, name="n3"):
    settings = Settings(cluster="c", node_name=name, members=MEMBERS)
    config = SimpleNamespace(settings=settings, state_directory=str(tmp_path), protocol="bully",
                             hooks=SimpleNamespace(refresh_interval_s=60.0, max_promote_failures=3))
    rt = Runtime(config)  # type: ignore[arg-type]
    rt.node = Node(settings, "bully", random.Random(1), 0.0)
    rt.hooks = FakeHooks()  # type: ignore[assignment]
    rt.sent = []
    rt._send = rt.sent.append  # type: ignore[method-assign]
    return rt


def test_failed_save_drops_dependent_effects_logs_once_and_recovers(tmp_path, caplog, monkeypatch):
    async def scenario():
        rt = _runtime(tmp_path)
        node = rt.node
        disk_full = True
        real_write = rt.store._write

        def write():
            if disk_full:
                raise OSError(errno.ENOSPC, "No space left on device")
            real_write()

        monkeypatch.setattr(rt.store, "_write", write)
        with caplog.at_level(logging.INFO, logger="electiond"):
            for _ in range(20):
                t = node.deadline()
                effects = node.on_tick(t)
                if any(type(e).__name__ == "Persist" for e in effects):
                    break
                rt._execute(effects, t)
            rt.sent.clear()
            # the highest id crowns itself: Persist, COORDINATOR, Promote, LeaderChanged
            assert [type(e).__name__ for e in effects][:3] == ["Persist", "Send", "Promote"]
            rt._execute(effects, t)
            await asyncio.sleep(0)
            assert [s.kind for s in rt.sent if s.kind != "PRESENCE"] == []
            assert "promote" not in rt.hooks.events and rt.hooks.events == ["demote"]
            assert not node.is_leader(t) and node.protocol.disk.ok is False
            assert rt.store.state == PersistedState()  # nothing landed, nothing cached
            for _ in range(3):  # the protocol's own retries fail too
                t = node.deadline()
                rt._execute(node.on_tick(t), t)
            assert rt._persist_errors == {"ENOSPC": 4}
            errors = [r for r in caplog.records if r.levelno == logging.ERROR]
            assert len(errors) == 1 and "ENOSPC" in errors[0].getMessage()
            disk_full = False
            for _ in range(20):
                t = node.deadline()
                rt._execute(node.on_tick(t), t)
                if node.is_leader(t):
                    break
            assert node.is_leader(t) and node.protocol.disk.ok
            assert "promote" in rt.hooks.events
            assert any(isinstance(s, Send) and s.kind == "COORDINATOR" for s in rt.sent)
            assert StateStore(str(tmp_path)).load().term == node.protocol.term
            assert sum("work again" in r.getMessage() for r in caplog.records) == 1
        events = [h.event for h in node.history]
        assert "persist_failed" in events and "persist_recovered" in events

    asyncio.run(scenario())


def test_store_keeps_its_cached_state_only_when_the_write_landed(tmp_path, monkeypatch):
    store = StateStore(str(tmp_path))
    store.save(PersistedState(1, "n1"))
    monkeypatch.setattr("os.rename", lambda *a: (_ for _ in ()).throw(OSError(errno.EROFS, "Read-only file system")))
    try:
        store.save(PersistedState(2, "n2"))
    except OSError as exc:
        assert exc.errno == errno.EROFS
    else:
        raise AssertionError("the failed write did not raise")
    assert store.state == PersistedState(1, "n1")
    monkeypatch.undo()
    store.save(PersistedState(2, "n2"))  # the same state again: written, not skipped
    assert StateStore(str(tmp_path)).load() == PersistedState(2, "n2")


def test_recovering_flag_round_trips_through_the_state_file(tmp_path):
    store = StateStore(str(tmp_path))
    store.save(PersistedState(0, None, recovering=True))
    assert StateStore(str(tmp_path)).load() == PersistedState(0, None, recovering=True)
