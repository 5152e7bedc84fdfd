"""Table V: a multi-task DT trained on the three medium datasets; a copy finetuned per task on its
expert data (L_2 toward the start, ln_f and the timestep embedding frozen, as the paper's code);
then the finetuned trunks merged directly and with Fisher weights into one multi-task bundle, with
no training after the merge. D4RL-normalised (-v5) scores, mean +/- s.e. over seeds."""

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
        multi = Node("dt", scale.train_spec(seed), {f"data_{t}": common.dataset(scale, t, "medium") for t in TASKS})
        finetuned, fishers = {}, {}
        for t in TASKS:
            out[f"Multi-Task Medium|{t}|{seed}"] = common.evaluation(scale, multi, t, bundle_task=True)
            spec = {**scale.finetune_spec(seed), **FINETUNE, "task": t}
            finetuned[t] = Node("dt", spec, {"data": common.dataset(scale, t, "expert"), "init": multi})
            fishers[t] = Node("fisher", {"estimator": "exact", "batches": 1, "batch_size": 64, "seed": seed},
                              {"model": finetuned[t]})
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
    table = [f"# {TITLE}", "", f"{SCORE_LABEL} score, mean ± s.e. over {scale.seeds} seed(s), {scale.episodes} "
             f"episodes each (scale {scale.name}; multi-task model {scale.steps} steps, finetuning "
             f"{scale.finetune_steps} steps per task); the paper's Table V in brackets.", "",
             "| model(s) | Hopper | Cheetah | Walker |", "| --- | --- | --- | --- |"]
    for row in ROWS:
        table.append(f"| {row} | " + " | ".join(f"{cells[f'{row}|{t}']['mean']:.1f} ± {cells[f'{row}|{t}']['se']:.1f} "
                                               f"({PAPER[row][i]})" for i, t in enumerate(order)) + " |")

    def draw(ax):
        for k, row in enumerate(ROWS):
            ax.bar([i + (k - 1.5) * 0.2 for i in range(3)], [cells[f"{row}|{t}"]["mean"] for t in order], 0.2,
                   yerr=[cells[f"{row}|{t}"]["se"] for t in order], capsize=2, label=row)
        ax.set_xticks(range(3), order)
        ax.set_ylabel(SCORE_LABEL)
        ax.set_title(TITLE + f" ({scale.name})")
        ax.legend(fontsize=7)

    return common.publish(out, NAME, scale, {"cells": cells}, table, draw, paper=PAPER)


def findings(summary: dict) -> list[dict]:
    cells = summary["cells"]
    avg = {r: common.task_average(cells, r) for r in ("Direct Merge", "Fisher Merge")}
    diff = common.paired_difference(cells, "Fisher Merge", "Direct Merge")
    return [common.finding("Finetune-then-merge with Fisher weights beats a direct merge (Table V).",
                           f"average score: Fisher {avg['Fisher Merge']:.1f}, direct {avg['Direct Merge']:.1f}; "
                           f"Fisher - direct {diff['mean']:+.1f} ± {diff['se']:.1f} over seeds",
                           common.beats(diff), common.BEATS_RULE)]
