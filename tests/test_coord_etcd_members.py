"""The etcd backend's member view with suspicion, pure parts and the event
stream from made-up etcd answers (the real etcd: test_process_coord_etcd.py)."""

from __future__ import annotations

import asyncio
import base64

from electiond.coord.etcdbackend import EtcdBackend, MemberState, overdue

PREFIX = "/electiond/c/"


def test_a_lease_is_suspected_once_less_than_half_its_ttl_is_left():
    # kept alive every third of the TTL: normally 2/3 or more is left
    assert not overdue(3, 3) and not overdue(2, 3) and overdue(1, 3)
    assert not overdue(4, 6) and not overdue(3, 6) and overdue(2, 6)
    assert not overdue(0, 0)  # no granted TTL known: no judgement


def test_a_node_is_suspected_only_when_every_live_key_of_it_is_marked():
    st = MemberState()
    for lease, node in (("a1", "n1"), ("b2", "n2"), ("c3", "n3")):
        st.apply("election", "put", lease, node)
    assert st.view() == (("n1", "n2", "n3"), ())
    st.apply("suspect", "put", "c3", "n3")
    assert st.view() == (("n1", "n2"), ("n3",))
    st.apply("election", "put", "d4", "n3")  # n3 restarted: a fresh key while the old lease runs out
    assert st.view() == (("n1", "n2", "n3"), ())
    st.apply("election", "delete", "d4", "")
    st.apply("election", "delete", "c3", "")
    st.apply("suspect", "delete", "c3", "")
    assert st.view() == (("n1", "n2"), ())
    st.apply("other", "put", "x", "y")  # a key in the range that is neither
    assert st.view() == (("n1", "n2"), ())


def test_one_range_holds_the_election_keys_and_the_markers():
    b = EtcdBackend(None, PREFIX)  # type: ignore[arg-type]
    start, end = b._member_range()
    end_raw = base64.b64decode(end).decode()
    for key in (PREFIX + "election/7f", b.prefix + "suspects/7f"):
        assert start <= key < end_raw, key
    assert b._member_kind(PREFIX + "election/7f") == ("election", "7f")
    assert b._member_kind(b.prefix + "suspects/7f") == ("suspect", "7f")
    assert b._member_kind(PREFIX + "transfer") == ("", "")


def test_the_watch_gives_suspected_joined_and_left_under_increasing_revisions():
    b = EtcdBackend(None, PREFIX)  # type: ignore[arg-type]
    sus = b.prefix + "suspects/"
    el = PREFIX + "election/"

    async def state():
        st = MemberState()
        for lease, node in (("a1", "n1"), ("b2", "n2"), ("c3", "n3")):
            st.apply("election", "put", lease, node)
        return st, 100

    messages = [
        [("put", sus + "c3", "n3", 101)],  # n3's keep-alive is overdue
        [("delete", sus + "c3", "", 102)],  # refreshed: back
        [("put", sus + "c3", "n3", 103)],
        # its lease ran out: key and marker go in one revision (here even in one message with the next)
        [("delete", el + "c3", "", 104), ("delete", sus + "c3", "", 104), ("put", el + "e5", "n3", 105)],
        [("put", PREFIX + "transfer", "n2", 106)],  # not a member key: nothing
    ]

    async def watch_messages(start, rev, end):
        assert rev == 101
        for m in messages:
            yield m

    async def no_checker():
        await asyncio.sleep(3600)

    b._member_state = state  # type: ignore[method-assign]
    b._watch_messages = watch_messages  # type: ignore[method-assign]
    b._suspicion_loop = no_checker  # type: ignore[method-assign]

    async def collect(from_version):
        out = []
        async for ev in b.members_watch(from_version):
            out.append((ev.version, ev.node, ev.change, ev.members, ev.suspected))
        return out

    got = asyncio.run(collect(0))
    assert got == [
        (100, "", "view", ("n1", "n2", "n3"), ()),
        (101, "n3", "suspected", ("n1", "n2"), ("n3",)),
        (102, "n3", "joined", ("n1", "n2", "n3"), ()),
        (103, "n3", "suspected", ("n1", "n2"), ("n3",)),
        (104, "n3", "left", ("n1", "n2"), ()),
        (105, "n3", "joined", ("n1", "n2", "n3"), ()),
    ], got
    # from a version on: the view first, then only later changes
    assert [e[0] for e in asyncio.run(collect(103))] == [100, 104, 105]
