"""Beyond the paper: does permutation alignment, or searching the merge weights, let independently
initialised expert DTs merge? The paper finds that merging MLPs or the whole trunk collapses and
blames the random initialisation; re-basin (`dtmerge align`) removes the permutation part of that.

Whole trunk, attention + MLP and MLP only, each averaged over every pair of tasks (alpha 0.5, both
tasks of a pair evaluated) and over all three (the N-way average), without alignment and with
weight and activation matching to the first model; attention + MLP weights per group searched by
rollouts (optuna TPE, selection episodes below seed 10,000), with and without weight matching; and
attention + MLP Merge-Freeze-Finetune after alignment. The averages and the MFF also run on DTs
that start from one random trunk shared by the three tasks (start `shared`; the others start
`independent`), which tests the paper's explanation without a language model. Each score is the merged model's return
divided by the task's own unmerged expert DT's, averaged over tasks and pairs within a seed, then
mean and 95% bootstrap interval over seeds.
"""

from __future__ import annotations

from itertools import combinations
from pathlib import Path

import numpy as np

from dtmerge.envs import TASKS
from dtmerge.experiments import common
from dtmerge.experiments.scales import Scale
from dtmerge.experiments.store import Node

NAME = "alignment"
TITLE = "Merging DTs with permutation alignment, searched weights, or a shared random start"
SUBSETS = {"trunk": ["trunk"], "attn+mlp": ["attn", "mlp"], "mlp": ["mlp"]}
ALIGNS = ("none", "weights", "activations")
GROUPS = {"pairs": [list(p) for p in combinations(TASKS, 2)], "all three": [list(TASKS)]}


def _merge(select, align: str) -> dict:
    return {"select": select, "method": "average", "format": "bundle", **({"align": align} if align != "none" else {})}


def nodes(scale: Scale) -> dict:
    out = {}
    for seed in range(scale.seeds):
        shared = {t: common.shared_start_dt(scale, t, "expert", seed) for t in TASKS}
        for t in TASKS:
            out[f"data|{t}|expert"] = common.dataset(scale, t, "expert")
            out[f"original shared|{t}|{seed}"] = common.evaluation(scale, shared[t], t)
        for subset, select in SUBSETS.items():
            for group, task_sets in GROUPS.items():
                for tasks in task_sets:
                    models = {f"model{i}": shared[t] for i, t in enumerate(tasks)}
                    bundle = Node("merge", _merge(select, "none"), models)
                    for t in tasks:
                        out[f"shared|{subset}|{group}|{'+'.join(tasks)}|{t}|{seed}"] = \
                            common.evaluation(scale, bundle, t, bundle_task=True)
        mff = Node("mff", {"merge": _merge(["attn", "mlp"], "none"), "finetune": scale.finetune_spec(seed)},
                   {f"model{i}": shared[t] for i, t in enumerate(TASKS)})
        for t in TASKS:
            out[f"mff shared|{t}|{seed}"] = common.evaluation(scale, mff, t, bundle_task=True)
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
                    "episodes": common.selection_episodes(scale), "report_episodes": scale.episodes, "sampler": "tpe",
                    "seed": seed, "max_steps": scale.max_steps, **scale.runtime(),
                    **({"align": align} if align != "none" else {})}
            out[f"search|{align}|{seed}"] = Node("search", spec, deps(TASKS))
            mff = Node("mff", {"merge": _merge(["attn", "mlp"], align), "finetune": scale.finetune_spec(seed)},
                       deps(TASKS))
            for t in TASKS:
                out[f"mff|{align}|{t}|{seed}"] = common.evaluation(scale, mff, t, bundle_task=True)
    return out


