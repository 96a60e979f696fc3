"""Catch-up of an embedded-store follower behind by 2000 writes (README, "Catch-up").

n1 leads with n2 and commits 2000 writes to 2000 keys while n3 is away; then
n3 is back and the leader's tick starts its catch-up (a snapshot of what was
folded below the kept log, then the log). Every message is delivered in
waves (a wave = one one-way hop, made-up times, no loss), so the count of
waves is the catch-up time in one-way latencies. Run:
.venv/bin/python scripts/coord_catchup.py"""
import time
from electiond.coord.replica import ConfigReplica, View, OP_SET, COORD_SNAP
from electiond.protocols.base import Send

NAMES = ("n1", "n2", "n3")
HB = 0.05
view = View("n1", 1, True)
fview = View("n1", 1, False)
a, b, c = (ConfigReplica(n, NAMES, HB) for n in NAMES)
reps = {"n2": b, "n3": c}

def run(fx, now, live):
    """Deliver in waves; returns (waves, messages, snap messages)."""
    wave = [("n1", s) for s in fx if type(s) is Send]
    waves = msgs = snaps = 0
    while wave:
        waves += 1
        nxt = []
        for frm, s in wave:
            msgs += 1
            snaps += s.kind == COORD_SNAP
            if frm == "n1":
                if s.to not in live:
                    continue
                out = reps[s.to].on_message(fview, s.kind, "n1", s.term, s.body, now)
                nxt += [(s.to, e) for e in out if type(e) is Send]
            else:
                out = a.on_message(view, s.kind, frm, s.term, s.body, now)
                nxt += [("n1", e) for e in out if type(e) is Send and e.to in live]
        wave = nxt
    return waves, msgs, snaps

run(a.sync(view, 0.0), 0.0, {"n2"})
for i in range(2000):
    run(a.request(view, f"w{i}", OP_SET, f"key/{i:05d}", f"value-{i:08d}", 0, 1.0), 1.0, {"n2"})
assert c.commit == 0 and a.commit >= 2000
t0 = time.process_time()
waves, msgs, snaps = run(a.on_tick(view, 10.0), 10.0, {"n2", "n3"})
cpu = time.process_time() - t0
assert c.commit == a.commit and c.last == a.last, (c.commit, a.commit)
for k in ("key/00000", "key/01000", "key/01999"):
    assert c.committed_get(k) == a.committed_get(k)
print(f"behind by {a.commit} versions: {waves} one-way hops ({waves // 2} round trips), {msgs} messages "
      f"({snaps} COORD_SNAP), {cpu * 1000:.0f} ms CPU; at 0.5 ms one-way: {waves * 0.5:.0f} ms")
