"""state.json: strict parsing, the recovery file, the state-directory lock (in-process)."""

import json
import os
import subprocess
import sys

import pytest
from hypothesis import given, settings, strategies as st

from electiond import statelock
from electiond.protocols.base import PersistedState
from electiond.state import MAX_COUNTER, MAX_STATE_BYTES, StateError, StateStore, parse_state, recover
from procio import readline_within


def record(**overrides):
    data = {"term": 3, "voted_for": "n2", "incarnation": 17}
    data.update(overrides)
    return json.dumps(data).encode()


def test_a_well_formed_file_parses():
    assert parse_state(record()) == (PersistedState(3, "n2"), 17)
    assert parse_state(record(voted_for=None, recovering=True)) == (PersistedState(3, None, recovering=True), 17)
    # another helper's sentinel for a withheld vote is just a string
    assert parse_state(record(voted_for="#withheld"))[0].voted_for == "#withheld"
    assert parse_state(record(term=MAX_COUNTER, incarnation=0))[0].term == MAX_COUNTER


@pytest.mark.parametrize("raw, fault", [
    (b"", "empty"),
    (b"\x00\x01\xfe\xff binary", "not UTF-8"),
    ('{"term": 1, "voted_for": null, "incarnation": 1}'.encode("utf-16"), "not UTF-8"),
    (b"{not json", "not valid JSON"),
    (b" " * 70_000 + record(), "larger than"),
    (b"[" * 30_000, "nested too deeply"),
    (b'{"term": ' + b"[" * 30_000, "nested too deeply"),
    (b"[1, 2]", "not a JSON object"),
    (b'"text"', "not a JSON object"),
    (b'{"term": 1, "incarnation": 1}', "missing key(s) voted_for"),
    (record(extra=1), "unknown key(s) 'extra'"),
    (record(term=True), "term must be an integer, not a boolean"),
    (record(term=1.0), "term must be an integer, not a number"),
    (record(term="1"), "term must be an integer, not a string"),
    (record(term=-1), "outside [0, 2^53]"),
    (record(term=2**64 - 1), "term 18446744073709551615 is outside [0, 2^53]"),
    (record(term=MAX_COUNTER + 1), "outside [0, 2^53]"),
    (record(incarnation=False), "incarnation must be an integer, not a boolean"),
    (record(incarnation=None), "incarnation must be an integer, not null"),
    (record(voted_for=""), "voted_for must be 1 to 255 characters"),
    (record(voted_for="x" * 256), "voted_for must be 1 to 255 characters"),
    (record(voted_for=7), "voted_for must be null or a string"),
    (record(recovering=1), "recovering must be true or false"),
    (b'{"term": 1' + b"9" * 5000 + b', "voted_for": null, "incarnation": 0}', "not valid JSON"),
    (b'{"term": NaN, "voted_for": null, "incarnation": 0}', "term must be an integer"),
])
def test_every_malformed_file_is_refused_with_a_reason(raw, fault):
    with pytest.raises(ValueError) as caught:
        parse_state(raw)
    assert fault in str(caught.value)
    assert "\n" not in str(caught.value)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300) | st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
).map(lambda value: json.dumps(value).encode()))
def test_arbitrary_bytes_parse_or_raise_value_error_only(raw):
    try:
        state, incarnation = parse_state(raw)
    except ValueError as exc:
        assert str(exc) and "\n" not in str(exc)
        return
    assert 0 <= state.term <= MAX_COUNTER and 0 <= incarnation <= MAX_COUNTER


def test_load_names_the_file_and_the_fault(tmp_path):
    (tmp_path / "state.json").write_bytes(record(term=True))
    with pytest.raises(StateError) as caught:
        StateStore(str(tmp_path)).load()
    message = str(caught.value)
    assert str(tmp_path / "state.json") in message and "not a boolean" in message
    assert "--recover-state" in message


def test_load_reads_at_most_the_cap(tmp_path):
    (tmp_path / "state.json").write_bytes(b" " * (10 * MAX_STATE_BYTES) + record())
    with pytest.raises(StateError, match="larger than 64 KiB"):
        StateStore(str(tmp_path)).load()


def test_recovering_round_trips_and_is_written_only_when_set(tmp_path):
    store = StateStore(str(tmp_path))
    store.save(PersistedState(4, "n1", recovering=True))
    assert json.loads((tmp_path / "state.json").read_text())["recovering"] is True
    assert StateStore(str(tmp_path)).load() == PersistedState(4, "n1", recovering=True)
    store.save(PersistedState(5, None))
    assert "recovering" not in json.loads((tmp_path / "state.json").read_text())


