"""Hostile datagrams against live loopback clusters (issue #13).

Unkeyed: the datagrams that once bricked, muted and stalled real clusters
are now single counted drops. Keyed: 100k fuzzed datagrams and replays of
captured genuine traffic (also to a freshly restarted receiver) change
nothing: no leadership change, no hook run.
"""

from __future__ import annotations

import json
import pathlib
import signal
import time

import msgpack
import pytest

from cluster import Cluster

from electiond.devattack import (HEARTBEATS, Capture, attacker_socket, brick_mute_stall, envelope, fields_of, keyed_cluster,
                                 start_attacker, unicast_ports)

SOURCE = "127.0.0.66"  # "another host"
# Default 50 ms heartbeats; a lease and election timeout that ride out the
# stalls of a loaded machine (a parallel suite on two shared cores), so any
# leadership change is the attack's doing, not the scheduler's.
TIMING = {"heartbeat_interval": "50ms", "lease": "600ms", "election_timeout": "600ms-900ms"}
REPLAY_PACE_S = 0.005  # each daemon gets ~2 copies per datagram: 400/s, inside its budget


def _targets(c: Cluster) -> list[tuple[str, int]]:
    return [(c.group, c.port)] + [("127.0.0.1", p) for p in unicast_ports(c).values()]


def _send_all(datagrams: list[bytes], targets: list[tuple[str, int]], pace_s: float = 0.0) -> None:
    sock = attacker_socket(SOURCE)
    try:
        for data in datagrams:
            for target in targets:
                sock.sendto(data, target)
            if pace_s:
                time.sleep(pace_s)
    finally:
        sock.close()


def _latest_positions(datagrams: list[bytes]) -> dict[str, tuple[int, int]]:
    """sender -> (incarnation, highest seq) heard on the group."""
    out: dict[str, tuple[int, int]] = {}
    for data in datagrams:
        f = fields_of(data)
        if f and isinstance(f[3], str):
            out[f[3]] = max(out.get(f[3], (0, 0)), (f[4], f[5]))
    return out


def _terms(c: Cluster) -> dict[str, int]:
    return {n: json.loads((c.workdir / n / "state.json").read_text())["term"] for n in c.names}


def _drops(c: Cluster) -> dict[str, dict[str, int]]:
    return {n: dict(c.status(n)["dropped"]) for n in c.names}


def _everyone_hears_everyone(c: Cluster, within_ms: float = 2000.0) -> bool:
    for name in c.names:
        status = c.status(name)
        if status is None:
            return False
        for m in status["members"]:
            if not m["self"] and (m["last_seen_ms"] is None or m["last_seen_ms"] > within_ms):
                return False
    return True


@pytest.mark.parametrize("protocol", ["quorum-lease", "bully", "ring"])
def test_unkeyed_brick_mute_and_stall_datagrams_cost_one_drop_each(tmp_path, protocol):
    kind, body = HEARTBEATS[protocol]
    with Cluster(tmp_path, 3, protocol=protocol, timing=TIMING) as c:
        capture = Capture(c.group, c.port, max_seconds=60)
        c.start_all()
        leader = c.wait_leader(15)
        time.sleep(1.5)
        positions = _latest_positions([d for _, d in capture.datagrams])
        assert set(positions) == set(c.names), positions
        status_before = {n: c.status(n) for n in c.names}
        term = status_before[leader]["term"]
        terms_before = _terms(c)
        hooks_before = c.hook_events()
        drops_before = _drops(c)
        # an election and its heartbeats, all from 127.0.0.1, never touch the per-source budget
        assert all(d["rate_limited"] == 0 for d in drops_before.values()), drops_before
        targets = _targets(c)
        attacks = []
        for victim, (incarnation, seq) in positions.items():
            attacks += brick_mute_stall(c.cluster_name, protocol, victim, incarnation, seq + 200).values()
            # in range, so decoded: a term far ahead, and a future incarnation (a mute attempt)
            attacks.append(envelope(c.cluster_name, kind, victim, incarnation, seq + 300, term + 2**30, body))
            attacks.append(envelope(c.cluster_name, kind, victim, 2**53, 1, 2**53, body))
            attacks.append(envelope(c.cluster_name, "PRESENCE", victim, 2**53, 2, term, {"clock_ms": 1}))
        _send_all(attacks, targets, pace_s=0.01)
        time.sleep(1.0)
        # a forged future incarnation mutes nobody: stale datagrams pass in an unkeyed cluster
        c.wait_for(lambda: _everyone_hears_everyone(c), 10, "every member heard after the mute attempts")
        capture.stop()

        assert c.agreed_leader() == leader
        assert _terms(c) == terms_before
        assert {n: c.status(n)["term"] for n in c.names} == {n: s["term"] for n, s in status_before.items()}
        assert c.hook_events() == hooks_before
        assert c.running() == c.names
        after = _drops(c)
        for name in c.names:
            grew = {r: after[name][r] - drops_before[name].get(r, 0) for r in after[name]}
            # the brick (term 2**64-1) and the mute (incarnation 2**63-1) from each of 2 peers
            assert grew["out_of_range"] >= 4, (name, grew)
            assert grew["seq_jump"] >= 2, (name, grew)  # the stall: a 2**32 sequence jump
            assert grew["term_jump"] >= 2, (name, grew)
        # the daemons still encode and serve: a restart comes back into the same cluster
        victim = next(n for n in c.names if n != leader)
        c.kill(victim)
        c.start(victim)
        c.wait_for(lambda: c.agreed_leader() == leader and _everyone_hears_everyone(c), 15,
                   "the restarted member to follow the same leader")


