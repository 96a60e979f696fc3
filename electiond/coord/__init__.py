"""Coordination primitives beyond election (locks, barriers, membership,
versioned config) served to scripts by the daemon, with one interface and
two backends: embedded (the quorum-lease cluster itself) and etcd."""
