"""A hook that cannot be started is a failed hook, whatever the reason.

Out of descriptors, out of memory, missing, not executable, a bad interpreter
line, an unreadable hook directory, a bug in the runner: each yields a failed
HookResult (so ``on_promote_failure`` applies), never silence. Descriptor
exhaustion is first retried with the descriptor reserve released.
"""

from __future__ import annotations

import asyncio
import errno
import os
from pathlib import Path

import pytest
from test_hooks import T, make_logger, read_lines, runner_for, write_script

from electiond.config import HooksConfig
from electiond.fdreserve import DescriptorReserve
from electiond.hooks import HookRunner, run_command


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def run_promote(runner: HookRunner) -> None:
    async def go() -> None:
        runner.submit(T("promote", 3))
        await runner.close()

    asyncio.run(go())


def fail_first(real, exc: BaseException, times: int = 1):
    """A stand-in for ``real`` that raises ``exc`` on its first ``times`` calls."""
    calls = [0]

    def fake(*args, **kwargs):
        calls[0] += 1
        if calls[0] <= times:
            raise exc
        return real(*args, **kwargs)

    fake.calls = calls  # type: ignore[attr-defined]
    return fake


def emfile() -> OSError:
    return OSError(errno.EMFILE, os.strerror(errno.EMFILE))


