"""The lab's leadership checker (tests/lab/hooklog.py) on made-up hook logs."""

from __future__ import annotations

from pathlib import Path

from lab.hooklog import HookEvent, Mark, check, read_log, split_brain_s


def ev(t: float, node: str, event: str, term: int = 0) -> HookEvent:
    return HookEvent(t, node, event, term)


def test_a_clean_handover_has_no_overlap_and_growing_tokens() -> None:
    events = [ev(1.0, "n1", "promote", 1), ev(5.0, "n1", "demote", 1), ev(5.2, "n2", "promote", 2)]
    v = check(events, [], end_s=10.0)
    assert [(iv.node, iv.start_s, iv.end_s, iv.ended_by) for iv in v.intervals] == [
        ("n1", 1.0, 5.0, "demote"), ("n2", 5.2, 10.0, "still leading")]
    assert v.overlaps == [] and v.split_brain_s == 0.0 and v.tokens_grow


def test_a_promote_before_the_old_leaders_demote_is_an_overlap() -> None:
    events = [ev(1.0, "n1", "promote", 1), ev(5.0, "n2", "promote", 2), ev(5.5, "n1", "demote", 1)]
    v = check(events, [], end_s=10.0)
    assert v.overlaps == [("n1", "n2", 5.0, 5.5)]
    assert abs(v.split_brain_s - 0.5) < 1e-9
    # a slack larger than the overlap forgives it (hook spawn lag), the split-brain figure stays
    assert check(events, [], end_s=10.0, slack_s=0.6).overlaps == []


def test_death_ends_an_interval() -> None:
    events = [ev(1.0, "n1", "promote", 1), ev(3.0, "n2", "promote", 2)]
    v = check(events, [Mark(2.5, "kill", "n1")], end_s=10.0)
    assert v.overlaps == [] and v.intervals[0].end_s == 2.5 and v.intervals[0].ended_by == "killed"


def test_a_frozen_leader_that_demotes_at_once_on_resume_ended_when_it_froze() -> None:
    events = [ev(1.0, "n1", "promote", 1), ev(3.0, "n2", "promote", 2), ev(6.2, "n1", "demote", 1)]
    marks = [Mark(2.0, "freeze", "n1"), Mark(6.0, "resume", "n1")]
    v = check(events, marks, end_s=10.0, resume_demote_s=0.5)
    assert v.overlaps == [] and v.late_demotes == []
    assert v.intervals[0].end_s == 2.0 and v.intervals[0].ended_by == "froze"


def test_a_late_demote_after_resume_is_a_violation_and_an_overlap() -> None:
    events = [ev(1.0, "n1", "promote", 1), ev(3.0, "n2", "promote", 2), ev(7.5, "n1", "demote", 1)]
    marks = [Mark(2.0, "freeze", "n1"), Mark(6.0, "resume", "n1")]
    v = check(events, marks, end_s=10.0, resume_demote_s=0.5)
    assert len(v.late_demotes) == 1 and "1.500s after its resume" in v.late_demotes[0]
    assert v.overlaps == [("n1", "n2", 3.0, 7.5)]


def test_a_leader_still_frozen_at_the_end_stops_leading_when_it_froze() -> None:
    events = [ev(1.0, "n1", "promote", 1), ev(3.0, "n2", "promote", 2)]
    v = check(events, [Mark(2.0, "freeze", "n1")], end_s=10.0)
    assert v.overlaps == [] and v.intervals[0].ended_by == "frozen at the end"


def test_tokens_must_grow_across_leaders() -> None:
    events = [ev(1.0, "n1", "promote", 3), ev(2.0, "n1", "demote", 3), ev(3.0, "n2", "promote", 3)]
    v = check(events, [], end_s=5.0)
    assert not v.tokens_grow and "n2 promoted with term 3 after n1's 3" in v.token_faults[0]


