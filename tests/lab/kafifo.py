"""keepalived observed through its notify FIFO, in keepalived's own order.

keepalived starts notify_master/backup/fault scripts asynchronously, so under
load their stamps can land out of order (a BACKUP stamped before the MASTER
it followed: issue 16, chaos seeds 89, 123, 155). Its ``notify_fifo`` is
written by keepalived itself, one line per state change, in the order it
changed: ``INSTANCE "lab" MASTER 104``. The line carries no timestamp.

One reader per keepalived instance (this file, run as a script, stdlib only)
reads that FIFO and appends each state change to the lab's hook log in the
hook log's own format, ``<wall-clock ns> <node> <event> 0``. The stamp is
taken when the reader *reads* the line, so it is after keepalived wrote it
(by the reader's wake-up latency, no fork or exec in between); lines read in
one chunk get stamps 1 ns apart so their order survives any sort. The order
of one node's records is keepalived's. Every line read, state change or not,
also goes to a raw log (``<ns> <line>``) for diagnosis.

The reader is bounded: it exits on SIGTERM (after draining what keepalived
already wrote, so a SIGKILLed keepalived's last lines are not lost), when its
parent (the lab) is gone, or after max_s seconds; on exit it removes the FIFO if it
is still the one it opened. FifoReader is the lab's side: it makes the FIFO,
starts the reader, waits until it is reading, and stops it.
"""

from __future__ import annotations

import dataclasses
import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

# keepalived's instance states -> the hook log's events. STOP is written when
# keepalived shuts the instance down (as notify_stop ran, mapped to demote).
STATE_EVENTS = {"MASTER": "promote", "BACKUP": "demote", "FAULT": "fault", "STOP": "demote"}
# Lines that are not a state change: MASTER_RX_LOWER_PRI (a master heard a
# lower priority advert and stays master), MASTER_PRIORITY / BACKUP_PRIORITY
# (priority changes), DELETED (a reload removed the instance; the lab never
# reloads), and GROUP lines (the lab has no sync groups).

READY = b"ready\n"
MAX_LINE = 4096  # keepalived's lines are tens of bytes: a longer "line" is not one of them


@dataclasses.dataclass(frozen=True)
class FifoLine:
    kind: str  # INSTANCE or GROUP (VS/RS for LVS, which the lab does not run)
    name: str
    state: str
    priority: int | None


def parse_line(line: str) -> FifoLine | None:
    """One FIFO line, ``INSTANCE "lab" MASTER 104``; None if it is not of that shape."""
    parts = line.strip().split()
    if len(parts) not in (3, 4) or parts[0] not in ("INSTANCE", "GROUP"):
        return None
    name = parts[1]
    if len(name) < 2 or not (name.startswith('"') and name.endswith('"')):
        return None
    priority = None
    if len(parts) == 4:
        try:
            priority = int(parts[3])
        except ValueError:
            return None
    return FifoLine(parts[0], name[1:-1], parts[2], priority)


def hook_event(parsed: FifoLine | None, instance: str) -> str | None:
    """The hook log event of one FIFO line of our instance, or None."""
    if parsed is None or parsed.kind != "INSTANCE" or parsed.name != instance:
        return None
    return STATE_EVENTS.get(parsed.state)


def stamps(now_ns: int, last_ns: int, count: int) -> list[int]:
    """Stamps for count lines read at now_ns: strictly after last_ns and each other."""
    first = max(now_ns, last_ns + 1)
    return [first + i for i in range(count)]


class LineSplitter:
    """Bytes from the FIFO -> whole lines; a partial line waits for its end."""

    def __init__(self) -> None:
        self.pending = b""

    def feed(self, data: bytes) -> list[str]:
        self.pending += data
        *lines, self.pending = self.pending.split(b"\n")
        if len(self.pending) > MAX_LINE:
            self.pending = b""  # not keepalived's: drop rather than grow
        return [raw.decode(errors="replace") for raw in lines if raw.strip()]


def read_available(fd: int) -> bytes:
    chunks = []
    while True:
        try:
            data = os.read(fd, 65536)
        except BlockingIOError:
            break
        if not data:
            break
        chunks.append(data)
    return b"".join(chunks)


