"""What a report says about the machine it was measured on."""

from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown CPU"


def _ram_gib() -> str:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return f"{int(line.split()[1]) / 2**20:.1f} GiB RAM"
    except (OSError, ValueError, IndexError):
        pass
    return "RAM unknown"


def machine() -> str:
    return (f"{platform.node()}, {os.cpu_count()} CPUs ({_cpu_model()}), {_ram_gib()}, "
            f"Linux {platform.release()}, Python {platform.python_version()}")


def keepalived_version() -> str:
    try:
        out = subprocess.run(["keepalived", "--version"], capture_output=True, text=True, timeout=10)
        return (out.stdout + out.stderr).splitlines()[0]
    except (OSError, IndexError, subprocess.TimeoutExpired):
        return "keepalived (version unknown)"


def load_average() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())
