"""Event trace for failover forensics (off unless ELECTIOND_TRACE_DIR is set).

One line per datagram in or out and per change of the protocol's phase,
with wall-clock times, so the single failovers of a benchmark can be lined
up across daemons: the kill, each follower's last heartbeat and promise
end, pre-votes, votes and refusals with their hints, the promotion. The
benchmark (scripts/bench_failover.py --trace) sets the variable; a
production daemon never pays more than one ``is None`` check per event.
"""

from __future__ import annotations

import json
import os
import time
from typing import IO, Any

_out: IO[str] | None = None
_last_state: tuple[Any, ...] = ()


def open_for(node_name: str) -> None:
    global _out
    directory = os.environ.get("ELECTIOND_TRACE_DIR")
    if directory:
        _out = open(os.path.join(directory, f"{node_name}.trace"), "a", buffering=1)


def enabled() -> bool:
    return _out is not None


def _wall(monotonic_s: float) -> float:
    return time.time() - (time.monotonic() - monotonic_s)


def message(direction: str, kind: str, peer: str | None, term: int, body: dict[str, Any]) -> None:
    if _out is None:
        return
    _out.write(json.dumps({"t": time.time(), "ev": direction, "kind": kind, "peer": peer,
                           "term": term, "body": body}, default=str) + "\n")


def state(protocol: Any, now: float) -> None:
    """The protocol's phase, term, leader and promise, when any of them changed."""
    global _last_state
    if _out is None:
        return
    promised_to, promise_until = getattr(protocol, "promise", (None, float("-inf")))
    phase = protocol.phase(now) if hasattr(protocol, "phase") else protocol.role
    current = (phase, protocol.term, protocol.leader, promised_to, promise_until)
    if current == _last_state:
        return
    _last_state = current
    record = {"t": _wall(now), "ev": "state", "phase": phase, "term": protocol.term,
              "leader": protocol.leader, "promised_to": promised_to}
    if promise_until > float("-inf"):
        record["promise_until"] = _wall(promise_until)
    _out.write(json.dumps(record) + "\n")