def test_recover_keeps_the_corrupt_file_and_its_incarnation(tmp_path):
    (tmp_path / "state.json").write_bytes(record(term=True, incarnation=1234))
    done = recover(str(tmp_path), 1_800_000_000.0)
    assert done.kept_aside == str(tmp_path / "state.json.corrupt-20270115T080000Z")
    assert (tmp_path / "state.json.corrupt-20270115T080000Z").read_bytes() == record(term=True, incarnation=1234)
    assert "boolean" in done.old_fault and done.incarnation == 1234
    assert json.loads((tmp_path / "state.json").read_text()) == {
        "term": 0, "voted_for": None, "incarnation": 1234, "recovering": True}
    # a second recovery in the same second keeps both old files
    again = recover(str(tmp_path), 1_800_000_000.0)
    assert again.kept_aside.endswith(".corrupt-20270115T080000Z.1") and again.old_fault is None
    assert StateStore(str(tmp_path)).load() == PersistedState(0, None, recovering=True)


def test_recover_without_a_file_or_with_unsalvageable_bytes(tmp_path):
    done = recover(str(tmp_path / "new"), 0.0)
    assert done.kept_aside is None and done.incarnation == 0
    (tmp_path / "new" / "state.json").write_bytes(b"\xff\xfe garbage")
    done = recover(str(tmp_path / "new"), 0.0)
    assert done.kept_aside is not None and "UTF-8" in done.old_fault and done.incarnation == 0


def test_lock_is_exclusive_names_the_holder_and_frees_on_release(tmp_path):
    held = statelock.acquire(str(tmp_path / "d"))
    assert (tmp_path / "d" / statelock.LOCK_FILE).read_text() == f"{os.getpid()}\n"
    # flock is per open file description: a second open in this process conflicts too
    with pytest.raises(statelock.LockHeld) as caught:
        statelock.acquire(str(tmp_path / "d"))
    assert caught.value.holder_pid == os.getpid() and f"PID {os.getpid()}" in str(caught.value)
    held.release()
    statelock.acquire(str(tmp_path / "d")).release()


def test_lock_is_not_inherited_by_children(tmp_path):
    """A hook left running by a dead daemon must not lock its successor out."""
    held = statelock.acquire(str(tmp_path))
    child = subprocess.Popen([sys.executable, "-c", "print('up', flush=True); import time; time.sleep(30)"],
                             close_fds=False, stdout=subprocess.PIPE)
    try:
        # until its exec the forked child shares the descriptor: wait for the new program
        assert readline_within(child.stdout, 30, "the child") == b"up\n"
        held.release()
        statelock.acquire(str(tmp_path)).release()
    finally:
        child.kill()
        child.wait(10)
        child.stdout.close()


def test_lock_error_for_an_unusable_directory(tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.raises(statelock.LockError, match="cannot open"):
        statelock.acquire(str(tmp_path / "file"))


@pytest.mark.parametrize("make", ["directory", "fifo"])
def test_a_state_path_that_is_not_a_regular_file_is_refused_without_hanging(tmp_path, make):
    path = tmp_path / "state.json"
    if make == "directory":
        path.mkdir()
    else:
        os.mkfifo(path)
    with pytest.raises(StateError, match="cannot read .*state.json: not a regular file"):
        StateStore(str(tmp_path)).load()
    # and the recovery sets it aside like any other unusable file
    done = recover(str(tmp_path), 0.0)
    assert done.kept_aside is not None and done.old_fault.startswith("unreadable")
    assert StateStore(str(tmp_path)).load() == PersistedState(0, None, recovering=True)


def test_a_failed_recovery_write_leaves_the_old_file_in_place(tmp_path):
    (tmp_path / "state.json").write_bytes(record(term=True))
    (tmp_path / "state.json.tmp").mkdir()  # the atomic write's temp file cannot be created
    with pytest.raises(StateError, match="cannot write"):
        recover(str(tmp_path), 0.0)
    # still refused at the next start, not mistaken for a first start
    assert (tmp_path / "state.json").read_bytes() == record(term=True)
    with pytest.raises(StateError, match="is corrupt"):
        StateStore(str(tmp_path)).load()