def test_keyed_cluster_ignores_fuzz_and_replays(tmp_path):
    with keyed_cluster(tmp_path, 3, "quorum-lease", TIMING) as c:
        capture = Capture(c.group, c.port, max_seconds=120)
        c.start_all()  # captured from the first datagram: the election's votes too
        leader = c.wait_leader(15)
        time.sleep(2)
        genuine = [d for _, d in capture.datagrams]
        assert len(genuine) > 20
        capture_file = tmp_path / "capture.msgpack"
        capture_file.write_bytes(msgpack.packb(genuine[-2000:], use_bin_type=True))
        hooks_before = c.hook_events()
        drops_before = _drops(c)
        promotes_before = sum(1 for e in hooks_before if e[1] == "promote")

        # 100k fuzzed datagrams: mutated captures, forged envelopes, random bytes
        attacker = start_attacker(c, 60, ["--max-datagrams", "100000", "--capture", str(capture_file)])
        out, _ = attacker.communicate(timeout=90)
        assert json.loads(out.strip().splitlines()[-1])["sent"] == 100_000

        # the flood engaged every daemon's socket filter: replay once it is off,
        # paced within the per-source budget, so every replay reaches the codec
        c.wait_for(lambda: not any(c.status(n)["flood_filter"]["engaged"] for n in c.names), 30,
                   "the socket filters to come off after the fuzzing")
        replays = genuine[:100] + genuine[-300:]  # the election's messages and the latest
        targets = _targets(c)
        _send_all(replays, targets, pace_s=REPLAY_PACE_S)
        _send_all(replays, targets, pace_s=REPLAY_PACE_S)

        # a receiver that restarted has no replay windows: replay to it at once
        victim = next(n for n in c.names if n != leader)
        c.kill(victim)
        c.spawn(victim)
        c.wait_socket(victim)
        _send_all(replays, _targets(c), pace_s=REPLAY_PACE_S)
        time.sleep(1.0)
        _send_all(replays, _targets(c), pace_s=REPLAY_PACE_S)
        c.wait_for(lambda: c.agreed_leader() == leader, 15, "the same leader, agreed by all")
        time.sleep(2)
        capture.stop()

        assert c.agreed_leader() == leader
        events = c.hook_events()
        assert sum(1 for e in events if e[1] == "promote") == promotes_before, events
        new = events[len(hooks_before):]
        # only the restarted daemon's startup demote (every daemon starts as non-leader)
        assert [(e[1], e[2], e[4]) for e in new] == [("demote", victim, "startup")], new
        after = _drops(c)
        for name in c.names:
            if name == victim:
                continue
            grew = {r: after[name][r] - drops_before[name].get(r, 0) for r in after[name]}
            assert grew["replay"] > 0 and grew["bad_mac"] > 0, (name, grew)
