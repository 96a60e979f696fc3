"""The man pages are generated from the sources that cannot drift from the
program: the argparse parsers behind --help and the shipped config."""

import importlib.util
import subprocess
import sys

from cluster import REPO
from electiond import config


def load_generator():
    spec = importlib.util.spec_from_file_location("manpages", REPO / "scripts" / "manpages.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_conf_page_documents_every_key_the_parser_knows():
    gen = load_generator()
    _, sections = gen.parse_config_reference((REPO / "etc" / "electiond.conf").read_text())
    documented = {(name, key) for name, entries in sections for key, *_ in entries if key}
    known = {(name, key) for name, keys in config.KNOWN_KEYS.items() for key in keys}
    assert known - documented == set(), "keys the config accepts but etc/electiond.conf does not show"
    assert documented - known == set(), "keys etc/electiond.conf shows but the config refuses"


def test_pages_carry_every_option_of_help(tmp_path):
    gen = load_generator()
    subprocess.run([sys.executable, str(REPO / "scripts" / "manpages.py"), str(tmp_path)], check=True, timeout=60)
    daemon_page = (tmp_path / "electiond.8").read_text()
    ctl_page = (tmp_path / "electionctl.8").read_text()
    for action in gen.capture_parser(gen.daemon.parse_args)._actions:
        for option in action.option_strings:
            assert gen.esc(option) in daemon_page, option
    for command in ("status", "members", "history", "is-leader", "wait-leader", "transfer", "stepdown",
                    "lock", "run-as-leader", "barrier", "config"):
        assert f"\\fB{gen.esc(command)}\\fR" in ctl_page, command
    conf_page = (tmp_path / "electiond.conf.5").read_text()
    assert conf_page.startswith(".TH ELECTIOND.CONF 5") and "\\fBmembers\\fR (unset" in conf_page
    # roff that man(1) renders without warnings
    for page in ("electiond.8", "electionctl.8", "electiond.conf.5"):
        result = subprocess.run(["man", "--warnings", "-l", "-E", "UTF-8", str(tmp_path / page)],
                                capture_output=True, text=True, timeout=60, env={"MANWIDTH": "80", "PATH": "/usr/bin:/bin"})
        assert result.returncode == 0 and result.stderr == "", result.stderr
