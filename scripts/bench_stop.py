"""Stop benchmark: SIGTERM a follower of a 3-node cluster N times and time
until its process is gone, per protocol.

Two numbers per run: the wall time from the signal to the exit (what systemd
waits for), and the daemon's own "stopped in" figure from its final log line
(signal to that line), so the interpreter's share shows separately.
"""

from __future__ import annotations

import argparse
import shutil
import signal
import statistics
import tempfile
import time
from pathlib import Path

from electiond.devcluster import Cluster


def measure(protocol: str, stops: int) -> tuple[list[float], list[float]]:
    workdir = Path(tempfile.mkdtemp(prefix=f"electiond-bench-stop-{protocol}-"))
    to_exit_ms: list[float] = []
    to_final_line_ms: list[float] = []
    try:
        with Cluster(workdir, 3, protocol=protocol) as c:
            c.start("n2")
            c.start("n3")
            c.wait_leader(10, ["n2", "n3"])
            for _ in range(stops):
                c.start("n1")
                # n1 has the lowest id: it follows whichever of n2 and n3 leads
                c.wait_for(lambda: c.agreed_leader() in ("n2", "n3"), 10, "n1 to follow")
                time.sleep(0.5)  # past the startup hooks: a follower at rest
                started = time.monotonic()
                c.signal("n1", signal.SIGTERM)
                c.procs["n1"].wait(20)
                to_exit_ms.append((time.monotonic() - started) * 1000)
                c.procs.pop("n1")
                last = (workdir / "n1.log").read_text().splitlines()[-1]
                if "stopped in " in last:
                    to_final_line_ms.append(float(last.split("stopped in ")[1].split(" s")[0]) * 1000)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return to_exit_ms, to_final_line_ms


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--stops", type=int, default=10)
    parser.add_argument("--protocols", default="quorum-lease,bully,ring")
    args = parser.parse_args()
    for protocol in args.protocols.split(","):
        to_exit, to_line = measure(protocol, args.stops)
        line = f"{protocol:13s} follower SIGTERM -> exit: median {statistics.median(to_exit):6.1f} ms, " \
               f"max {max(to_exit):6.1f} ms"
        if to_line:
            line += f"; signal -> final log line: median {statistics.median(to_line):5.1f} ms"
        print(line, flush=True)


if __name__ == "__main__":
    main()