def test_keepalived_fault_ends_mastership_only_when_asked() -> None:
    events = [ev(1.0, "n1", "promote"), ev(2.0, "n1", "fault"), ev(3.0, "n2", "promote")]
    assert check(events, [], end_s=5.0, ends=("demote", "fault")).overlaps == []
    assert check(events, [], end_s=5.0).overlaps != []


def test_split_brain_counts_time_with_two_or_more_leaders_once() -> None:
    events = [ev(0.0, "a", "promote"), ev(1.0, "b", "promote"), ev(2.0, "c", "promote"),
              ev(3.0, "b", "demote"), ev(4.0, "c", "demote")]
    ivs = check(events, [], end_s=5.0).intervals
    assert abs(split_brain_s(ivs) - 3.0) < 1e-9  # 1..4: two or three leaders


def test_the_log_parser_skips_torn_lines(tmp_path: Path) -> None:
    log = tmp_path / "log"
    log.write_text("2000000000 n2 promote 2\n1000000000 n1 promote 1\n15000 n3 prom\n")
    assert read_log(log) == [ev(1.0, "n1", "promote", 1), ev(2.0, "n2", "promote", 2)]


def test_a_promote_stamped_while_its_node_is_frozen_opens_at_the_freeze() -> None:
    # keepalived wrote MASTER, froze before the FIFO reader stamped it: it led
    # from no later than the freeze, and demoting at once on resume ends it there
    events = [ev(2.3, "n1", "promote"), ev(3.0, "n2", "promote"), ev(6.1, "n1", "demote")]
    marks = [Mark(2.0, "freeze", "n1"), Mark(6.0, "resume", "n1")]
    v = check(events, marks, end_s=10.0, resume_demote_s=0.5)
    n1 = [iv for iv in v.intervals if iv.node == "n1"]
    assert [(iv.start_s, iv.end_s, iv.ended_by) for iv in n1] == [(2.0, 2.0, "froze")]
    assert v.overlaps == [] and v.late_demotes == []


def test_a_promote_stamped_while_frozen_with_a_late_demote_leads_through_the_freeze() -> None:
    events = [ev(2.3, "n1", "promote"), ev(3.0, "n2", "promote"), ev(7.5, "n1", "demote")]
    marks = [Mark(2.0, "freeze", "n1"), Mark(6.0, "resume", "n1")]
    v = check(events, marks, end_s=10.0, resume_demote_s=0.5)
    assert v.overlaps == [("n1", "n2", 3.0, 7.5)] and len(v.late_demotes) == 1


def test_a_demote_stamped_while_frozen_ended_the_interval_at_the_freeze() -> None:
    # BACKUP written just before the freeze, read just after it
    events = [ev(1.0, "n1", "promote"), ev(2.2, "n1", "demote"), ev(2.5, "n2", "promote")]
    marks = [Mark(2.0, "freeze", "n1"), Mark(6.0, "resume", "n1")]
    v = check(events, marks, end_s=10.0)
    assert v.intervals[0].end_s == 2.0 and v.intervals[0].ended_by == "demote"
    assert v.overlaps == [] and v.late_demotes == []


def test_a_promote_stamped_after_the_kill_is_stale_until_the_node_starts_again() -> None:
    # MASTER written just before the SIGKILL, drained by the reader after it:
    # the dead node does not lead; once started again its promotes count
    events = [ev(1.0, "n1", "promote"), ev(2.0, "n2", "promote"), ev(2.1, "n2", "promote"),
              ev(4.0, "n1", "demote"), ev(6.0, "n2", "promote")]
    marks = [Mark(1.5, "kill", "n1"), Mark(1.9, "kill", "n2"), Mark(3.0, "start", "n1"), Mark(5.0, "start", "n2")]
    v = check(events, marks, end_s=10.0)
    assert [(iv.node, iv.start_s, iv.end_s, iv.ended_by) for iv in v.intervals] == [
        ("n1", 1.0, 1.5, "killed"), ("n2", 6.0, 10.0, "still leading")]
    assert v.overlaps == []
