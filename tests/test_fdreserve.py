"""The descriptor reserve: held, released for a retry, taken back."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import textwrap

import pytest

from electiond.devcluster import REPO
from electiond.fdreserve import DescriptorReserve, is_exhaustion


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_holds_releases_and_takes_back() -> None:
    before = open_fds()
    reserve = DescriptorReserve(5)
    try:
        assert reserve.held == 5 and open_fds() == before + 5
        with reserve.released() as freed:
            assert freed == 5 and reserve.held == 0 and open_fds() == before
        assert reserve.held == 5 and reserve.uses == 1
    finally:
        reserve.close()
    assert open_fds() == before


def test_status() -> None:
    reserve = DescriptorReserve(3)
    try:
        with reserve.released():
            pass
        status = reserve.status()
        assert status["reserve_held"] == 3 and status["reserve_size"] == 3 and status["reserve_uses"] == 1
        assert status["open"] is not None and status["open"] >= 3
        assert status["limit"] is None or status["limit"] >= status["open"]
    finally:
        reserve.close()


def test_call_retries_once_on_exhaustion_only() -> None:
    reserve = DescriptorReserve(2)
    try:
        calls: list[int] = []

        def flaky() -> str:
            calls.append(reserve.held)
            if len(calls) == 1:
                raise OSError(errno.EMFILE, "Too many open files")
            return "written"

        assert reserve.call(flaky, "state write") == "written"
        # the retry ran with the reserve released
        assert calls == [2, 0] and reserve.held == 2 and reserve.uses == 1

        def disk_full() -> None:
            calls.append(-1)
            raise OSError(errno.ENOSPC, "No space left on device")

        calls.clear()
        with pytest.raises(OSError) as info:
            reserve.call(disk_full, "state write")
        assert info.value.errno == errno.ENOSPC and calls == [-1]  # not retried

        def always_exhausted() -> None:
            raise OSError(errno.ENFILE, "Too many open files in system")

        with pytest.raises(OSError) as info:
            reserve.call(always_exhausted, "state write")
        assert info.value.errno == errno.ENFILE and reserve.held == 2
    finally:
        reserve.close()


def test_is_exhaustion() -> None:
    assert is_exhaustion(OSError(errno.EMFILE, "x")) and is_exhaustion(OSError(errno.ENFILE, "x"))
    assert not is_exhaustion(OSError(errno.ENOMEM, "x")) and not is_exhaustion(ValueError("x"))


# a child process with a low descriptor limit: fill it up, then show that the
# reserve lets a write (open + fsync of a temp file, as the state store does)
# go through, and that the reserve is whole again afterwards
EXHAUST = textwrap.dedent(
    """
    import errno, os, resource, sys
    from electiond.fdreserve import DescriptorReserve
    resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))
    reserve = DescriptorReserve(4)
    hog = []
    while True:
        try:
            hog.append(os.open(os.devnull, os.O_RDONLY))
        except OSError as exc:
            assert exc.errno == errno.EMFILE
            break
        assert len(hog) < 100
    path = sys.argv[1]

    def write():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, b"term 7\\n")
            os.fsync(fd)
        finally:
            os.close(fd)

    try:
        write()
        print("unexpected: write worked without the reserve")
        sys.exit(1)
    except OSError as exc:
        assert exc.errno == errno.EMFILE
    reserve.call(write, "state write")
    assert reserve.held == 4, reserve.held
    for fd in hog:
        os.close(fd)
    print("ok", open(path).read().strip())
    """
)


def test_real_exhaustion_a_write_goes_through_with_the_reserve(tmp_path) -> None:
    target = tmp_path / "state"
    proc = subprocess.run(
        [sys.executable, "-c", EXHAUST, str(target)], capture_output=True, text=True, timeout=60,
        env=dict(os.environ, PYTHONPATH=str(REPO)),
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.strip() == "ok term 7"


def test_both_unit_files_raise_the_descriptor_limit() -> None:
    # debian/ installs these same files (debian/electiond.install)
    for unit in (REPO / "systemd" / "electiond.service", REPO / "systemd" / "electiond@.service"):
        limits = [line for line in unit.read_text().splitlines() if line.startswith("LimitNOFILE=")]
        assert limits == ["LimitNOFILE=65536"], unit
