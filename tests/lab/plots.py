"""PNG plots for the lab's reports; matplotlib is a benchmark-only extra
(`pip install -e .[bench]`, or `scripts/bench --plots`), never a runtime dependency."""

from __future__ import annotations

import sys
from pathlib import Path


def pyplot():
    """matplotlib.pyplot on the Agg backend, or None (with a message) when it is not installed."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not importable: no plot (scripts/bench --plots, or pip install -e '.[bench]')",
              file=sys.stderr)
        return None
    return plt


def split_brain_plot(per_system: dict[str, list[float]], path: Path, title: str) -> bool:
    """Split-brain seconds per schedule, one box (and its points) per system."""
    plt = pyplot()
    if plt is None or not per_system:
        return False
    names = list(per_system)
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.boxplot([per_system[n] for n in names])  # tick labels apart: the keyword was renamed across versions
    ax.set_xticks(range(1, len(names) + 1), names)
    for i, n in enumerate(names, 1):
        values = per_system[n]
        ax.scatter([i + 0.25] * len(values), values, s=6, alpha=0.4)
    ax.set_ylabel("split-brain s per schedule")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    print(f"plot: {path}", file=sys.stderr)
    return True
