"""The systems under test on a lab LAN, behind one interface: electiond with
any of its protocols, and keepalived (VRRPv3) as a peer.

Both write the same hook log (hooklog.py): electiond from its hooks,
keepalived through a reader of its ordered notify FIFO (kafifo.py). Both take
the same process faults; the harness records a Mark for every action so the
checker knows when a node died, froze or resumed.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

from electiond.devcluster import REPO, wait_for

from .hooklog import Marks, check, read_log, write_hook
from .kafifo import FifoReader
from .lan import Lan
from .netns_cluster import NetnsCluster

SYSTEMS = ("quorum-lease", "bully", "ring", "keepalived")


def electiond_timing(heartbeat_ms: int) -> dict[str, str]:
    """The defaults (50 ms heartbeat, 150-300 ms election timeout, 150 ms
    lease) scaled to another heartbeat."""
    h = heartbeat_ms
    return {"heartbeat_interval": f"{h}ms", "election_timeout": f"{3 * h}ms-{6 * h}ms", "lease": f"{3 * h}ms"}


class LabSystem:
    name = ""
    ends: tuple[str, ...] = ("demote",)

    def __init__(self, lan: Lan, workdir: Path, hosts: list[str], heartbeat_ms: int) -> None:
        self.lan = lan
        self.workdir = workdir
        self.hosts = list(hosts)
        self.heartbeat_ms = heartbeat_ms
        self.log = workdir / "lab-hooks.log"
        self.log.touch()
        self.marks = Marks()
        self.started_s = time.time()

    # process control, implemented per system
    def _spawn(self, host: str) -> None: raise NotImplementedError
    def _signal(self, host: str, sig: int) -> None: raise NotImplementedError
    def _wait_dead(self, host: str) -> None: raise NotImplementedError
    def running(self) -> list[str]: raise NotImplementedError
    def stop_all(self) -> None: raise NotImplementedError
    def diagnostics(self) -> str: return ""

    def start_all(self) -> None:
        for host in self.hosts:
            self.start(host)

    def start(self, host: str) -> None:
        self.marks.add("start", host)
        self._spawn(host)

    def kill(self, host: str) -> None:
        self.marks.add("kill", host)
        self._signal(host, signal.SIGKILL)
        self._wait_dead(host)

    def freeze(self, host: str) -> None:
        self.marks.add("freeze", host)
        self._signal(host, signal.SIGSTOP)

    def resume(self, host: str) -> None:
        self.marks.add("resume", host)
        self._signal(host, signal.SIGCONT)

    def restart(self, host: str) -> None:
        """A clean stop (SIGTERM: its demote runs) and a start."""
        self._signal(host, signal.SIGTERM)
        self._wait_dead(host)
        self.marks.add("kill", host)  # from here on it cannot lead, whatever its hooks did
        self.start(host)

    # ---- observation -------------------------------------------------------------

    def verdict(self, slack_s: float = 0.0, resume_demote_s: float = 1.0):
        return check(read_log(self.log), self.marks.items, time.time(), self.ends, resume_demote_s, slack_s)

    def leaders(self) -> list[str]:
        """Who leads now by the hook log (frozen leaders count until they demote)."""
        now = time.time()
        ivs = self.verdict().intervals
        frozen = self._frozen()
        return sorted({iv.node for iv in ivs if iv.start_s <= now and
                       (iv.ended_by == "still leading" or (iv.node in frozen and iv.ended_by == "frozen at the end"))})

    def _frozen(self) -> set[str]:
        state: dict[str, bool] = {}
        for m in self.marks.items:
            if m.kind == "freeze":
                state[m.node] = True
            elif m.kind in ("resume", "kill", "start"):
                state[m.node] = False
        return {n for n, f in state.items() if f}

    def agreed_leader(self) -> str | None:
        """One leader by the hook log, alive and not frozen (keepalived has no
        status to ask; electiond overrides this with its control sockets)."""
        leaders = self.leaders()
        if len(leaders) == 1 and leaders[0] in self.running() and leaders[0] not in self._frozen():
            return leaders[0]
        return None

    def wait_leader(self, timeout_s: float) -> str:
        return wait_for(self.agreed_leader, timeout_s, f"one agreed {self.name} leader", self.diagnostics)


def unit_nice(unit: Path = REPO / "systemd" / "electiond.service") -> int | None:
    """The Nice= of the shipped systemd unit, which the lab's daemons run at."""
    for line in unit.read_text().splitlines():
        if line.startswith("Nice="):
            return int(line.split("=", 1)[1])
    return None


