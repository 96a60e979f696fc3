"""The suite's own time limit (tests/conftest.py), run as pytest in a process."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).parent


def run_pytest(tmp_path: Path, body: str, **env: str) -> subprocess.CompletedProcess:
    shutil.copy(HERE / "conftest.py", tmp_path / "conftest.py")
    (tmp_path / "test_subject.py").write_text(body)
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:xdist",
         "-s", str(tmp_path / "test_subject.py")],
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
        env={**{k: v for k, v in os.environ.items() if not k.startswith("ELECTIOND_TEST_")}, **env})


def test_a_sleeping_test_fails_at_its_limit_and_the_next_one_runs(tmp_path):
    done = run_pytest(tmp_path, """
import time, pytest
@pytest.mark.timeout_s(1)
def test_sleeps():
    time.sleep(30)
def test_after():
    assert True
""")
    assert done.returncode == 1, done.stdout + done.stderr
    assert "ran over its 1 s limit" in done.stdout
    assert "1 failed, 1 passed" in done.stdout
    assert "in test_sleeps" in done.stderr  # the stacks were dumped


def test_a_test_that_swallows_the_timeout_is_killed_with_its_children(tmp_path):
    pidfile = tmp_path / "child.pid"
    done = run_pytest(tmp_path, f"""
import subprocess, time, pytest
@pytest.mark.timeout_s(1)
def test_swallows():
    child = subprocess.Popen(["sleep", "300"])
    open({str(pidfile)!r}, "w").write(str(child.pid))
    for _ in range(100):
        try:
            time.sleep(30)
        except BaseException:
            pass
""", ELECTIOND_TEST_HARD_GRACE_S="2")
    assert done.returncode == 70, done.stdout + done.stderr
    assert "still running 2 s after its 1 s limit" in done.stderr
    pid = int(pidfile.read_text())
    assert not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text()


def test_a_limit_in_the_environment_raises_a_marked_one_and_zero_lifts_it(tmp_path):
    body = """
import time, pytest
@pytest.mark.timeout_s(1)
def test_sleeps():
    time.sleep(2.5)
"""
    assert run_pytest(tmp_path, body, ELECTIOND_TEST_TIMEOUT_S="30").returncode == 0
    assert run_pytest(tmp_path, body, ELECTIOND_TEST_TIMEOUT_S="0").returncode == 0
    assert run_pytest(tmp_path, body).returncode == 1


def test_modules_marked_long_are_collected_first_longest_first_each_kept_together(tmp_path):
    shutil.copy(HERE / "conftest.py", tmp_path / "conftest.py")
    (tmp_path / "test_a_quick.py").write_text("def test_one(): pass\ndef test_two(): pass\n")
    (tmp_path / "test_b_long.py").write_text(
        "import pytest\npytestmark = pytest.mark.timeout_s(900)\ndef test_one(): pass\ndef test_two(): pass\n")
    (tmp_path / "test_c_longest.py").write_text(
        "import pytest\npytestmark = pytest.mark.timeout_s(3000)\ndef test_one(): pass\n")
    (tmp_path / "test_d_marked_short.py").write_text(
        "import pytest\n@pytest.mark.timeout_s(5000)\ndef test_one(): pass\n")  # a function mark moves nothing
    done = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider",
                           "-p", "no:xdist", str(tmp_path)], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    order = [line.split("::")[0].split("/")[-1] + "::" + line.split("::")[1]
             for line in done.stdout.splitlines() if "::" in line]
    assert order == ["test_c_longest.py::test_one", "test_b_long.py::test_one", "test_b_long.py::test_two",
                     "test_a_quick.py::test_one", "test_a_quick.py::test_two", "test_d_marked_short.py::test_one"], \
        done.stdout + done.stderr
