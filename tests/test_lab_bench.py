"""scripts/bench cannot rot: its --quick smoke runs on the namespace LAN (root).

Two SIGKILLs of the leader per system at a 100 ms interval, electiond's three
protocols and keepalived interleaved; the report must carry a row of figures
for each; then footprint --quick (2 s) and load --quick (3 s of busy loops) append
their rows for quorum-lease and keepalived. The numbers themselves are not
judged here (tiny counts, shared CPU).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from cluster import REPO

pytestmark = [
    pytest.mark.timeout_s(1500),  # each runs benchmark commands bounded at 600 s
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root to create network namespaces"),
    pytest.mark.skipif(shutil.which("ip") is None, reason="needs ip (iproute2)"),
    pytest.mark.skipif(shutil.which("keepalived") is None,
                       reason="needs keepalived (apt-get install keepalived; scripts/test installs it as root)"),
]


def test_bench_failover_quick_reports_every_system(tmp_path: Path) -> None:
    out = tmp_path / "benchmarks.md"
    # preempt = yes: the restarted top node takes over again (the default's case for bully and ring)
    result = subprocess.run([sys.executable, str(REPO / "scripts" / "bench_lab.py"), "failover", "--quick",
                             "--preempt", "yes", "--out", str(out)], capture_output=True, text=True, timeout=600,
                            env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    text = out.read_text()
    medians = {}
    for system in ("quorum-lease", "bully", "ring", "keepalived"):
        row = re.search(rf"^\| 100 ms \| {system} \| (\d+) \| (\d+) \| (\d+) \| ([\d.]+) \| (\d+) \|", text, re.M)
        assert row, f"no figures for {system}:\n{text}"
        kills, missed, median_ms = int(row.group(1)), int(row.group(2)), int(row.group(3))
        assert kills + missed == 2 and kills >= 1 and 0 < median_ms < 20_000, row.group(0)
        medians[system] = (median_ms, float(row.group(4)))
    keepalived_ms = medians["keepalived"][0]
    for system, (median_ms, ratio) in medians.items():  # each median over keepalived's, same run
        assert ratio == pytest.approx(median_ms / keepalived_ms, abs=0.01), (system, median_ms, ratio)
    assert "scripts/bench failover --quick --preempt yes" in text and "Load average" in text
    assert "preempt = yes" in text

    # footprint and load append their tables to the same report (two systems: CI time)
    for command in ("footprint", "load"):
        result = subprocess.run([sys.executable, str(REPO / "scripts" / "bench_lab.py"), command, "--quick",
                                 "--systems", "quorum-lease,keepalived", "--out", str(out)],
                                capture_output=True, text=True, timeout=600, env=dict(os.environ, PYTHONPATH=str(REPO)))
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    text = out.read_text()
    assert "## Failover after SIGKILL" in text and "## Footprint in steady state" in text and "## Under CPU load" in text
    for system in ("quorum-lease", "keepalived"):
        row = re.search(rf"^\| {system} \| ([\d.]+) \| ([\d.]+) \| ([\d.]+) \| (\d+) \|$", text, re.M)
        assert row, f"no footprint for {system}:\n{text}"
        assert 1.0 < float(row.group(3)) < 500.0, row.group(0)  # RSS MiB of a live daemon
        row = re.search(rf"^\| {system} \| ([\d.]+) \| ([\d.]+) \|$", text, re.M)
        assert row, f"no load row for {system}:\n{text}"


def test_bench_transfer_and_scale_quick_write_their_sections(tmp_path: Path) -> None:
    """transfer --quick: 2 hand-overs on quorum-lease, and bully's refusal reported as such;
    scale --quick at 3 daemons for quorum-lease and keepalived (CI time)."""
    out = tmp_path / "benchmarks.md"
    env = dict(os.environ, PYTHONPATH=str(REPO))
    result = subprocess.run([sys.executable, str(REPO / "scripts" / "bench_lab.py"), "transfer", "--quick",
                             "--systems", "quorum-lease,bully", "--out", str(out)],
                            capture_output=True, text=True, timeout=600, env=env)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    result = subprocess.run([sys.executable, str(REPO / "scripts" / "bench_lab.py"), "scale", "--quick",
                             "--sizes", "3", "--systems", "quorum-lease,keepalived", "--out", str(out)],
                            capture_output=True, text=True, timeout=600, env=env)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    text = out.read_text()
    row = re.search(r"^\| quorum-lease \| (\d+) \| (\d+) \| (\d+) \| (\d+) \| (-?\d+) \|", text, re.M)
    assert row, f"no transfer figures for quorum-lease:\n{text}"
    assert int(row.group(1)) + int(row.group(2)) + int(row.group(3)) == 2 and int(row.group(1)) >= 1, row.group(0)
    assert "| bully | not supported:" in text
    for system in ("quorum-lease", "keepalived"):
        row = re.search(rf"^\| 3 \| {system} \| ([\d.]+) \| ([\d.]+) \| ([\d.]+) \|", text, re.M)
        assert row, f"no scale row for {system}:\n{text}"
        assert 0 < float(row.group(2)) < 120 and float(row.group(3)) > 0, row.group(0)
    assert "Steady window: 5 s" in text and "## Graceful transfer" in text and "## Scale" in text
