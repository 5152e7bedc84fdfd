"""PNG plots of training curves (DT loss from metrics.jsonl, behaviour-agent return from log.jsonl)."""

from __future__ import annotations

import json
from pathlib import Path

from dtmerge.atomic import atomic_path
from dtmerge.errors import DtmergeError
from dtmerge.outputs import claim_outputs


def plot_curves(runs: dict[str, Path], out, x: str, y: str, ylabel: str, title: str, logy: bool = False,
                overwrite: bool = False) -> Path:
    """One line per run from a JSONL file of records; written atomically as PNG."""
    claim_outputs([out], list(runs.values()), overwrite)
    records = {label: read_records(path, (x, y)) for label, path in runs.items()}
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.6), dpi=120)
    for label, recs in records.items():
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


def read_records(path, fields: tuple[str, ...]) -> list[dict]:
    """The records of a JSONL file that carry every one of `fields`; a bad line is an error naming it."""
    path = Path(path)
    records = []
    for i, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            raise DtmergeError(f"{path}: line {i} is not valid JSON") from None
        if not isinstance(rec, dict):
            raise DtmergeError(f"{path}: line {i} is not a JSON object")
        if all(isinstance(rec.get(f), (int, float)) for f in fields):
            records.append(rec)
    if not records:
        raise DtmergeError(f"{path}: no record has numeric {' and '.join(fields)}")
    return records
