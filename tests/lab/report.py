"""docs/benchmarks.md as named sections, each replaced by the command that
measures it, so a rerun of one benchmark neither duplicates its table nor
drops the others'."""

from __future__ import annotations

import re
from pathlib import Path

TITLE = """# Benchmarks: electiond and keepalived side by side

Written by `scripts/bench` (each section by the command named in it; rerunning one replaces only its
section). Every section says when, on which machine, under which load average and with which exact command
it was measured; figures from different sections were measured at different times. The chaos campaign
(`scripts/lab chaos --schedules N`) writes its summary to [chaos.md](chaos.md).
"""
ORDER = ("failover", "footprint", "load", "transfer", "scale")


def _begin(key: str) -> str:
    return f"<!-- bench:{key} -->"


def _end(key: str) -> str:
    return f"<!-- /bench:{key} -->"


def sections(text: str) -> dict[str, str]:
    found = {}
    for m in re.finditer(r"<!-- bench:(\w+) -->\n(.*?)<!-- /bench:\1 -->", text, re.S):
        found[m.group(1)] = m.group(2)
    return found


def write_section(path: Path, key: str, body: str) -> None:
    """Put ``body`` (markdown) in place of section ``key`` of the report at ``path``."""
    old = sections(path.read_text()) if path.exists() else {}
    old[key] = body.rstrip("\n") + "\n"
    keys = [k for k in ORDER if k in old] + [k for k in old if k not in ORDER]
    parts = [TITLE]
    for k in keys:
        parts.append(f"{_begin(k)}\n{old[k]}{_end(k)}\n")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(parts))
