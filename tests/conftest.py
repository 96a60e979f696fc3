"""Every test is bounded in time, so a hung test fails and names itself
instead of holding CI until its own limit kills the run with no word of
which test hung.

Two stages, because no single one is enough:
- soft, at the test's limit: the stacks of every thread go to stderr and
  HungTest is raised in the main thread. In synchronous code (the usual
  test: it drives daemons as processes and polls them) that fails the test
  and runs its cleanup, so its daemons are stopped.
- hard, a grace period later: an exception raised inside an event loop's
  callback is only logged by the loop, and a C call may not return at all.
  So a thread dumps the stacks again, kills this process's children (the
  daemons the test started) and ends the process. Under xdist the run goes
  on and reports "worker crashed while running <test>".

The limit is ELECTIOND_TEST_TIMEOUT_S (default 420 s, several times the
slowest unmarked test; 0: no limit); a test that needs longer says so with
@pytest.mark.timeout_s(N), and a larger ELECTIOND_TEST_TIMEOUT_S raises that too.
"""
from __future__ import annotations

import faulthandler
import os
import signal
import threading

import psutil
import pytest

DEFAULT_TIMEOUT_S = float(os.environ.get("ELECTIOND_TEST_TIMEOUT_S", "420"))
LIMIT_FROM_ENV = "ELECTIOND_TEST_TIMEOUT_S" in os.environ
HARD_GRACE_S = float(os.environ.get("ELECTIOND_TEST_HARD_GRACE_S", "60"))

_stderr_fd: int | None = None


class HungTest(Exception):
    """Raised in the main thread when a test outlives its limit."""


def pytest_configure(config: pytest.Config) -> None:
    global _stderr_fd
    config.addinivalue_line(
        "markers", "timeout_s(seconds): this test's time limit, instead of the default")
    # A copy taken now writes past pytest's per-test capture, so a dump made
    # just before the process ends is not lost with the capture buffer.
    try:
        _stderr_fd = os.dup(2)
    except OSError:
        _stderr_fd = None


def _limit_s(item: pytest.Item) -> float:
    """0 when unbounded. A limit set in the environment also raises a marked
    one, so a long campaign (ELECTIOND_SIM_SEEDS=20000) needs one setting."""
    if DEFAULT_TIMEOUT_S <= 0:
        return 0.0
    marker = item.get_closest_marker("timeout_s")
    if marker is None:
        return DEFAULT_TIMEOUT_S
    if LIMIT_FROM_ENV:
        return max(float(marker.args[0]), DEFAULT_TIMEOUT_S)
    return float(marker.args[0])


def _say(text: str) -> None:
    fd = _stderr_fd if _stderr_fd is not None else 2
    try:
        os.write(fd, text.encode())
        faulthandler.dump_traceback(file=fd, all_threads=True)
    except OSError:
        pass


def _kill_children() -> None:
    try:
        children = psutil.Process().children(recursive=True)
    except psutil.Error:
        return
    for child in children:
        try:
            child.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(children, timeout=5)


# Modules whose every test may run for many minutes (a marked limit of at least
# this) go first: started last, one of them would run alone on one worker while
# the other idles, the suite's tail. Longest first is the classic remedy.
FRONT_LOADED_LIMIT_S = 600


def _module_limit_s(item: pytest.Item) -> float:
    module = getattr(item, "module", None)
    marks = getattr(module, "pytestmark", [])
    marks = marks if isinstance(marks, list) else [marks]
    limits = [float(m.args[0]) for m in marks if getattr(m, "name", "") == "timeout_s"]
    return max(limits, default=0.0)


def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config, items: list[pytest.Item]) -> None:
    # Stable, and by module-level marks only, so a module's tests stay together
    # (module fixtures are set up once) and every xdist worker sorts alike.
    def key(item: pytest.Item) -> float:
        limit_s = _module_limit_s(item)
        return -limit_s if limit_s >= FRONT_LOADED_LIMIT_S else 0.0
    items.sort(key=key)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem):
    limit_s = _limit_s(item)
    if not limit_s:
        yield
        return
    done = threading.Event()

    def soft(signum, frame):
        _say(f"\n*** {item.nodeid}: over its {limit_s:.0f} s limit; stacks:\n")
        raise HungTest(f"{item.nodeid} ran over its {limit_s:.0f} s limit")

    def hard() -> None:
        if done.wait(limit_s + HARD_GRACE_S):
            return
        _say(f"\n*** {item.nodeid}: still running {HARD_GRACE_S:.0f} s after its "
             f"{limit_s:.0f} s limit; killing its processes and this worker; stacks:\n")
        _kill_children()
        os._exit(70)

    in_main_thread = threading.current_thread() is threading.main_thread()
    previous = None
    if in_main_thread:
        previous = signal.signal(signal.SIGALRM, soft)
        signal.setitimer(signal.ITIMER_REAL, limit_s)
    watchdog = threading.Thread(target=hard, name="test-watchdog", daemon=True)
    watchdog.start()
    try:
        yield
    finally:
        done.set()
        if in_main_thread:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)
