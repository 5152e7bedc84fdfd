"""Table IV: Fisher-weighted against direct averaging in Merge-Freeze-Finetune over all three
tasks (attention + MLP, medium-expert), for ChibiT_R-initialised DTs; each cell is the score after
MFF / the DT's score before merging. The paper's GPT2_R columns need GPT-2 small weights and a
GPU (an 85M-parameter trunk trains at ~6 s a step on 2 CPU cores); they are recorded as skipped."""

from __future__ import annotations

from pathlib import Path

from dtmerge.envs import SCORE_LABEL, TASKS
from dtmerge.experiments import common, lm_init
from dtmerge.experiments.lm_init import lm_dt, mff
from dtmerge.experiments.scales import Scale

NAME = "fisher-scale"
TITLE = "Table IV: Fisher vs direct MFF, ChibiT_R, medium-expert"
LEVEL = "medium-expert"
PAPER = {  # halfcheetah, hopper, walker2d: (MFF, initial)
    "ChibiT_R Direct": ((39.3, 89.5), (71.5, 106.9), (98.6, 109.3)),
    "ChibiT_R Fisher": ((42.6, 89.5), (77.2, 106.9), (103.3, 109.3)),
    "GPT2_R Direct": ((84, 89.9), (84.1, 106.6), (109, 107.8)),
    "GPT2_R Fisher": ((87.2, 89.9), (88.3, 106.6), (109.4, 107.8)),
}
SKIPPED = {"GPT2_R": "needs GPT-2 small weights (not downloadable here) and a GPU: its 85M-parameter trunk "
                     "trains at ~6 s per step on 2 CPU cores"}


def nodes(scale: Scale) -> dict:
    scale = scale.for_experiment(lm_init.NAME)
    out = {}
    for seed in range(scale.seeds):
        dts = {t: lm_dt(scale, t, LEVEL, "chibit-r", seed) for t in TASKS}
        fishers = {t: common.fisher(scale, dts[t], seed) for t in TASKS}
        bundles = {"Direct": mff(scale, dts, seed), "Fisher": mff(scale, fishers, seed, method="fisher")}
        for t in TASKS:
            out[f"data|{t}|{LEVEL}"] = common.dataset(scale, t, LEVEL)
            out[f"initial|{t}|{seed}"] = common.evaluation(scale, dts[t], t)
            for name, bundle in bundles.items():
                out[f"{name}|{t}|{seed}"] = common.evaluation(scale, bundle, t, bundle_task=True)
    return out


def report(scale: Scale, results: dict, out: Path) -> dict:
    scale = scale.for_experiment(lm_init.NAME)
    cells = {}
    for name in ("initial", "Direct", "Fisher"):
        for t in TASKS:
            cells[f"{name}|{t}"] = common.seed_scores(results, f"{name}|{t}", scale.seeds)
    order = ("halfcheetah", "hopper", "walker2d")
    base = common.base_models(scale, results, {f"ChibiT_R {t} {LEVEL}": (t, LEVEL, f"initial|{t}") for t in TASKS})
    table = [f"# {TITLE}", "", f"{SCORE_LABEL} score after MFF / before merging, each mean [95% bootstrap interval] "
             f"over {scale.seeds} seed(s), {scale.episodes} episodes each (scale {scale.name}: DTs trained "
             f"{scale.steps} steps, MFF {scale.finetune_steps} steps per task); the paper's Table IV in brackets. "
             f"The average row averages the tasks within each seed first. GPT2_R: skipped, {SKIPPED['GPT2_R']}.", "",
             "| env | ChibiT_R direct | ChibiT_R Fisher |", "| --- | --- | --- |"]
    for i, t in enumerate(order):
        row = [f"{common.show(cells[f'{m}|{t}'], 1)} / {common.show(cells[f'initial|{t}'], 1)} "
               f"({PAPER[f'ChibiT_R {m}'][i][0]} / {PAPER[f'ChibiT_R {m}'][i][1]})" for m in ("Direct", "Fisher")]
        table.append(f"| {t} | " + " | ".join(row) + " |")
    averages = {m: common.summarise(common.seed_averages(cells, m)) for m in ("initial", "Direct", "Fisher")}
    table.append(f"| average | {common.show(averages['Direct'], 1)} / {common.show(averages['initial'], 1)} "
                 f"(69.8 / 101.9) | {common.show(averages['Fisher'], 1)} / {common.show(averages['initial'], 1)} "
                 "(74.4 / 101.9) |")
    table += common.base_table(base)

    def draw(ax):
        for k, name in enumerate(("initial", "Direct", "Fisher")):
            x = [i + (k - 1) * 0.27 for i in range(3)]
            row = PAPER[f"ChibiT_R {'Direct' if name == 'initial' else name}"]
            paper = [row[i][name == "initial"] for i in range(3)]  # (after MFF, initial) per task
            ax.plot(x, paper, "k_", ms=8, mew=2, ls="none", zorder=3, label="paper" if k == 0 else None)
            ax.bar(x, [cells[f"{name}|{t}"]["mean"] for t in order], 0.27,
                   yerr=common.error_bars([cells[f"{name}|{t}"] for t in order]), capsize=2,
                   label={"initial": "before merging"}.get(name, f"MFF, {name.lower()}"))
        ax.set_xticks(range(3), order)
        ax.set_ylabel(SCORE_LABEL)
        ax.set_title(TITLE + f" ({scale.name}; bars: 95% interval)", fontsize=9)
        ax.legend(fontsize=7)

    return common.publish(out, NAME, scale, {"cells": cells, "averages": averages, "base_models": base}, table, draw,
                          skipped=SKIPPED, paper={k: list(v) for k, v in PAPER.items()})


def findings(summary: dict) -> list[dict]:
    """Fisher can only beat direct averaging where direct MFF lost something: a merge that keeps the
    initial score leaves nothing to recover, so that is a precondition beside the base models'."""
    cells = summary["cells"]
    avg = {m: common.summarise(common.seed_averages(cells, m)) for m in ("Direct", "Fisher")}
    diff = common.paired_difference(cells, "Fisher", "Direct")
    loss = common.paired_difference(cells, "initial", "Direct")
    unmet = common.unmet(summary["base_models"])
    if unmet is None and common.versus(loss, 0.0) is not True:
        unmet = f"direct MFF is not shown to lose anything (initial - direct per seed {common.show(loss, 1)})"
    return [common.finding("Fisher merging beats direct averaging in MFF (Table IV).",
                           f"average score after MFF: Fisher {common.show(avg['Fisher'], 1)}, direct "
                           f"{common.show(avg['Direct'], 1)}; Fisher - direct per seed {common.show(diff, 1)}",
                           common.versus(diff, 0.0), common.DIFFERENCE_RULE, unmet)]
