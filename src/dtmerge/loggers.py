"""Loggers beside metrics.jsonl (which is always written): TensorBoard and Weights & Biases.

A run logs each metrics record (and, where a command evaluates, its scores) to every logger it
was asked for, under `<prefix>/<field>`. TensorBoard writes event files to `<run>/tensorboard`
(`pip install 'dtmerge[tensorboard]'`); W&B runs offline unless WANDB_MODE says otherwise, into
`<run>/wandb` (`pip install 'dtmerge[wandb]'`; `wandb sync` uploads it). Neither changes a number.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
from pathlib import Path

from dtmerge.errors import DtmergeError

LOGGERS = ("tensorboard", "wandb")


class Loggers:
    """The loggers of one run; `log` sends a record's numbers to each of them."""

    def __init__(self, kinds, run_dir, name: str, config: dict | None = None):
        check_loggers(kinds)
        self.run_dir, self.writers = Path(run_dir), []
        for kind in dict.fromkeys(kinds):
            self.writers.append(_tensorboard(self.run_dir) if kind == "tensorboard" else
                                _wandb(self.run_dir, name, config or {}))

    def log(self, record: dict, step: int, prefix: str = "train") -> None:
        numbers = {f"{prefix}/{k}": float(v) for k, v in record.items()
                   if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool)}
        for kind, writer in self.writers:
            if kind == "tensorboard":
                for key, value in numbers.items():
                    writer.add_scalar(key, value, step)
            else:
                writer.log(numbers, step=step)

    def log_scores(self, results: list[dict], step: int) -> None:
        """dtmerge eval results: each task's score and return at each RTG target."""
        for r in results:
            for t in r["targets"]:
                self.log({"score": t["score_mean"], "return": t["return_mean"]}, step,
                         prefix=f"eval/{r['task']}/rtg_{t['target']:g}")

    def close(self) -> None:
        for kind, writer in self.writers:
            writer.close() if kind == "tensorboard" else writer.finish()
        self.writers = []

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def check_loggers(kinds) -> None:
    """Refuse an unknown logger, or one whose package is not installed."""
    for kind in kinds:
        if kind not in LOGGERS:
            raise DtmergeError(f"--log {kind!r}: choose from {', '.join(LOGGERS)} (metrics.jsonl is always written)")
        if importlib.util.find_spec("tensorboard" if kind == "tensorboard" else "wandb") is None:
            raise DtmergeError(f"--log {kind} needs {kind}: pip install 'dtmerge[{kind}]'")


def _tensorboard(run_dir: Path):
    from torch.utils.tensorboard import SummaryWriter

    return "tensorboard", SummaryWriter(log_dir=str(run_dir / "tensorboard"))


def _wandb(run_dir: Path, name: str, config: dict):
    import wandb

    run_id = hashlib.sha256(str(run_dir.resolve()).encode()).hexdigest()[:16]  # one W&B run per run directory
    run = wandb.init(project=os.environ.get("WANDB_PROJECT", "dtmerge"), name=name, id=run_id, resume="allow",
                     dir=str(run_dir), config=config, mode=os.environ.get("WANDB_MODE", "offline"),
                     reinit="finish_previous",  # a run reopened in this process never lands in the last one
                     settings=wandb.Settings(silent=True, console="off"))
    return "wandb", run
