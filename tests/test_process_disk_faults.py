"""Real quorum-lease daemons with one voter's state directory on a tiny tmpfs (issue #12).

The tmpfs is filled up (ENOSPC), and in the second case remounted read-only
(EROFS), while the leader is killed: with two of three daemons left, a new
leader needs the faulted node's vote, which it must not give before its vote
is on disk. So no leader may appear until the disk works again; then the
node notices by itself (its retry), votes, and a leader follows. Hook logs
must show at most one leader per term throughout. Needs root (mount).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from cluster import REPO, Cluster

from electiond.cli import Refused, Unreachable, request

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root")

FAULTED = "n1"
QUIET_S = 3.0  # how long the faulted majority must stay leaderless (many election rounds)
RECOVER_S = 15.0  # retries back off up to 5 s; elections and hooks on two shared cores on top


def _mount_tmpfs(path) -> None:
    path.mkdir(mode=0o750, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k,mode=0750", f"electiond-test-{os.getpid()}",
                    str(path)], check=True, timeout=10)


def _unmount(path) -> None:
    for _ in range(20):
        if subprocess.run(["umount", str(path)], timeout=10).returncode == 0:
            return
        time.sleep(0.1)  # a daemon may still hold a file open
    subprocess.run(["umount", "-l", str(path)], timeout=10)


def _fill(path) -> int:
    """Fill the filesystem at ``path``; returns the bytes written."""
    written = 0
    with open(path / "fill", "wb", buffering=0) as f:
        for _ in range(10_000):  # 64 KiB in 4 KiB pages: far fewer are needed
            try:
                written += f.write(b"\0" * 4096)
            except OSError:
                break
    # the last page may be partly used: write byte by byte to the end
    with open(path / "fill", "ab", buffering=0) as f:
        for _ in range(8192):
            try:
                f.write(b"\0")
            except OSError:
                break
    return written


def _state(c: Cluster, name: str) -> dict:
    return json.loads((c.workdir / name / "state.json").read_text())


def _disk(c: Cluster, name: str) -> dict | None:
    s = c.status(name)
    return None if s is None else s["disk"]


def _store_settled(c: Cluster) -> None:
    """Wait (bounded) until the embedded coordination store is quiet on every
    running node: a store entry reaching the faulted node while its disk fails
    stops that daemon by design (fail-stop, exit 75, tests/test_process_coord_disk.py),
    which is not what this test is about. A new leader's no-op and member-view
    writes come in its first second or so."""
    deadline = time.monotonic() + 10.0
    last = None
    stable_since = time.monotonic()
    while time.monotonic() < deadline:
        seen = tuple(((c.status(n) or {}).get("coord_store") or {}).get("last_version") for n in sorted(c.running()))
        if seen != last or len(set(seen)) != 1:
            last, stable_since = seen, time.monotonic()
        elif time.monotonic() - stable_since >= 1.5:
            return
        time.sleep(0.1)


def _leaders_per_term(c: Cluster) -> dict[int, set[str]]:
    terms: dict[int, set[str]] = {}
    for _stamp, event, node, term, _reason in c.hook_events():
        if event == "promote":
            terms.setdefault(term, set()).add(node)
    return terms


def _assert_one_leader_per_term(c: Cluster) -> None:
    doubles = {t: n for t, n in _leaders_per_term(c).items() if len(n) > 1}
    assert not doubles, f"two leaders in one term: {doubles}"


def _leader_other_than_faulted(c: Cluster) -> str:
    leader = c.wait_leader(10.0)
    if leader == FAULTED:
        other = next(n for n in c.names if n != FAULTED and n in c.running())
        request(c.socket(leader), "transfer", {"target": other}, timeout_s=5.0)
        leader = c.wait_for(lambda: (lambda l: l if l not in (None, FAULTED) else None)(c.agreed_leader()),
                            10.0, "the leader to move off the faulted node")
    return leader


def _no_leader_while_faulted(c: Cluster, survivor: str, error: str, episode: int) -> None:
    c.wait_for(lambda: (_disk(c, FAULTED) or {}).get("ok") is False, 10.0, f"{FAULTED} to see its writes fail")
    deadline = time.monotonic() + QUIET_S
    while time.monotonic() < deadline:
        for name in (FAULTED, survivor):
            s = c.status(name)
            assert s is not None and s["role"] != "leader", f"{name} leads while {FAULTED} cannot vote:\n{s}"
        time.sleep(0.1)
    disk = _disk(c, FAULTED)
    assert disk["ok"] is False and disk["error"].startswith(error), disk
    assert disk["failures"] >= 2 and disk["retry_in_ms"] is not None  # it keeps retrying by itself
    status = c.status(FAULTED)
    assert status["persist_errors"].get(error, 0) >= 2
    human = subprocess.run([sys.executable, "-m", "electiond.cli", "--socket", c.socket(FAULTED), "status"],
                           capture_output=True, text=True, timeout=30, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert f"state writes failing ({error}" in human.stdout, human.stdout + human.stderr
    log = (c.workdir / f"{FAULTED}.log").read_text(errors="replace")
    assert log.count("cannot write state") == episode, "one error per failure episode"
    assert disk["episodes"] == episode


def _recovers(c: Cluster, before_term: int) -> str:
    leader = c.wait_leader(RECOVER_S)
    c.wait_for(lambda: (_disk(c, FAULTED) or {}).get("ok") is True, 5.0, f"{FAULTED} to see its writes work")
    assert c.status(leader)["term"] > before_term
    # the new term's vote (or candidacy) of the faulted node is on its disk
    assert _state(c, FAULTED)["term"] >= c.status(leader)["term"]
    assert "work again" in (c.workdir / f"{FAULTED}.log").read_text(errors="replace")
    return leader


def test_full_then_read_only_state_directory_never_votes_and_recovers(tmp_path):
    state_dir = tmp_path / FAULTED
    _mount_tmpfs(state_dir)
    try:
        with Cluster(tmp_path, 3, protocol="quorum-lease") as c:
            c.start_all()
            # case 1: the disk fills up (ENOSPC)
            old = _leader_other_than_faulted(c)
            survivor = next(n for n in c.names if n not in (old, FAULTED))
            term = c.status(old)["term"]
            _store_settled(c)
            assert _fill(state_dir) > 0
            c.kill(old)
            _no_leader_while_faulted(c, survivor, "ENOSPC", 1)
            assert _state(c, FAULTED)["term"] <= term + 1  # whatever it decided never landed
            os.unlink(state_dir / "fill")
            _recovers(c, term)
            _assert_one_leader_per_term(c)

            # case 2: the filesystem goes read-only (EROFS)
            c.start(old)
            old = _leader_other_than_faulted(c)
            survivor = next(n for n in c.names if n not in (old, FAULTED))
            term = c.status(old)["term"]
            _store_settled(c)
            subprocess.run(["mount", "-o", "remount,ro", str(state_dir)], check=True, timeout=10)
            c.kill(old)
            _no_leader_while_faulted(c, survivor, "EROFS", 2)
            subprocess.run(["mount", "-o", "remount,rw", str(state_dir)], check=True, timeout=10)
            _recovers(c, term)
            _assert_one_leader_per_term(c)
            history = request(c.socket(FAULTED), "history", timeout_s=5.0)
            events = [h["event"] for h in history]
            assert "persist_failed" in events and "persist_recovered" in events
    except (Unreachable, Refused) as exc:  # pragma: no cover - diagnostics
        raise AssertionError(f"control socket: {exc}") from exc
    finally:
        _unmount(state_dir)
