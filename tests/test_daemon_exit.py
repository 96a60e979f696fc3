"""daemon.main in-process: a crash escaping the event loop still ends with one final line."""

import logging

from cluster import Cluster
from electiond import daemon, statelock


def test_a_crash_in_the_loop_exits_70_with_the_traceback_then_a_final_line(tmp_path, monkeypatch, capsys):
    c = Cluster(tmp_path, 1, protocol="bully")
    for variable in ("JOURNAL_STREAM", "INVOCATION_ID"):
        monkeypatch.delenv(variable, raising=False)

    async def broken_serve(cfg):
        raise RuntimeError("boom")

    monkeypatch.setattr(daemon, "serve", broken_serve)
    root = logging.getLogger()
    saved_handlers, saved_level = root.handlers[:], root.level
    try:
        code = daemon.main(["--config", str(c.config_path("n1")), "--node", "n1"])
    finally:
        root.handlers[:] = saved_handlers
        root.setLevel(saved_level)
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == daemon.EX_SOFTWARE
    assert any(line.startswith("Traceback") for line in lines)
    assert "exiting: crash: RuntimeError: boom; up " in lines[-1]
    # the process would be gone; main released the state directory on the way out
    statelock.acquire(str(tmp_path / "n1")).release()
