"""The per-source datagram budget, driven with made-up times."""

from electiond.budget import MAX_SOURCES, SourceBudget, rates_for


def test_burst_then_rate():
    b = SourceBudget(rate_per_s=100.0, burst=10.0)
    assert all(b.allow("10.0.0.9", 0.0) for _ in range(10))
    assert not b.allow("10.0.0.9", 0.0)
    assert b.allow("10.0.0.9", 0.011)  # 1.1 tokens refilled
    assert not b.allow("10.0.0.9", 0.011)
    # a long quiet refills only up to the burst
    assert sum(b.allow("10.0.0.9", 100.0) for _ in range(50)) == 10


def test_sources_are_independent():
    b = SourceBudget(rate_per_s=1.0, burst=2.0, strangers_rate_per_s=1000.0)
    assert b.allow("a", 0.0) and b.allow("a", 0.0) and not b.allow("a", 0.0)
    assert b.allow("b", 0.0)


def test_flood_from_one_source_lets_the_rate_through():
    b = SourceBudget(*rates_for(3, 0.05))
    rate_per_s, burst = rates_for(3, 0.05)
    passed = sum(b.allow("attacker", i / 100_000) for i in range(100_000))  # 100k/s for 1 s
    assert passed <= burst + rate_per_s + 1
    assert passed >= rate_per_s * 0.9


def test_real_member_traffic_never_limited():
    """Every member of a 5-node cluster on one address: leader heartbeats and
    four followers' acks every 50 ms, beacons, and an election burst."""
    b = SourceBudget(*rates_for(5, 0.05))
    now, refused = 0.0, 0
    for tick in range(20 * 60):  # one minute
        now = tick * 0.05
        sends = 5 + (5 if tick % 10 == 0 else 0) + (40 if tick % 200 == 0 else 0)
        refused += sum(not b.allow("127.0.0.1", now) for _ in range(sends))
    assert refused == 0


def test_table_is_bounded_and_members_survive_churn():
    b = SourceBudget(rate_per_s=1.0, burst=1.0)
    assert b.allow("member", 0.0)
    b.authenticated("member")
    for i in range(10 * MAX_SOURCES):
        b.allow(f"spoofed-{i}", 0.0)
    assert b.sources() <= MAX_SOURCES + 1
    assert not b.allow("member", 0.0)  # its spent bucket was kept, not recreated full by eviction
    assert b.allow("member", 1.0)


def test_rates_scale_with_members_and_interval():
    assert rates_for(3, 0.05) == (480.0, 120.0)
    assert rates_for(3, 0.005)[0] == 4800.0
    assert rates_for(1, 1.0) == (200.0, 64.0)


def test_spoofed_sources_share_one_strangers_budget():
    b = SourceBudget(rate_per_s=100.0, burst=10.0, strangers_rate_per_s=200.0)
    passed = sum(b.allow(f"10.0.{i // 256}.{i % 256}", i / 10_000) for i in range(10_000))  # 10k/s for 1 s
    assert passed <= 50 + 200 + 1  # the shared burst (a quarter second) and a second of its rate
    # a member keeps its own budget whatever the strangers do
    b.authenticated("10.9.9.9")
    assert sum(b.allow("10.9.9.9", 1.0 + i / 100) for i in range(50)) == 50
