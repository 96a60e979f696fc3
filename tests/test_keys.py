"""Key files: format, strictness, permissions, and electiond --gen-key."""

import os
import stat
import subprocess
import sys
import pathlib

import pytest

from electiond import config, keys
from electiond.daemon import EX_CONFIG

REPO = pathlib.Path(__file__).resolve().parent.parent
A, B = "ab" * 32, "cd" * 32


def key_file(tmp_path, text, mode=0o600, name="key"):
    path = tmp_path / name
    path.write_text(text)
    path.chmod(mode)
    return str(path)


def test_first_key_signs_all_are_listed(tmp_path):
    path = key_file(tmp_path, f"# a comment\n\nnew {A}\n  old   {B.upper()}  \n")
    ring = keys.load(path)
    assert [k.id for k in ring] == ["new", "old"]
    assert ring[0].secret == bytes.fromhex(A) and ring[1].secret == bytes.fromhex(B)


def test_secret_not_in_repr():
    assert A not in repr(keys.Key("k", bytes.fromhex(A))) and "ab" * 4 not in repr(keys.Key("k", bytes.fromhex(A)))


@pytest.mark.parametrize("text,expected", [
    ("", "holds no key"),
    ("# only a comment\n\n", "holds no key"),
    (f"k1 {A}\nk2\n", "line 2: expected 'ID SECRET', got 1 fields"),
    (f"{A}\n", "line 1: expected 'ID SECRET', got 1 fields (a bare secret is the old format"),
    (f"k1 {A} extra\n", "line 1: expected 'ID SECRET', got 3 fields"),
    (f"k1 {A}\nk1 {B}\n", "line 2: key id 'k1' is already used on line 1"),
    (f"k1 {A}\nk2 {A}\n", "line 2: key 'k2' repeats the secret of key 'k1'"),
    ("k1 " + "ab" * 31 + "\n", "line 1: the secret of key 'k1' is 31 bytes; use at least 32"),
    ("k1 " + "zz" * 32 + "\n", "line 1: the secret of key 'k1' is not hex"),
    ("k1 " + "a" * 65 + "\n", "line 1: the secret of key 'k1' is not hex"),
    ("k1 " + "QUJD" * 11 + "=\n", "not hex"),  # base64 is not accepted
    (f"-k {A}\n", "line 1: bad key id '-k'"),
    (f"{'k' * 33} {A}\n", "bad key id"),
    ("k1 " + "ab" * 513 + "\n", "over 512 bytes"),
])
def test_bad_key_files_name_the_line(tmp_path, text, expected):
    path = key_file(tmp_path, text)
    with pytest.raises(keys.KeyFileError) as err:
        keys.load(path)
    assert expected in str(err.value) and path in str(err.value)


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o660, 0o644, 0o610])
def test_readable_by_group_or_others_is_refused_with_the_fix(tmp_path, mode):
    path = key_file(tmp_path, f"k1 {A}\n", mode)
    with pytest.raises(keys.KeyFileError, match=f"fix with: chmod 600 {path}"):
        keys.load(path)


def test_owner_only_modes_are_fine(tmp_path):
    assert keys.load(key_file(tmp_path, f"k1 {A}\n", 0o400))[0].id == "k1"


def test_binary_and_directory_refused_a_symlink_is_judged_by_its_target(tmp_path):
    binary = tmp_path / "bin"
    binary.write_bytes(b"\xff\xfe" + os.urandom(30))
    binary.chmod(0o600)
    with pytest.raises(keys.KeyFileError, match="not UTF-8"):
        keys.load(str(binary))
    link = tmp_path / "link"
    target = key_file(tmp_path, f"k1 {A}\n")
    link.symlink_to(target)
    assert keys.load(str(link))[0].id == "k1"
    os.chmod(target, 0o644)
    with pytest.raises(keys.KeyFileError, match="chmod 600"):
        keys.load(str(link))
    os.chmod(target, 0o600)
    keys.add(str(link), keys.new_key("k2"))
    assert link.is_symlink() and [k.id for k in keys.load(target)] == ["k1", "k2"]
    (tmp_path / "dir").mkdir(mode=0o700)
    with pytest.raises(keys.KeyFileError, match="not a regular file"):
        keys.load(str(tmp_path / "dir"))


