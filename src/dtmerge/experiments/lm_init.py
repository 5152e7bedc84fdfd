"""Table III: does a shared language-model initialisation merge better than random ones?

A ChibiT-shaped LM is pre-trained by the pipeline itself on an offline corpus (the Python
standard library's docstrings: the paper's ChibiT used Wikitext-103, which `dtmerge lm pretrain`
fetches where the network allows). DTs start from it with the paper's three Eq. 5 variants
(ChibiT: L_cos; ChibiT_CO: + L_LM co-training; ChibiT_R: + L_2 to the LM), on medium and
medium-expert data; then attention + MLP are merged across all three tasks with
Merge-Freeze-Finetune. Baselines: the same MFF from independent random initialisations (Random),
from one random trunk shared by the three tasks' DTs (Random-shared: not in the paper; it tests
its explanation, a common start, without a language model), one multi-task DT (Multi), and one DT
per task (Single). D4RL-normalised (-v5), mean and 95% bootstrap interval over seeds.
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
COLUMNS = (*VARIANTS, "Random", "Random-shared", "Multi", "Single")
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
    on = scale.runtime() if scale.device != "auto" else {}  # unresolved: the LM's spec as it was (no runtime)
    return Node("lm", {"seed": 0, **on, **scale.lm}, {"corpus": corpus()})


def lm_dt(scale: Scale, task: str, level: str, variant: str, seed: int) -> Node:
    """A DT started from the pre-trained LM with one of the paper's Eq. 5 presets."""
    deps = {"data": common.dataset(scale, task, level), "init": language_model(scale)}
    if variant == "chibit-co":
        deps["corpus"] = corpus()
    return Node("dt", scale.train_spec(seed, preset=variant, cos_until=scale.cos_until(), **scale.lm_terms), deps)


def mff(scale: Scale, models: dict[str, Node], seed: int, method: str = "average") -> Node:
    deps = {f"model{i}": models[t] for i, t in enumerate(TASKS)}
    return Node("mff", {"merge": {**MERGE, "method": method}, "finetune": scale.finetune_spec(seed)}, deps)


def single(scale: Scale, task: str, level: str, seed: int) -> Node:
    """The Single baseline: a task's own DT trained on for the MFF models' finetuning steps (same
    schedule, fresh warmup), so it has had as many steps as the merged models it is compared with."""
    return Node("dt", scale.finetune_spec(seed), {"data": common.dataset(scale, task, level),
                                                  "init": common.dt(scale, task, level, seed)})


def multi_task(scale: Scale, level: str, seed: int) -> Node:
    return Node("dt", scale.train_spec(seed), {f"data_{t}": common.dataset(scale, t, level) for t in TASKS})


def nodes(scale: Scale) -> dict:
    out = {}
    for seed in range(scale.seeds):
        for level in scale.levels or LEVELS:
            starts = {name: {t: lm_dt(scale, t, level, preset, seed) for t in TASKS}
                      for name, preset in VARIANTS.items()}
            starts["Random"] = {t: common.dt(scale, t, level, seed) for t in TASKS}
            starts["Random-shared"] = {t: common.shared_start_dt(scale, t, level, seed) for t in TASKS}
            bundles = {name: mff(scale, dts, seed) for name, dts in starts.items()}
            bundles["Multi"] = multi_task(scale, level, seed)
            for t in TASKS:
                out[f"data|{t}|{level}"] = common.dataset(scale, t, level)
                for name, bundle in bundles.items():
                    out[f"{level}|{name}|{t}|{seed}"] = common.evaluation(scale, bundle, t, bundle_task=True)
                out[f"{level}|Single|{t}|{seed}"] = common.evaluation(scale, single(scale, t, level, seed), t)
                for name, dts in starts.items():  # the unmerged models, for the base-models table
                    out[f"{level}|{name} unmerged|{t}|{seed}"] = common.evaluation(scale, dts[t], t)
    return out


