"""The LAN lab (issue #16): namespace LANs, faults, electiond and keepalived
as peer systems on them, the hook log and its leadership checker."""

from .faults import Faults, netem_available
from .hooklog import HookEvent, Interval, Mark, Marks, Verdict, check, read_log
from .lan import Lan, close_all, install_signal_teardown, sh
from .netns_cluster import VIP, VIP_CIDR, VIP_HOOK, NetnsCluster, VipLan, vip_holders

__all__ = [
    "Faults", "netem_available", "HookEvent", "Interval", "Mark", "Marks", "Verdict", "check", "read_log",
    "Lan", "close_all", "install_signal_teardown", "sh", "VIP", "VIP_CIDR", "VIP_HOOK", "NetnsCluster", "VipLan",
    "vip_holders",
]
