"""metrics.render on a real Node's status, parsed by prometheus_client; the
Grafana dashboard only names metrics that exist."""

import json
import random
import re

import pytest

from electiond import metrics
from electiond.node import Node
from electiond.protocols.base import Member, Settings
from cluster import REPO

parser = pytest.importorskip("prometheus_client.parser")


def status_of_a_leader():
    s = Settings(cluster='c"q\\x', node_name="n1", members=(Member("n1", 1),))
    n = Node(s, "quorum-lease", random.Random(1), 0.0)
    now = 0.0
    for _ in range(1000):
        n.on_tick(now)
        if n.is_leader(now):
            break
        now = max(now + 0.001, n.deadline())
    st = n.status(now)
    st.update({"dropped": {"bad_mac": 2, "self": 5}, "uptime_s": 1.5})
    return st


def test_render_parses_and_counts():
    counters = metrics.Counters()
    counters.sent["LEASE_HEARTBEAT"] = 7
    counters.received["PRESENCE"] = 3
    counters.leadership_changes = 1
    for d in (0.004, 0.02, 0.02, 100.0):
        counters.hook("promote", d < 50, d)
    text = metrics.render(status_of_a_leader(), counters)
    fams = {f.name: f for f in parser.text_string_to_metric_families(text)}
    info = fams["electiond_info"].samples[0]
    assert info.labels["cluster"] == 'c"q\\x', "label values are escaped and parse back"
    assert fams["electiond_is_leader"].samples[0].value == 1.0
    assert fams["electiond_messages_sent"].type == "counter"
    assert {s.labels["kind"]: s.value for s in fams["electiond_messages_sent"].samples} == {"LEASE_HEARTBEAT": 7}
    assert {s.labels["reason"]: s.value for s in fams["electiond_dropped"].samples} == {"bad_mac": 2, "self": 5}
    hist = fams["electiond_hook_duration_seconds"]
    buckets = {s.labels["le"]: s.value for s in hist.samples if s.name.endswith("_bucket")}
    assert buckets["0.005"] == 1 and buckets["0.025"] == 3 and buckets["60.0"] == 3 and buckets["+Inf"] == 4
    runs = {(s.labels["event"], s.labels["result"]): s.value for s in fams["electiond_hook_runs"].samples}
    assert runs == {("promote", "ok"): 3, ("promote", "failed"): 1}
    assert fams["electiond_lease_remaining_seconds"].samples[0].value > 0
    assert fams["electiond_elections_won"].samples[0].value == 1


def test_the_dashboard_names_only_metrics_that_exist():
    text = metrics.render(status_of_a_leader(), metrics.Counters())
    counters = metrics.Counters()
    counters.hook("demote", True, 0.1)
    text += metrics.render(status_of_a_leader(), counters)
    exposed = {line.split()[2] for line in text.splitlines() if line.startswith("# TYPE")}
    exposed |= {f"{n}_bucket" for n in exposed}
    dashboard = json.loads((REPO / "docs" / "grafana-dashboard.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    named = {m for e in exprs for m in re.findall(r"\belectiond_[a-z_]+", e)}
    assert named and named <= exposed, named - exposed
