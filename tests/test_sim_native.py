"""The compiled simulator (scripts/sim) runs the same source as the interpreted one.

One build per run (a session fixture under a lock, shared by the xdist
workers): compile a copy with mypyc, then run the same seeds of every protocol both ways in child processes and compare
the traces byte for byte. A mutant must still be caught compiled (the
checker did not go blind), a compiled campaign takes the seeds after the
interpreted campaign's (tests/test_sim_campaign.py), and the explorer, which
cannot run compiled, must say so rather than crash.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from electiond.sim import native

ROOT = native.package_source_root()
WHY_NOT = native.mypyc_available()
SEEDS = int(os.environ.get("ELECTIOND_SIM_NATIVE_SEEDS", "12"))
# compiled, a campaign beyond the interpreted one's seeds is cheap: CI covers more
CAMPAIGN_SEEDS = int(os.environ.get("ELECTIOND_SIM_NATIVE_CAMPAIGN", "1000"))
CAMPAIGN_FIRST = int(os.environ.get("ELECTIOND_SIM_SEEDS", "2000"))

DIGESTS = """
import hashlib, json, sys
from electiond.sim.native import build_kind
from electiond.sim.runner import run_seed
out = {"build": build_kind()}
for proto in ("bully", "ring", "quorum-lease"):
    for seed in range(int(sys.argv[1])):
        r = run_seed(seed, proto, None, None, trace=True)
        out[f"{proto} {seed}"] = [hashlib.sha256("\\n".join(r.trace).encode()).hexdigest(), len(r.violations)]
print(json.dumps(out))
"""

# the coordination store's simulator: the same seeds' traces both ways, and a compiled campaign
COORD_DIGESTS = """
import hashlib, json, sys
from electiond.sim.native import build_kind
from electiond.sim.coordsim import run_coord_seed
out = {"build": build_kind()}
for seed in range(int(sys.argv[1])):
    r = run_coord_seed(seed, trace=True)
    out[str(seed)] = [hashlib.sha256("\\n".join(r.trace).encode()).hexdigest(), len(r.violations), r.events]
print(json.dumps(out))
"""
COORD_CAMPAIGN = """
import json, sys
from electiond.sim.native import build_kind
from electiond.sim.coordsim import run_coord_seed
first, n = int(sys.argv[1]), int(sys.argv[2])
bad, acks, snaps, leaves = [], 0, 0, 0
for seed in range(first, first + n):
    r = run_coord_seed(seed)
    acks, snaps, leaves = acks + r.acks, snaps + r.snapshots, leaves + r.barrier_leaves
    if not r.ok:
        bad.append([seed, [str(v) for v in r.violations[:3]]])
