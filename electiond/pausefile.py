"""The maintenance flag on disk: ``paused`` next to state.json.

Present means paused: written atomically (temp file, fsync, rename, fsync of
the directory) before the daemon acts on a pause, removed on resume, so a
paused node that restarts, or crashes right after the pause, stays paused.
Strict like state.json: a file that is not exactly what we write is an
error naming it (the daemon refuses to start) rather than a guess either way.
"""

from __future__ import annotations

import json
import os
import time

from electiond.state import StateError

NAME = "paused"


def path(directory: str) -> str:
    return os.path.join(directory, NAME)


def load(directory: str) -> bool:
    try:
        with open(path(directory), "rb") as f:
            data = f.read(4096)
    except FileNotFoundError:
        return False
    except OSError as exc:
        raise StateError(f"{path(directory)}: cannot read: {exc.strerror}") from None
    try:
        content = json.loads(data)
        ok = isinstance(content, dict) and content.get("paused") is True and set(content) == {"paused", "since"}
    except ValueError:
        ok = False
    if not ok:
        raise StateError(f"{path(directory)}: not a pause file written by electiond; remove it to resume, "
                         "or write it with electionctl pause")
    return True


def save(directory: str) -> None:
    os.makedirs(directory, exist_ok=True)
    target = path(directory)
    tmp = target + ".tmp"
    data = json.dumps({"paused": True, "since": round(time.time(), 3)}).encode() + b"\n"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, target)
    _sync_directory(directory)


def clear(directory: str) -> None:
    try:
        os.unlink(path(directory))
    except FileNotFoundError:
        return
    _sync_directory(directory)


def _sync_directory(directory: str) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
