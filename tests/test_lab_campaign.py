"""The chaos campaign's machinery (tests/lab/campaign.py, report.py): the
order schedules start in, the deadline, the report sections; and, as root, a
2-job campaign on real namespace LANs whose summary and results file say
what ran."""

from __future__ import annotations

import calendar
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from cluster import REPO
from lab.campaign import queue
from lab.cli import parse_deadline

pytestmark = pytest.mark.timeout_s(1200)  # a lab command is bounded at 600 s
from lab.report import sections, write_section

needs_root = [
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root to create network namespaces and nftables rules"),
    pytest.mark.skipif(any(shutil.which(t) is None for t in ("ip", "nft")), reason="needs iproute2 and nftables"),
]


def test_quorum_lease_first_runs_its_seeds_then_the_others_interleaved() -> None:
    pairs = queue(["quorum-lease", "bully", "keepalived"], [1, 2], "quorum-lease-first")
    assert pairs == [("quorum-lease", 1), ("quorum-lease", 2), ("bully", 1), ("keepalived", 1),
                     ("bully", 2), ("keepalived", 2)]
    assert queue(["bully", "ring"], [1, 2], "seed") == [("bully", 1), ("ring", 1), ("bully", 2), ("ring", 2)]
    assert queue(["bully", "ring"], [1, 2], "system") == [("bully", 1), ("bully", 2), ("ring", 1), ("ring", 2)]


def test_deadline_is_utc_today_or_tomorrow_or_relative() -> None:
    now = calendar.timegm((2026, 12, 1, 16, 0, 0, 0, 0, 0))
    assert parse_deadline("17:25", now) == now + 85 * 60
    assert parse_deadline("15:00", now) == now + 23 * 3600  # already past: tomorrow
    assert parse_deadline("+90", now) == now + 90


def test_report_sections_are_replaced_not_appended(tmp_path: Path) -> None:
    out = tmp_path / "benchmarks.md"
    write_section(out, "scale", "## Scale\nold\n")
    write_section(out, "failover", "## Failover\nfirst\n")
    write_section(out, "scale", "## Scale\nnew\n")
    text = out.read_text()
    assert text.count("## Scale") == 1 and "new" in text and "old" not in text
    assert text.index("## Failover") < text.index("## Scale")  # the fixed order, whatever ran first
    assert set(sections(text)) == {"failover", "scale"} and text.startswith("# Benchmarks")


def lab(*argv: str, timeout_s: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lab.cli", *argv], capture_output=True, text=True, timeout=timeout_s,
                          cwd=REPO, env=dict(os.environ, PYTHONPATH=f"{REPO / 'tests'}:{REPO}"))


@pytest.mark.skipif(os.geteuid() != 0, reason="scripts/lab needs root")
def test_a_deadline_too_close_for_one_schedule_starts_none(tmp_path: Path) -> None:
    report = tmp_path / "chaos.md"
    result = lab("chaos", "--schedules", "3", "--jobs", "2", "--deadline", "+5", "--report", str(report))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "[quorum-lease seed" not in result.stdout  # no schedule began
    assert "Ran 0 of 3 planned schedules; not started before the deadline: 3" in report.read_text()


@needs_root[0]
@needs_root[1]
def test_two_jobs_run_schedules_side_by_side_and_report_them(tmp_path: Path) -> None:
    report, results = tmp_path / "chaos.md", tmp_path / "results.jsonl"
    result = lab("chaos", "--schedules", "2", "--system", "quorum-lease,bully", "--jobs", "2",
                 "--order", "quorum-lease-first", "--report", str(report), "--results", str(results))
    assert result.returncode == 0, result.stdout[-5000:] + result.stderr[-3000:]
    lines = [json.loads(x) for x in results.read_text().splitlines()]
    assert sorted((r["system"], r["seed"]) for r in lines) == [("bully", 1), ("bully", 2),
                                                               ("quorum-lease", 1), ("quorum-lease", 2)]
    text = report.read_text()
    assert "Ran 4 of 4 planned schedules." in text and "2 schedule(s) at once" in text
    assert "| quorum-lease | 2 | 0 |" in text and "| bully | 2 |" in text
