"""Table III: does a shared language-model initialisation merge better than random ones?

A ChibiT-shaped LM is pre-trained by the pipeline itself on an offline corpus (the Python
standard library's docstrings: the paper's ChibiT used Wikitext-103, which `dtmerge lm pretrain`
fetches where the network allows). DTs start from it with the paper's three Eq. 5 variants
(ChibiT: L_cos; ChibiT_CO: + L_LM co-training; ChibiT_R: + L_2 to the LM), on medium and
medium-expert data; then attention + MLP are merged across all three tasks with
Merge-Freeze-Finetune. Baselines: the same MFF from random initialisations (Random), one
multi-task DT (Multi), and one DT per task (Single). D4RL-normalised (-v5), mean +/- s.e. over seeds.
"""

from __future__ import annotations

import platform
from pathlib import Path

from dtmerge.envs import SCORE_LABEL, TASKS
from dtmerge.experiments import common
from dtmerge.experiments.scales import Scale
from dtmerge.experiments.store import Node

NAME = "lm-init"
TITLE = "Table III: merging DTs trained from a shared language-model initialisation"
LEVELS = ("medium", "medium-expert")  # the paper's; a scale may run fewer (`Scale.levels`)
VARIANTS = {"ChibiT": "chibit", "ChibiT_CO": "chibit-co", "ChibiT_R": "chibit-r"}
COLUMNS = (*VARIANTS, "Random", "Multi", "Single")
PAPER = {  # Lawson & Qureshi, Table III: halfcheetah, hopper, walker2d per column
    "medium": {"ChibiT": (39.9, 59.4, 81.3), "ChibiT_CO": (39.9, 55.4, 77.6), "ChibiT_R": (41.2, 56.8, 79.2),
               "Random": (33.8, 58.0, 82.2), "Multi": (38.7, 61.1, 75.4), "Single": (42.6, 67.6, 74.0)},
    "medium-expert": {"ChibiT": (47.4, 49.4, 101.9), "ChibiT_CO": (40.1, 41.0, 94.9), "ChibiT_R": (39.3, 71.5, 98.6),
                      "Random": (35.4, 47.7, 83.6), "Multi": (36.4, 91.5, 106.9), "Single": (82.2, 109.1, 107.9)},
}
MERGE = {"select": ["attn", "mlp"], "method": "average", "format": "bundle"}


def corpus() -> Node:
    return Node("corpus", {"source": "python-stdlib-docstrings", "python": platform.python_version()})


def language_model(scale: Scale) -> Node:
    return Node("lm", {"seed": 0, **scale.lm}, {"corpus": corpus()})


def lm_dt(scale: Scale, task: str, level: str, variant: str, seed: int) -> Node:
    """A DT started from the pre-trained LM with one of the paper's Eq. 5 presets."""
    deps = {"data": common.dataset(scale, task, level), "init": language_model(scale)}
    if variant == "chibit-co":
        deps["corpus"] = corpus()
    return Node("dt", scale.train_spec(seed, preset=variant, **scale.lm_terms), deps)


def mff(scale: Scale, models: dict[str, Node], seed: int, method: str = "average") -> Node:
    deps = {f"model{i}": models[t] for i, t in enumerate(TASKS)}
    return Node("mff", {"merge": {**MERGE, "method": method}, "finetune": scale.finetune_spec(seed)}, deps)


def multi_task(scale: Scale, level: str, seed: int) -> Node:
    return Node("dt", scale.train_spec(seed), {f"data_{t}": common.dataset(scale, t, level) for t in TASKS})


def nodes(scale: Scale) -> dict:
    scale = scale.for_experiment(NAME)
    out = {}
    for seed in range(scale.seeds):
        for level in scale.levels or LEVELS:
            bundles = {name: mff(scale, {t: lm_dt(scale, t, level, preset, seed) for t in TASKS}, seed)
                       for name, preset in VARIANTS.items()}
            bundles["Random"] = mff(scale, {t: common.dt(scale, t, level, seed) for t in TASKS}, seed)
            bundles["Multi"] = multi_task(scale, level, seed)
            for t in TASKS:
                for name, bundle in bundles.items():
                    out[f"{level}|{name}|{t}|{seed}"] = common.evaluation(scale, bundle, t, bundle_task=True)
                out[f"{level}|Single|{t}|{seed}"] = common.evaluation(scale, common.dt(scale, t, level, seed), t)
    return out


def report(scale: Scale, results: dict, out: Path) -> dict:
    scale = scale.for_experiment(NAME)
    levels = list(scale.levels or LEVELS)
    cells = {}
    for level in levels:
        for name in COLUMNS:
            for t in TASKS:
                cells[f"{level}|{name}|{t}"] = common.seed_scores(results, f"{level}|{name}|{t}", scale.seeds)
    order = ("halfcheetah", "hopper", "walker2d")  # the paper's row order
    table = [f"# {TITLE}", "", f"{SCORE_LABEL} score, mean ± s.e. over {scale.seeds} seed(s), {scale.episodes} "
             f"episodes each (scale {scale.name}; DTs trained {scale.steps} steps; LM pre-trained "
             f"{scale.lm.get('steps')} steps on the Python standard library's docstrings; MFF over attention + MLP "
             f"of all three tasks, {scale.finetune_steps} finetuning steps); the paper's Table III in brackets.", "",
             "| dataset | env | " + " | ".join(COLUMNS) + " |", "| --- | --- |" + " --- |" * len(COLUMNS)]
    for level in levels:
        for i, t in enumerate(order):
            table.append(f"| {level} | {t} | " + " | ".join(
                f"{cells[f'{level}|{c}|{t}']['mean']:.1f} ± {cells[f'{level}|{c}|{t}']['se']:.1f} "
                f"({PAPER[level][c][i]})" for c in COLUMNS) + " |")
        averages = {c: common.task_average(cells, f"{level}|{c}") for c in COLUMNS}
        table.append(f"| {level} | average | " + " | ".join(
            f"{averages[c]:.1f} ({sum(PAPER[level][c]) / 3:.1f})" for c in COLUMNS) + " |")

    def draw(ax):
        groups = [(lv, c) for lv in levels for c in COLUMNS]
        means = [common.task_average(cells, f"{lv}|{c}") for lv, c in groups]
        ax.bar(range(len(groups)), means, color=[f"C{COLUMNS.index(c)}" for _, c in groups])
        ax.set_xticks(range(len(groups)), [f"{c}\n{lv}" for lv, c in groups], fontsize=6)
        ax.set_ylabel(f"average {SCORE_LABEL}")
        ax.set_title(TITLE + f" ({scale.name})", fontsize=8)

    return common.publish(out, NAME, scale, {"cells": cells, "levels": levels}, table, draw,
                          corpus="Python standard library docstrings", paper=PAPER)


def findings(summary: dict) -> list[dict]:
    cells = summary["cells"]
    out = []
    for level in summary["levels"]:
        avg = {c: common.task_average(cells, f"{level}|{c}") for c in COLUMNS}
        best = max(VARIANTS, key=avg.get)
        out.append(common.finding(f"A shared language-model initialisation merges better than random ones ({level}, "
                                  "Table III).", f"average score: best LM variant {best} {avg[best]:.1f}, Random "
                                  f"{avg['Random']:.1f}", avg[best] > avg["Random"],
                                  "agrees if the best ChibiT variant beats Random"))
    return out
