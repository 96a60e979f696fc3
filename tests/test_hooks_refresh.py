"""[hooks] refresh in the hook runner: it runs only while the promote of its
term is in effect, never after a demote has started (queued behind one it is
dropped; running when one is queued it is killed), and serialized with the rest."""

from __future__ import annotations

import asyncio
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from electiond.config import HooksConfig
from electiond.hooks import EVENT_REFRESH, plan_with_refresh

from test_hooks import T, gated_hook, read_lines, runner_for, wait_until, write_script


# ---- planning (pure) ----------------------------------------------------------------


def test_a_refresh_runs_only_under_the_promote_of_its_term():
    r = T("refresh", 4)
    assert plan_with_refresh("promote", 4, [r]) == [r]
    assert plan_with_refresh("promote", 3, [r]) == []  # an older leadership's refresh
    assert plan_with_refresh("demote", None, [r]) == []
    assert plan_with_refresh(None, None, [r]) == []  # state unknown: nothing to re-announce


def test_refreshes_that_pile_up_run_once():
    rs = [T("refresh", 4), T("refresh", 4), T("refresh", 4)]
    assert plan_with_refresh("promote", 4, rs) == [rs[-1]]


def test_a_refresh_queued_with_a_demote_is_dropped_wherever_it_stands():
    d, r = T("demote", 4), T("refresh", 4)
    assert plan_with_refresh("promote", 4, [d, r]) == [d]
    assert plan_with_refresh("promote", 4, [r, d]) == [d]
    f = T("fault", 4)
    assert plan_with_refresh("promote", 4, [r, f, r]) == [f]


@given(st.lists(st.sampled_from(["promote", "demote", "fault", "refresh"]), min_size=1, max_size=8),
       st.sampled_from([None, "promote", "demote", "fault"]))
def test_refresh_never_changes_the_plan_of_the_state_changes(events, applied):
    pending = [T(e, 5) for e in events]
    plan = plan_with_refresh(applied, 5 if applied == "promote" else None, pending)
    changes = [t for t in pending if t.event != EVENT_REFRESH]
    if changes:
        assert all(t.event != EVENT_REFRESH for t in plan)
    else:
        assert len(plan) <= 1 and (not plan or applied == "promote")


# ---- the runner (real processes) -----------------------------------------------------------


def test_refresh_runs_with_event_refresh_and_keeps_the_promote_in_effect(tmp_path: Path):
    log = tmp_path / "log"
    hook = write_script(tmp_path / "h", f'echo "$ELECTIOND_EVENT:$ELECTIOND_TERM" >> "{log}"\n')
    cmd = (str(hook),)
    runner, results, _ = runner_for(HooksConfig(promote=cmd, demote=cmd, refresh=cmd), "refresh")

    async def go():
        runner.submit(T("promote", 2))
        await runner.wait_idle()
        for _ in range(2):
            runner.submit(T("refresh", 2))
            await runner.wait_idle()
        assert runner.applied == "promote"
        runner.submit(T("demote", 2))
        await runner.wait_idle()
        runner.submit(T("refresh", 2))  # too late: leadership is gone
        await runner.close()

    asyncio.run(go())
    assert read_lines(log) == ["promote:2", "refresh:2", "refresh:2", "demote:2"]
    assert [r.event for r in results] == ["promote", "refresh", "refresh", "demote"]


def test_a_refresh_queued_behind_a_demote_never_runs(tmp_path: Path):
    hook, log, gate = gated_hook(tmp_path)
    cmd = (str(hook),)
    runner, results, _ = runner_for(HooksConfig(promote=cmd, demote=cmd, refresh=cmd, timeout_s=60), "behind")

    async def go():
        runner.submit(T("promote", 3))
        await wait_until(lambda: read_lines(log) == ["promote:3"], "the promote to start")
        runner.submit(T("demote", 3))
        runner.submit(T("refresh", 3))
        gate.touch()
        await runner.close()

    asyncio.run(go())
    assert read_lines(log) == ["promote:3", "demote:3"]
    assert runner.coalesced == 1


def test_a_running_refresh_is_killed_when_a_demote_is_queued(tmp_path: Path):
    log, started = tmp_path / "log", tmp_path / "started"
    slow = write_script(tmp_path / "slow", f"""\
        echo "$ELECTIOND_EVENT" >> "{log}"
        touch "{started}"
        sleep 30
        echo "refresh-finished" >> "{log}"
        """)
    quick = write_script(tmp_path / "quick", f'echo "$ELECTIOND_EVENT" >> "{log}"\n')
    runner, results, handler = runner_for(
        HooksConfig(promote=(str(quick),), demote=(str(quick),), refresh=(str(slow),), timeout_s=60), "kill")

    async def go():
        runner.submit(T("promote", 1))
        await runner.wait_idle()
        runner.submit(T("refresh", 1))
        await wait_until(started.exists, "the refresh to start")
        t0 = asyncio.get_running_loop().time()
        runner.submit(T("demote", 1))
        await runner.close()
        return asyncio.get_running_loop().time() - t0

    took_s = asyncio.run(go())
    assert read_lines(log) == ["promote", "refresh", "demote"]
    assert took_s < 15  # not the refresh's 30 s sleep
    refresh = [r for r in results if r.event == "refresh"]
    assert len(refresh) == 1 and not refresh[0].ok and "cut short" in (refresh[0].error or "")
    assert any("killing the refresh" in m for m in handler.messages())
