"""Building blocks the experiments share: nodes for datasets, DTs, merges and evaluations, and
the statistics and figures of their reports."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from dtmerge.atomic import atomic_path, write_json
from dtmerge.envs import TASKS
from dtmerge.experiments.scales import REPORT_EVAL_SEED, Scale
from dtmerge.experiments.store import Node
from dtmerge.model.groups import BLOCK_PARTS


def dataset(scale: Scale, task: str, level: str) -> Node:
    """One dataset per task and level, shared by every model seed (as D4RL has one file)."""
    size = scale.transitions * (2 if level == "medium-expert" else 1)
    return Node("dataset", {"task": task, "level": level, "transitions": size, "seed": 0})


def dt(scale: Scale, task: str, level: str, seed: int) -> Node:
    return Node("dt", scale.train_spec(seed), {"data": dataset(scale, task, level)})


def interpolate(target: Node, source: Node, select: list[str], alpha: float) -> Node:
    """`target` with the selected tensors moved `alpha` of the way to `source`'s (1 = swapped in)."""
    return Node("merge", {"select": select, "method": "interpolate", "params": {"alpha": alpha},
                          "format": "checkpoint"}, {"model0": target, "model1": source})


def evaluation(scale: Scale, model: Node, task: str, bundle_task: bool = False) -> Node:
    """The reported evaluation: reset seeds from REPORT_EVAL_SEED, the task's high RTG target."""
    spec = {"episodes": scale.episodes, "seed": REPORT_EVAL_SEED, "targets": [TASKS[task].rtg_targets[0]],
            "max_steps": scale.max_steps, "precision": scale.precision}
    return Node("eval", {**spec, "task": task} if bundle_task else spec, {"model": model})


def units(n_layer: int) -> list[str]:
    """Every block's ln_1, attn, ln_2, mlp in depth order, then ln_f: the units of Fig. 2."""
    return [f"h.{i}.{part}" for i in range(n_layer) for part in BLOCK_PARTS] + ["ln_f"]


def mean_return(result: dict) -> float:
    return result["targets"][0]["return_mean"]


def task_average(cells: dict, row: str) -> float:
    """The mean over the three tasks of a table row's cells (`cells[f"{row}|{task}"]["mean"]`)."""
    return sum(cells[f"{row}|{t}"]["mean"] for t in TASKS) / len(TASKS)


def summarise(values) -> dict:
    """Mean, standard error (0 for a single value) and the values themselves."""
    v = np.asarray(list(values), float)
    se = float(v.std(ddof=1) / np.sqrt(len(v))) if len(v) > 1 else 0.0
    return {"mean": float(v.mean()), "se": se, "values": v.tolist()}


def seed_scores(results: dict, key: str, seeds: int) -> dict:
    """The D4RL-normalised score of the evaluations `f"{key}|{seed}"`, summarised over seeds."""
    return summarise(results[f"{key}|{seed}"]["targets"][0]["score_mean"] for seed in range(seeds))


def publish(out: Path, name: str, scale: Scale, summary: dict, table: list[str], draw, **extra) -> dict:
    """Write an experiment's report: `<name>.png` drawn by `draw(ax)`, results.json (the summary,
    the scale and its settings, and anything in `extra`, such as the paper's numbers) and results.md
    (the tables)."""
    out.mkdir(parents=True, exist_ok=True)
    figure(out / f"{name}.png", draw)
    settings = {k: v for k, v in dataclasses.asdict(scale).items() if k != "sized"}  # the sizes this report ran at
    write_json(out / "results.json", {"experiment": name, "scale": scale.name, "seeds": scale.seeds,
                                      "settings": settings, **summary, **extra})
    with atomic_path(out / "results.md") as tmp:
        tmp.write_text("\n".join(table).rstrip() + "\n")
    return summary


def figure(out: Path, draw) -> Path:
    """A PNG drawn by `draw(ax)`, written atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.8), dpi=120)
    draw(ax)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    with atomic_path(out, ".png") as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return out


def finding(claim: str, ours: str, agrees: bool | None, rule: str) -> dict:
    """One line of REPORT.md: the paper's claim, what our run measured, and the rule that judged it
    (`agrees=None`: the measured difference is within the seeds' noise)."""
    verdict = {True: "agrees", False: "disagrees", None: "within noise"}[agrees]
    return {"claim": claim, "ours": ours, "verdict": verdict, "rule": rule}


def paired_difference(cells: dict, better: str, worse: str) -> dict:
    """Task-average score of row `better` minus row `worse`, seed by seed (both rows come from the
    same seeds' models), summarised; the finding's noise band."""
    per_seed = [np.mean([cells[f"{better}|{t}"]["values"][s] - cells[f"{worse}|{t}"]["values"][s] for t in TASKS])
                for s in range(len(cells[f"{better}|{next(iter(TASKS))}"]["values"]))]
    return summarise(per_seed)


def beats(diff: dict) -> bool | None:
    """True if a paired difference is above two standard errors, False if below minus two, None between
    (a single seed has no noise estimate, so its sign decides)."""
    if abs(diff["mean"]) <= 2 * diff["se"]:
        return None
    return diff["mean"] > 0


BEATS_RULE = "agrees if the per-seed difference of task averages is above 2 s.e., within noise if inside ±2 s.e."
