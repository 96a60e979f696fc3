"""Hostile datagrams for the flood benchmark and the wire process tests.

Run as a process (``python -m electiond.devattack``): sends crafted
datagrams as fast as it can for a bounded time from a source address of its
own (127.0.0.66 by default: "another host" on loopback, so per-source budgets
see it apart from the daemons on 127.0.0.1), then prints what it sent as
JSON. It refuses any destination that is not loopback or a multicast group,
and multicasts with TTL 1, so nothing leaves the machine.
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import ipaddress
import json
import os
import random
import socket
import sys
import time

import msgpack

from electiond import wire


def envelope(cluster: str, kind: str, sender: str, incarnation: int, seq: int, term: int,
             body: dict | None = None, recipient: str | None = None, port: int = 9,
             key: bytes | None = None, mac: bytes | None = None) -> bytes:
    """A datagram in the wire format; the MAC is right for key, or as given."""
    inner = msgpack.packb(
        [wire.VERSION, cluster, kind, sender, incarnation, seq, term, recipient, port, body or {}],
        use_bin_type=True,
    )
    if mac is None:
        mac = hmac.new(key, inner, hashlib.sha256).digest() if key else b""
    return msgpack.packb([inner, mac], use_bin_type=True)


def brick_mute_stall(cluster: str, victim: str, victim_incarnation: int, victim_seq: int) -> dict[str, bytes]:
    """The three unauthenticated datagrams found bricking, muting and
    stalling real clusters, "from" a member."""
    return {
        "brick": envelope(cluster, "HEARTBEAT", victim, victim_incarnation, victim_seq + 1, 2**64 - 1,
                          {"round": 1, "priority": 255}),
        "mute": envelope(cluster, "PRESENCE", victim, 2**63 - 1, 1, 0),
        "stall": envelope(cluster, "PRESENCE", victim, victim_incarnation, victim_seq + 2**32, 0),
    }


def mutated(rng: random.Random, genuine: list[bytes], cluster: str, members: list[str]) -> bytes:
    """One fuzzed datagram: a mutated genuine one, a forged envelope with a
    random MAC and hostile numbers, or random bytes."""
    choice = rng.random()
    if choice < 0.4 and genuine:
        data = bytearray(rng.choice(genuine))
        for _ in range(rng.randint(1, 6)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        if rng.random() < 0.2:
            del data[rng.randrange(len(data)):]
        return bytes(data)
    if choice < 0.9:
        hostile = [0, 1, -1, 2**31, 2**32, 2**53, 2**53 + 1, 2**63 - 1, 2**64 - 1, -(2**63)]
        return envelope(
            cluster, rng.choice(["HEARTBEAT", "VOTE", "REQUEST_VOTE", "ELECTION", "COORDINATOR", "PRESENCE",
                                 "TIMEOUT_NOW", "RELEASE", "X"]),
            rng.choice(members), rng.choice(hostile), rng.choice(hostile), rng.choice(hostile),
            {"round": rng.choice(hostile), "priority": rng.choice(hostile), "granted": True,
             "retry_ms": 0, "ok": True},
            recipient=rng.choice([None, *members]), port=rng.randint(1, 65535),
            mac=rng.randbytes(32),
        )
    return rng.randbytes(rng.randint(0, 1400))


def _check_destination(host: str) -> None:
    address = ipaddress.ip_address(host)
    if not (address.is_loopback or address.is_multicast):
        raise SystemExit(f"refusing to send to {host}: only loopback or a multicast group (TTL 1)")


def attacker_socket(source: str) -> socket.socket:
    _check_destination(source)
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((source, 0))
    sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 1)
    sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton("127.0.0.1"))
    sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP, 1)
    return sock


def flood(targets: list[tuple[str, int]], datagrams: list[bytes], seconds: float, source: str,
          max_datagrams: int | None = None) -> dict:
    """Send datagrams round-robin to targets until seconds pass (or max_datagrams)."""
    for host, _ in targets:
        _check_destination(host)
    sock = attacker_socket(source)
    sent = errors = 0
    started = time.monotonic()
    deadline = started + min(seconds, 600.0)  # stops by itself, whatever it was told
    limit = max_datagrams if max_datagrams is not None else 2**62
    n_targets, n_data = len(targets), len(datagrams)
    try:
        while sent < limit:
            # the clock every 256 sends: cheap, and bounds the overrun to microseconds
            if sent & 255 == 0 and time.monotonic() >= deadline:
                break
            try:
                sock.sendto(datagrams[sent % n_data], targets[sent % n_targets])
            except (BlockingIOError, OSError):
                errors += 1
            sent += 1
    finally:
        sock.close()
    elapsed_s = time.monotonic() - started
    return {"sent": sent, "errors": errors, "seconds": round(elapsed_s, 3),
            "rate_per_s": round(sent / elapsed_s) if elapsed_s > 0 else 0}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cluster", required=True)
    parser.add_argument("--members", required=True, help="comma-separated member names")
    parser.add_argument("--target", action="append", required=True, help="HOST:PORT (loopback or a group)")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--source", default="127.0.0.66")
    parser.add_argument("--max-datagrams", type=int, default=None)
    parser.add_argument("--seed", type=int, default=int.from_bytes(os.urandom(4), "big"))
    parser.add_argument("--capture", help="a file of genuine datagrams (msgpack list) to mutate")
    args = parser.parse_args(argv)
    rng = random.Random(args.seed)
    members = args.members.split(",")
    genuine: list[bytes] = []
    if args.capture:
        with open(args.capture, "rb") as f:
            genuine = msgpack.unpackb(f.read())
    # a pool of distinct datagrams built up front, so sending costs only the syscall
    pool = [mutated(rng, genuine, args.cluster, members) for _ in range(4096)]
    targets = []
    for item in args.target:
        host, _, port = item.rpartition(":")
        targets.append((host, int(port)))
    result = flood(targets, pool, args.seconds, args.source, args.max_datagrams)
    result["seed"] = args.seed
    json.dump(result, sys.stdout)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
