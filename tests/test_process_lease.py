"""Real electiond processes on loopback multicast, quorum-lease protocol.

Leadership intervals are read from the hook log (wall-clock stamps written
by the hook itself): a promote opens an interval, the node's next demote
closes it; a SIGKILLed leader's interval ends at its death and a frozen
leader's when it was frozen, provided its demote hook starts right after
it resumes.
"""

from __future__ import annotations

import json
import signal
import time

from cluster import Cluster

from electiond.cli import Refused, Unreachable, request

# generous for two shared cores: a hook is a fork+exec of /bin/sh
DEMOTE_AFTER_RESUME_MAX_S = 1.0


def _intervals(events, ends: dict[str, float]) -> list[tuple[str, int, float, float]]:
    """(node, term, start, end) for every promote, closed by that node's next demote."""
    out, open_ = [], {}
    for stamp, event, node, term, _reason in sorted(events):
        if event == "promote":
            open_[node] = (term, stamp)
        elif event == "demote" and node in open_:
            term0, start = open_.pop(node)
            out.append((node, term0, start, min(stamp, ends.get(node, stamp))))
    for node, (term, start) in open_.items():
        out.append((node, term, start, ends.get(node, float("inf"))))
    return out


def _assert_no_overlap(intervals) -> None:
    ordered = sorted(intervals, key=lambda i: i[2])
    for a, b in zip(ordered, ordered[1:]):
        assert a[3] <= b[2], f"leadership intervals overlap: {a} and {b}"


def _is_leader(c: Cluster, name: str) -> bool | None:
    try:
        return request(c.socket(name), "is-leader", timeout_s=2.0)["leader"]
    except (Unreachable, Refused):
        return None


def _state(c: Cluster, name: str) -> tuple[int, str | None] | None:
    try:
        data = json.loads((c.workdir / name / "state.json").read_text())
    except (OSError, ValueError):
        return None
    return data["term"], data["voted_for"]


def test_sigkill_leader_new_leader_within_5s(tmp_path):
    with Cluster(tmp_path, 5, protocol="quorum-lease") as c:
        c.start_all()
        old = c.wait_leader(10.0)
        term = c.status(old)["term"]
        assert c.status(old)["phase"] == "leader"
        killed_at = time.time()
        t0 = time.monotonic()
        c.kill(old)
        new = c.wait_leader(5.0)
        failover_s = time.monotonic() - t0
        assert new != old and c.status(new)["term"] > term
        assert failover_s < 5.0
        c.wait_for(lambda: any(e[1] == "promote" and e[2] == new for e in c.hook_events()), 5.0, "promote hook")
        _assert_no_overlap(_intervals(c.hook_events(), {old: killed_at}))
        print(f"failover after SIGKILL: {failover_s * 1000:.0f} ms")


def test_sigstop_past_the_lease_then_sigcont_demotes_at_once(tmp_path):
    with Cluster(tmp_path, 5, protocol="quorum-lease") as c:
        c.start_all()
        old = c.wait_leader(10.0)
        term = c.status(old)["term"]
        c.wait_for(lambda: any(e[1] == "promote" and e[2] == old for e in c.hook_events()), 5.0, "promote hook")
        others = [n for n in c.names if n != old]
        stopped_at = time.time()
        c.signal(old, signal.SIGSTOP)
        try:
            new = c.wait_leader(5.0, among=others)
            time.sleep(0.3)  # well past the 150 ms lease either way
        finally:
            resumed_at = time.time()
            c.signal(old, signal.SIGCONT)
        # the first thing the woken process answers must already be "no"
        assert _is_leader(c, old) is False
        deadline = time.monotonic() + 1.5
        while time.monotonic() < deadline:
            s = c.status(old)
            assert s is not None
            assert not (s["role"] == "leader" and s["term"] == term), s
            time.sleep(0.02)
        c.wait_for(
            lambda: [e for e in c.hook_events() if e[1] == "demote" and e[2] == old and e[3] == term],
            5.0, "the woken leader's demote hook",
        )
        demote = [e for e in c.hook_events() if e[1] == "demote" and e[2] == old and e[3] == term][0]
        assert demote[4] == "lease_lost"
        assert resumed_at <= demote[0] <= resumed_at + DEMOTE_AFTER_RESUME_MAX_S, (resumed_at, demote)
        # frozen, it did nothing: its interval ends when it was stopped
        _assert_no_overlap(_intervals(c.hook_events(), {old: stopped_at}))
        promote_new = [e for e in c.hook_events() if e[1] == "promote" and e[2] == new]
        assert promote_new and promote_new[-1][0] >= stopped_at
        print(f"demote hook started {(demote[0] - resumed_at) * 1000:.0f} ms after SIGCONT")


