"""The runtime's refresh rules with a real Node and a recording hook runner
(no sockets): refresh every refresh_interval while leader, none after the
demote, and at once for the winner of a healed split brain (bully, ring)."""

from __future__ import annotations

import asyncio
import random
import time

import pytest

from electiond import config as configmod
from electiond.node import Node
from electiond.protocols.base import Demote, Promote, SplitBrain, TokenRaised
from electiond.runtime import Runtime

CONF = """
[cluster]
name = r
protocol = bully
members = n1=1, n2=2, n3=3

[node]
name = n3

[state]
directory = {state}

[hooks]
refresh = /bin/true
refresh_interval = {interval}
"""


class Recorder:
    def __init__(self) -> None:
        self.submitted = []

    def submit(self, transition) -> None:
        self.submitted.append(transition)

    async def wait_idle(self) -> None:
        pass

    def events(self) -> list[tuple[str, int, str]]:
        return [(t.event, t.term, t.reason) for t in self.submitted]


def in_loop(action) -> None:
    """Run ``action`` inside an event loop (a Demote starts a task), and let that task finish."""
    async def go() -> None:
        action()
        await asyncio.sleep(0)
    asyncio.run(go())


@pytest.fixture
def runtime(tmp_path):
    def make(interval: str = "60s", refresh: bool = True) -> tuple[Runtime, Recorder, dict]:
        text = CONF.format(state=tmp_path / "state", interval=interval)
        if not refresh:
            text = text.replace("refresh = /bin/true\n", "")
        path = tmp_path / "e.conf"
        path.write_text(text)
        rt = Runtime(configmod.load(str(path)))
        rt.node = Node(rt.settings, "bully", random.Random(1), time.monotonic())
        leading = {"now": False}
        rt.node.is_leader = lambda now: leading["now"]  # the protocol's view, steered by the test
        rt.hooks = Recorder()
        rt._transports_closed = True  # the demote's follow-up task then has nothing to tell
        return rt, rt.hooks, leading
    return make


def test_the_winner_of_a_healed_split_brain_refreshes_at_once(runtime):
    rt, hooks, leading = runtime()
    now = time.monotonic()
    leading["now"] = True
    rt._execute([Promote(4, "elected")], now)
    rt._execute([SplitBrain("n2", 4, yielded=False)], now + 1.0)
    assert hooks.events() == [("promote", 4, "elected"), ("refresh", 4, "split_brain_healed")]
    # the period restarts from the out-of-turn refresh
    assert rt.refresh.next_at == pytest.approx(now + 61.0)


def test_a_token_raised_while_leading_refreshes_at_once(runtime):
    # a split brain whose loser yielded before we heard its claim shows up only
    # as a raised token (a follower reported the reused one)
    rt, hooks, leading = runtime()
    now = time.monotonic()
    leading["now"] = True
    rt._execute([Promote(4, "elected")], now)
    rt._execute([TokenRaised(6, "token_reused")], now + 2.0)
    assert hooks.events() == [("promote", 4, "elected"), ("refresh", 4, "split_brain_healed")]


def test_the_loser_of_a_split_brain_does_not_refresh(runtime):
    rt, hooks, leading = runtime()
    now = time.monotonic()
    leading["now"] = True
    rt._execute([Promote(4, "elected")], now)
    leading["now"] = False
    in_loop(lambda: rt._execute([SplitBrain("n3", 4, yielded=True), Demote(4, "split_brain")], now + 1.0))
    assert [e[0] for e in hooks.events()] == ["promote", "demote"]
    assert rt.refresh.due(now + 1000.0) is None


def test_no_refresh_without_a_refresh_hook(runtime):
    rt, hooks, leading = runtime(refresh=False)
    now = time.monotonic()
    leading["now"] = True
    rt._execute([Promote(4, "elected"), SplitBrain("n2", 4, yielded=False)], now)
    rt._refresh_if_due(now + 100.0, rt.refresh.due(now + 100.0), "interval")
    assert [e[0] for e in hooks.events()] == ["promote"]


def test_periodic_refresh_while_leader_then_none_after_the_demote(runtime):
    rt, hooks, leading = runtime(interval="2s")
    now = time.monotonic()
    leading["now"] = True
    rt._execute([Promote(6, "elected")], now)
    for k in range(1, 5):
        rt._refresh_if_due(now + 2.0 * k, rt.refresh.due(now + 2.0 * k), "interval")
    assert hooks.events()[1:] == [("refresh", 6, "interval")] * 4
    leading["now"] = False
    in_loop(lambda: rt._execute([Demote(6, "lease_lost")], now + 9.0))
    rt._refresh_if_due(now + 12.0, rt.refresh.due(now + 12.0), "interval")
    assert hooks.events()[-1] == ("demote", 6, "lease_lost")
