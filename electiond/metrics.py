"""Prometheus text exposition (format 0.0.4) of a daemon's status and counters.

Written by hand rather than with prometheus_client: every figure already
lives in the status the control socket serves, so the exposition is one pure
function of it (no second registry to keep in step, nothing global), and the
runtime dependencies stay the four the Debian package declares. The tests
parse the output with prometheus_client's own parser.

``MetricsServer`` serves the same text over HTTP for ``[control]
metrics_listen``: GET only, one request per connection, bounded in
connections, request size and time, like the control socket.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Callable, Iterable
from typing import Any

log = logging.getLogger("electiond.metrics")

# hook durations: from an `ip addr add` (ms) to a service start (tens of s)
HOOK_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class Histogram:
    __slots__ = ("counts", "total", "sum_s")

    def __init__(self) -> None:
        self.counts = [0] * len(HOOK_BUCKETS_S)  # per bucket, not cumulative
        self.total = 0
        self.sum_s = 0.0

    def observe(self, value_s: float) -> None:
        self.total += 1
        self.sum_s += value_s
        for i, bound in enumerate(HOOK_BUCKETS_S):
            if value_s <= bound:
                self.counts[i] += 1
                break


class Counters:
    """What the shell counts as it goes (the Node and codec count the rest)."""

    def __init__(self) -> None:
        self.sent: dict[str, int] = {}
        self.received: dict[str, int] = {}
        self.hook_runs: dict[tuple[str, str], int] = {}  # (event, ok|failed) -> runs
        self.hook_seconds: dict[str, Histogram] = {}
        self.leadership_changes = 0  # a new leader known (never "none"), since start
        self.flap_warnings = 0

    def hook(self, event: str, ok: bool, duration_s: float) -> None:
        key = (event, "ok" if ok else "failed")
        self.hook_runs[key] = self.hook_runs.get(key, 0) + 1
        self.hook_seconds.setdefault(event, Histogram()).observe(duration_s)


def _escape(value: object) -> str:
    return str(value).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(labels: dict[str, object]) -> str:
    if not labels:
        return ""
    return "{" + ",".join(f'{k}="{_escape(v)}"' for k, v in labels.items()) + "}"


def _number(value: float) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, float):
        if math.isinf(value):
            return "+Inf" if value > 0 else "-Inf"
        if math.isnan(value):
            return "NaN"
        return repr(value)
    return str(value)


class _Writer:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def family(self, name: str, kind: str, help_text: str,
               samples: Iterable[tuple[dict[str, object], float]]) -> None:
        # a counter's family is named with its _total in text format 0.0.4
        full = f"{name}_total" if kind == "counter" else name
        self.lines.append(f"# HELP {full} {help_text}")
        self.lines.append(f"# TYPE {full} {kind}")
        for labels, value in samples:
            self.lines.append(f"{full}{_labels(labels)} {_number(value)}")

    def one(self, name: str, kind: str, help_text: str, value: float) -> None:
        self.family(name, kind, help_text, [({}, value)])


def render(status: dict[str, Any], counters: Counters) -> str:
    """The exposition of one status snapshot (runtime.status()) and the counters."""
    w = _Writer()
    node = status["node"]
    w.family("electiond_info", "gauge", "Always 1; the labels name the node.",
             [({"node": node, "cluster": status["cluster"], "protocol": status["protocol"]}, 1)])
    w.family("electiond_role", "gauge", "1 for this node's current role.",
             [({"role": r}, status["role"] == r) for r in ("leader", "candidate", "follower")])
    w.one("electiond_is_leader", "gauge", "1 if this node leads now.", status["role"] == "leader")
    w.one("electiond_term", "gauge", "Current term or epoch (the fencing token's counter).", status["term"])
    leader = status.get("leader")
    w.family("electiond_leader", "gauge", "1 labelled with the leader this node knows (none: no sample).",
             [({"leader": leader}, 1)] if leader else [])
    w.one("electiond_leadership_changes", "counter", "Leaders learned (a change to 'unknown' not counted) since start.",
          counters.leadership_changes)
    w.one("electiond_leadership_changes_last_hour", "gauge", "Leadership changes in the last hour.",
          status["leader_changes_last_hour"])
    w.one("electiond_flapping", "gauge", "1 while changes in the last hour exceed [monitor] max_changes_per_hour.",
          bool(status.get("flapping")))
    w.one("electiond_max_changes_per_hour", "gauge", "The configured flapping threshold.",
          status.get("max_changes_per_hour", 2))
    elections = status.get("elections") or {}
    w.one("electiond_elections_started", "counter", "Candidacies this node began (or won outright).",
          elections.get("started", 0))
    w.one("electiond_elections_won", "counter", "Times this node was promoted.", elections.get("won", 0))
    w.one("electiond_elections_lost", "counter", "Candidacies that ended without a win.", elections.get("lost", 0))
    w.one("electiond_split_brains", "counter", "Other leaders heard while leading (bully, ring).",
          status.get("split_brains", 0))
    w.family("electiond_messages_sent", "counter", "Datagrams sent, by message kind.",
             [({"kind": k}, v) for k, v in sorted(counters.sent.items())])
    w.family("electiond_messages_received", "counter", "Datagrams accepted, by message kind.",
             [({"kind": k}, v) for k, v in sorted(counters.received.items())])
    w.family("electiond_dropped", "counter", "Datagrams dropped, by reason.",
             [({"reason": k}, v) for k, v in sorted((status.get("dropped") or {}).items())])
    w.family("electiond_send_errors", "counter", "Datagrams the kernel refused to send (each dropped), by errno.",
             [({"errno": k}, v) for k, v in sorted((status.get("send_errors") or {}).items())])
    w.family("electiond_hook_runs", "counter", "Hook commands run, by event and result.",
             [({"event": e, "result": r}, v) for (e, r), v in sorted(counters.hook_runs.items())])
    w.lines.append("# HELP electiond_hook_duration_seconds How long hook commands ran.")
    w.lines.append("# TYPE electiond_hook_duration_seconds histogram")
    for event, hist in sorted(counters.hook_seconds.items()):
        cumulative = 0
        for bound, count in zip(HOOK_BUCKETS_S, hist.counts):
            cumulative += count
            w.lines.append(f"electiond_hook_duration_seconds_bucket{_labels({'event': event, 'le': repr(bound)})} "
                           f"{cumulative}")
        w.lines.append(f"electiond_hook_duration_seconds_bucket{_labels({'event': event, 'le': '+Inf'})} {hist.total}")
        w.lines.append(f"electiond_hook_duration_seconds_count{_labels({'event': event})} {hist.total}")
        w.lines.append(f"electiond_hook_duration_seconds_sum{_labels({'event': event})} {_number(hist.sum_s)}")
    peers = [m for m in status["members"] if not m.get("self")]
    w.family("electiond_member_alive", "gauge", "1 if the member was heard lately and not timed out.",
             [({"member": m["name"]}, bool(m["alive"])) for m in peers])
    w.family("electiond_member_suspicion", "gauge", "Suspicion level (phi) of each member's presence beacons.",
             [({"member": m["name"]}, float(m["suspicion"]["phi"])) for m in peers if m.get("suspicion")])
    w.family("electiond_member_timeout_seconds", "gauge", "When each member's beacons would be suspected.",
             [({"member": m["name"]}, m["suspicion"]["timeout_ms"] / 1000) for m in peers if m.get("suspicion")])
    w.family("electiond_member_paused", "gauge", "1 if the member says it is paused.",
             [({"member": m["name"]}, bool(m.get("paused"))) for m in status["members"] if "paused" in m])
    if status.get("leader_timeout_ms") is not None:
        w.one("electiond_leader_timeout_seconds", "gauge", "How long the leader may be silent before suspicion.",
              status["leader_timeout_ms"] / 1000)
    lease_ms = status.get("lease_remaining_ms")
    w.one("electiond_lease_remaining_seconds", "gauge", "quorum-lease: time left on the leader's lease (0 if none).",
          0.0 if lease_ms is None else lease_ms / 1000)
    blocked = status.get("blocked_by") or {}
    w.one("electiond_paused", "gauge", "1 while paused by the operator (electionctl pause).", bool(status.get("paused")))
    w.one("electiond_fault", "gauge", "1 while this node cannot stand for a reason other than a pause.",
          any(b != "paused" for b in blocked))
    w.family("electiond_blocked", "gauge", "1 per reason this node does not stand.",
             [({"reason": b}, 1) for b in sorted(blocked)])
    w.one("electiond_promote_failures", "gauge", "Consecutive failed promote hooks.", status.get("promote_failures", 0))
    w.one("electiond_uptime_seconds", "gauge", "Seconds since the daemon started.", float(status.get("uptime_s", 0.0)))
    return "\n".join(w.lines) + "\n"


class MetricsServer:
    MAX_CONNECTIONS = 16
    REQUEST_TIMEOUT_S = 5.0
    MAX_REQUEST_BYTES = 8192

    def __init__(self, host: str, port: int, render_text: Callable[[], str]) -> None:
        self.host, self.port = host, port
        self._render = render_text
        self._server: asyncio.base_events.Server | None = None
        self.connections = 0
        self.served = 0

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, self.host, self.port, limit=self.MAX_REQUEST_BYTES)
        log.info("metrics on http://%s:%d/metrics", self.host, self.port)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.connections >= self.MAX_CONNECTIONS:
            writer.close()
            return
        self.connections += 1
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), self.REQUEST_TIMEOUT_S)
            method, _, rest = head.decode("latin-1").partition(" ")
            path = rest.partition(" ")[0].partition("?")[0]
            if method != "GET":
                self._reply(writer, "405 Method Not Allowed", "only GET\n")
            elif path not in ("/metrics", "/"):
                self._reply(writer, "404 Not Found", "try /metrics\n")
            else:
                self.served += 1
                self._reply(writer, "200 OK", self._render(), CONTENT_TYPE)
            await asyncio.wait_for(writer.drain(), self.REQUEST_TIMEOUT_S)
        except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError, ConnectionError):
            pass
        finally:
            self.connections -= 1
            writer.close()

    @staticmethod
    def _reply(writer: asyncio.StreamWriter, status: str, body: str, content_type: str = "text/plain") -> None:
        data = body.encode()
        writer.write(f"HTTP/1.0 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {len(data)}\r\n"
                     "Connection: close\r\n\r\n".encode() + data)
