"""One hook log for every daemon of a lab run, and the leadership checker.

Each line is ``<wall-clock ns> <node> <event> <term>``, appended by the
promote/demote/fault hooks of electiond (from its environment) or, for
keepalived, by the reader of its notify FIFO (kafifo.py; term 0). Either way
the stamp is taken after the daemon decided (a hook's spawn, the reader's
wake-up). The harness keeps its own marks (kill, freeze, resume, start, heal)
with wall-clock times; the checker turns both into leadership intervals per
node:

* an interval opens at a promote hook;
* it ends at that node's demote hook (and, for keepalived, its fault notify),
  at its death (SIGKILL mark), or, for a leader frozen with SIGSTOP, at the
  moment it froze, provided its demote hook starts within
  ``resume_demote_s`` of the SIGCONT. A frozen leader whose demote comes later
  (or never) is counted as leading right through its freeze, so anyone who led
  meanwhile overlaps it, and the late demote is reported as a violation.

A stamp can only be late, never early, so a record stamped while its node was
frozen or dead was decided before that: a frozen process decides nothing, a
dead one nothing more. A promote stamped while the node is frozen opens its
interval at the freeze (and the freeze rule above applies to it); a demote or
fault stamped then ends the interval at the freeze. A record stamped after
the node's kill and before its next start is stale: the kill already ended
the interval, and a promote would open one of no length.
"""

from __future__ import annotations

import dataclasses
import datetime
import re
import time
from pathlib import Path

ELECTIOND_HOOK = """#!/bin/sh
# lab hook log: wall-clock ns, node, event, term
echo "$(date +%s%N) $ELECTIOND_NODE $ELECTIOND_EVENT ${{ELECTIOND_TERM:-0}}" >> "{log}"
"""


def write_hook(path: Path, log: Path, template: str = ELECTIOND_HOOK) -> Path:
    path.write_text(template.format(log=log))
    path.chmod(0o755)
    return path


@dataclasses.dataclass(frozen=True)
class HookEvent:
    t_s: float
    node: str
    event: str
    term: int


@dataclasses.dataclass(frozen=True)
class Mark:
    """Something the harness did: kill, freeze, resume, start, fault, heal."""
    t_s: float
    kind: str
    node: str = ""
    detail: str = ""


@dataclasses.dataclass
class Interval:
    node: str
    start_s: float
    end_s: float | None
    term: int
    ended_by: str = ""


def read_log(path: Path) -> list[HookEvent]:
    events = []
    if not path.exists():
        return events
    for line in path.read_text().splitlines():
        parts = line.split()
        if len(parts) != 4:
            continue  # a line cut by a killed hook: not evidence either way
        stamp, node, event, term = parts
        try:
            events.append(HookEvent(int(stamp) / 1e9, node, event, int(term)))
        except ValueError:
            continue
    events.sort(key=lambda e: e.t_s)
    return events


class Marks:
    def __init__(self) -> None:
        self.items: list[Mark] = []

    def add(self, kind: str, node: str = "", detail: str = "") -> float:
        t = time.time()
        self.items.append(Mark(t, kind, node, detail))
        return t


@dataclasses.dataclass
class Verdict:
    intervals: list[Interval]
    overlaps: list[tuple[str, str, float, float]]  # (node a, node b, from, to)
    late_demotes: list[str]
    split_brain_s: float
    tokens_grow: bool
    token_faults: list[str]

    def overlap_s(self) -> float:
        return sum(b - a for _x, _y, a, b in self.overlaps)


def intervals(events: list[HookEvent], marks: list[Mark], end_s: float,
              ends: tuple[str, ...] = ("demote",), resume_demote_s: float = 1.0) -> tuple[list[Interval], list[str]]:
    """Each node's leadership intervals (see the module docstring) and the
    late demotes after a resume."""
    timeline: list[tuple[float, int, object]] = [(e.t_s, 1, e) for e in events]
    timeline += [(m.t_s, 0, m) for m in marks if m.kind in ("kill", "freeze", "resume", "start")]
    timeline.sort(key=lambda row: (row[0], row[1]))
    open_: dict[str, Interval] = {}
    frozen_at: dict[str, float] = {}  # leaders frozen (their intervals may end there)
    resumed_at: dict[str, float] = {}
    paused_since: dict[str, float] = {}  # any node frozen and not yet resumed
    dead: set[str] = set()  # killed and not yet started again
    done: list[Interval] = []
    late: list[str] = []
    for t, _order, item in timeline:
        if isinstance(item, Mark):
            node = item.node
            if item.kind == "kill":
                dead.add(node)
                paused_since.pop(node, None)
                frozen_at.pop(node, None)
                resumed_at.pop(node, None)
                if node in open_:
                    iv = open_.pop(node)
                    iv.end_s, iv.ended_by = t, "killed"
                    done.append(iv)
            elif item.kind == "start":
                dead.discard(node)
            elif item.kind == "freeze":
                paused_since[node] = t
                if node in open_:
                    frozen_at[node] = t
            elif item.kind == "resume":
                paused_since.pop(node, None)
                if node in frozen_at:
                    resumed_at[node] = t
            continue
        e = item
        assert isinstance(e, HookEvent)
        if e.node in dead:
            continue  # decided before the kill, which ended its interval already
        paused = paused_since.get(e.node)
        if paused is not None:
            # decided no later than the freeze
            if e.event == "promote" and e.node not in open_:
                open_[e.node] = Interval(e.node, paused, None, e.term)
                frozen_at[e.node] = paused
            elif e.event in ends and e.node in open_:
                iv = open_.pop(e.node)
                frozen_at.pop(e.node, None)
                iv.end_s, iv.ended_by = max(iv.start_s, paused), e.event
                done.append(iv)
            continue
        if e.event == "promote":
            if e.node in open_:
                continue  # a repeated promote extends the same interval
            open_[e.node] = Interval(e.node, e.t_s, None, e.term)
            continue
        if e.event in ends and e.node in open_:
            iv = open_.pop(e.node)
            froze = frozen_at.pop(e.node, None)
            resumed = resumed_at.pop(e.node, None)
            if froze is not None and resumed is not None and e.t_s - resumed <= resume_demote_s:
                iv.end_s, iv.ended_by = froze, "froze"
            else:
                if froze is not None and resumed is not None:
                    late.append(f"{e.node} demoted {e.t_s - resumed:.3f}s after its resume (bound {resume_demote_s}s)")
                iv.end_s, iv.ended_by = e.t_s, e.event
            done.append(iv)
    for node, iv in open_.items():
        froze = frozen_at.get(node)
        resumed = resumed_at.get(node)
        if froze is not None and resumed is None:
            iv.end_s, iv.ended_by = froze, "frozen at the end"
        else:
            iv.end_s, iv.ended_by = end_s, "still leading"
        done.append(iv)
    done.sort(key=lambda iv: iv.start_s)
    return done, late


