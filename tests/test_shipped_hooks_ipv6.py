"""The shipped vip hook with IPv6 addresses: nodad, and an unsolicited
neighbour advertisement (scripts/hooks/send-na) so the neighbour's entry
moves at once. Same exit-code contract as IPv4. Namespaces are ours (named
with the pid) and always deleted; the ULA prefix exists only inside them."""

from __future__ import annotations

from pathlib import Path

import pytest

from test_shipped_hooks import IP, IS_ROOT, REPO, Pair, run, sh

SEND_NA = REPO / "scripts" / "hooks" / "send-na"
PREFIX = "fd00:213:77"
needs_root = pytest.mark.skipif(not IS_ROOT or IP is None, reason="needs root and iproute2 to create network namespaces")


@needs_root
def test_vip_ipv6_up_announces_with_a_neighbour_advertisement_and_down_removes() -> None:
    pair = Pair("u", family=6)
    try:
        vip, cidr = f"{PREFIX}::50", f"{PREFIX}::50/64"
        # the peer believes the VIP lives at another MAC (a previous leader)
        sh(["ip", "-n", pair.peer, "-6", "neigh", "replace", vip, "lladdr", "02:00:00:00:00:99",
            "dev", "lan0", "nud", "stale"])
        up = pair.vip("up", cidr.upper(), "lan0", env={"VIP_ARP_COUNT": "2"})
        assert up.returncode == 0, up.stderr
        assert f"added {cidr} to lan0" in up.stdout
        assert "(unsolicited neighbour advertisement; 1 more every 1s while it stays here)" in up.stdout
        assert cidr in pair.addresses()
        assert "tentative" not in pair.flags(cidr)  # nodad: usable at once
        assert pair.host_mac() in pair.peer_neighbour(vip), pair.peer_neighbour(vip)

        again = pair.vip("up", cidr, "lan0", env={"VIP_ARP_COUNT": "1"})
        assert again.returncode == 0 and "already on lan0" in again.stdout
        assert pair.addresses().count(cidr) == 1

        down = pair.vip("down", cidr, "lan0")
        assert down.returncode == 0 and f"removed {cidr} from lan0" in down.stdout
        assert cidr not in pair.addresses() and f"{PREFIX}::1/64" in pair.addresses()
        again = pair.vip("down", cidr, "lan0")
        assert again.returncode == 0 and "not on lan0" in again.stdout
    finally:
        pair.close()


@needs_root
def test_vip_ipv6_failed_advertisement_exits_6_and_missing_sender_exits_3(tmp_path: Path) -> None:
    fake = tmp_path / "send-na"
    fake.write_text("#!/bin/sh\necho 'no route' >&2\nexit 1\n")
    fake.chmod(0o755)
    pair = Pair("f", family=6)
    try:
        r = pair.vip("up", f"{PREFIX}::52/64", "lan0", env={"VIP_NA": str(fake)})
        assert r.returncode == 6, r.stderr
        assert f"neighbour advertisement for {PREFIX}::52 on lan0 failed: no route" in r.stderr
        assert f"{PREFIX}::52/64" in pair.addresses()
        r = pair.vip("up", f"{PREFIX}::53/64", "lan0", env={"VIP_NA": str(tmp_path / "absent")})
        assert r.returncode == 3 and "not found" in r.stderr
        assert f"{PREFIX}::53/64" not in pair.addresses()  # nothing touched before the check
        r = pair.vip("up", f"{PREFIX}::54/64", "lan0", env={"VIP_NA": str(tmp_path / "absent"), "VIP_ARP_COUNT": "0"})
        assert r.returncode == 0 and f"{PREFIX}::54/64" in pair.addresses()
    finally:
        pair.close()


def test_send_na_usage_errors_exit_2() -> None:
    for args in ([], ["lan0"], ["lan0", "10.0.0.1"], ["lan0", "ff02::1"]):
        assert run([SEND_NA, *args]).returncode == 2


def test_send_na_builds_an_override_advertisement() -> None:
    import importlib.machinery
    import importlib.util

    loader = importlib.machinery.SourceFileLoader("send_na", str(SEND_NA))
    spec = importlib.util.spec_from_loader("send_na", loader)
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    packet = module.advertisement("fd00::50", bytes.fromhex("020000000001"))
    assert packet[0] == 136 and packet[1] == 0
    assert packet[4] & 0xE0 == 0x20  # Override only: not Router, not Solicited
    assert packet[8:24] == bytes.fromhex("fd00" + "00" * 13 + "50")
    assert packet[24:26] == b"\x02\x01" and packet[26:] == bytes.fromhex("020000000001")