def report(scale: Scale, results: dict, out: Path) -> dict:
    original = {(start, t, seed): common.mean_return(results[f"{key}|{t}|{seed}"])
                for start, key in (("independent", "original"), ("shared", "original shared"))
                for t in TASKS for seed in range(scale.seeds)}

    def per_seed(ratios) -> dict:
        """`ratios(seed)` lists a seed's ratios (tasks, pairs): averaged within the seed, then over seeds."""
        return common.summarise(np.mean(ratios(seed)) for seed in range(scale.seeds))

    rows = {}
    for subset in SUBSETS:
        for group, task_sets in GROUPS.items():
            for align in ALIGNS:
                rows[f"average {subset}, {group}|{align}"] = per_seed(lambda seed: [
                    common.mean_return(results[f"average|{subset}|{align}|{group}|{'+'.join(ts)}|{t}|{seed}"])
                    / original[("independent", t, seed)] for ts in task_sets for t in ts])
            rows[f"average {subset}, {group}|shared start"] = per_seed(lambda seed: [
                common.mean_return(results[f"shared|{subset}|{group}|{'+'.join(ts)}|{t}|{seed}"])
                / original[("shared", t, seed)] for ts in task_sets for t in ts])
    for align in ("none", "weights"):
        rows[f"MFF attn+mlp, all three|{align}"] = per_seed(lambda seed: [
            common.mean_return(results[f"mff|{align}|{t}|{seed}"]) / original[("independent", t, seed)] for t in TASKS])
        for pick in ("equal weights", "best"):
            rows[f"searched weights attn+mlp, all three ({pick})|{align}"] = per_seed(lambda seed: [
                results[f"search|{align}|{seed}"][pick]["held_out_return"][t] / original[("independent", t, seed)]
                for t in TASKS])
    rows["MFF attn+mlp, all three|shared start"] = per_seed(lambda seed: [
        common.mean_return(results[f"mff shared|{t}|{seed}"]) / original[("shared", t, seed)] for t in TASKS])
    base = common.base_models(scale, results, {
        **{f"{t} expert": (t, "expert", f"original|{t}") for t in TASKS},
        **{f"{t} expert, shared start": (t, "expert", f"original shared|{t}") for t in TASKS}})
    names = list(dict.fromkeys(k.split("|")[0] for k in rows))
    columns = (*ALIGNS, "shared start")
    fmt = lambda c: "–" if c is None else common.show(c)  # noqa: E731
    table = [f"# {TITLE}", "", "Return / the task's unmerged expert DT's return, averaged over the tasks (and pairs) "
             f"within a seed, then mean [95% bootstrap interval] over {scale.seeds} seed(s), {scale.episodes} episodes "
             f"each (scale {scale.name}). Columns none / weights / activations: independently initialised DTs "
             "(each task its own random start), unaligned or aligned; shared start: DTs whose trunks start from one "
             "random draw, unaligned. Alignment: every "
             "model permuted into the first's basis before merging. Searched weights: optuna TPE, "
             f"{scale.search_trials} trials on {common.selection_episodes(scale)} selection episodes per task, "
             f"reported on held-out episodes; `equal weights` is its first trial, the plain average. MFF finetunes "
             f"{scale.finetune_steps} steps per task.", "", "| merge | " + " | ".join(columns) + " |",
             "| --- |" + " --- |" * len(columns)]
    table += [f"| {n} | " + " | ".join(fmt(rows.get(f"{n}|{a}")) for a in columns) + " |" for n in names]
    table += common.base_table(base)

    def draw(ax):
        width = 0.8 / len(columns)
        for k, column in enumerate(columns):
            present = [(i, rows[f"{n}|{column}"]) for i, n in enumerate(names) if f"{n}|{column}" in rows]
            ax.bar([i + (k - (len(columns) - 1) / 2) * width for i, _ in present], [c["mean"] for _, c in present],
                   width, yerr=common.error_bars([c for _, c in present]), capsize=2,
                   label=column if column == "shared start" else f"independent, align: {column}")
        ax.axhline(1.0, color="k", lw=0.8, ls="--")
        ax.set_xticks(range(len(names)), names, rotation=30, ha="right", fontsize=6)
        ax.set_ylabel("return / unmerged return")
        ax.set_title(TITLE + f" ({scale.name})", fontsize=8)
        ax.legend(fontsize=7)

    return common.publish(out, NAME, scale, {"rows": rows, "base_models": base}, table, draw)


def findings(summary: dict) -> list[dict]:
    """Each claim's precondition is the base models it is made from: the independent-start experts,
    and for the shared-start claim those from the shared start too."""
    rows, base = summary["rows"], summary["base_models"]
    independent = common.unmet([r for r in base if not r["model"].endswith("shared start")])
    both = common.unmet(base)
    trunk = {a: rows[f"average trunk, all three|{a}"] for a in (*ALIGNS, "shared start")}
    best = max(("weights", "activations"), key=lambda a: trunk[a]["mean"])
    gain = lambda a, b: common.summarise(x - y for x, y in zip(rows[a]["values"], rows[b]["values"]))  # noqa: E731
    aligned = gain(f"average trunk, all three|{best}", "average trunk, all three|none")
    shared = gain("average trunk, all three|shared start", "average trunk, all three|none")
    searched = gain("searched weights attn+mlp, all three (best)|none",
                    "searched weights attn+mlp, all three (equal weights)|none")
    return [
        common.finding("Permutation alignment lets independently initialised DTs average their whole trunk "
                       "(the gap the paper attributes to random initialisation).",
                       "3-way trunk average: " + ", ".join(f"{a} {common.show(c)}" for a, c in trunk.items() if a in
                                                           ALIGNS) + " of the unmerged return",
                       common.versus(trunk[best], 0.8), "closes the gap if the better alignment's interval lies above "
                       "0.80, disagrees if below", independent),
        common.finding("Alignment improves the whole-trunk average over no alignment.",
                       f"best alignment ({best}) minus none, per seed {common.show(aligned)}",
                       common.versus(aligned, 0.0), "agrees if the interval lies above 0, disagrees if below",
                       independent),
        common.finding("A shared random start lets DTs average their whole trunk better than independent starts "
                       "(the paper's explanation, tested without a language model).",
                       f"3-way trunk average, shared start {common.show(trunk['shared start'])}; shared minus "
                       f"independent per seed {common.show(shared)}", common.versus(shared, 0.0),
                       "agrees if the interval lies above 0, disagrees if below", both),
        common.finding("Searched merge weights beat equal weights on held-out episodes (attention + MLP, 3-way).",
                       f"searched - equal, unaligned, per seed {common.show(searched)}", common.versus(searched, 0.0),
                       "agrees if the interval lies above 0, disagrees if below", independent),
    ]