def report(scale: Scale, results: dict, out: Path) -> dict:
    levels = list(scale.levels or LEVELS)
    cells = {}
    for level in levels:
        for name in COLUMNS:
            for t in TASKS:
                cells[f"{level}|{name}|{t}"] = common.seed_scores(results, f"{level}|{name}|{t}", scale.seeds)
    order = ("halfcheetah", "hopper", "walker2d")  # the paper's row order
    averages = {f"{lv}|{c}": common.summarise(common.seed_averages(cells, f"{lv}|{c}")) for lv in levels
                for c in COLUMNS}
    unmerged = [c for c in COLUMNS if c not in ("Multi", "Single")]
    base = common.base_models(scale, results, {
        **{f"{c} {t} {lv}": (t, lv, f"{lv}|{c} unmerged|{t}") for lv in levels for c in unmerged for t in TASKS},
        **{f"Multi {t} {lv}": (t, lv, f"{lv}|Multi|{t}") for lv in levels for t in TASKS}})
    paper = lambda lv, c, i: f" ({PAPER[lv][c][i]})" if c in PAPER[lv] else ""  # noqa: E731
    table = [f"# {TITLE}", "", f"{SCORE_LABEL} score, mean [95% bootstrap interval] over {scale.seeds} seed(s), "
             f"{scale.episodes} episodes each (scale {scale.name}; DTs trained {scale.steps} steps; LM pre-trained "
             f"{scale.lm.get('steps')} steps on the Python standard library's docstrings; MFF over attention + MLP "
             f"of all three tasks, {scale.finetune_steps} finetuning steps; Single trained {scale.finetune_steps} "
             "steps more, as many as the merged models); the paper's Table III in brackets. Random-shared: the three "
             "tasks' DTs start from one random trunk (not in the paper).", "",
             "| dataset | env | " + " | ".join(COLUMNS) + " |", "| --- | --- |" + " --- |" * len(COLUMNS)]
    for level in levels:
        for i, t in enumerate(order):
            table.append(f"| {level} | {t} | " + " | ".join(
                common.show(cells[f"{level}|{c}|{t}"], 1) + paper(level, c, i) for c in COLUMNS) + " |")
        table.append(f"| {level} | average | " + " | ".join(
            common.show(averages[f"{level}|{c}"], 1)
            + (f" ({sum(PAPER[level][c]) / 3:.1f})" if c in PAPER[level] else "") for c in COLUMNS) + " |")
    table += common.base_table(base)

    def draw(ax):
        groups = [(lv, c) for lv in levels for c in COLUMNS]
        cs = [averages[f"{lv}|{c}"] for lv, c in groups]
        ax.bar(range(len(groups)), [c["mean"] for c in cs], yerr=common.error_bars(cs), capsize=3,
               color=[f"C{COLUMNS.index(c)}" for _, c in groups])
        marks = [(i, sum(PAPER[lv][c]) / 3) for i, (lv, c) in enumerate(groups) if c in PAPER[lv]]
        ax.plot([i for i, _ in marks], [v for _, v in marks], "k_", ms=14, mew=2, ls="none", zorder=3,
                label="paper")
        ax.set_xticks(range(len(groups)), [f"{c}, {lv}" for lv, c in groups], rotation=40, ha="right", fontsize=6)
        ax.set_ylabel(f"task-average {SCORE_LABEL}")
        ax.set_title(TITLE + f" ({scale.name}; bars: 95% interval)", fontsize=8)
        ax.legend(fontsize=7)

    return common.publish(out, NAME, scale, {"cells": cells, "averages": averages, "levels": levels,
                                             "base_models": base}, table, draw,
                          corpus="Python standard library docstrings", paper=PAPER)


def findings(summary: dict) -> list[dict]:
    """Each comparison is judged by the base models of the arms it compares only."""
    avg, out = summary["averages"], []

    def unmet(level: str, *arms: str) -> str | None:
        return common.unmet([r for r in summary["base_models"]
                             if r["level"] == level and r["model"].split(" ")[0] in arms])

    def minus(level: str, arm: str, other: str) -> dict:
        ours, theirs = avg[f"{level}|{arm}"]["values"], avg[f"{level}|{other}"]["values"]
        return common.summarise(x - y for x, y in zip(ours, theirs))

    for level in summary["levels"]:
        paper = {c: sum(PAPER[level][c]) / 3 for c in ("ChibiT", "Random")}
        for arm, claim in (("ChibiT", "A shared language-model initialisation merges better than random ones "
                                      f"(Table III, {level}: {paper['ChibiT']:.1f} against {paper['Random']:.1f})."),
                           ("Random-shared", "The paper's explanation: a common start is what lets DTs merge "
                                             f"({level}; the Random-shared arm, not in the paper).")):
            diff = minus(level, arm, "Random")
            out.append(common.finding(claim, f"task average: {arm} {common.show(avg[f'{level}|{arm}'], 1)}, Random "
                                             f"{common.show(avg[f'{level}|Random'], 1)}; {arm} - Random per seed "
                                             f"{common.show(diff, 1)}", common.versus(diff, 0.0),
                                      common.DIFFERENCE_RULE, unmet(level, arm, "Random")))
        if level == "medium":  # the paper's claim at medium: merged LM-initialised DTs beat the multi-task one
            diffs = {arm: minus(level, arm, "Multi") for arm in ("ChibiT", "ChibiT_R")}
            out.append(common.finding(
                "On medium, MFF of ChibiT and of ChibiT_R DTs exceeds the multi-task model (Table III: 60.2 and 59.1 "
                "against 58.4).", "minus Multi per seed: " + ", ".join(f"{a} {common.show(d, 1)}"
                                                                     for a, d in diffs.items()),
                common.every(common.versus(d, 0.0) for d in diffs.values()),
                "agrees if both intervals of the per-seed difference of task averages lie above 0, disagrees if "
                "either lies below", unmet(level, "ChibiT", "ChibiT_R", "Multi")))
    return out
