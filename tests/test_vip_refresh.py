"""The shipped vip hook's refresh action (run by [hooks] refresh while leader)."""

from __future__ import annotations

import pytest

from test_shipped_hooks import Pair, arpings, needs_root, sh


@needs_root
def test_vip_refresh_re_announces_once_and_restores_a_removed_address() -> None:
    candidates = arpings()
    if not candidates:
        pytest.skip("no arping installed")
    pair = Pair("x")
    try:
        vip, addr = "10.213.77.54/24", "10.213.77.54"
        env = {"VIP_ARPING": candidates[0], "VIP_ARP_COUNT": "3", "ELECTIOND_EVENT": "promote"}
        assert pair.vip("auto", vip, "lan0", env=env).returncode == 0
        # a neighbour that lost or ignored the promote's ARPs: it points elsewhere
        sh(["ip", "-n", pair.peer, "neigh", "replace", addr, "lladdr", "02:00:00:00:00:99", "dev", "lan0",
            "nud", "stale"])
        r = pair.vip("auto", vip, "lan0", env={**env, "ELECTIOND_EVENT": "refresh"})
        assert r.returncode == 0, r.stderr
        assert "already on lan0" in r.stdout and "0 more every" in r.stdout  # one ARP by default
        assert pair.host_mac() in pair.peer_neighbour(addr)
        # removed by hand while leading: the refresh puts it back
        sh(["ip", "-n", pair.host, "addr", "del", vip, "dev", "lan0"])
        r = pair.vip("refresh", vip, "lan0", env={**env, "VIP_REFRESH_ARP_COUNT": "2"})
        assert r.returncode == 0 and f"added {vip} to lan0" in r.stdout and "1 more every" in r.stdout
        assert vip in pair.addresses()
    finally:
        pair.close()
