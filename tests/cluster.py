"""The process-test harness lives in the package so scripts/demo can share it."""

from electiond.devcluster import REPO, Cluster, free_udp_port  # noqa: F401
