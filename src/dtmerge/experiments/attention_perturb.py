"""Table I: how much trained DTs rely on attention. Medium, medium-expert and expert DTs for each
task, evaluated as trained and with every attention layer replaced by fixed random weights, by the
paper's "identity" weights (all ones, biases zero), by a true identity (value and output
projections the identity), or removed (residual path only). The paper's all-ones "identity" is the
same map as removal (every later LayerNorm subtracts what it adds; tests/test_merge.py), so those
two columns are one intervention. D4RL-normalised (-v5) scores, mean and 95% bootstrap interval
over seeds, the paper's numbers beside."""

from __future__ import annotations

from pathlib import Path

from dtmerge.envs import SCORE_LABEL, TASKS
from dtmerge.experiments import common
from dtmerge.experiments.scales import Scale
from dtmerge.experiments.store import Node

NAME = "attention-perturb"
TITLE = "Table I: altering the attention of trained DTs"
LEVELS = ("medium-expert", "medium", "expert")
VARIANTS = ("original", "random", "identity", "identity-map", "remove")
HEADERS = {"original": "Original", "random": "Random", "identity": "Identity (paper: all ones)",
           "identity-map": "Identity map", "remove": "Removed"}
PAPER_VARIANTS = ("original", "random", "identity", "remove")  # the paper's columns, in PAPER's order
PAPER = {  # Lawson & Qureshi, Table I (D4RL -v2 datasets; ours are made on -v5)
    ("medium-expert", "halfcheetah"): (88.6, 41.0, 41.2, 41.5), ("medium-expert", "hopper"): (108.3, 77.2, 66.8, 74.1),
    ("medium-expert", "walker2d"): (109.4, 84.6, 82.6, 86.9), ("medium", "halfcheetah"): (40.4, 40.3, 39.7, 40.8),
    ("medium", "hopper"): (76.4, 52.2, 52.6, 52.2), ("medium", "walker2d"): (75.3, 74.1, 76.2, 74.3),
    ("expert", "halfcheetah"): (89.9, 90.1, 89.9, 90.1), ("expert", "hopper"): (108.8, 67.1, 67.9, 68.8),
    ("expert", "walker2d"): (109.4, 109.7, 109.8, 109.8),
}


def nodes(scale: Scale) -> dict:
    out = {}
    for seed in range(scale.seeds):
        for level in LEVELS:
            for task in TASKS:
                model = common.dt(scale, task, level, seed)
                out[f"data|{task}|{level}"] = common.dataset(scale, task, level)
                out[f"original|{level}|{task}|{seed}"] = common.evaluation(scale, model, task)
                for kind in VARIANTS[1:]:
                    perturbed = Node("perturb", {"kind": kind, "select": ["attn"], "seed": 0}, {"model": model})
                    out[f"{kind}|{level}|{task}|{seed}"] = common.evaluation(scale, perturbed, task)
    return out


def report(scale: Scale, results: dict, out: Path) -> dict:
    cells = {}
    for level in LEVELS:
        for task in TASKS:
            for kind in VARIANTS:
                cells[f"{level}|{task}|{kind}"] = common.seed_scores(results, f"{kind}|{level}|{task}", scale.seeds)
    paper = {f"{lv}|{t}": dict(zip(PAPER_VARIANTS, v)) for (lv, t), v in PAPER.items()}
    base = common.base_models(scale, results, {f"{t} {lv}": (t, lv, f"original|{lv}|{t}")
                                               for lv in LEVELS for t in TASKS})
    table = [f"# {TITLE}", "", f"{SCORE_LABEL} score, mean [95% bootstrap interval] over {scale.seeds} seed(s), "
             f"{scale.episodes} episodes each (scale {scale.name}); the paper's Table I in brackets (D4RL -v2 data, "
             "100k training steps). The paper's all-ones \"identity\" and removal are the same map (every later "
             "LayerNorm subtracts what all-ones adds), so their columns differ only by float rounding; the identity "
             "map is the true identity attention.", "", "| dataset | env | " + " | ".join(HEADERS.values()) + " |",
             "| --- | --- |" + " --- |" * len(VARIANTS)]
    for level in LEVELS:
        for task in TASKS:
            row = [common.show(cells[f"{level}|{task}|{k}"], 1)
                   + (f" ({paper[f'{level}|{task}'][k]})" if k in PAPER_VARIANTS else "") for k in VARIANTS]
            table.append(f"| {level} | {task} | " + " | ".join(row) + " |")
    table += common.base_table(base)

    def draw(axes):
        for ax, level in zip(axes[0], LEVELS):
            width = 0.8 / len(VARIANTS)
            for k, kind in enumerate(VARIANTS):
                cs = [cells[f"{level}|{t}|{kind}"] for t in TASKS]
                x = [i + (k - (len(VARIANTS) - 1) / 2) * width for i in range(len(TASKS))]
                ax.bar(x, [c["mean"] for c in cs], width, yerr=common.error_bars(cs), capsize=2, label=HEADERS[kind])
                if kind in PAPER_VARIANTS:
                    ax.plot(x, [paper[f"{level}|{t}"][kind] for t in TASKS], "k_", ms=8, mew=2, ls="none", zorder=3,
                            label="paper" if k == 0 else None)
            ax.set_xticks(range(len(TASKS)), list(TASKS), fontsize=8)
            ax.set_title(f"{level} ({scale.name})", fontsize=9)
        axes[0][0].set_ylabel(SCORE_LABEL)
        axes[0][-1].legend(fontsize=6)

    return common.publish(out, NAME, scale, {"cells": cells, "base_models": base}, table, draw, panels=(1, len(LEVELS)),
                          paper=paper)


def findings(summary: dict) -> list[dict]:
    cells = summary["cells"]
    seeds = len(cells[f"{LEVELS[0]}|hopper|original"]["values"])
    perturbed = [k for k in VARIANTS[1:] if k != "identity"]  # all-ones is removal: counted once

    def drop(t, s):
        return sum(cells[f"{lv}|{t}|original"]["values"][s] - cells[f"{lv}|{t}|{k}"]["values"][s]
                   for lv in LEVELS for k in perturbed) / (len(perturbed) * len(LEVELS))

    margin = common.summarise(drop("hopper", s) - max(drop(t, s) for t in TASKS if t != "hopper") for s in range(seeds))
    means = {t: sum(drop(t, s) for s in range(seeds)) / seeds for t in TASKS}
    return [common.finding("Hopper DTs rely on attention most: perturbing it costs Hopper on every dataset (Table I).",
                           "mean score lost when attention is perturbed (random, identity map, removed): "
                           + ", ".join(f"{t} {v:.1f}" for t, v in means.items())
                           + f"; Hopper minus the next task, per seed {common.show(margin, 1)}",
                           common.versus(margin, 0.0), "agrees if the interval of Hopper's loss minus the largest "
                           "other task's lies above 0, disagrees if below", common.unmet(summary["base_models"]))]
