"""The holder's side of a lock or a leadership lease: when its CMD must stop.

Pure arithmetic, tested with made-up times. The server counts a lease from
when it *received* the request, which is after the holder sent it; the
holder counts from when it *sent* the request, on its own clock, which may
run slow against the server's by up to ``clock_drift_ppm``. So the lease
cannot have ended on the server before

    sent_at + ttl * (1 - drift)

on the holder's clock. The holder sends CMD SIGTERM ``kill_grace_s`` before
that (the deadline below), SIGKILL half-way through the grace, and waits
for it: CMD is dead before the lease could end and anyone else's could start.
"""

from __future__ import annotations

import math

KILL_AFTER_TERM_FRACTION = 0.5  # SIGKILL this far into the grace; the rest is for the kernel to reap it


class SuperviseError(ValueError):
    """Arguments that cannot give a safe supervision (a usage error)."""


def holder_deadline_s(sent_at_s: float, ttl_s: float, clock_drift_ppm: float, kill_grace_s: float) -> float:
    """When CMD gets SIGTERM unless a renewal sent later was confirmed first."""
    return sent_at_s + ttl_s * (1.0 - clock_drift_ppm / 1e6) - kill_grace_s


def kill_at_s(deadline_s: float, kill_grace_s: float) -> float:
    """When a CMD that ignored SIGTERM gets SIGKILL."""
    return deadline_s + kill_grace_s * KILL_AFTER_TERM_FRACTION


def renew_at_s(sent_at_s: float, ttl_s: float) -> float:
    """Renew every third of the TTL: two renewals may fail before the deadline."""
    return sent_at_s + ttl_s / 3.0


def check_lock_args(ttl_s: float, kill_grace_s: float, clock_drift_ppm: float) -> None:
    """A renewal cadence of ttl/3 must leave room before the deadline."""
    if not (math.isfinite(ttl_s) and ttl_s >= 1.0):
        raise SuperviseError(f"--ttl must be at least 1s (got {ttl_s:g}s)")
    if not (math.isfinite(kill_grace_s) and kill_grace_s > 0):
        raise SuperviseError("--kill-grace must be above 0")
    usable_s = ttl_s * (1.0 - clock_drift_ppm / 1e6) - kill_grace_s
    if usable_s < ttl_s / 2.0:
        raise SuperviseError(f"--kill-grace {kill_grace_s:g}s leaves less than half of --ttl {ttl_s:g}s "
                             "to renew in: use a longer --ttl or a shorter --kill-grace")


def effective_ttl_s(requested_s: float, granted_s: float) -> float:
    """The shorter of what was asked and what the server says it granted."""
    return min(requested_s, granted_s) if granted_s > 0 else requested_s


def leader_deadline_s(asked_at_s: float, lease_remaining_s: float | None, kill_grace_s: float) -> float:
    """run-as-leader: the node's own lease end (on this host's clock, which
    the daemon shares) minus the grace; infinite when the protocol has no
    lease (bully, ring: stopped only once the node sees it no longer leads)."""
    if lease_remaining_s is None:
        return math.inf
    return asked_at_s + lease_remaining_s - kill_grace_s
