"""Hook runner: ordering, coalescing, timeouts, environment, failure reporting.

Real processes throughout. Nothing depends on how fast the machine is: hooks
that must stay busy wait on a gate file the test creates, and every wait is
bounded by a generous deadline.
"""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import textwrap
import time
from pathlib import Path

import psutil
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from electiond.config import HooksConfig
from electiond.hooks import (
    DOWN_EVENTS,
    HookResult,
    HookRunner,
    Transition,
    directory_hooks,
    plan_transitions,
    run_command,
)

DEADLINE_S = 20.0


def T(event: str, term: int = 1, reason: str = "test", leader: str | None = "n1") -> Transition:
    return Transition(event=event, term=term, leader=leader, previous_leader=None, reason=reason)


class ListHandler(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def messages(self) -> list[str]:
        return [r.getMessage() for r in self.records]


def make_logger(name: str) -> tuple[logging.Logger, ListHandler]:
    logger = logging.getLogger(f"test.hooks.{name}.{id(object())}")
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    handler = ListHandler()
    logger.addHandler(handler)
    return logger, handler


def write_script(path: Path, body: str, mode: int = 0o755) -> Path:
    path.write_text("#!/bin/sh\n" + textwrap.dedent(body))
    path.chmod(mode)
    return path


async def wait_until(predicate, what: str) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + DEADLINE_S
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


def process_gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def kill_leftover(pid_file: Path) -> None:
    """A failing test must not leave its sleeper behind."""
    try:
        pid = int(pid_file.read_text())
    except (OSError, ValueError):
        return
    if not process_gone(pid):
        os.kill(pid, 9)


def read_lines(path: Path) -> list[str]:
    return path.read_text().split() if path.exists() else []


# --------------------------------------------------------------------------- planning (pure)


def test_plan_runs_single_transition() -> None:
    p = T("promote", 4)
    assert plan_transitions("demote", None, [p]) == [p]


def test_plan_drops_promote_followed_by_demote_when_already_down() -> None:
    # the promote never ran, so the node ends down without running anything
    assert plan_transitions("demote", None, [T("promote"), T("demote")]) == []


def test_plan_never_skips_demote_after_a_promote_that_ran() -> None:
    d1, p2 = T("demote", 1), T("promote", 2)
    assert plan_transitions("promote", 1, [d1, p2]) == [d1, p2]


def test_plan_promote_demote_promote_from_down_runs_only_final_promote() -> None:
    p1, d1, p3 = T("promote", 1), T("demote", 1), T("promote", 3)
    assert plan_transitions("demote", None, [p1, d1, p3]) == [p3]


def test_plan_unknown_state_always_runs_startup_cleanup() -> None:
    startup, p = T("demote", 0, "startup"), T("promote", 1)
    assert plan_transitions(None, None, [startup, p]) == [startup, p]
    assert plan_transitions(None, None, [startup]) == [startup]


def test_plan_duplicate_promote_same_term_is_dropped_new_term_runs() -> None:
    assert plan_transitions("promote", 5, [T("promote", 5)]) == []
    p6 = T("promote", 6)
    assert plan_transitions("promote", 5, [p6]) == [p6]


def test_plan_down_events_first_down_then_final() -> None:
    d, f = T("demote"), T("fault")
    assert plan_transitions("promote", 1, [d, f]) == [d, f]
    assert plan_transitions("promote", 1, [d, T("promote", 2), T("demote", 2)]) == [d]
    # a repeated down event when already in that state is not needed
    assert plan_transitions("fault", None, [T("fault")]) == []
    assert plan_transitions("fault", None, [d]) == [d]


EVENT = st.sampled_from(["promote", "demote", "fault"])


@settings(max_examples=300, deadline=None)
@given(
    initial=st.sampled_from([None, "promote", "demote", "fault"]),
    arrivals=st.lists(st.lists(EVENT, min_size=1, max_size=5), min_size=1, max_size=6),
)
def test_plan_properties_under_any_batching(initial, arrivals) -> None:
    """Drive the planner like the runner does (one step, then re-plan with new
    arrivals) and check the rules on the sequence that actually ran."""
    submitted: list[Transition] = []
    applied, applied_term = initial, None
    pending: list[Transition] = []
    ran: list[Transition] = []
    term = 0
    for batch in arrivals:
        for event in batch:
            term += 1
            t = T(event, term)
            submitted.append(t)
            pending.append(t)
        # run one step per arrival batch, so transitions pile up in between
        plan = plan_transitions(applied, applied_term, pending)
        pending = plan[1:]
        if plan:
            ran.append(plan[0])
            applied, applied_term = plan[0].event, plan[0].term
    for _ in range(len(submitted) + 1):  # drain; bounded
        plan = plan_transitions(applied, applied_term, pending)
        if not plan:
            break
        pending = plan[1:]
        ran.append(plan[0])
        applied, applied_term = plan[0].event, plan[0].term
    else:
        raise AssertionError("planner did not converge")

    order = {id(t): i for i, t in enumerate(submitted)}
    # strictly in submission order, each at most once
    assert [order[id(t)] for t in ran] == sorted({order[id(t)] for t in ran})
    final = submitted[-1]
    # the final state is in effect at the end
    end_state = ran[-1].event if ran else initial
    assert end_state == final.event or (final.event in DOWN_EVENTS and end_state == final.event)
    # every promote that ran is followed by a down if any down was submitted after it
    for i, t in enumerate(ran):
        if t.event == "promote" and any(s.event in DOWN_EVENTS for s in submitted[order[id(t)] + 1 :]):
            assert any(r.event in DOWN_EVENTS for r in ran[i + 1 :]), (ran, submitted)
    # unknown initial state: the first down event submitted is never skipped
    if initial in (None, "promote") and any(s.event in DOWN_EVENTS for s in submitted):
        assert any(r.event in DOWN_EVENTS for r in ran)


# --------------------------------------------------------------------------- run-parts


def test_directory_hooks_run_parts_rules(tmp_path: Path) -> None:
    d = tmp_path / "promote.d"
    d.mkdir()
    for name in ["20-b", "10-a", "30-c.sh", ".hidden", "40-d~", "50-e.dpkg-old", "#60-f#", "70-g.swp"]:
        write_script(d / name, "exit 0\n")
    write_script(d / "15-noexec", "exit 0\n", mode=0o644)
    (d / "25-dir").mkdir()
    (d / "35-broken").symlink_to(tmp_path / "nowhere")
    (d / "45-link").symlink_to(d / "10-a")
    found = [os.path.basename(p) for p in directory_hooks(str(tmp_path), "promote")]
    assert found == ["10-a", "20-b", "30-c.sh", "45-link"]
    assert directory_hooks(str(tmp_path), "demote") == []


# --------------------------------------------------------------------------- runner (real processes)


def runner_for(config: HooksConfig, name: str, base_env: dict[str, str] | None = None, **kwargs):
    logger, handler = make_logger(name)
    results: list[HookResult] = []
    runner = HookRunner(config, base_env or {"ELECTIOND_NODE": "n1"}, results.append, logger, **kwargs)
    return runner, results, handler


def test_environment_passed_to_hooks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "env"
    monkeypatch.setenv("INHERITED_FROM_DAEMON", "yes")
    hook = write_script(tmp_path / "dump", f'env > "{out}"\n')
    runner, results, _ = runner_for(
        HooksConfig(promote=(str(hook),)),
        "env",
        {"ELECTIOND_NODE": "n2", "ELECTIOND_PROTOCOL": "bully", "ELECTIOND_CLUSTER": "c1"},
    )

    async def go() -> None:
        runner.submit(Transition("promote", 7, "n2", "n1", "elected"))
        await runner.close()

    asyncio.run(go())
    env = dict(line.split("=", 1) for line in out.read_text().splitlines() if "=" in line)
    assert env["ELECTIOND_EVENT"] == "promote"
    assert env["ELECTIOND_NODE"] == "n2"
    assert env["ELECTIOND_LEADER"] == "n2"
    assert env["ELECTIOND_TERM"] == "7"
    assert env["ELECTIOND_PREVIOUS_LEADER"] == "n1"
    assert env["ELECTIOND_PROTOCOL"] == "bully"
    assert env["ELECTIOND_CLUSTER"] == "c1"
    assert env["ELECTIOND_REASON"] == "elected"
    assert env["INHERITED_FROM_DAEMON"] == "yes"
    assert env["ELECTIOND_PID"] == str(os.getpid())
    assert [r.ok for r in results] == [True]


def test_leader_none_is_empty_string(tmp_path: Path) -> None:
    out = tmp_path / "leader"
    hook = write_script(tmp_path / "h", f'printf "[%s][%s]" "$ELECTIOND_LEADER" "$ELECTIOND_PREVIOUS_LEADER" > "{out}"\n')
    runner, _, _ = runner_for(HooksConfig(demote=(str(hook),)), "leader")

    async def go() -> None:
        runner.submit(Transition("demote", 0, None, None, "startup"))
        await runner.close()

    asyncio.run(go())
    assert out.read_text() == "[][]"


def test_sequential_transitions_run_in_order(tmp_path: Path) -> None:
    log = tmp_path / "log"
    hook = write_script(tmp_path / "h", f'echo "$ELECTIOND_EVENT:$ELECTIOND_TERM" >> "{log}"\n')
    cmd = (str(hook),)
    runner, results, _ = runner_for(HooksConfig(promote=cmd, demote=cmd, fault=cmd), "order")

    async def go() -> None:
        for t in [T("demote", 0), T("promote", 1), T("demote", 1), T("fault", 1), T("demote", 2), T("promote", 3)]:
            runner.submit(t)
            await runner.wait_idle()
        await runner.close()

    asyncio.run(go())
    assert read_lines(log) == ["demote:0", "promote:1", "demote:1", "fault:1", "demote:2", "promote:3"]
    assert all(r.ok for r in results)


def gated_hook(tmp_path: Path) -> tuple[Path, Path, Path]:
    """A hook that logs its start, refuses to overlap, and waits for a gate file."""
    log, gate, lock = tmp_path / "log", tmp_path / "gate", tmp_path / "lock"
    hook = write_script(
        tmp_path / "gated",
        f"""\
        mkdir "{lock}" 2>/dev/null || echo OVERLAP >> "{log}"
        echo "$ELECTIOND_EVENT:$ELECTIOND_TERM" >> "{log}"
        i=0
        while [ ! -e "{gate}" ] && [ $i -lt 2000 ]; do sleep 0.01; i=$((i+1)); done
        rmdir "{lock}"
        """,
    )
    return hook, log, gate


def test_piled_up_transitions_coalesce_and_never_overlap(tmp_path: Path) -> None:
    hook, log, gate = gated_hook(tmp_path)
    cmd = (str(hook),)
    runner, results, _ = runner_for(HooksConfig(promote=cmd, demote=cmd, fault=cmd, timeout_s=60), "coalesce")

    async def go() -> None:
        runner.submit(T("promote", 1))
        await wait_until(lambda: read_lines(log) == ["promote:1"], "first promote to start")
        assert runner.busy
        # these pile up while the promote hook runs
        for t in [T("demote", 1), T("promote", 2), T("demote", 2), T("promote", 3)]:
            runner.submit(t)
        assert runner.pending == ("demote", "promote", "demote", "promote")
        gate.touch()
        await runner.close()

    asyncio.run(go())
    # the promote ran, so a demote must follow; the final state (promote 3) runs last
    assert read_lines(log) == ["promote:1", "demote:1", "promote:3"]
    assert [r.event for r in results] == ["promote", "demote", "promote"]
    assert runner.coalesced == 2


def test_piled_up_promote_then_demote_ends_down(tmp_path: Path) -> None:
    hook, log, gate = gated_hook(tmp_path)
    cmd = (str(hook),)
    runner, _, _ = runner_for(HooksConfig(promote=cmd, demote=cmd, timeout_s=60), "coalesce2")

    async def go() -> None:
        runner.submit(T("demote", 0))
        await wait_until(lambda: read_lines(log) == ["demote:0"], "startup demote to start")
        runner.submit(T("promote", 1))
        runner.submit(T("demote", 1))
        gate.touch()
        await runner.close()

    asyncio.run(go())
    # a promote never runs after a later demote
    assert read_lines(log) == ["demote:0"]


def test_timeout_kills_whole_process_group(tmp_path: Path) -> None:
    child_pid = tmp_path / "child.pid"
    hook = write_script(
        tmp_path / "hang",
        f"""\
        sleep 100000 &
        echo $! > "{child_pid}"
        echo "hook waiting forever"
        wait
        """,
    )
    runner, results, handler = runner_for(
        HooksConfig(promote=(str(hook),), timeout_s=1.0, kill_grace_s=1.0), "timeout"
    )

    async def go() -> None:
        runner.submit(T("promote", 9))
        await runner.close()

    asyncio.run(go())
    (result,) = results
    assert result.timed_out and not result.ok and result.exit_code is None
    assert result.event == "promote" and result.term == 9
    assert result.duration_s >= 1.0
    pid = int(child_pid.read_text())
    assert process_gone(pid), f"forked child {pid} survived the timeout"
    assert any("timed out" in m for m in handler.messages())
    assert "hook promote:hang: hook waiting forever" in handler.messages()


def test_timeout_escalates_to_sigkill_when_term_is_ignored(tmp_path: Path) -> None:
    child_pid = tmp_path / "child.pid"
    hook = write_script(
        tmp_path / "stubborn",
        f"""\
        trap '' TERM
        sleep 100000 &
        echo $! > "{child_pid}"
        while :; do sleep 1; done
        """,
    )
    runner, results, handler = runner_for(
        HooksConfig(demote=(str(hook),), timeout_s=1.0, kill_grace_s=0.5), "sigkill"
    )

    async def go() -> None:
        runner.submit(T("demote"))
        await runner.close()

    asyncio.run(go())
    (result,) = results
    assert result.timed_out and result.signal == 9
    assert result.duration_s >= 1.5
    assert process_gone(int(child_pid.read_text()))
    assert any("SIGKILL" in m for m in handler.messages())


def test_background_child_holding_output_pipe_does_not_block(tmp_path: Path) -> None:
    child_pid = tmp_path / "child.pid"
    hook = write_script(tmp_path / "bg", f'sleep 100000 &\necho $! > "{child_pid}"\necho started\n')
    runner, results, _ = runner_for(HooksConfig(promote=(str(hook),), timeout_s=60), "bg")

    async def go() -> None:
        runner.submit(T("promote"))
        await runner.close()

    try:
        asyncio.run(go())
        (result,) = results
        # the hook exited 0 on its own; its child still holds stdout
        assert result.ok and not result.timed_out
        assert not process_gone(int(child_pid.read_text())), "a hook that exits normally keeps its children"
    finally:
        if child_pid.exists():
            try:
                os.kill(int(child_pid.read_text()), 9)
            except ProcessLookupError:
                pass


def test_failed_promote_is_reported_and_stops_remaining_promote_hooks(tmp_path: Path) -> None:
    log = tmp_path / "log"
    hooks_dir = tmp_path / "hooks"
    (hooks_dir / "promote.d").mkdir(parents=True)
    (hooks_dir / "demote.d").mkdir(parents=True)
    write_script(hooks_dir / "promote.d" / "10-fails", f'echo p10 >> "{log}"\necho "no vip" >&2\nexit 3\n')
    write_script(hooks_dir / "promote.d" / "20-never", f'echo p20 >> "{log}"\n')
    write_script(hooks_dir / "demote.d" / "10-fails", f'echo d10 >> "{log}"\nexit 1\n')
    write_script(hooks_dir / "demote.d" / "20-still-runs", f'echo d20 >> "{log}"\n')
    configured = write_script(tmp_path / "first", f'echo "$ELECTIOND_EVENT-config" >> "{log}"\n')
    runner, results, handler = runner_for(
        HooksConfig(promote=(str(configured),), demote=(str(configured),), directory=str(hooks_dir)), "fail"
    )

    async def go() -> None:
        runner.submit(T("promote", 2))
        await runner.wait_idle()
        runner.submit(T("demote", 2, reason="stepdown"))
        await runner.close()

    asyncio.run(go())
    assert read_lines(log) == ["promote-config", "p10", "demote-config", "d10", "d20"]
    failed = [r for r in results if r.event == "promote" and not r.ok]
    assert len(failed) == 1 and failed[0].exit_code == 3 and failed[0].source == "directory"
    assert failed[0].hook == "promote:10-fails"
    assert [r.ok for r in results if r.event == "demote"] == [True, False, True]
    assert "hook promote:10-fails: no vip" in handler.messages()
    # a failed demote leaves the state unknown, so the next demote is not skipped
    assert runner.applied is None


def test_failed_demote_is_retried_by_next_down_event(tmp_path: Path) -> None:
    log, flag = tmp_path / "log", tmp_path / "ok-now"
    hook = write_script(tmp_path / "d", f'echo "$ELECTIOND_REASON" >> "{log}"\n[ -e "{flag}" ]\n')
    runner, results, _ = runner_for(HooksConfig(demote=(str(hook),)), "retry")

    async def go() -> None:
        runner.submit(T("demote", reason="startup"))
        await runner.wait_idle()
        flag.touch()
        runner.submit(T("demote", reason="shutdown"))
        await runner.wait_idle()
        runner.submit(T("demote", reason="again"))  # now known down: coalesced away
        await runner.close()

    asyncio.run(go())
    assert read_lines(log) == ["startup", "shutdown"]
    assert [r.ok for r in results] == [False, True]


def test_command_that_cannot_start_is_a_failure(tmp_path: Path) -> None:
    runner, results, _ = runner_for(HooksConfig(promote=(str(tmp_path / "missing"),)), "missing")

    async def go() -> None:
        runner.submit(T("promote"))
        await runner.close()

    asyncio.run(go())
    (result,) = results
    assert not result.ok and result.exit_code is None and "cannot start" in (result.error or "")
    assert result.as_dict()["ok"] is False


def test_lost_leadership_during_promote_skips_rest_of_promote(tmp_path: Path) -> None:
    log, gate = tmp_path / "log", tmp_path / "gate"
    hooks_dir = tmp_path / "hooks"
    (hooks_dir / "promote.d").mkdir(parents=True)
    write_script(
        hooks_dir / "promote.d" / "10-slow",
        f'echo p10 >> "{log}"\ni=0\nwhile [ ! -e "{gate}" ] && [ $i -lt 2000 ]; do sleep 0.01; i=$((i+1)); done\n',
    )
    write_script(hooks_dir / "promote.d" / "20-vip", f'echo p20 >> "{log}"\n')
    demote = write_script(tmp_path / "down", f'echo down >> "{log}"\n')
    runner, _, _ = runner_for(HooksConfig(demote=(str(demote),), directory=str(hooks_dir), timeout_s=60), "lost")

    async def go() -> None:
        runner.submit(T("promote"))
        await wait_until(lambda: read_lines(log) == ["p10"], "promote to start")
        runner.submit(T("demote", reason="lease_lost"))
        gate.touch()
        await runner.close()

    asyncio.run(go())
    assert read_lines(log) == ["p10", "down"]


def test_callback_errors_do_not_stop_the_runner(tmp_path: Path) -> None:
    log = tmp_path / "log"
    hook = write_script(tmp_path / "h", f'echo "$ELECTIOND_EVENT" >> "{log}"\n')
    logger, handler = make_logger("cb")

    def bad(_: HookResult) -> None:
        raise RuntimeError("boom")

    runner = HookRunner(HooksConfig(promote=(str(hook),), demote=(str(hook),)), {}, bad, logger)

    async def go() -> None:
        runner.submit(T("promote"))
        await runner.wait_idle()
        runner.submit(T("demote"))
        await runner.close()
        runner.submit(T("promote", 2))  # after close: ignored, not run
        await runner.wait_idle()

    asyncio.run(go())
    assert read_lines(log) == ["promote", "demote"]
    assert any("on_result callback failed" in m for m in handler.messages())


def test_cancelling_a_running_command_kills_its_group(tmp_path: Path) -> None:
    pid_file = tmp_path / "pid"
    hook = write_script(tmp_path / "h", f'sleep 100000 &\necho $! > "{pid_file}"\nwait\n')
    logger, _ = make_logger("cancel")

    async def go() -> None:
        task = asyncio.create_task(
            run_command([str(hook)], env=None, timeout_s=60, kill_grace_s=1, logger=logger, tag="t")
        )
        await wait_until(lambda: pid_file.exists() and pid_file.read_text().strip(), "hook to fork")
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    try:
        asyncio.run(go())
        pid = int(pid_file.read_text())
        # SIGKILL was sent to the group; give the kernel a moment to deliver it
        for _ in range(200):
            if process_gone(pid):
                break
            time.sleep(0.01)
        assert process_gone(pid)
    finally:
        kill_leftover(pid_file)


def test_long_output_lines_are_split_and_capped(tmp_path: Path) -> None:
    hook = write_script(tmp_path / "h", "head -c 10000 /dev/zero | tr '\\0' x\necho\necho tail\n")
    logger, handler = make_logger("long")

    async def go():
        return await run_command([str(hook)], env=None, timeout_s=30, kill_grace_s=1, logger=logger, tag="t")

    outcome = asyncio.run(go())
    assert outcome.ok and outcome.last_line == "tail"
    lines = [m for m in handler.messages() if m.startswith("hook t: ")]
    assert all(len(m) < 4200 for m in lines)
    assert lines[-1] == "hook t: tail"
    assert sum(m.count("x") for m in lines) == 10000
    assert any(m.endswith("[split]") for m in lines)


def test_works_under_uvloop(tmp_path: Path) -> None:
    uvloop = pytest.importorskip("uvloop")
    child_pid = tmp_path / "child.pid"
    hook = write_script(tmp_path / "hang", f'sleep 100000 &\necho $! > "{child_pid}"\nwait\n')
    runner, results, _ = runner_for(HooksConfig(fault=(str(hook),), timeout_s=0.5, kill_grace_s=0.5), "uv")

    async def go() -> None:
        runner.submit(T("fault"))
        await runner.close()

    # asyncio.Runner with a loop factory, as the daemon does: uvloop.run() is
    # not in Debian 12's uvloop 0.17
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner_:
        runner_.run(go())
    assert results[0].timed_out and process_gone(int(child_pid.read_text()))


def test_transition_rejects_unknown_event() -> None:
    with pytest.raises(ValueError):
        T("reboot")


def test_restarted_runner_kills_hooks_left_by_a_crashed_predecessor(tmp_path: Path) -> None:
    token_file = tmp_path / "state" / "hooks.token"
    orphan_pid, log = tmp_path / "orphan.pid", tmp_path / "log"
    # like "vip up" still sending gratuitous ARPs when its daemon was killed
    promote = write_script(tmp_path / "p", f'sleep 100000 &\necho $! > "{orphan_pid}"\n')
    demote = write_script(tmp_path / "d", f'echo "$ELECTIOND_REASON" >> "{log}"\n')
    config = HooksConfig(promote=(str(promote),), demote=(str(demote),), kill_grace_s=2.0)
    bystander = subprocess.Popen(["sleep", "100000"])  # not ours: must survive
    try:
        first, _, _ = runner_for(config, "crashed", token_file=str(token_file))

        async def crashed_daemon() -> None:
            first.submit(T("promote"))
            await first.wait_idle()

        asyncio.run(crashed_daemon())
        pid = int(orphan_pid.read_text())
        assert not process_gone(pid)
        old_token = token_file.read_text().strip()

        second, _, handler = runner_for(config, "restarted", token_file=str(token_file))

        async def restarted_daemon() -> None:
            second.submit(T("demote", reason="startup"))
            await second.close()

        asyncio.run(restarted_daemon())
        assert process_gone(pid), "the orphaned hook survived the restart"
        assert bystander.poll() is None
        assert read_lines(log) == ["startup"]
        assert token_file.read_text().strip() not in ("", old_token)
        assert any("left running by the previous daemon" in m for m in handler.messages())
    finally:
        bystander.kill()
        bystander.wait(10)
        if orphan_pid.exists() and not process_gone(int(orphan_pid.read_text())):
            os.kill(int(orphan_pid.read_text()), 9)


def test_hook_environment_carries_the_runner_token(tmp_path: Path) -> None:
    out = tmp_path / "token"
    hook = write_script(tmp_path / "h", f'printf %s "$ELECTIOND_HOOK_TOKEN" > "{out}"\n')
    token_file = tmp_path / "hooks.token"
    runner, _, _ = runner_for(HooksConfig(fault=(str(hook),)), "token", token_file=str(token_file))

    async def go() -> None:
        runner.submit(T("fault"))
        await runner.close()

    asyncio.run(go())
    assert out.read_text() == token_file.read_text().strip() and len(out.read_text()) == 32
