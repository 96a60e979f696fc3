"""50 concurrent clients hammering status and metrics on the leader: no
leadership change (the full 30 s run is scripts/bench-control-load)."""

import importlib.util

from cluster import REPO, Cluster

spec = importlib.util.spec_from_file_location("bench_control_load", REPO / "scripts" / "bench_control_load.py")
bench = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench)


def test_fifty_clients_on_status_and_metrics_cause_no_leadership_change(tmp_path):
    with Cluster(tmp_path, 3, protocol="quorum-lease") as c:
        c.start_all()
        result = bench.hammer(c, clients=50, seconds=10.0)
    print(result)
    assert result["requests"]["ok"] > 100, result
    assert result["leadership_changes"] == 0 and result["term_after"] == result["term_before"], result
    assert result["leader_after"] == result["leader"], result
