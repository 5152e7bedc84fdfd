"""Beyond the paper: does permutation alignment, or searching the merge weights, let independently
initialised expert DTs merge? The paper finds that merging MLPs or the whole trunk collapses and
blames the random initialisation; re-basin (`dtmerge align`) removes the permutation part of that.

Whole trunk, attention + MLP and MLP only, each averaged over every pair of tasks (alpha 0.5, both
tasks of a pair evaluated) and over all three (the N-way average), without alignment and with
weight and activation matching to the first model; attention + MLP weights per group searched by
rollouts (optuna TPE, selection episodes below seed 10,000), with and without weight matching; and
attention + MLP Merge-Freeze-Finetune after alignment. Each score is the merged model's return
divided by the task's own unmerged expert DT's, mean +/- s.e. over tasks, pairs and seeds.
"""

from __future__ import annotations

from itertools import combinations
from pathlib import Path

from dtmerge.envs import TASKS
from dtmerge.experiments import common
from dtmerge.experiments.scales import Scale
from dtmerge.experiments.store import Node

NAME = "alignment"
TITLE = "Merging independently initialised DTs with permutation alignment and searched weights"
SUBSETS = {"trunk": ["trunk"], "attn+mlp": ["attn", "mlp"], "mlp": ["mlp"]}
ALIGNS = ("none", "weights", "activations")
GROUPS = {"pairs": [list(p) for p in combinations(TASKS, 2)], "all three": [list(TASKS)]}


def _merge(select, align: str) -> dict:
    return {"select": select, "method": "average", "format": "bundle", **({"align": align} if align != "none" else {})}