print(json.dumps({"build": build_kind(), "runs": n, "bad": bad, "acks": acks, "snapshots": snaps, "leaves": leaves}))
"""
COORD_SEEDS = 6
COORD_CAMPAIGN_SEEDS = int(os.environ.get("COORD_SIM_NATIVE_CAMPAIGN", "2000"))
COORD_CAMPAIGN_FIRST = int(os.environ.get("COORD_SIM_SEEDS", "600"))  # after the interpreted run's seeds


def _env(build: Path | None) -> dict[str, str]:
    path = [str(build), str(ROOT)] if build else [str(ROOT)]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(path)}


def _coord_campaign(build: Path) -> None:
    """COORD_CAMPAIGN_SEEDS compiled coordination seeds, in two processes (two cores)."""
    half = COORD_CAMPAIGN_SEEDS // 2
    parts = [(COORD_CAMPAIGN_FIRST, half), (COORD_CAMPAIGN_FIRST + half, COORD_CAMPAIGN_SEEDS - half)]
    procs = [subprocess.Popen([sys.executable, "-P", "-c", COORD_CAMPAIGN, str(first), str(n)], env=_env(build),
                              cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for first, n in parts]
    results = []
    for p in procs:
        out, err = p.communicate(timeout=1200)
        assert p.returncode == 0, err[-3000:]
        results.append(json.loads(out))
    assert all(r["build"] == "mypyc" for r in results), results
    assert sum(r["runs"] for r in results) == COORD_CAMPAIGN_SEEDS
    assert not [b for r in results for b in r["bad"]], [b for r in results for b in r["bad"]][:5]
    # the schedules did exercise the store (writes, snapshots, double-barrier leaves)
    assert all(r["acks"] > 20 * r["runs"] and r["snapshots"] > r["runs"] // 2 and r["leaves"] > r["runs"]
               for r in results), results


def _run(build: Path | None, *args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    # -P: the working directory must not put the interpreted source ahead of the build
    path = [str(build), str(ROOT)] if build else [str(ROOT)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(path)}
    return subprocess.run([sys.executable, "-P", *args], env=env, capture_output=True, text=True, timeout=timeout,
                          cwd=ROOT, check=False)


needs_mypyc = pytest.mark.skipif(WHY_NOT is not None, reason=f"cannot compile the simulator here: {WHY_NOT}")
# scripts/test starts this build in the background as the suite starts
BUILD = Path(os.environ.get("ELECTIOND_SIM_NATIVE_BUILD", str(ROOT / ".build" / "sim-native-test")))


@pytest.fixture(scope="session")
def build() -> Path:
    """One compiled copy for every xdist worker: native.build serializes
    builds into one directory and keeps one whose source fingerprint still
    matches, so whoever comes first (scripts/test's background build, or a
    worker) compiles and the rest reuse it. Split into tests, the checks are
    spread by xdist and bounded each in time; one 12-minute test was neither."""
    return native.build(BUILD)


@needs_mypyc
@pytest.mark.timeout_s(1200)
def test_compiled_simulator_traces_like_the_interpreted_one(build):
    interpreted = _run(None, "-c", DIGESTS, str(SEEDS))
    compiled = _run(build, "-c", DIGESTS, str(SEEDS))
    assert interpreted.returncode == 0, interpreted.stderr
    assert compiled.returncode == 0, compiled.stderr
    a, b = json.loads(interpreted.stdout), json.loads(compiled.stdout)
    assert a.pop("build") == "interpreted"
    assert b.pop("build") == "mypyc"
    assert len(a) == 3 * SEEDS
    assert a == b, [k for k in a if a[k] != b.get(k)]


@needs_mypyc
@pytest.mark.timeout_s(900)
def test_compiled_bench_runs_and_a_mutant_is_still_caught(build):
    bench = _run(build, "-m", "electiond.sim", "bench", "--protocol", "quorum-lease", "--seconds", "10")
    assert bench.returncode == 0, bench.stderr
    assert "violations=0 build=mypyc" in bench.stdout

    # a leader that never steps down when its lease runs out: caught compiled too
    mutant = _run(build, "-m", "electiond.sim", "--protocol", "quorum-lease", "--seeds", "40",
                  "--variant", "tests.lease_mutants:LeaderIgnoresLeaseExpiry")
    assert mutant.returncode == 1, mutant.stdout + mutant.stderr
    assert "build=mypyc" in mutant.stdout
    assert "reproduce with: python -m electiond.sim --protocol quorum-lease --seed" in mutant.stdout

    explore = _run(build, "-m", "electiond.sim", "explore", "--depth", "2")
    assert explore.returncode == 2
    assert "explore needs the interpreted simulator" in explore.stderr


@needs_mypyc
@pytest.mark.timeout_s(1200)
@pytest.mark.parametrize("protocol", ["quorum-lease", "ring", "bully"])
def test_compiled_campaign_after_the_interpreted_seeds(build, protocol):
    campaign = _run(build, "-m", "electiond.sim", "--protocol", protocol, "--seeds", str(CAMPAIGN_SEEDS),
                    "--first-seed", str(CAMPAIGN_FIRST), timeout=1200)
    assert campaign.returncode == 0, campaign.stdout[-3000:] + campaign.stderr[-3000:]
    assert f"runs={CAMPAIGN_SEEDS} violations=0" in campaign.stdout
    assert "build=mypyc" in campaign.stdout


@needs_mypyc
@pytest.mark.timeout_s(1500)
def test_compiled_coordination_simulator_traces_and_campaign(build):
    coord_a = _run(None, "-c", COORD_DIGESTS, str(COORD_SEEDS))
    coord_b = _run(build, "-c", COORD_DIGESTS, str(COORD_SEEDS))
    assert coord_a.returncode == 0 and coord_b.returncode == 0, coord_a.stderr + coord_b.stderr
    ca, cb = json.loads(coord_a.stdout), json.loads(coord_b.stdout)
    assert (ca.pop("build"), cb.pop("build")) == ("interpreted", "mypyc")
    assert len(ca) == COORD_SEEDS and ca == cb, [k for k in ca if ca[k] != cb.get(k)]
    _coord_campaign(build)


def test_the_build_refuses_to_compile_into_the_source_tree():
    if WHY_NOT is not None:
        with pytest.raises(native.BuildError, match="cannot|not installed|compiler"):
            native.build(ROOT)
        return
    with pytest.raises(native.BuildError, match="must not be the source tree"):
        native.build(ROOT)
