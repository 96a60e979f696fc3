"""bash completion for electionctl: commands, options, and the member names
of the configs on this host for `transfer`."""

import os
import pathlib
import shutil
import subprocess

import pytest

from cluster import REPO

BASH_COMPLETION = pathlib.Path("/usr/share/bash-completion/bash_completion")


def complete(words: list[str], conf_dir: pathlib.Path) -> list[str]:
    """COMPREPLY for the command line `words` (the last one being completed)."""
    line = " ".join(words)
    script = f"""
source {BASH_COMPLETION}
source {REPO / 'completions' / 'electionctl'}
COMP_WORDS=({' '.join(repr(w) for w in words)})
COMP_CWORD={len(words) - 1}
COMP_LINE={line!r}
COMP_POINT={len(line)}
_electionctl electionctl "{words[-1]}" "{words[-2]}"
printf '%s\\n' "${{COMPREPLY[@]}}"
"""
    result = subprocess.run(["bash", "--norc", "-c", script], capture_output=True, text=True, timeout=30,
                            env=dict(os.environ, ELECTIOND_CONF_DIR=str(conf_dir)))
    assert result.returncode == 0, result.stderr
    return sorted(filter(None, result.stdout.splitlines()))


@pytest.fixture
def conf_dir(tmp_path):
    if shutil.which("bash") is None or not BASH_COMPLETION.exists():
        pytest.skip("bash-completion is not installed (apt-get install bash-completion)")
    (tmp_path / "a.conf").write_text("[cluster]\nmembers = alpha=1, beta=2 ; two of three\n")
    # a commented-out example lists nobody
    (tmp_path / "electiond.conf").write_text("[cluster]\n# members = n1=1, n2=2\n")
    (tmp_path / "b.conf").write_text("[cluster]\nname = b\nmembers=gamma=3\n")
    return tmp_path


def test_commands_and_options(conf_dir):
    assert complete(["electionctl", ""], conf_dir) == sorted(
        ["status", "members", "history", "is-leader", "wait-leader", "transfer", "stepdown",
         "lock", "run-as-leader", "barrier", "config"])
    assert complete(["electionctl", "st"], conf_dir) == ["status", "stepdown"]
    assert complete(["electionctl", "--"], conf_dir) == ["--help", "--json", "--socket"]
    assert complete(["electionctl", "wait-leader", "--t"], conf_dir) == ["--timeout"]


def test_transfer_completes_member_names_from_the_configs(conf_dir):
    assert complete(["electionctl", "transfer", ""], conf_dir) == ["alpha", "beta", "gamma"]
    assert complete(["electionctl", "--socket", "/run/electiond/a/control.sock", "transfer", "b"], conf_dir) == \
        ["beta"]


def test_coordination_commands_complete_their_actions_and_options(conf_dir):
    assert complete(["electionctl", "config", ""], conf_dir) == ["cas", "delete", "get", "set", "watch"]
    assert complete(["electionctl", "config", "cas", "k", "v", "--v"], conf_dir) == ["--version"]
    assert complete(["electionctl", "lock", "job", "--k"], conf_dir) == ["--kill-grace"]
    assert complete(["electionctl", "members", "--w"], conf_dir) == ["--watch"]
    assert complete(["electionctl", "barrier", "b", "--l"], conf_dir) == ["--leave"]
