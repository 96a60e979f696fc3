"""Parse and validate the INI configuration into frozen dataclasses.

(The parser is being written; the hook and health sections' shapes are fixed
here first because hooks.py and health.py are built against them.)
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class HooksConfig:
    """[hooks]: each command is an argv (shlex-split); empty means none."""

    promote: tuple[str, ...] = ()
    demote: tuple[str, ...] = ()
    fault: tuple[str, ...] = ()
    # holds promote.d/, demote.d/, fault.d/ run in lexical order (run-parts rules)
    directory: str | None = None
    timeout_s: float = 30.0
    kill_grace_s: float = 5.0
    on_promote_failure: str = "stepdown"  # or "ignore"


@dataclass(frozen=True, slots=True)
class HealthConfig:
    """[health]: what must be healthy for this node to stand for election."""

    track_process: tuple[str, ...] = ()  # process names or regex patterns
    track_script: tuple[str, ...] = ()  # argv of one check command; exit 0 = healthy
    track_interface: tuple[str, ...] = ()  # interface names; link down = unhealthy
    interval_s: float = 2.0
    timeout_s: float = 5.0
    rise: int = 2
    fall: int = 2
