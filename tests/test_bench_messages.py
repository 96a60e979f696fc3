"""scripts/bench-messages: the counting behind the messages-per-election table."""

from electiond.sim.messages import BACKGROUND, bench, markdown, run


def test_background_traffic_is_not_counted_and_deliveries_follow_multicasts():
    for protocol in ("bully", "ring"):
        clean, kill = run(protocol, 5, seed=2)
        for c in (clean, kill):
            assert not BACKGROUND & set(c.datagrams)
            # a multicast reaches the 4 peers, a directed datagram one
            assert c.deliveries == c.total + 3 * c.multicasts
        assert clean.leader == "n5" and kill.leader == "n4"


def test_a_ring_election_is_a_lap_of_acked_hops():
    clean, kill = run("ring", 5, seed=2)
    # every ELECTION and directed COORDINATOR hop is acknowledged (retries may add sends)
    directed = clean.datagrams["ELECTION"] + clean.datagrams["COORDINATOR"] - clean.multicasts
    assert clean.datagrams["HOP_ACK"] == directed
    # one lap at least: each of the 5 members forwarded or started an ELECTION
    assert clean.datagrams["ELECTION"] >= 5
    # after the kill, the dead leader's predecessor, whose detector gave up on
    # it, skips it at once: no hop goes to it, so every hop is acknowledged
    assert kill.datagrams["HOP_ACK"] == kill.datagrams["ELECTION"] + kill.datagrams["COORDINATOR"] - kill.multicasts
    assert kill.datagrams["ELECTION"] >= 4


def test_bully_sends_elections_only_upwards():
    clean, kill = run("bully", 5, seed=2)
    assert kill.datagrams["COORDINATOR"] >= 1
    assert kill.datagrams["ANSWER"] <= kill.datagrams["ELECTION"]


def test_the_table_is_deterministic_and_has_a_row_per_cell():
    rows = [bench(p, 3, [1, 2]) for p in ("bully", "ring")]
    again = [bench(p, 3, [1, 2]) for p in ("bully", "ring")]
    assert rows == again
    table = markdown(rows, [1, 2])
    assert "| 3 | bully |" in table and "| 3 | ring |" in table
