"""Hostile datagrams for the flood benchmark and the wire process tests.

Run as a process (``python -m electiond.devattack``): sends crafted
datagrams as fast as it can for a bounded time from a source address of its
own (127.0.0.66 by default: "another host" on loopback, so per-source budgets
see it apart from the daemons on 127.0.0.1), then prints what it sent as
JSON. It refuses any destination that is not loopback or a multicast group,
save private addresses when it runs inside a network namespace other than
init's (a test's namespace LAN), and multicasts with TTL 1, so nothing leaves
the machine.

Below it, the harness shared by scripts/bench-flood and the process tests: a
keyed loopback cluster, the attacker as a child process, a listener that
captures the group's genuine traffic for replays.
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import ipaddress
import json
import os
import pathlib
import random
import re
import socket
import subprocess
import sys
import threading
import time

import msgpack

from electiond import keys, wire
from electiond.devcluster import REPO, Cluster


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
    # wire v2: [inner, key_id, mac]; a bare bytes key is the Codec's key "default"
    return msgpack.packb([inner, "default" if key else "", mac], use_bin_type=True)


# each protocol's leader heartbeat: (kind, body)
HEARTBEATS = {
    "quorum-lease": ("LEASE_HEARTBEAT", {"round": 1, "priority": 255, "sticky": False}),
    "bully": ("HEARTBEAT", {}),
    "ring": ("HEARTBEAT", {}),
}


# a beacon body that passes the schema (the beacon carries the sender's clock)
PRESENCE_BODY = {"clock_ms": 1}


def brick_mute_stall(cluster: str, protocol: str, victim: str, victim_incarnation: int,
                     victim_seq: int) -> dict[str, bytes]:
    """The three unauthenticated datagrams found bricking, muting and
    stalling real clusters, "from" a member."""
    kind, body = HEARTBEATS[protocol]
    return {
        "brick": envelope(cluster, kind, victim, victim_incarnation, victim_seq + 1, 2**64 - 1, body),
        "mute": envelope(cluster, "PRESENCE", victim, 2**63 - 1, 1, 0, PRESENCE_BODY),
        "stall": envelope(cluster, "PRESENCE", victim, victim_incarnation, victim_seq + 2**32, 0, PRESENCE_BODY),
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
            cluster, rng.choice(["HEARTBEAT", "LEASE_HEARTBEAT", "LEASE_ACK", "VOTE", "REQUEST_VOTE", "PREVOTE",
                                 "ELECTION", "COORDINATOR", "PRESENCE", "TIMEOUT_NOW", "RELEASE", "X"]),
            rng.choice(members), rng.choice(hostile), rng.choice(hostile), rng.choice(hostile),
            {"round": rng.choice(hostile), "priority": rng.choice(hostile), "granted": True,
             "retry_ms": 0, "ok": True},
            recipient=rng.choice([None, *members]), port=rng.randint(1, 65535),
            mac=rng.randbytes(32),
        )
    return rng.randbytes(rng.randint(0, 1400))


NAMED_NETNS_DIR = "/run/netns"


def in_own_netns() -> bool:
    """True inside a named network namespace (one ``ip netns add`` made, run
    with ``ip netns exec``): there the only hosts are the ones a test created,
    so their addresses are fair targets. Compared with the namespaces under
    /run/netns rather than with pid 1's, which a sandbox may not let us read;
    unknowable counts as not."""
    try:
        own = os.stat("/proc/self/ns/net")
        names = os.listdir(NAMED_NETNS_DIR)
    except OSError:
        return False
    for name in names:
        try:
            named = os.stat(os.path.join(NAMED_NETNS_DIR, name))
        except OSError:
            continue
        if (named.st_dev, named.st_ino) == (own.st_dev, own.st_ino):
            return True
    return False


def _check_destination(host: str) -> None:
    address = ipaddress.ip_address(host)
    if address.is_loopback or address.is_multicast:
        return
    # a namespace LAN's hosts (tests/test_netns_flood.py), never the real network
    if address.is_private and in_own_netns():
        return
    raise SystemExit(f"refusing to send to {host}: only loopback, a multicast group (TTL 1), "
                     "or a private address from inside a test's own network namespace")


def attacker_socket(source: str) -> socket.socket:
    _check_destination(source)
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((source, 0))
    sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 1)
    # the group goes out of the interface the source address is on
    interface = "127.0.0.1" if ipaddress.ip_address(source).is_loopback else source
    sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton(interface))
    sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP, 1)
    return sock


def flood(targets: list[tuple[str, int]], datagrams: list[bytes], seconds: float, source: str,
          max_datagrams: int | None = None, spoof: int = 0) -> dict:
    """Send datagrams round-robin to targets until seconds pass (or
    max_datagrams). spoof > 0: rotate over that many source addresses
    (127.0.0.100 and up) instead of source, as a spoofing host would."""
    for host, _ in targets:
        _check_destination(host)
    sources = [f"127.0.{100 + i // 150}.{100 + i % 150}" for i in range(spoof)] if spoof else [source]
    socks = [attacker_socket(s) for s in sources]
    sent = errors = 0
    started = time.monotonic()
    deadline = started + min(seconds, 600.0)  # stops by itself, whatever it was told
    limit = max_datagrams if max_datagrams is not None else 2**62
    n_targets, n_data, n_socks = len(targets), len(datagrams), len(socks)
    try:
        while sent < limit:
            # the clock every 256 sends: cheap, and bounds the overrun to microseconds
            if sent & 255 == 0 and time.monotonic() >= deadline:
                break
            try:
                socks[sent % n_socks].sendto(datagrams[sent % n_data], targets[sent % n_targets])
            except (BlockingIOError, OSError):
                errors += 1
            sent += 1
    finally:
        for sock in socks:
            sock.close()
    elapsed_s = time.monotonic() - started
    return {"sent": sent, "errors": errors, "seconds": round(elapsed_s, 3), "sources": len(socks),
            "rate_per_s": round(sent / elapsed_s) if elapsed_s > 0 else 0}


# ---- harness: a keyed cluster under attack (scripts/bench-flood, tests) ----

UNICAST = re.compile(r"unicast=[0-9.]+:(\d+)")


def keyed_cluster(workdir: pathlib.Path, nodes: int, protocol: str,
                  timing: dict[str, str] | None = None) -> Cluster:
    key = workdir / "cluster.key"
    # the id "default" is what envelope() signs under for a bare key
    keys.create(str(key), keys.Key("default", b"flood-bench-key-0123456789abcdef"))
    cluster = Cluster(workdir, nodes, protocol=protocol, timing=timing)
    cluster.config_text = cluster.config_text.replace(
        "interface = 127.0.0.1", f"interface = 127.0.0.1\nkey_file = {key}", 1)
    return cluster


def unicast_ports(cluster: Cluster) -> dict[str, int]:
    ports = {}
    for name in cluster.names:
        def found(name: str = name) -> int | None:
            found = UNICAST.findall((cluster.workdir / f"{name}.log").read_text(errors="replace"))
            return int(found[-1]) if found else None  # the latest start's
        ports[name] = cluster.wait_for(found, 15, f"{name}'s unicast port in its log")
    return ports


def start_attacker(cluster: Cluster, seconds: float, extra: list[str] | None = None,
                   hosts: dict[str, str] | None = None, wrapper: list[str] | None = None) -> subprocess.Popen:
    """hosts: each member's unicast address (default loopback); wrapper: a
    command prefix such as ``ip netns exec NS`` to run the attacker elsewhere."""
    ports = unicast_ports(cluster)
    targets = [f"{cluster.group}:{cluster.port}"] + [
        f"{(hosts or {}).get(name, '127.0.0.1')}:{port}" for name, port in ports.items()]
    argv = [*(wrapper or []), sys.executable, "-m", "electiond.devattack", "--cluster", cluster.cluster_name,
            "--members", ",".join(cluster.names), "--seconds", str(seconds)]
    for target in targets:
        argv += ["--target", target]
    return subprocess.Popen(argv + (extra or []), stdout=subprocess.PIPE, text=True,
                            env={"PYTHONPATH": str(REPO)}, cwd=cluster.workdir)


class Capture:
    """Hears the group as any host on the LAN could, and keeps what it heard
    (bounded in count; the thread ends by itself after max_seconds)."""

    def __init__(self, group: str, port: int, max_seconds: float = 120.0, max_datagrams: int = 20_000) -> None:
        self.datagrams: list[tuple[float, bytes]] = []
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_UDP)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        self._sock.bind((group, port))
        self._sock.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP,
                              socket.inet_aton(group) + socket.inet_aton("127.0.0.1"))
        self._sock.settimeout(0.2)
        self._stop = threading.Event()
        self._deadline = time.monotonic() + max_seconds
        self._max = max_datagrams
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set() and time.monotonic() < self._deadline and len(self.datagrams) < self._max:
            try:
                data = self._sock.recv(2048)
            except socket.timeout:
                continue
            except OSError:
                break
            self.datagrams.append((time.monotonic(), data))

    def stop(self) -> list[bytes]:
        self._stop.set()
        self._thread.join(5)
        self._sock.close()
        return [d for _, d in self.datagrams]


def fields_of(datagram: bytes) -> list | None:
    """The envelope fields of a datagram, without checking its MAC."""
    try:
        inner, _key_id, _mac = msgpack.unpackb(datagram, raw=False)  # wire v2
        fields = msgpack.unpackb(inner, raw=False)
    except Exception:
        return None
    return fields if isinstance(fields, list) and len(fields) == 10 else None


def received_per_s(cluster: Cluster, seconds: float) -> dict[str, float]:
    """Genuine datagrams each node accepts per second (status "received")."""
    before = {n: (cluster.status(n) or {}).get("received", 0) for n in cluster.names}
    time.sleep(seconds)
    return {n: round(((cluster.status(n) or {}).get("received", 0) - before[n]) / seconds, 1)
            for n in cluster.names}


def dropped(status: dict | None) -> dict[str, int]:
    return dict((status or {}).get("dropped") or {})


def observe_flood(cluster: Cluster, attacker: subprocess.Popen, seconds: float) -> dict:
    """Poll the cluster while the attacker runs; return what changed."""
    before = {n: cluster.status(n) or {} for n in cluster.names}
    started_wall = time.time()
    worst_gap_ms = 0.0
    leaders_seen: list[str | None] = []
    deadline = time.monotonic() + seconds + 30
    while attacker.poll() is None and time.monotonic() < deadline:
        for name in cluster.names:
            status = cluster.status(name)
            watch = (status or {}).get("leader_watch")
            if watch and watch.get("max_interval_ms") is not None:
                worst_gap_ms = max(worst_gap_ms, watch["max_interval_ms"])
        leader = cluster.agreed_leader()
        if not leaders_seen or leaders_seen[-1] != leader:
            leaders_seen.append(leader)
        time.sleep(0.25)
    try:
        out, _ = attacker.communicate(timeout=30)
    finally:
        if attacker.poll() is None:
            attacker.kill()  # only the attacker this run started
            attacker.wait(5)
    time.sleep(0.5)
    after = {n: cluster.status(n) or {} for n in cluster.names}
    elapsed_s = time.time() - started_wall
    promotes = [e for e in cluster.hook_events() if e[0] >= started_wall and e[1] == "promote"]
    drops = {}
    for name in cluster.names:
        b, a = dropped(before[name]), dropped(after[name])
        drops[name] = {r: a[r] - b.get(r, 0) for r in a if a[r] - b.get(r, 0)}
    return {
        "attacker": json.loads(out.strip().splitlines()[-1]) if out.strip() else None,
        "leader_changes": len(promotes),
        "view_changes": sum(after[n].get("leader_changes_last_hour", 0) - before[n].get("leader_changes_last_hour", 0)
                            for n in cluster.names),
        "worst_follower_heartbeat_gap_ms": worst_gap_ms,
        "agreed_leaders_polled": leaders_seen,
        "dropped": drops,
        # genuine datagrams each node accepted per second while flooded
        "received_per_s": {n: round((after[n].get("received", 0) - before[n].get("received", 0)) / elapsed_s, 1)
                           for n in cluster.names},
    }



def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cluster", required=True)
    parser.add_argument("--members", required=True, help="comma-separated member names")
    parser.add_argument("--target", action="append", required=True, help="HOST:PORT (loopback or a group)")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--source", default="127.0.0.66")
    parser.add_argument("--max-datagrams", type=int, default=None)
    parser.add_argument("--spoof", type=int, default=0, help="rotate over this many loopback source addresses")
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
    result = flood(targets, pool, args.seconds, args.source, args.max_datagrams, args.spoof)
    result["seed"] = args.seed
    json.dump(result, sys.stdout)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
