"""The hand-over's wait for registered run-as-leader supervisors (electiond/coord/handover.py)."""

from __future__ import annotations

import asyncio

from electiond.coord.handover import MAX_WAIT_S, SupervisorRegistry


def test_a_handover_waits_until_every_supervisor_hung_up():
    async def main() -> None:
        reg = SupervisorRegistry()
        await asyncio.wait_for(reg.wait_stopped(), 0.1)  # nobody registered: no wait
        assert reg.status()["handovers_waited"] == 0
        streams = [reg.supervise(5.0), reg.supervise(5.0)]
        for s in streams:
            assert "registered" in await s.__anext__()
        assert reg.count() == 2
        waiter = asyncio.ensure_future(reg.wait_stopped())
        await asyncio.sleep(0.05)
        await streams[0].aclose()  # one CMD dead: still waiting for the other
        await asyncio.sleep(0.05)
        assert not waiter.done() and reg.count() == 1
        await streams[1].aclose()
        await asyncio.wait_for(waiter, 1.0)
        assert reg.status() == {"registered": 0, "handovers_waited": 1, "handovers_timed_out": 0}

    asyncio.run(main())


def test_a_supervisor_that_never_hangs_up_delays_a_handover_only_by_its_bound():
    async def main() -> None:
        reg = SupervisorRegistry()
        stuck = reg.supervise(0.2)
        await stuck.__anext__()
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        await asyncio.wait_for(reg.wait_stopped(), 5.0)
        assert 0.15 <= loop.time() - t0 < 3.0
        assert reg.status()["handovers_timed_out"] == 1
        await stuck.aclose()
        # an absurd bound is capped
        big = reg.supervise(10_000.0)
        await big.__anext__()
        assert max(reg._live.values()) == MAX_WAIT_S
        await big.aclose()

    asyncio.run(main())


def test_a_cancelled_stream_the_hang_up_unregisters():
    async def main() -> None:
        reg = SupervisorRegistry()
        s = reg.supervise(1.0)
        await s.__anext__()
        task = asyncio.ensure_future(s.__anext__())  # what the control server awaits
        await asyncio.sleep(0.01)
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            pass
        assert reg.count() == 0

    asyncio.run(main())
