"""The keepalived notify-FIFO reader (tests/lab/kafifo.py): its line parser and
stamps on made-up lines, and the reader process on a FIFO this test writes
(no keepalived, no root): records in the hook log's format in the FIFO's
order, drained on SIGTERM, no process or FIFO left behind."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lab.hooklog import read_log
from lab.kafifo import FifoLine, FifoReader, LineSplitter, hook_event, parse_line, stamps


def test_parses_keepalived_instance_lines() -> None:
    assert parse_line('INSTANCE "lab" MASTER 104\n') == FifoLine("INSTANCE", "lab", "MASTER", 104)
    assert parse_line('INSTANCE "lab" BACKUP 100') == FifoLine("INSTANCE", "lab", "BACKUP", 100)
    assert parse_line('GROUP "g1" FAULT') == FifoLine("GROUP", "g1", "FAULT", None)


@pytest.mark.parametrize("line", ["", "INSTANCE", 'INSTANCE "lab"', "INSTANCE lab MASTER 104",
                                  'INSTANCE "lab" MASTER high', 'VS [10.0.0.1]:tcp:80 UP',
                                  'INSTANCE "lab" MASTER 104 extra', '"', 'INSTANCE " MASTER 1'])
def test_rejects_what_is_not_an_instance_or_group_line(line: str) -> None:
    assert parse_line(line) is None


def test_maps_states_to_hook_events_of_our_instance_only() -> None:
    def event(line: str) -> str | None:
        return hook_event(parse_line(line), "lab")

    assert event('INSTANCE "lab" MASTER 104') == "promote"
    assert event('INSTANCE "lab" BACKUP 104') == "demote"
    assert event('INSTANCE "lab" FAULT 104') == "fault"
    assert event('INSTANCE "lab" STOP 104') == "demote"
    # not state changes: a master hearing a lower priority stays master; priority notes
    assert event('INSTANCE "lab" MASTER_RX_LOWER_PRI 104') is None
    assert event('INSTANCE "lab" MASTER_PRIORITY 90') is None
    assert event('INSTANCE "other" MASTER 104') is None
    assert event('GROUP "lab" MASTER') is None
    assert event("garbage") is None


def test_stamps_grow_strictly_even_within_one_read() -> None:
    assert stamps(1000, 0, 3) == [1000, 1001, 1002]
    # a clock step back (or one read in the same ns) still keeps keepalived's order
    assert stamps(900, 1002, 2) == [1003, 1004]
    assert stamps(5000, 1004, 0) == []


def test_splitter_keeps_a_partial_line_for_its_end() -> None:
    sp = LineSplitter()
    assert sp.feed(b'INSTANCE "lab" MAS') == []
    assert sp.feed(b'TER 104\nINSTANCE "lab" BACKUP 104\n\nINST') == [
        'INSTANCE "lab" MASTER 104', 'INSTANCE "lab" BACKUP 104']
    assert sp.feed(b"x" * 5000) == []  # no newline for 4 KiB: not keepalived's, dropped
    assert sp.feed(b'\nINSTANCE "lab" FAULT 104\n') == ['INSTANCE "lab" FAULT 104']


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie is gone for our purposes (reaped by whoever waits for it)
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] != "Z"
    except (OSError, IndexError):
        return False


def test_the_reader_appends_records_in_fifo_order_and_drains_on_stop(tmp_path: Path) -> None:
    fifo, log, raw = tmp_path / "notify.fifo", tmp_path / "hooks.log", tmp_path / "n1.fifo.log"
    reader = FifoReader(fifo, log, raw, "n1")
    reader.start()
    try:
        assert fifo.exists() and reader.running()
        pid = reader.proc.pid
        # as keepalived does: O_RDWR | O_NONBLOCK, one write() per line
        fd = os.open(fifo, os.O_RDWR | os.O_NONBLOCK)
        before_ns = time.time_ns()
        for line in ['INSTANCE "lab" BACKUP 100', 'INSTANCE "lab" MASTER 100', 'INSTANCE "lab" MASTER_RX_LOWER_PRI 100',
                     'INSTANCE "lab" BACKUP 100', 'INSTANCE "lab" MASTER 100']:
            os.write(fd, f"{line}\n".encode())
        os.write(fd, b'INSTANCE "lab" FAULT 100\n')  # the last one, written just before the "death"
        os.close(fd)
    finally:
        reader.stop()
    assert not reader.running() and not _alive(pid)
    assert not fifo.exists()
    events = read_log(log)
    assert [(e.node, e.event, e.term) for e in events] == [
        ("n1", "demote", 0), ("n1", "promote", 0), ("n1", "demote", 0), ("n1", "promote", 0), ("n1", "fault", 0)]
    assert all(e.t_s * 1e9 >= before_ns - 1e3 for e in events)
    stamped = [int(line.split()[0]) for line in log.read_text().splitlines()]
    assert stamped == sorted(stamped) and len(set(stamped)) == len(stamped)
    assert len(raw.read_text().splitlines()) == 6  # every line, state change or not


def test_the_reader_exits_when_the_lab_is_gone(tmp_path: Path) -> None:
    """A lab killed outright (no finally) leaves no reader and no FIFO: the
    reader notices its parent is gone within its poll period."""
    script = (
        "import sys, time\n"
        f"sys.path.insert(0, {str(Path(__file__).parent)!r})\n"
        "from pathlib import Path\n"
        "from lab.kafifo import FifoReader\n"
        f"d = Path({str(tmp_path)!r})\n"
        "r = FifoReader(d / 'notify.fifo', d / 'hooks.log', d / 'raw.log', 'n1')\n"
        "r.start()\n"
        "print(r.proc.pid, flush=True)\n"
        "time.sleep(60)\n")
    lab = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        from procio import readline_within
        reader_pid = int(readline_within(lab.stdout, 30, "the stand-in lab"))
        assert (tmp_path / "notify.fifo").exists()
        lab.send_signal(signal.SIGKILL)
        lab.wait(10)
        deadline = time.monotonic() + 15
        while _alive(reader_pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not _alive(reader_pid)
        assert not (tmp_path / "notify.fifo").exists()
    finally:
        if lab.poll() is None:
            lab.kill()
            lab.wait(10)
        lab.stdout.close()


@pytest.mark.skipif(shutil.which("keepalived") is None, reason="needs keepalived (its config is written)")
def test_stop_all_stops_a_reader_whose_keepalived_never_started(tmp_path: Path) -> None:
    """Interrupted between a reader's start and keepalived's spawn (a SIGTERM
    to the lab): stop_all still stops that reader and removes its FIFO. No LAN
    is needed for this (nothing is sent)."""
    import types

    from lab.systems import KeepalivedSystem

    system = KeepalivedSystem(types.SimpleNamespace(subnet="10.213.100"), tmp_path, ["n1", "n2"], 50)
    reader = system.readers["n1"]
    reader.start()
    pid = reader.proc.pid
    system.stop_all()
    assert not _alive(pid) and not reader.fifo.exists() and not system.readers["n2"].fifo.exists()