def test_config_error_names_the_key_and_line(tmp_path):
    path = key_file(tmp_path, f"k1 {A}\nk1 {B}\n")
    conf = tmp_path / "c.conf"
    conf.write_text(f"[cluster]\nname = c\nmembers = n1=1\nkey_file = {path}\n[node]\nname = n1\n")
    with pytest.raises(config.ConfigError) as err:
        config.load(str(conf))
    assert "[cluster] key_file" in str(err.value) and "line 2" in str(err.value)


def test_create_then_refuse_to_overwrite(tmp_path):
    path = str(tmp_path / "new.key")
    old_umask = os.umask(0)  # a permissive umask must not widen the file
    try:
        keys.create(path, keys.new_key("first"))
    finally:
        os.umask(old_umask)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    ring = keys.load(path)
    assert [k.id for k in ring] == ["first"] and len(ring[0].secret) == 32
    before = pathlib.Path(path).read_bytes()
    with pytest.raises(keys.KeyFileError, match="refusing to overwrite"):
        keys.create(path, keys.new_key("second"))
    assert pathlib.Path(path).read_bytes() == before


def test_add_appends_a_non_signing_key(tmp_path):
    path = key_file(tmp_path, f"# ours\nold {A}")  # no trailing newline
    keys.add(path, keys.new_key("new"))
    ring = keys.load(path)
    assert [k.id for k in ring] == ["old", "new"]  # old still signs: step 1 of a rotation
    assert pathlib.Path(path).read_text().startswith("# ours\n")
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    with pytest.raises(keys.KeyFileError, match="already holds a key with id 'new'"):
        keys.add(path, keys.new_key("new"))
    assert [p.name for p in tmp_path.iterdir()] == ["key"]  # no temp file left


def test_fresh_keys_differ_and_default_ids_are_valid():
    a, b = keys.new_key(), keys.new_key()
    assert a.secret != b.secret and keys.valid_key_id(a.id) and a.id.startswith("k20")
    with pytest.raises(keys.KeyFileError, match="bad key id"):
        keys.new_key("no spaces")


def run_daemon(*args):
    return subprocess.run([sys.executable, "-m", "electiond", *args], capture_output=True, text=True,
                          timeout=60, cwd=REPO, env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})


def test_gen_key_command(tmp_path):
    path = tmp_path / "key"
    result = run_daemon("--gen-key", str(path), "--key-id", "2026a")
    assert result.returncode == 0, result.stderr
    assert "2026a" in result.stdout
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    lines = [line for line in path.read_text().splitlines() if line and not line.startswith("#")]
    assert len(lines) == 1 and lines[0].split()[0] == "2026a" and len(bytes.fromhex(lines[0].split()[1])) == 32
    again = run_daemon("--gen-key", str(path))
    assert again.returncode == EX_CONFIG and "refusing to overwrite" in again.stderr
    added = run_daemon("--gen-key", str(path), "--add", "--key-id", "2026b")
    assert added.returncode == 0, added.stderr
    assert [k.id for k in keys.load(str(path))] == ["2026a", "2026b"]
    assert run_daemon("--key-id", "x").returncode == 2


def test_check_config_refuses_group_readable_key_naming_the_fix(tmp_path):
    path = key_file(tmp_path, f"k1 {A}\n", 0o640)
    conf = tmp_path / "c.conf"
    conf.write_text(f"[cluster]\nname = c\nmembers = n1=1\nkey_file = {path}\n[node]\nname = n1\n")
    result = run_daemon("--config", str(conf), "--check-config")
    assert result.returncode == EX_CONFIG
    assert f"chmod 600 {path}" in result.stderr and "[cluster] key_file" in result.stderr
    os.chmod(path, 0o600)
    ok = run_daemon("--config", str(conf), "--check-config")
    assert ok.returncode == 0 and "1 key(s), signing with k1" in ok.stdout