class ElectiondSystem(LabSystem):
    def __init__(self, lan: Lan, workdir: Path, hosts: list[str], heartbeat_ms: int, protocol: str,
                 node_options: dict[str, str] | None = None) -> None:
        super().__init__(lan, workdir, hosts, heartbeat_ms)
        self.name = protocol
        hook = str(write_hook(workdir / "lab-hook", self.log))
        assert hosts == [f"n{i}" for i in range(1, len(hosts) + 1)], "electiond's harness names hosts n1..nN"
        options = {"preempt": "no"} if node_options is None else node_options
        self.cluster = NetnsCluster(workdir, lan, protocol=protocol, node_options=options, size=len(hosts),
                                    vip=False, hooks={"promote": hook, "demote": hook, "fault": hook},
                                    timing=electiond_timing(heartbeat_ms))
        self.cluster.socket_wait_s = 60.0
        # as deployed: the shipped unit's Nice= (at nice 0 on a loaded 2-core
        # host, 65 quorum-lease daemons got 0.2 cores between them and never
        # agreed; at -10, 1 core, and one leader within 25 s)
        self.cluster.nice = unit_nice()

    def _spawn(self, host: str) -> None:
        self.cluster.start(host)

    def start_all(self) -> None:
        for host in self.hosts:
            self.marks.add("start", host)
        self.cluster.start_all()

    def _signal(self, host: str, sig: int) -> None:
        self.cluster.procs[host].send_signal(sig)

    def _wait_dead(self, host: str) -> None:
        proc = self.cluster.procs.pop(host)
        proc.send_signal(signal.SIGCONT)  # a frozen daemon must be able to die of SIGTERM
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)

    def running(self) -> list[str]:
        return self.cluster.running()

    def agreed_leader(self) -> str | None:
        frozen = self._frozen()
        leader = self.cluster.agreed_leader([h for h in self.running() if h not in frozen])
        # the hook log must agree, or the promote hook has not run yet
        return leader if leader and self.leaders() == [leader] else None

    def stop_all(self) -> None:
        self.cluster.stop_all()

    def diagnostics(self) -> str:
        return self.cluster.logs()


KEEPALIVED_CONF = """global_defs {{
    router_id {host}
    vrrp_version 3
    notify_fifo {fifo}
}}
vrrp_instance lab {{
    state BACKUP
    interface lan0
    virtual_router_id {vrid}
    priority {priority}
    advert_int {advert_s}
    nopreempt
    virtual_ipaddress {{
        {vip} dev lan0
    }}
}}
"""