def test_kill_9_voter_right_after_voting_keeps_its_vote(tmp_path):
    with Cluster(tmp_path, 5, protocol="quorum-lease") as c:
        c.start_all()
        old = c.wait_leader(10.0)
        old_term = c.status(old)["term"]
        c.kill(old)
        # catch a voter the moment its vote for someone else is durable
        caught = None
        deadline = time.monotonic() + 5.0
        while caught is None and time.monotonic() < deadline:
            for name in list(c.procs):
                st = _state(c, name)
                if st and st[0] > old_term and st[1] not in (None, name):
                    c.kill(name)
                    caught = (name, st)
                    break
        assert caught, "saw no vote"
        voter, (term, voted_for) = caught
        c.start(voter)
        s = c.wait_for(lambda: c.status(voter), 5.0, f"{voter} to answer")
        assert s["term"] >= term
        if s["term"] == term:
            assert s["voted_for"] == voted_for
        c.wait_leader(5.0)
        # for the rest of the run the voter never changes its vote in that term
        end = time.monotonic() + 1.0
        while time.monotonic() < end:
            st = _state(c, voter)
            assert st is not None and (st[0] > term or st == (term, voted_for)), st
            time.sleep(0.01)


def test_transfer_hands_over_in_a_few_round_trips(tmp_path):
    with Cluster(tmp_path, 3, protocol="quorum-lease") as c:
        c.start_all()
        old = c.wait_leader(10.0)
        target = next(n for n in c.names if n != old)
        # a node still in its start-up clock check may not stand: hand over only once it passed
        c.wait_clock_checked(target, 10.0)
        t0 = time.monotonic()
        assert request(c.socket(old), "transfer", {"target": target})["ok"]
        c.wait_for(lambda: c.agreed_leader() == target, 5.0, f"{target} to lead")
        took_s = time.monotonic() - t0
        c.wait_for(lambda: any(e[1] == "promote" and e[2] == target for e in c.hook_events()), 5.0, "promote")
        demote = [e for e in c.hook_events() if e[1] == "demote" and e[2] == old and e[4] == "transfer"]
        assert demote
        promote = [e for e in c.hook_events() if e[1] == "promote" and e[2] == target]
        _assert_no_overlap(_intervals(c.hook_events(), {}))
        print(f"transfer: all agree after {took_s * 1000:.0f} ms; "
              f"demote hook to promote hook {(promote[-1][0] - demote[-1][0]) * 1000:.0f} ms")


def test_sigterm_of_the_leader_hands_over_after_its_demote_hook(tmp_path):
    with Cluster(tmp_path, 3, protocol="quorum-lease") as c:
        c.start_all()
        old = c.wait_leader(10.0)
        c.wait_for(lambda: any(e[1] == "promote" and e[2] == old for e in c.hook_events()), 5.0, "promote hook")
        others = [n for n in c.names if n != old]
        t0 = time.monotonic()
        c.signal(old, signal.SIGTERM)
        new = c.wait_leader(5.0, among=others)
        took_s = time.monotonic() - t0
        c.wait_for(lambda: any(e[1] == "promote" and e[2] == new for e in c.hook_events()), 5.0, "promote hook")
        # the hand-over of a stopping daemon tells its hooks why (README: ELECTIOND_REASON)
        demote = [e for e in c.hook_events() if e[1] == "demote" and e[2] == old and e[4] == "shutdown"]
        promote = [e for e in c.hook_events() if e[1] == "promote" and e[2] == new]
        assert demote and demote[-1][0] < promote[-1][0]
        _assert_no_overlap(_intervals(c.hook_events(), {}))
        print(f"graceful stop: new leader agreed after {took_s * 1000:.0f} ms")