def run(fifo: Path, log: Path, raw_log: Path, node: str, instance: str, parent_pid: int, max_s: float) -> int:
    # O_RDWR: open never blocks for a writer, and the reader sees no EOF
    # while no keepalived has the FIFO open (before it starts, between its
    # parent and VRRP child): it reads until told to stop
    fd = os.open(fifo, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
    inode = os.fstat(fd).st_ino
    out = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
    raw = os.open(raw_log, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
    wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    stopping = False

    def on_term(_signum: int, _frame) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    signal.set_wakeup_fd(wake_w)  # a signal wakes the poll at once
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    poller.register(wake_r, select.POLLIN)
    splitter = LineSplitter()
    last_ns = 0

    def take(data: bytes) -> None:
        nonlocal last_ns
        # the stamp: when the reader got the lines, after keepalived wrote them
        now_ns = time.time_ns()
        lines = splitter.feed(data)
        for t, line in zip(stamps(now_ns, last_ns, len(lines)), lines):
            os.write(raw, f"{t} {line}\n".encode())
            event = hook_event(parse_line(line), instance)
            if event:
                # one write per record: O_APPEND keeps other readers' records whole
                os.write(out, f"{t} {node} {event} 0\n".encode())
            last_ns = t

    deadline = time.monotonic() + max_s
    os.write(1, READY)
    try:
        while True:
            ready = poller.poll(1000)
            data = read_available(fd)
            if data:
                take(data)
            if any(f == wake_r for f, _ in ready):
                read_available(wake_r)
            if stopping or os.getppid() != parent_pid or time.monotonic() > deadline:
                # what keepalived wrote before it died or was told to stop is in
                # the FIFO already and the read above took it; one more read
                # for a write that raced the signal
                tail = read_available(fd)
                if tail:
                    take(tail)
                return 0
    finally:
        try:
            if os.stat(fifo).st_ino == inode:
                os.unlink(fifo)
        except OSError:
            pass
        os.close(fd)


class FifoReader:
    """The lab's handle on one reader: make the FIFO, start the reader, stop it."""

    def __init__(self, fifo: Path, log: Path, raw_log: Path, node: str, instance: str = "lab",
                 max_s: float = 6 * 3600.0, nice: int | None = None) -> None:
        self.fifo, self.log, self.raw_log = fifo, log, raw_log
        self.node, self.instance, self.max_s = node, instance, max_s
        self.nice = nice  # None: ours
        self.proc: subprocess.Popen | None = None

    def start(self, ready_within_s: float = 20.0) -> None:
        self.fifo.unlink(missing_ok=True)
        os.mkfifo(self.fifo, 0o600)
        # its own session: a SIGKILL of keepalived's process group must not
        # take the reader, which still has to drain keepalived's last lines
        niced = () if self.nice is None else ("nice", "-n", str(self.nice))  # nice execs: the pid is the reader's
        self.proc = subprocess.Popen(
            [*niced, sys.executable, "-u", str(Path(__file__).resolve()), str(self.fifo), str(self.log), str(self.raw_log),
             self.node, self.instance, str(os.getpid()), str(self.max_s)],
            stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, start_new_session=True)
        assert self.proc.stdout is not None
        got = b""
        deadline = time.monotonic() + ready_within_s
        while not got.endswith(READY) and time.monotonic() < deadline and self.proc.poll() is None:
            ready, _, _ = select.select([self.proc.stdout], [], [], 0.2)
            if ready:
                chunk = os.read(self.proc.stdout.fileno(), 64)
                if not chunk:
                    break
                got += chunk
        if not got.endswith(READY):
            self.stop()
            raise RuntimeError(f"the FIFO reader of {self.node} did not start within {ready_within_s}s")

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, within_s: float = 10.0) -> None:
        """Drain and stop (call after keepalived is gone: then every line it wrote is read)."""
        proc, self.proc = self.proc, None
        if proc is not None:
            try:
                proc.send_signal(signal.SIGTERM)
                proc.wait(within_s)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
            except ProcessLookupError:
                pass
            if proc.stdout is not None:
                proc.stdout.close()
        self.fifo.unlink(missing_ok=True)


def main(argv: list[str]) -> int:
    fifo, log, raw_log, node, instance, parent_pid, max_s = argv
    return run(Path(fifo), Path(log), Path(raw_log), node, instance, int(parent_pid), float(max_s))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