class KeepalivedSystem(LabSystem):
    """Debian's keepalived, VRRP only, one per host namespace, all BACKUP with
    nopreempt (like electiond's preempt = no), the advert interval equal to
    electiond's heartbeat. Its VIP is inside the lab subnet.

    Observed through its notify FIFO, not notify scripts (which keepalived
    starts asynchronously, so their stamps can land out of order): before each
    keepalived starts, a FifoReader makes the host's FIFO and starts its
    reader; after keepalived is dead the reader drains what it wrote and
    stops, so every line of one incarnation is stamped before the next one
    starts."""

    name = "keepalived"
    ends = ("demote", "fault")

    def __init__(self, lan: Lan, workdir: Path, hosts: list[str], heartbeat_ms: int, vip_host: int = 60) -> None:
        super().__init__(lan, workdir, hosts, heartbeat_ms)
        if shutil.which("keepalived") is None:
            raise RuntimeError("keepalived is not installed (apt-get install keepalived)")
        self.vip = f"{lan.subnet}.{vip_host}/24"
        self.procs: dict[str, subprocess.Popen] = {}
        # the readers stamp at the nice electiond's hooks run at (its daemons'
        # unit Nice=), so neither system's records wait longer for a CPU;
        # keepalived itself runs at nice 0, as Debian's unit has it
        self.readers = {host: FifoReader(workdir / host / "notify.fifo", self.log, workdir / f"{host}.fifo.log", host,
                                         nice=unit_nice()) for host in hosts}
        vrid = 1 + os.getpid() % 250
        for i, host in enumerate(hosts):
            (workdir / host).mkdir(exist_ok=True)
            (workdir / f"{host}.keepalived.conf").write_text(KEEPALIVED_CONF.format(
                host=host, vrid=vrid, priority=100 + i, advert_s=f"{heartbeat_ms / 1000:g}",
                vip=self.vip, fifo=self.readers[host].fifo))

    def _spawn(self, host: str) -> None:
        d = self.workdir / host
        # a SIGKILLed keepalived leaves its pid files; if the dead VRRP child is
        # a zombie not yet reaped, a new keepalived would think it still runs
        for stale in ("keepalived.pid", "vrrp.pid"):
            (d / stale).unlink(missing_ok=True)
        self.readers[host].start()
        log = open(self.workdir / f"{host}.log", "ab")
        # its own session: a SIGKILL of the group takes parent and VRRP child
        # at once, as a crash of the host's keepalived would (no goodbye advert)
        try:
            self.procs[host] = subprocess.Popen(
                self.lan.exec_argv(host, "keepalived", "--dont-fork", "--log-console", "--vrrp",
                                   "--use-file", str(self.workdir / f"{host}.keepalived.conf"),
                                   "--pid", str(d / "keepalived.pid"), "--vrrp_pid", str(d / "vrrp.pid")),
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True, cwd=self.workdir)
        except BaseException:
            self.readers[host].stop()
            raise
        finally:
            log.close()

    def _signal(self, host: str, sig: int) -> None:
        proc = self.procs[host]
        try:
            if sig == signal.SIGTERM:
                proc.send_signal(sig)  # the parent stops its child cleanly
            else:
                os.killpg(proc.pid, sig)
        except ProcessLookupError:
            pass

    def _wait_dead(self, host: str) -> None:
        proc = self.procs.pop(host)
        try:
            os.killpg(proc.pid, signal.SIGCONT)
        except ProcessLookupError:
            pass
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)
        # whatever is left of the group (the VRRP child of a killed parent)
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        # keepalived is gone, so all it wrote is in the FIFO: the reader drains it and stops
        self.readers[host].stop()

    def running(self) -> list[str]:
        return [h for h, p in self.procs.items() if p.poll() is None]

    def stop_all(self) -> None:
        for host in list(self.procs):
            self._signal(host, signal.SIGTERM)
        for host in list(self.procs):
            self._wait_dead(host)
        for reader in self.readers.values():
            reader.stop()  # one whose keepalived never started (interrupted in between)

    def diagnostics(self) -> str:
        parts = []
        for host in self.hosts:
            path = self.workdir / f"{host}.log"
            if path.exists():
                parts.append(f"--- {host}.log\n" + "\n".join(path.read_text(errors="replace").splitlines()[-10:]))
        return "\n".join(parts)


def make_system(system: str, lan: Lan, workdir: Path, hosts: list[str], heartbeat_ms: int,
                node_options: dict[str, str] | None = None) -> LabSystem:
    """node_options: [node] keys for electiond's daemons (default preempt = no); keepalived has none."""
    if system == "keepalived":
        return KeepalivedSystem(lan, workdir, hosts, heartbeat_ms)
    return ElectiondSystem(lan, workdir, hosts, heartbeat_ms, system, node_options)
