"""Table I: how much trained DTs rely on attention. Medium, medium-expert and expert DTs for each
task, evaluated as trained and with every attention layer replaced by fixed random weights, by the
paper's "identity" weights (all ones, biases zero), or removed (residual path only);
D4RL-normalised (-v5) scores, mean +/- s.e. over seeds, the paper's numbers beside."""

from __future__ import annotations

from pathlib import Path

from dtmerge.envs import SCORE_LABEL, TASKS
from dtmerge.experiments import common
from dtmerge.experiments.scales import Scale
from dtmerge.experiments.store import Node

NAME = "attention-perturb"
TITLE = "Table I: altering the attention of trained DTs"
LEVELS = ("medium-expert", "medium", "expert")
VARIANTS = ("original", "random", "identity", "remove")
HEADERS = {"original": "Original", "random": "Random", "identity": "Identity", "remove": "Removed"}
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
    table = [f"# {TITLE}", "", f"{SCORE_LABEL} score, mean ± s.e. over {scale.seeds} seed(s), {scale.episodes} "
             f"episodes each (scale {scale.name}); the paper's Table I in brackets (D4RL -v2 data, 100k training "
             "steps).", "", "| dataset | env | " + " | ".join(HEADERS.values()) + " |", "| --- | --- |" + " --- |" * 4]
    for level in LEVELS:
        for task in TASKS:
            row = [f"{cells[f'{level}|{task}|{k}']['mean']:.1f} ± {cells[f'{level}|{task}|{k}']['se']:.1f} "
                   f"({PAPER[(level, task)][i]})" for i, k in enumerate(VARIANTS)]
            table.append(f"| {level} | {task} | " + " | ".join(row) + " |")

    def draw(ax):
        groups = [(level, task) for level in LEVELS for task in TASKS]
        for k, kind in enumerate(VARIANTS):
            ax.bar([i + (k - 1.5) * 0.2 for i in range(len(groups))], [cells[f"{lv}|{t}|{kind}"]["mean"]
                   for lv, t in groups], 0.2, yerr=[cells[f"{lv}|{t}|{kind}"]["se"] for lv, t in groups], capsize=2,
                   label=HEADERS[kind])
        ax.set_xticks(range(len(groups)), [f"{t}\n{lv}" for lv, t in groups], fontsize=6)
        ax.set_ylabel(SCORE_LABEL)
        ax.set_title(TITLE + f" ({scale.name})")
        ax.legend(fontsize=7)

    return common.publish(out, NAME, scale, {"cells": cells}, table, draw,
                          paper={f"{lv}|{t}": v for (lv, t), v in PAPER.items()})


def findings(summary: dict) -> list[dict]:
    cells = summary["cells"]
    drop = {t: sum(cells[f"{lv}|{t}|original"]["mean"] - cells[f"{lv}|{t}|{k}"]["mean"] for lv in LEVELS
                   for k in VARIANTS[1:]) / (3 * len(LEVELS)) for t in TASKS}
    return [common.finding("Hopper DTs rely on attention most: perturbing it costs Hopper on every dataset (Table I).",
                           "mean score lost when attention is perturbed: "
                           + ", ".join(f"{t} {v:.1f}" for t, v in drop.items()),
                           max(drop, key=drop.get) == "hopper", "agrees if Hopper loses the most")]
