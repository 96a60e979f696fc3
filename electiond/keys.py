"""Key files: the HMAC keys a node signs and checks datagrams with.

Format: UTF-8 text, one key per line as ``ID SECRET``; blank lines and lines
starting with ``#`` are ignored.

- ``ID``: 1-32 of ``A-Z a-z 0-9 _ . -``, starting with a letter or digit.
  It travels in every datagram, so a receiver tries only the key it names.
- ``SECRET``: hex of at least 32 random bytes (64 hex digits). Hex only: a
  second encoding would make some strings mean two different keys.

The FIRST key signs what this node sends; EVERY listed key is accepted. So a
key rotates without downtime: add the new key as a second line everywhere and
reload, move it first everywhere and reload, then remove the old line and
reload. The file must not be readable by group or others.

The bare-secret files of wire version 1 are refused with a message saying
how to convert: version 2 datagrams carry the key id, so every node is
upgraded (and restarted) together anyway, and a file that is either valid or
refused is easier to trust than one the daemon guesses about.
"""

from __future__ import annotations

import os
import re
import secrets
import stat
import time
from dataclasses import dataclass, field

SECRET_MIN_BYTES = 32
SECRET_MAX_BYTES = 512
KEY_ID_MAX_CHARS = 32
_KEY_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,31}$")
_HEX = re.compile(r"^[0-9a-fA-F]+$")

HEADER = """\
# electiond key file: one key per line, "ID SECRET" (SECRET: hex of >= 32 random bytes).
# The first key signs what this node sends; every key listed is accepted.
# Rotate: add a new key as the 2nd line on every node + reload; move it first on
# every node + reload; delete the old line on every node + reload.
"""


@dataclass(frozen=True, slots=True)
class Key:
    id: str
    secret: bytes = field(repr=False)


class KeyFileError(Exception):
    """A key file that cannot be used; the message names the file (and line) and the fix."""


def valid_key_id(text: str) -> bool:
    return bool(_KEY_ID.match(text))


def parse(text: str, path: str) -> tuple[Key, ...]:
    """The keys of a key file's text, first (signing) key first."""
    keys: list[Key] = []
    lines_of: dict[str, int] = {}
    secrets_of: dict[bytes, str] = {}
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        where = f"{path} line {number}"
        parts = line.split()
        if len(parts) != 2:
            hint = ""
            if len(parts) == 1:
                hint = (" (a bare secret is the old format: write a new file with "
                        f"`electiond --gen-key {path}.new` and roll it out as a restart)")
            raise KeyFileError(f"{where}: expected 'ID SECRET', got {len(parts)} fields{hint}")
        key_id, secret_hex = parts
        if not valid_key_id(key_id):
            raise KeyFileError(f"{where}: bad key id {key_id!r} (1-{KEY_ID_MAX_CHARS} of A-Z a-z 0-9 _ . -)")
        if key_id in lines_of:
            raise KeyFileError(f"{where}: key id {key_id!r} is already used on line {lines_of[key_id]}")
        if not _HEX.match(secret_hex) or len(secret_hex) % 2:
            raise KeyFileError(f"{where}: the secret of key {key_id!r} is not hex (an even count of 0-9a-f)")
        secret = bytes.fromhex(secret_hex)
        if len(secret) < SECRET_MIN_BYTES:
            raise KeyFileError(
                f"{where}: the secret of key {key_id!r} is {len(secret)} bytes; use at least "
                f"{SECRET_MIN_BYTES} random bytes (electiond --gen-key makes one)")
        if len(secret) > SECRET_MAX_BYTES:
            raise KeyFileError(f"{where}: the secret of key {key_id!r} is over {SECRET_MAX_BYTES} bytes")
        if secret in secrets_of:
            raise KeyFileError(f"{where}: key {key_id!r} repeats the secret of key {secrets_of[secret]!r}")
        lines_of[key_id] = number
        secrets_of[secret] = key_id
        keys.append(Key(key_id, secret))
    if not keys:
        raise KeyFileError(f"{path}: holds no key (expected lines 'ID SECRET'; electiond --gen-key {path} makes one)")
    return tuple(keys)


def load(path: str) -> tuple[Key, ...]:
    """Read and check a key file, refusing one that others could read."""
    try:
        fd = os.open(path, os.O_RDONLY)  # a symlink is fine: the mode checked is the target's
    except OSError as exc:
        raise KeyFileError(f"cannot read {path}: {exc.strerror}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise KeyFileError(f"{path} is not a regular file")
        # checked on the opened file, so a swap between check and read cannot pass
        if info.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise KeyFileError(
                f"{path} is accessible by group or others (mode {stat.S_IMODE(info.st_mode):04o}); "
                f"fix with: chmod 600 {path}")
        with os.fdopen(fd, "rb", closefd=False) as f:
            data = f.read(64 * 1024 + 1)
    finally:
        os.close(fd)
    if len(data) > 64 * 1024:
        raise KeyFileError(f"{path} is over 64 KiB; it is not a key file")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise KeyFileError(f"{path} is not UTF-8 text (a binary secret is the old format; "
                           f"write a new file with `electiond --gen-key {path}.new`)") from None
    return parse(text, path)


def new_key(key_id: str | None = None) -> Key:
    """A fresh random key; the default id is the UTC time, so ids sort by age."""
    if key_id is None:
        key_id = time.strftime("k%Y%m%dT%H%M%S", time.gmtime())
    if not valid_key_id(key_id):
        raise KeyFileError(f"bad key id {key_id!r} (1-{KEY_ID_MAX_CHARS} of A-Z a-z 0-9 _ . -)")
    return Key(key_id, secrets.token_bytes(SECRET_MIN_BYTES))


def key_line(key: Key) -> str:
    return f"{key.id} {key.secret.hex()}\n"


def create(path: str, key: Key) -> None:
    """Write a new key file holding ``key``, mode 0600; never overwrites."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    except FileExistsError:
        raise KeyFileError(f"{path} exists; refusing to overwrite it (use --add to add a key to it)") from None
    except OSError as exc:
        raise KeyFileError(f"cannot create {path}: {exc.strerror}") from None
    try:
        os.fchmod(fd, 0o600)  # the umask may have taken bits away, never added: be exact
        _write_all(fd, (HEADER + key_line(key)).encode())
        os.fsync(fd)
    finally:
        os.close(fd)


def add(path: str, key: Key) -> None:
    """Append ``key`` to a valid key file as a non-first key: accepted, not yet
    used to sign (step 1 of a rotation). Replaced atomically, mode 0600."""
    path = os.path.realpath(path)  # replace the target, not a symlink to it
    existing = load(path)
    if any(k.id == key.id for k in existing):
        raise KeyFileError(f"{path} already holds a key with id {key.id!r}; pick another --key-id")
    with open(path, encoding="utf-8") as f:
        text = f.read()
    if text and not text.endswith("\n"):
        text += "\n"
    text += key_line(key)
    parse(text, path)  # what we write must load
    tmp = f"{path}.tmp{os.getpid()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        try:
            os.fchmod(fd, 0o600)
            _write_all(fd, text.encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(tmp, path)
        _fsync_directory(os.path.dirname(os.path.abspath(path)))
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def _fsync_directory(directory: str) -> None:
    dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]
