"""How many finetuning steps Merge-Freeze-Finetune needs: attention + MLP of the three medium DTs
merged directly and with Fisher weights, then finetuned for 0 (the merge alone) up to 4x the scale's
MFF steps per task; each task's score against its own unmerged DT. Not a figure of the paper: it
answers why the demo's bundle (`--scale demo` trains the demo's own models) scores below its
single-task DTs. D4RL-normalised (-v5), mean and 95% bootstrap interval over seeds."""

from __future__ import annotations

from pathlib import Path

from dtmerge.envs import SCORE_LABEL, TASKS
from dtmerge.experiments import common
from dtmerge.experiments.scales import Scale
from dtmerge.experiments.store import Node

NAME = "mff-steps"
TITLE = "MFF score against finetuning steps, direct vs Fisher (attention + MLP, medium)"
FRACTIONS = (0, 0.5, 1, 2, 4)  # finetuning steps per task, in units of the scale's MFF steps
METHODS = {"direct": "average", "Fisher": "fisher"}
RECOVERED = 0.9  # "recovers" = the task-average score reaches this fraction of the single-task DTs'


def step_counts(scale: Scale) -> list[int]:
    return [int(f * scale.finetune_steps) for f in FRACTIONS]


def nodes(scale: Scale) -> dict:
    out = {}
    for seed in range(scale.seeds):
        dts = {t: common.dt(scale, t, "medium", seed) for t in TASKS}
        inputs = {"direct": dts,
                  "Fisher": {t: common.fisher(scale, dts[t], seed) for t in TASKS}}
        for t in TASKS:
            out[f"data|{t}|medium"] = common.dataset(scale, t, "medium")
            out[f"single|{t}|{seed}"] = common.evaluation(scale, dts[t], t)
        for name, method in METHODS.items():
            merge = {"select": ["attn", "mlp"], "method": method, "format": "bundle"}
            deps = {f"model{i}": inputs[name][t] for i, t in enumerate(TASKS)}
            for steps in step_counts(scale):
                if steps == 0:
                    bundle = Node("merge", merge, deps)
                else:
                    finetune = {**scale.finetune_spec(seed), "steps": steps, "warmup_steps": max(1, steps // 10)}
                    bundle = Node("mff", {"merge": merge, "finetune": finetune}, deps)
                for t in TASKS:
                    out[f"{name}|{steps}|{t}|{seed}"] = common.evaluation(scale, bundle, t, bundle_task=True)
    return out


def report(scale: Scale, results: dict, out: Path) -> dict:
    steps = step_counts(scale)
    cells = {f"single|{t}": common.seed_scores(results, f"single|{t}", scale.seeds) for t in TASKS}
    for name in METHODS:
        for s in steps:
            for t in TASKS:
                cells[f"{name}|{s}|{t}"] = common.seed_scores(results, f"{name}|{s}|{t}", scale.seeds)
    fmt = lambda c: common.show(c, 1)  # noqa: E731
    base = common.base_models(scale, results, {f"{t} medium": (t, "medium", f"single|{t}") for t in TASKS})
    table = [f"# {TITLE}", "", f"{SCORE_LABEL} score of each task's head of the bundle after this many finetuning "
             f"steps per task (0: the merge alone), mean [95% bootstrap interval] over {scale.seeds} seed(s), "
             f"{scale.episodes} episodes "
             f"each (scale {scale.name}: DTs trained {scale.steps} steps on {scale.transitions:,}-transition medium "
             "datasets). `single`: each task's own unmerged DT.", "",
             "| method | steps | " + " | ".join(TASKS) + " | average |", "| --- | --- |" + " --- |" * (len(TASKS) + 1)]
    table.append("| single | – | " + " | ".join(fmt(cells[f"single|{t}"]) for t in TASKS)
                 + f" | {common.task_average(cells, 'single'):.1f} |")
    for name in METHODS:
        for s in steps:
            table.append(f"| {name} | {s} | " + " | ".join(fmt(cells[f"{name}|{s}|{t}"]) for t in TASKS)
                         + f" | {common.task_average(cells, f'{name}|{s}'):.1f} |")
    table += common.base_table(base)

    def draw(ax):
        for i, t in enumerate(TASKS):
            ax.axhline(cells[f"single|{t}"]["mean"], color=f"C{i}", lw=0.8, ls=":")
            for name, style in zip(METHODS, ("--", "-")):
                ax.errorbar(steps, [cells[f"{name}|{s}|{t}"]["mean"] for s in steps],
                            yerr=common.error_bars([cells[f"{name}|{s}|{t}"] for s in steps]), color=f"C{i}", ls=style,
                            marker="o", ms=3, capsize=2, label=f"{t}, {name}")
        ax.set_xlabel("finetuning steps per task (dotted: the unmerged DT)")
        ax.set_ylabel(SCORE_LABEL)
        ax.set_title(TITLE + f" ({scale.name})", fontsize=9)
        ax.legend(fontsize=6, ncol=3)

    return common.publish(out, NAME, scale, {"steps": steps, "cells": cells, "base_models": base}, table, draw)


def findings(summary: dict) -> list[dict]:
    cells, steps, unmet = summary["cells"], summary["steps"], common.unmet(summary["base_models"])
    single = common.seed_averages(cells, "single")
    recovered = {name: common.summarise(m / v for m, v in zip(common.seed_averages(cells, f"{name}|{steps[-1]}"),
                                                              single)) for name in METHODS}
    best = max(METHODS, key=lambda n: recovered[n]["mean"])
    gaps = {s: common.paired_difference(cells, f"Fisher|{s}", f"direct|{s}") for s in steps}
    return [
        common.finding("MFF over attention + MLP recovers the single-task scores given enough finetuning.",
                       f"after {steps[-1]} steps, task average / single per seed: " + ", ".join(
                           f"{n} {common.show(c)}" for n, c in recovered.items()), common.versus(recovered[best],
                                                                                              RECOVERED),
                       f"agrees if the better method's interval lies above {RECOVERED:.0%} of single, disagrees if "
                       "below", unmet),
        common.finding("Fisher beats direct averaging in MFF at every finetuning length.",
                       "Fisher - direct per seed: " + ", ".join(f"{s}: {common.show(g, 1)}" for s, g in gaps.items()),
                       common.every(common.versus(g, 0.0) for g in gaps.values()),
                       "agrees if every step count's interval lies above 0, disagrees if any lies below", unmet),
    ]