def overlaps(ivs: list[Interval], slack_s: float = 0.0) -> list[tuple[str, str, float, float]]:
    """Pairs of different nodes' intervals sharing more than slack_s."""
    found = []
    for i, a in enumerate(ivs):
        for b in ivs[i + 1:]:
            if a.node == b.node:
                continue
            lo, hi = max(a.start_s, b.start_s), min(a.end_s or 0.0, b.end_s or 0.0)
            if hi - lo > slack_s:
                found.append((a.node, b.node, lo, hi))
    return found


def leaders_between(ivs: list[Interval], t0: float, t1: float) -> float:
    """Seconds within [t0, t1] during which two or more nodes led."""
    edges: list[tuple[float, int]] = []
    for iv in ivs:
        lo, hi = max(iv.start_s, t0), min(iv.end_s or t1, t1)
        if hi > lo:
            edges += [(lo, 1), (hi, -1)]
    edges.sort()
    count, last, total = 0, t0, 0.0
    for t, step in edges:
        if count >= 2:
            total += t - last
        count += step
        last = t
    return total


def split_brain_s(ivs: list[Interval]) -> float:
    if not ivs:
        return 0.0
    return leaders_between(ivs, min(iv.start_s for iv in ivs), max(iv.end_s or 0.0 for iv in ivs))


def leading_at(ivs: list[Interval], t: float) -> list[str]:
    return sorted({iv.node for iv in ivs if iv.start_s <= t < (iv.end_s or float("inf"))})


def token_order(events: list[HookEvent]) -> list[str]:
    """Fencing tokens of successive promotions must grow strictly."""
    faults = []
    last: HookEvent | None = None
    for e in events:
        if e.event != "promote":
            continue
        if last is not None and (e.term < last.term or (e.term == last.term and e.node != last.node)):
            faults.append(f"{e.node} promoted with term {e.term} after {last.node}'s {last.term}")
        if last is None or e.term >= last.term:
            last = e
    return faults


def check(events: list[HookEvent], marks: list[Mark], end_s: float, ends: tuple[str, ...] = ("demote",),
          resume_demote_s: float = 1.0, slack_s: float = 0.0) -> Verdict:
    ivs, late = intervals(events, marks, end_s, ends, resume_demote_s)
    faults = token_order(events)
    return Verdict(ivs, overlaps(ivs, slack_s), late, split_brain_s(ivs), not faults, faults)


_DISPATCH = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) electiond\.hooks INFO hooks: (promote|demote|fault) "
                       r"\(term (\d+), reason \w+\)")


def dispatches(daemon_log: Path, node: str) -> list[HookEvent]:
    """When the daemon itself started each hook event (its log's wall clock,
    ms resolution): the daemon's order, before any process-spawn lag."""
    out = []
    if not daemon_log.exists():
        return out
    for line in daemon_log.read_text(errors="replace").splitlines():
        m = _DISPATCH.match(line)
        if m:
            t = datetime.datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()
            out.append(HookEvent(t, node, m.group(2), int(m.group(3))))
    return out


def hook_lags_s(events: list[HookEvent], dispatched: list[HookEvent]) -> list[float]:
    """For each hook stamp, how long after the daemon dispatched it its
    ``date`` ran (the spawn lag a loaded machine adds to every interval end)."""
    pending: dict[tuple[str, str, int], list[float]] = {}
    for d in sorted(dispatched, key=lambda e: e.t_s):
        pending.setdefault((d.node, d.event, d.term), []).append(d.t_s)
    lags = []
    for e in events:
        queue = pending.get((e.node, e.event, e.term))
        if queue:
            lags.append(max(0.0, e.t_s - queue.pop(0)))
    return lags