def nodes(scale: Scale) -> dict:
    out = {}
    for seed in range(scale.seeds):
        dts = {t: common.dt(scale, t, "expert", seed) for t in TASKS}
        deps = lambda tasks: {f"model{i}": dts[t] for i, t in enumerate(tasks)}  # noqa: E731
        for t in TASKS:
            out[f"original|{t}|{seed}"] = common.evaluation(scale, dts[t], t)
        for subset, select in SUBSETS.items():
            for align in ALIGNS:
                for group, task_sets in GROUPS.items():
                    for tasks in task_sets:
                        bundle = Node("merge", _merge(select, align), deps(tasks))
                        for t in tasks:
                            out[f"average|{subset}|{align}|{group}|{'+'.join(tasks)}|{t}|{seed}"] = \
                                common.evaluation(scale, bundle, t, bundle_task=True)
        for align in ("none", "weights"):
            spec = {"select": ["attn", "mlp"], "granularity": "group", "trials": scale.search_trials,
                    "episodes": max(1, scale.episodes // 2), "report_episodes": scale.episodes, "sampler": "tpe",
                    "seed": seed, "max_steps": scale.max_steps, "precision": scale.precision,
                    **({"align": align} if align != "none" else {})}
            out[f"search|{align}|{seed}"] = Node("search", spec, deps(TASKS))
            mff = Node("mff", {"merge": _merge(["attn", "mlp"], align), "finetune": scale.finetune_spec(seed)},
                       deps(TASKS))
            for t in TASKS:
                out[f"mff|{align}|{t}|{seed}"] = common.evaluation(scale, mff, t, bundle_task=True)
    return out


def report(scale: Scale, results: dict, out: Path) -> dict:
    original = {(t, seed): common.mean_return(results[f"original|{t}|{seed}"])
                for t in TASKS for seed in range(scale.seeds)}
    rows = {}
    for subset in SUBSETS:
        for group, task_sets in GROUPS.items():
            for align in ALIGNS:
                ratios = [common.mean_return(results[f"average|{subset}|{align}|{group}|{'+'.join(ts)}|{t}|{seed}"])
                          / original[(t, seed)] for seed in range(scale.seeds) for ts in task_sets for t in ts]
                rows[f"average {subset}, {group}|{align}"] = common.summarise(ratios)
    for align in ("none", "weights"):
        rows[f"MFF attn+mlp, all three|{align}"] = common.summarise(
            common.mean_return(results[f"mff|{align}|{t}|{seed}"]) / original[(t, seed)]
            for seed in range(scale.seeds) for t in TASKS)
        for pick in ("equal weights", "best"):
            ratios = []
            for seed in range(scale.seeds):
                held = results[f"search|{align}|{seed}"][pick]["held_out_return"]
                ratios += [held[t] / original[(t, seed)] for t in TASKS]
            rows[f"searched weights attn+mlp, all three ({pick})|{align}"] = common.summarise(ratios)
    names = list(dict.fromkeys(k.split("|")[0] for k in rows))
    fmt = lambda c: "–" if c is None else f"{c['mean']:.2f} ± {c['se']:.2f}"  # noqa: E731
    table = [f"# {TITLE}", "", "Return / the task's unmerged expert DT's return, mean ± s.e. over the tasks (and "
             f"pairs) x {scale.seeds} seed(s), {scale.episodes} episodes each (scale {scale.name}). Alignment: every "
             "model permuted into the first's basis before merging. Searched weights: optuna TPE, "
             f"{scale.search_trials} trials on {max(1, scale.episodes // 2)} selection episodes per task, reported "
             f"on held-out episodes; `equal weights` is its first trial, the plain average. MFF finetunes "
             f"{scale.finetune_steps} steps per task.", "", "| merge | " + " | ".join(ALIGNS) + " |",
             "| --- |" + " --- |" * len(ALIGNS)]
    table += [f"| {n} | " + " | ".join(fmt(rows.get(f"{n}|{a}")) for a in ALIGNS) + " |" for n in names]

    def draw(ax):
        for k, align in enumerate(ALIGNS):
            present = [(i, rows[f"{n}|{align}"]) for i, n in enumerate(names) if f"{n}|{align}" in rows]
            ax.bar([i + (k - 1) * 0.27 for i, _ in present], [c["mean"] for _, c in present], 0.27,
                   yerr=[c["se"] for _, c in present], capsize=2, label=f"align: {align}")
        ax.axhline(1.0, color="k", lw=0.8)
        ax.set_xticks(range(len(names)), names, rotation=30, ha="right", fontsize=6)
        ax.set_ylabel("return / unmerged return")
        ax.set_title(TITLE + f" ({scale.name})", fontsize=8)
        ax.legend(fontsize=7)

    return common.publish(out, NAME, scale, {"rows": rows}, table, draw)


def findings(summary: dict) -> list[dict]:
    rows = summary["rows"]
    trunk = {a: rows[f"average trunk, all three|{a}"]["mean"] for a in ALIGNS}
    best = max(("weights", "activations"), key=trunk.get)
    search = {a: rows[f"searched weights attn+mlp, all three (best)|{a}"]["mean"] for a in ("none", "weights")}
    equal = rows["searched weights attn+mlp, all three (equal weights)|none"]["mean"]
    gain = common.summarise(b - e for b, e in zip(rows["searched weights attn+mlp, all three (best)|none"]["values"],
                                                  rows["searched weights attn+mlp, all three (equal weights)|none"][
                                                      "values"]))
    return [
        common.finding("Permutation alignment lets independently initialised DTs average their whole trunk "
                       "(the gap the paper attributes to random initialisation).",
                       f"3-way trunk average: none {trunk['none']:.2f}, weights {trunk['weights']:.2f}, activations "
                       f"{trunk['activations']:.2f} of the unmerged return",
                       trunk[best] >= 0.8, "closes the gap if an aligned trunk average keeps >= 0.80"),
        common.finding("Alignment improves the whole-trunk average over no alignment.",
                       f"best alignment ({best}) {trunk[best]:.2f} against {trunk['none']:.2f}",
                       trunk[best] > trunk["none"], "agrees if the aligned average is higher"),
        common.finding("Searched merge weights beat equal weights on held-out episodes (attention + MLP, 3-way).",
                       f"held-out: searched {search['none']:.2f} (aligned: {search['weights']:.2f}), equal weights "
                       f"{equal:.2f}; searched - equal, unaligned, {gain['mean']:+.2f} ± {gain['se']:.2f}",
                       common.beats(gain), "agrees if the difference, paired by task and seed, is above 2 s.e., "
                       "within noise if inside ±2 s.e."),
    ]
