"""PNG plots of training curves (DT loss from metrics.jsonl, behaviour-agent return from log.jsonl)."""

from __future__ import annotations

import json
from pathlib import Path

from dtmerge.atomic import atomic_path


def plot_curves(runs: dict[str, Path], out, x: str, y: str, ylabel: str, title: str, logy: bool = False) -> Path:
    """One line per run from a JSONL file of records; written atomically as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.6), dpi=120)
    for label, path in runs.items():
        recs = [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
        ax.plot([r[x] for r in recs], [r[y] for r in recs], label=label)
    ax.set_xlabel(x)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    if logy:
        ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    with atomic_path(out, ".png") as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return Path(out)
