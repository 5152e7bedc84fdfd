"""Table V: a multi-task DT trained on the three medium datasets; a copy finetuned per task on its
expert data (L_2 toward the start, ln_f and the timestep embedding frozen, as the paper's code);
then the finetuned trunks merged directly and with Fisher weights into one multi-task bundle, with
no training after the merge. The multi-task DT is the scale's `multitask_model` (the paper's code:
512 wide, 4 heads, gelu_new). D4RL-normalised (-v5) scores, mean and 95% bootstrap interval over
seeds. Precondition: finetuning on expert data improves on the multi-task model it started from;
where it does not, there is nothing for a merge to keep and the verdict is inconclusive."""

from __future__ import annotations

from pathlib import Path

from dtmerge.envs import SCORE_LABEL, TASKS
from dtmerge.experiments import common
from dtmerge.experiments.scales import Scale
from dtmerge.experiments.store import Node

NAME = "finetune-merge"
TITLE = "Table V: merging finetuned multi-task models"
ROWS = ("Multi-Task Medium", "Finetuned Experts", "Direct Merge", "Fisher Merge")
PAPER = {  # Lawson & Qureshi, Table V (512 wide, 4 heads, 3 layers; D4RL -v2 data): hopper, halfcheetah, walker2d
    "Multi-Task Medium": (72, 39.9, 74.9), "Finetuned Experts": (108.3, 70.5, 108.8),
    "Direct Merge": (60.2, 43.7, 70.4), "Fisher Merge": (84.3, 45.5, 99),
}
FINETUNE = {"l2_weight": 1e-4, "freeze": ["ln_f", "embed_timestep.weight"]}


def nodes(scale: Scale) -> dict:
    out = {}
    for seed in range(scale.seeds):
        multi = Node("dt", scale.train_spec(seed, model={**scale.model, **scale.multitask_model}),
                     {f"data_{t}": common.dataset(scale, t, "medium") for t in TASKS})
        finetuned, fishers = {}, {}
        for t in TASKS:
            out[f"data|{t}|expert"] = common.dataset(scale, t, "expert")
            out[f"data|{t}|medium"] = common.dataset(scale, t, "medium")
            out[f"Multi-Task Medium|{t}|{seed}"] = common.evaluation(scale, multi, t, bundle_task=True)
            spec = {**scale.finetune_spec(seed), **FINETUNE, "task": t}
            finetuned[t] = Node("dt", spec, {"data": common.dataset(scale, t, "expert"), "init": multi})
            fishers[t] = common.fisher(scale, finetuned[t], seed)
            out[f"Finetuned Experts|{t}|{seed}"] = common.evaluation(scale, finetuned[t], t)
        for row, method, models in (("Direct Merge", "average", finetuned), ("Fisher Merge", "fisher", fishers)):
            merged = Node("merge", {"select": ["trunk"], "method": method, "format": "bundle"},
                          {f"model{i}": models[t] for i, t in enumerate(TASKS)})
            for t in TASKS:
                out[f"{row}|{t}|{seed}"] = common.evaluation(scale, merged, t, bundle_task=True)
    return out


def report(scale: Scale, results: dict, out: Path) -> dict:
    cells = {}
    for row in ROWS:
        for t in TASKS:
            cells[f"{row}|{t}"] = common.seed_scores(results, f"{row}|{t}", scale.seeds)
    order = ("hopper", "halfcheetah", "walker2d")  # the paper's column order
    gain = {t: common.summarise(f - m for f, m in zip(cells[f"Finetuned Experts|{t}"]["values"],
                                                       cells[f"Multi-Task Medium|{t}"]["values"])) for t in TASKS}
    base = common.base_models(scale, results, {
        **{f"multi-task on {t} medium": (t, "medium", f"Multi-Task Medium|{t}") for t in TASKS},
        **{f"finetuned {t} expert": (t, "expert", f"Finetuned Experts|{t}") for t in TASKS}})

    shape = {**scale.model, **scale.multitask_model}
    table = [f"# {TITLE}", "", f"{SCORE_LABEL} score, mean [95% bootstrap interval] over {scale.seeds} seed(s), "
             f"{scale.episodes} episodes each (scale {scale.name}; multi-task model {shape.get('n_embd', 128)} wide, "
             f"{shape.get('n_head', 1)} head(s), {shape.get('activation', 'relu')}, {scale.steps} steps; finetuning "
             f"{scale.finetune_steps} steps per task); the paper's Table V in brackets (512 wide, 4 heads, gelu_new, "
             "100k + 100k steps).", "", "| model(s) | Hopper | Cheetah | Walker |", "| --- | --- | --- | --- |"]
    for row in ROWS:
        table.append(f"| {row} | " + " | ".join(f"{common.show(cells[f'{row}|{t}'], 1)} ({PAPER[row][i]})"
                                               for i, t in enumerate(order)) + " |")
    table += ["", "Precondition, finetuned minus multi-task per seed: "
              + ", ".join(f"{t} {common.show(gain[t], 1)}" for t in order) + "."]
    table += common.base_table(base)

    def draw(ax):
        for k, row in enumerate(ROWS):
            cs = [cells[f"{row}|{t}"] for t in order]
            x = [i + (k - 1.5) * 0.2 for i in range(3)]
            ax.bar(x, [c["mean"] for c in cs], 0.2, yerr=common.error_bars(cs), capsize=2, label=row)
            ax.plot(x, PAPER[row], "k_", ms=8, mew=2, ls="none", zorder=3, label="paper" if k == 0 else None)
        ax.set_xticks(range(3), order)
        ax.set_ylabel(SCORE_LABEL)
        ax.set_title(TITLE + f" ({scale.name}; bars: 95% interval)", fontsize=9)
        ax.legend(fontsize=7)

    return common.publish(out, NAME, scale, {"cells": cells, "gain": gain, "base_models": base}, table, draw,
                          paper=PAPER)


def findings(summary: dict) -> list[dict]:
    cells, gain = summary["cells"], summary["gain"]
    diff = common.paired_difference(cells, "Fisher Merge", "Direct Merge")
    not_gained = [f"{t} {common.show(g, 1)}" for t, g in gain.items() if common.versus(g, 0.0) is not True]
    unmet = common.unmet(summary["base_models"]) or (
        f"finetuning did not improve on the multi-task model (finetuned - multi-task: {', '.join(not_gained)})"
        if not_gained else None)
    improved = {t: common.summarise(f - m for f, m in zip(cells[f"Fisher Merge|{t}"]["values"],
                                                           cells[f"Multi-Task Medium|{t}"]["values"])) for t in TASKS}
    return [common.finding("Finetune-then-merge with Fisher weights beats a direct merge (Table V).",
                           f"task average: Fisher {common.task_average(cells, 'Fisher Merge'):.1f}, direct "
                           f"{common.task_average(cells, 'Direct Merge'):.1f}; Fisher - direct per seed "
                           f"{common.show(diff, 1)}",
                           common.versus(diff, 0.0), common.DIFFERENCE_RULE, unmet),
            common.finding("The Fisher merge of the finetuned models improves on the multi-task model on every task, "
                           "with no training after the merge (Table V: 84.3, 45.5, 99 against 72, 39.9, 74.9).",
                           "Fisher merge - multi-task per seed: "
                           + ", ".join(f"{t} {common.show(improved[t], 1)}" for t in TASKS),
                           common.every(common.versus(improved[t], 0.0) for t in TASKS),
                           "agrees if every task's interval of the per-seed difference lies above 0, disagrees if any "
                           "lies below", unmet)]
