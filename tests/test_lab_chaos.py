"""The LAN lab's chaos campaign, CI budget (issue #16; root only).

Seeded schedules of faults (tests/lab/chaos.py) on a 5-host namespace LAN:
quorum-lease must never have two leaders at once (hook log intervals; an
overlap within the run's largest measured hook spawn lag is reported, not
failed, see tests/lab/chaos.py), its fencing tokens only grow (the daemons' order), and after every heal it agrees on a leader within
RECOVERY_BOUND_S. bully, ring and keepalived run the same schedules: their
split-brain seconds are printed (run with -s), and every split must be over
once a leader is agreed after the heal.

ELECTIOND_LAB_SCHEDULES=N runs N quorum-lease schedules (default 3) and N/3
of each other system; ``scripts/lab chaos --schedules 200 --system all`` is
the full campaign.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from lab.chaos import run_schedule

SCHEDULES = int(os.environ.get("ELECTIOND_LAB_SCHEDULES", "3"))
OTHERS = max(1, SCHEDULES // 3)

missing = [tool for tool in ("ip", "nft", "tc") if shutil.which(tool) is None]
pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root to create network namespaces and nftables rules"),
    pytest.mark.skipif(bool(missing), reason=f"needs {', '.join(missing)} (iproute2, nftables)"),
]


@pytest.mark.parametrize("seed", range(1, SCHEDULES + 1))
def test_quorum_lease_never_has_two_leaders_under_seeded_chaos(tmp_path: Path, seed: int) -> None:
    result = run_schedule("quorum-lease", seed, workdir=tmp_path)
    print(f"quorum-lease seed {seed}: overlaps {result.overlaps} ({result.overlap_s:.3f} s), largest hook lag "
          f"{result.max_hook_lag_s:.3f} s, recovery {result.recovery_s}, notes {result.skipped}")
    assert not result.token_faults and not result.late_demotes, result.failures
    assert result.ok, f"replay: scripts/lab chaos --seed {seed} --system quorum-lease\n" + "\n".join(result.failures)
    assert all(r is not None for r in result.recovery_s)


@pytest.mark.parametrize("seed", range(1, OTHERS + 1))
@pytest.mark.parametrize("system", ["bully", "ring", "keepalived"])
def test_splits_end_after_the_heal_under_seeded_chaos(tmp_path: Path, system: str, seed: int) -> None:
    if system == "keepalived" and shutil.which("keepalived") is None:
        pytest.skip("needs keepalived (apt-get install keepalived; scripts/test installs it as root)")
    result = run_schedule(system, seed, workdir=tmp_path)
    print(f"{system} seed {seed}: split-brain {result.split_brain_s:.2f} s, recovery {result.recovery_s}")
    assert result.ok, f"replay: scripts/lab chaos --seed {seed} --system {system}\n" + "\n".join(result.failures)
