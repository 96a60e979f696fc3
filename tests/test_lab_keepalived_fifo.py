"""keepalived observed through its notify FIFO on a namespace LAN (issue 16; root).

Three keepalived instances (tests/lab/systems.py, one FIFO reader each,
tests/lab/kafifo.py). The master is SIGKILLed and restarts; then the new
master is frozen and resumed. The hook log must hold, for every node, the
state changes keepalived wrote to its FIFO, in the order keepalived's own log
entered those states; the checker must end the killed master's interval at
the kill and the frozen one's at the freeze (when it demotes at once on
resume). After teardown no reader process and no FIFO may be left.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import time
from pathlib import Path

import pytest

from electiond.devcluster import wait_for
from lab.chaos import RESUME_DEMOTE_S
from lab.hooklog import read_log
from lab.kafifo import STATE_EVENTS, hook_event, parse_line
from lab.lan import Lan
from lab.systems import KeepalivedSystem

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root to create network namespaces"),
    pytest.mark.skipif(shutil.which("ip") is None, reason="needs iproute2"),
    pytest.mark.skipif(shutil.which("keepalived") is None,
                       reason="needs keepalived (apt-get install keepalived; scripts/test installs it as root)"),
]

HOSTS = ["n1", "n2", "n3"]
ENTERING = re.compile(r"\(lab\) Entering (MASTER|BACKUP|FAULT) STATE")


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] != "Z"
    except (OSError, IndexError):
        return False


def _processes_mentioning(text: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                if text.encode() in (entry / "cmdline").read_bytes() and _alive(int(entry.name)):
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


def _promoted_since(system: KeepalivedSystem, t_s: float, not_node: str) -> str | None:
    for e in read_log(system.log):
        if e.event == "promote" and e.node != not_node and e.t_s >= t_s:
            return e.node
    return None


def _event_after(system: KeepalivedSystem, node: str, event: str, t_s: float) -> float | None:
    return next((e.t_s for e in read_log(system.log) if e.node == node and e.event == event and e.t_s >= t_s), None)


def test_keepalived_states_reach_the_hook_log_in_keepalived_order(tmp_path: Path) -> None:
    lan = Lan(HOSTS, clients=())
    system: KeepalivedSystem | None = None
    reader_pids: set[int] = set()

    def note_readers() -> None:
        reader_pids.update(r.proc.pid for r in system.readers.values() if r.proc is not None)

    try:
        system = KeepalivedSystem(lan, tmp_path, HOSTS, heartbeat_ms=50)
        system.start_all()
        note_readers()
        first = system.wait_leader(30)
        assert all((tmp_path / h / "notify.fifo").exists() for h in HOSTS)

        killed_at = time.time()
        system.kill(first)
        successor = wait_for(lambda: _promoted_since(system, killed_at, first), 30,
                             "a successor's MASTER from its FIFO", system.diagnostics)
        assert not (tmp_path / first / "notify.fifo").exists(), "the killed instance's FIFO outlived its reader"
        restarted_at = time.time()
        system.start(first)
        note_readers()
        # nopreempt: it comes back as BACKUP, and says so through its new FIFO
        wait_for(lambda: _event_after(system, first, "demote", restarted_at), 30, f"{first}'s BACKUP after restart",
                 system.diagnostics)
        assert system.wait_leader(30) == successor

        frozen_at = time.time()
        system.freeze(successor)
        third = wait_for(lambda: _promoted_since(system, frozen_at, successor), 30,
                         "a MASTER while the master is frozen", system.diagnostics)
        resumed_at = time.time()
        system.resume(successor)
        leader = system.wait_leader(30)
        time.sleep(0.5)  # the last lines land
        verdict = system.verdict(resume_demote_s=RESUME_DEMOTE_S)
    finally:
        if system is not None:
            system.stop_all()
        lan.close()

    # torn down: no reader, no FIFO
    assert len(reader_pids) == len(HOSTS) + 1
    assert [p for p in reader_pids if _alive(p)] == []
    assert _processes_mentioning(str(tmp_path)) == []
    fifos = [p for p in tmp_path.rglob("*") if stat.S_ISFIFO(p.lstat().st_mode)]
    assert fifos == []

    events = read_log(system.log)
    for host in HOSTS:
        # the hook log holds exactly the FIFO's state lines, stamp for stamp
        raw = [line.split(" ", 1) for line in (tmp_path / f"{host}.fifo.log").read_text().splitlines()]
        from_fifo = [(int(ns) / 1e9, hook_event(parse_line(line), "lab")) for ns, line in raw]
        from_fifo = [(t, ev) for t, ev in from_fifo if ev]
        mine = [(e.t_s, e.event) for e in events if e.node == host]
        assert mine == from_fifo, host
        # in keepalived's order: its own log's state entries (STOP has none: it
        # is written on shutdown, not entered)
        parsed = [parse_line(line) for _ns, line in raw]
        fifo_states = [p.state for p in parsed if p is not None and p.state in ("MASTER", "BACKUP", "FAULT")]
        logged = ENTERING.findall((tmp_path / f"{host}.log").read_text(errors="replace"))
        assert fifo_states == logged, f"{host}: FIFO {fifo_states} vs keepalived's log {logged}"
        assert "MASTER" in fifo_states or host not in (first, successor, third)

    assert {STATE_EVENTS[s] for s in ("MASTER", "BACKUP")} <= {e.event for e in events}
    by_node = {}
    for iv in verdict.intervals:
        by_node.setdefault(iv.node, []).append(iv)
    kill_mark = next(m.t_s for m in system.marks.items if m.kind == "kill" and m.node == first)
    first_iv = [iv for iv in by_node[first] if iv.start_s <= kill_mark][-1]
    assert first_iv.ended_by == "killed" and first_iv.end_s == kill_mark
    succ_promote = next(e.t_s for e in events if e.node == successor and e.event == "promote" and e.t_s >= killed_at)
    assert succ_promote > kill_mark
    demoted = _event_after(system, successor, "demote", resumed_at)
    print(f"first {first}, successor {successor}, during the freeze {third}, then {leader}; "
          f"{successor} demoted {None if demoted is None else round(demoted - resumed_at, 3)} s after its resume; "
          f"intervals {[(iv.node, round(iv.start_s - killed_at, 3), round((iv.end_s or 0) - killed_at, 3), iv.ended_by) for iv in verdict.intervals]}")
    priority = {h: 100 + i for i, h in enumerate(HOSTS)}
    if priority[third] > priority[successor]:
        # VRRP: the resumed master hears a higher priority and goes BACKUP at once,
        # so its leadership ended when it froze and no two intervals overlap
        assert demoted is not None and demoted - resumed_at <= RESUME_DEMOTE_S
        frozen_iv = [iv for iv in by_node[successor] if iv.start_s <= frozen_at][-1]
        assert frozen_iv.ended_by == "froze"
        assert verdict.overlaps == [] and verdict.late_demotes == []
        assert leader == third