def test_pipe_out_of_descriptors_is_a_failed_promote(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    log = tmp_path / "log"
    hook = write_script(tmp_path / "p", f'echo ran >> "{log}"\n')
    runner, results, handler = runner_for(HooksConfig(promote=(str(hook),)), "pipe")
    monkeypatch.setattr(os, "pipe", fail_first(os.pipe, emfile()))
    before = open_fds()
    run_promote(runner)
    (result,) = results
    assert result.event == "promote" and not result.ok and result.exit_code is None
    assert result.error == "cannot start: Too many open files (EMFILE)"
    assert read_lines(log) == []
    assert any("cannot start" in m and "EMFILE" in m for m in handler.messages())
    assert open_fds() <= before
    assert runner.applied == "promote"  # a later demote still runs


def test_pipe_out_of_descriptors_is_retried_with_the_reserve(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    log = tmp_path / "log"
    hook = write_script(tmp_path / "p", f'echo ran >> "{log}"\n')
    reserve = DescriptorReserve(4)
    try:
        runner, results, handler = runner_for(HooksConfig(promote=(str(hook),)), "retry", reserve=reserve)
        fake = fail_first(os.pipe, emfile())
        monkeypatch.setattr(os, "pipe", fake)
        run_promote(runner)
        (result,) = results
        assert result.ok, result
        assert read_lines(log) == ["ran"]
        assert reserve.uses == 1 and reserve.held == 4
        assert any("retrying with the 4 reserved" in m for m in handler.messages())
    finally:
        reserve.close()


def test_exhaustion_that_outlasts_the_reserve_is_a_failure(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    hook = write_script(tmp_path / "p", "true\n")
    reserve = DescriptorReserve(2)
    try:
        runner, results, _ = runner_for(HooksConfig(promote=(str(hook),)), "outlast", reserve=reserve)
        enfile = OSError(errno.ENFILE, os.strerror(errno.ENFILE))
        monkeypatch.setattr(os, "pipe", fail_first(os.pipe, enfile, times=2))
        run_promote(runner)
        (result,) = results
        assert not result.ok and result.error == "cannot start: Too many open files in system (ENFILE)"
        assert reserve.held == 2  # taken back after the failed retry
    finally:
        reserve.close()


@pytest.mark.parametrize(
    "exc, expected",
    [
        (OSError(errno.ENOMEM, os.strerror(errno.ENOMEM)), "cannot start: Cannot allocate memory (ENOMEM)"),
        (OSError(errno.EMFILE, os.strerror(errno.EMFILE)), "cannot start: Too many open files (EMFILE)"),
        (RuntimeError("can't start new thread"), "cannot start: RuntimeError: can't start new thread"),
        (ValueError("embedded null byte"), "cannot start: ValueError: embedded null byte"),
    ],
)
def test_create_subprocess_errors_are_failed_results(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, exc: BaseException, expected: str
) -> None:
    hook = write_script(tmp_path / "p", "true\n")
    runner, results, _ = runner_for(HooksConfig(promote=(str(hook),)), "exec")
    monkeypatch.setattr(asyncio, "create_subprocess_exec", fail_first(asyncio.create_subprocess_exec, exc, 99))
    before = open_fds()
    run_promote(runner)
    (result,) = results
    assert not result.ok and result.error == expected
    assert open_fds() <= before  # the output pipe was closed


def test_create_subprocess_emfile_is_retried_with_the_reserve(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    log = tmp_path / "log"
    hook = write_script(tmp_path / "p", f'echo ran >> "{log}"\n')
    reserve = DescriptorReserve(4)
    try:
        runner, results, _ = runner_for(HooksConfig(promote=(str(hook),)), "exec-retry", reserve=reserve)
        monkeypatch.setattr(asyncio, "create_subprocess_exec", fail_first(asyncio.create_subprocess_exec, emfile()))
        run_promote(runner)
        assert [r.ok for r in results] == [True] and read_lines(log) == ["ran"]
    finally:
        reserve.close()


def test_missing_command(tmp_path: Path) -> None:
    runner, results, _ = runner_for(HooksConfig(promote=(str(tmp_path / "missing"),)), "enoent")
    run_promote(runner)
    (result,) = results
    assert not result.ok and result.error == "cannot start: No such file or directory (ENOENT)"


def test_not_executable(tmp_path: Path) -> None:
    hook = write_script(tmp_path / "p", "true\n", mode=0o644)
    runner, results, _ = runner_for(HooksConfig(promote=(str(hook),)), "eacces")
    run_promote(runner)
    (result,) = results
    assert not result.ok and result.error == "cannot start: Permission denied (EACCES)"


def test_missing_interpreter(tmp_path: Path) -> None:
    hook = tmp_path / "p"
    hook.write_text(f"#!{tmp_path}/no-such-shell\ntrue\n")
    hook.chmod(0o755)
    runner, results, _ = runner_for(HooksConfig(promote=(str(hook),)), "shebang")
    run_promote(runner)
    (result,) = results
    assert not result.ok and result.error == "cannot start: No such file or directory (ENOENT)"


def test_exec_format_error(tmp_path: Path) -> None:
    hook = tmp_path / "p"
    hook.write_bytes(b"\x7fELF\x02\x01\x01garbage, not a program\n")
    hook.chmod(0o755)
    runner, results, _ = runner_for(HooksConfig(promote=(str(hook),)), "enoexec")
    run_promote(runner)
    (result,) = results
    assert not result.ok and result.error == "cannot start: Exec format error (ENOEXEC)"


def test_failed_start_stops_the_promote_and_the_demote_still_runs(tmp_path: Path) -> None:
    log = tmp_path / "log"
    hooks_dir = tmp_path / "hooks"
    (hooks_dir / "promote.d").mkdir(parents=True)
    write_script(hooks_dir / "promote.d" / "20-vip", f'echo vip >> "{log}"\n')
    demote = write_script(tmp_path / "d", f'echo down >> "{log}"\n')
    runner, results, _ = runner_for(
        HooksConfig(promote=(str(tmp_path / "missing"),), demote=(str(demote),), directory=str(hooks_dir)), "stop"
    )

    async def go() -> None:
        runner.submit(T("promote", 3))
        await runner.wait_idle()
        runner.submit(T("demote", 3, reason="stepdown"))
        await runner.close()

    asyncio.run(go())
    assert read_lines(log) == ["down"]
    assert [(r.event, r.ok) for r in results] == [("promote", False), ("demote", True)]


def test_unreadable_hook_directory_fails_the_promote(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    hooks_dir = tmp_path / "hooks"
    (hooks_dir / "promote.d").mkdir(parents=True)
    write_script(hooks_dir / "promote.d" / "10-vip", "true\n")
    runner, results, _ = runner_for(HooksConfig(directory=str(hooks_dir)), "listdir")
    monkeypatch.setattr(os, "listdir", fail_first(os.listdir, emfile(), 99))
    run_promote(runner)
    (result,) = results
    assert result.event == "promote" and not result.ok and result.source == "prepare"
    assert result.error == "cannot prepare hooks: Too many open files (EMFILE)"


def test_unreadable_hook_directory_is_retried_with_the_reserve(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    log = tmp_path / "log"
    hooks_dir = tmp_path / "hooks"
    (hooks_dir / "promote.d").mkdir(parents=True)
    write_script(hooks_dir / "promote.d" / "10-vip", f'echo vip >> "{log}"\n')
    reserve = DescriptorReserve(4)
    try:
        runner, results, _ = runner_for(HooksConfig(directory=str(hooks_dir)), "listdir-retry", reserve=reserve)
        monkeypatch.setattr(os, "listdir", fail_first(os.listdir, emfile()))
        run_promote(runner)
        assert [r.ok for r in results] == [True] and read_lines(log) == ["vip"]
    finally:
        reserve.close()


def test_environment_failure_is_a_failed_promote(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    hook = write_script(tmp_path / "p", "true\n")
    runner, results, _ = runner_for(HooksConfig(promote=(str(hook),)), "env")

    def broken(transition):
        raise MemoryError()

    monkeypatch.setattr(runner, "environment", broken)
    run_promote(runner)
    (result,) = results
    assert not result.ok and result.error == "cannot prepare hooks: MemoryError"


def test_a_bug_in_the_runner_yields_a_failed_result_and_the_queue_goes_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = tmp_path / "log"
    hook = write_script(tmp_path / "h", f'echo "$ELECTIOND_EVENT" >> "{log}"\n')
    runner, results, handler = runner_for(HooksConfig(promote=(str(hook),), demote=(str(hook),)), "bug")
    real = runner._run_commands

    async def buggy(transition, commands, env):
        if transition.event == "promote":
            raise KeyError("oops")
        return await real(transition, commands, env)

    monkeypatch.setattr(runner, "_run_commands", buggy)

    async def go() -> None:
        runner.submit(T("promote", 4))
        await runner.wait_idle()
        runner.submit(T("demote", 4, reason="stepdown"))
        await runner.close()

    asyncio.run(go())
    assert [(r.event, r.ok) for r in results] == [("promote", False), ("demote", True)]
    assert results[0].error == "internal error: KeyError('oops')"
    assert read_lines(log) == ["demote"]
    assert any("runner failed during promote" in m for m in handler.messages())


def test_a_hook_that_cannot_be_supervised_is_killed_and_failed(tmp_path: Path) -> None:
    pid_file = tmp_path / "pid"
    hook = write_script(tmp_path / "h", f'echo $$ > "{pid_file}"\nexec sleep 100000\n')
    logger, _ = make_logger("supervise")

    async def go():
        loop = asyncio.get_running_loop()
        real = loop.connect_read_pipe

        async def broken(*args, **kwargs):
            await asyncio.sleep(0.2)  # let the hook get going
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        loop.connect_read_pipe = broken  # type: ignore[method-assign]
        try:
            return await run_command([str(hook)], env=None, timeout_s=60, kill_grace_s=1, logger=logger, tag="t")
        finally:
            loop.connect_read_pipe = real  # type: ignore[method-assign]

    before = open_fds()
    outcome = asyncio.run(go())
    assert not outcome.ok and outcome.exit_code is None
    assert outcome.error == "lost track of the hook, killed it: No space left on device (ENOSPC)"
    assert outcome.duration_s < 30
    assert open_fds() <= before
    if pid_file.exists():
        from test_hooks import process_gone

        assert process_gone(int(pid_file.read_text()))


# a child process whose descriptors are really used up (no monkeypatching):
# without a reserve the promote is a failed result naming EMFILE; with the
# default reserve it runs. Under asyncio's loop and under uvloop (which needs
# more descriptors to start a process).
REAL_EXHAUSTION = """
import asyncio, os, resource, sys, logging
import uvloop
from electiond.config import HooksConfig
from electiond.fdreserve import DescriptorReserve
from electiond.hooks import HookRunner, Transition

async def main():
    results = []
    reserve = DescriptorReserve() if sys.argv[2] == "reserve" else None
    runner = HookRunner(HooksConfig(promote=(sys.argv[3],)), {}, results.append, logging.getLogger("t"),
                        reserve=reserve)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (128, hard))
    hog = []
    while len(hog) < 200:
        try:
            hog.append(os.open(os.devnull, os.O_RDONLY))
        except OSError:
            break
    runner.submit(Transition("promote", 5, "n1", None, "elected"))
    await runner.close()
    for fd in hog:
        os.close(fd)
    (result,) = results
    print("ok" if result.ok else result.error)

# uvloop.run is newer than Debian 12's uvloop 0.17: a Runner works with both
with asyncio.Runner(loop_factory=uvloop.new_event_loop if sys.argv[1] == "uvloop" else None) as runner:
    runner.run(main())
"""


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
@pytest.mark.parametrize("reserve, expected", [("none", "cannot start: Too many open files (EMFILE)"),
                                               ("reserve", "ok")])
def test_real_descriptor_exhaustion(tmp_path: Path, loop: str, reserve: str, expected: str) -> None:
    import subprocess
    import sys

    from electiond.devcluster import REPO

    log = tmp_path / "log"
    hook = write_script(tmp_path / "p", f'echo ran >> "{log}"\n')
    proc = subprocess.run(
        [sys.executable, "-c", REAL_EXHAUSTION, loop, reserve, str(hook)],
        capture_output=True, text=True, timeout=60, env=dict(os.environ, PYTHONPATH=str(REPO)),
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == expected
    assert read_lines(log) == (["ran"] if expected == "ok" else [])
