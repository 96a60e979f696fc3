"""Hooks in real daemons: a hung promote hook is killed at its timeout and the
node steps down, so leadership moves to a node whose hooks work."""

from __future__ import annotations

from pathlib import Path

import psutil

from cluster import Cluster
from electiond.cli import request

HUNG_ON_FIRST_PROMOTE = """#!/bin/sh
echo "$(date +%s.%N) $ELECTIOND_EVENT $ELECTIOND_NODE ${{ELECTIOND_TERM:-0}} $ELECTIOND_REASON" >> "$HOOK_LOG"
# the first promote anywhere in the cluster hangs, with a child that would
# outlive a careless kill
if mkdir "{flag}" 2>/dev/null; then
    sleep 100000 &
    echo $! > "{child}"
    wait
fi
"""


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def test_hung_promote_hook_is_killed_and_the_node_steps_down(tmp_path: Path) -> None:
    child = tmp_path / "child.pid"
    hook = tmp_path / "promote-hook"
    hook.write_text(HUNG_ON_FIRST_PROMOTE.format(flag=tmp_path / "hung-once", child=child))
    hook.chmod(0o755)
    timeout_s = 1.0
    with Cluster(
        tmp_path, 3, protocol="quorum-lease", node_options={"preempt": "no"},
        # a lease long enough not to lapse on a loaded test machine: the node
        # must step down because its hook failed, not because its lease ran out
        timing={"lease": "600ms"},
        hooks={"promote": str(hook), "timeout": f"{timeout_s}s", "kill_grace": "1s"},
    ) as c:
        c.start_all()
        first = c.wait_for(
            lambda: next((e[2] for e in c.hook_events() if e[1] == "promote"), None), 20, "a first promote"
        )
        # leadership must end up elsewhere, with that node's promote hook done
        c.wait_for(
            lambda: c.agreed_leader() not in (None, first)
            and any(e[1] == "promote" and e[2] != first for e in c.hook_events()),
            30, "leadership to move away from the node whose promote hook hung",
        )
        events = c.hook_events()
        promote_at = next(e for e in events if e[1] == "promote" and e[2] == first)[0]
        demote = next(e for e in events if e[1] == "demote" and e[2] == first and e[0] > promote_at)
        # the demote came only after the hook had been given its full timeout.
        # These stamps are taken by the hook processes themselves, after the
        # daemon spawned them, so allow for the promote hook starting late; the
        # exact figure is the daemon's own duration_ms in its history below.
        assert demote[0] - promote_at >= timeout_s - 0.25
        # a failed promote steps down through the backoff (README: failing hooks back off)
        assert demote[4] in ("promote_backoff", "promote_failed")
        winner = c.agreed_leader()
        assert winner is not None and winner != first
        assert gone(int(child.read_text())), "the hung hook's child survived"

        history = request(c.socket(first), "history", timeout_s=5.0)
        runs = [h for h in history if h["event"] == "hook" and h.get("timed_out")]
        assert len(runs) == 1 and runs[0]["hook_event"] == "promote"
        assert runs[0]["exit_code"] is None and runs[0]["duration_ms"] >= timeout_s * 1000
        status = c.status(first)
        assert status["role"] != "leader"
        assert status["hooks"]["busy"] is False
