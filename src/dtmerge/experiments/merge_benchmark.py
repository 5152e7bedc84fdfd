"""The policy-merging benchmark: every merge method on the same three expert DTs (HalfCheetah,
Hopper, Walker2d), training-free, beside a multi-task DT trained on the same data, from two kinds
of start: independent random ones (each task its own, as the paper's DTs) and one random trunk
shared by the three (task vectors then have a common base: the start itself). Attention and MLP
of every block are merged into one bundle; each task keeps its own embeddings and head.

Score = each task's return over its own expert's, per seed, aggregated over tasks and seeds as
the interquartile mean (IQM) with a 95% stratified bootstrap interval (seeds resampled within each
task). Methods that need a common base are not run on independent starts (they refuse models
without one). Hyper-parameters are each method's defaults (not searched), and the MFF regime and
a ChibiT start are not in this version.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from scipy.stats import trim_mean

from dtmerge.envs import TASKS
from dtmerge.experiments import common
from dtmerge.experiments.scales import Scale
from dtmerge.experiments.store import Node
from dtmerge.merge.methods import METHODS
from dtmerge.runtime import derive_seed

NAME = "merge-benchmark"
TITLE = "The policy-merging benchmark: merge methods on the same expert DTs, training-free"
LEVEL = "expert"
SELECT = ["attn", "mlp"]
STARTS = {"independent": "independent random starts", "shared": "one shared random start"}
PAIRWISE = ("interpolate", "slerp")  # two models only: the benchmark merges three
METHOD_NAMES = tuple(m for m in METHODS if m not in PAIRWISE)
RESAMPLES = 10_000


def _needs(method: str) -> str | None:
    m = METHODS[method]
    return "base" if m.needs_base else "fisher" if m.needs_fisher else "grams" if m.needs_grams else None


def runs(start: str) -> list[str]:
    """The methods run from a kind of start (base-needing ones only where there is a common base)."""
    return [m for m in METHOD_NAMES if start == "shared" or _needs(m) != "base"]


def _experts(scale: Scale, start: str, seed: int) -> dict[str, Node]:
    if start == "shared":
        return {t: common.shared_start_dt(scale, t, LEVEL, seed) for t in TASKS}
    return {t: common.dt(scale, t, LEVEL, seed) for t in TASKS}


def _merge(scale: Scale, method: str, experts: dict[str, Node], start: str, seed: int) -> Node:
    need = _needs(method)
    deps = {}
    for i, t in enumerate(TASKS):
        model = experts[t]
        if need == "fisher":
            model = common.fisher(scale, model, seed)
        elif need == "grams":
            model = Node("grams", {"batches": scale.fisher_batches, "batch_size": 64, "seed": seed}, {"model": model})
        deps[f"model{i}"] = model
    if need == "base":
        first = next(iter(TASKS))  # any task's start: the merged tensors are the trunk, which they share
        deps["base"] = Node("start", scale.train_spec(seed, init_seed=derive_seed("shared-start", seed)),
                            {"data": common.dataset(scale, first, LEVEL)})
    return Node("merge", {"select": SELECT, "method": method, "format": "bundle"}, deps)


def nodes(scale: Scale) -> dict:
    out = {}
    for seed in range(scale.seeds):
        multi = Node("dt", scale.train_spec(seed), {f"data_{t}": common.dataset(scale, t, LEVEL) for t in TASKS})
        for t in TASKS:  # the reference a merge competes with: one DT trained on all three tasks' data
            out[f"multi|{t}|{seed}"] = common.evaluation(scale, multi, t, bundle_task=True)
        for start in STARTS:
            experts = _experts(scale, start, seed)
            for t in TASKS:
                out[f"data|{t}|{LEVEL}"] = common.dataset(scale, t, LEVEL)
                out[f"expert|{start}|{t}|{seed}"] = common.evaluation(scale, experts[t], t)
            for method in runs(start):
                merged = _merge(scale, method, experts, start, seed)
                out[f"accounting|{start}|{method}|{seed}"] = merged
                for t in TASKS:
                    out[f"{method}|{start}|{t}|{seed}"] = common.evaluation(scale, merged, t, bundle_task=True)
    return out


def iqm_interval(scores: np.ndarray, seed: int = 0) -> dict:
    """IQM of a (seeds, tasks) array of normalised scores and its 95% stratified bootstrap interval:
    seeds resampled with replacement within each task (rliable's scheme; Agarwal et al., 2021)."""
    rng = np.random.default_rng(seed)
    point = float(trim_mean(scores.ravel(), 0.25))
    n = scores.shape[0]
    if n < 2:
        return {"mean": point, "lo": None, "hi": None, "values": scores.tolist(), "n": n}
    picks = rng.integers(0, n, size=(RESAMPLES, n, scores.shape[1]))
    resampled = np.take_along_axis(scores[None].repeat(RESAMPLES, 0), picks, axis=1)
    stats = trim_mean(resampled.reshape(RESAMPLES, -1), 0.25, axis=1)
    lo, hi = np.percentile(stats, [2.5, 97.5])
    return {"mean": point, "lo": float(lo), "hi": float(hi), "values": scores.tolist(), "n": n}


def report(scale: Scale, results: dict, out: Path) -> dict:
    returns = {k: common.mean_return(v) for k, v in results.items() if k.split("|")[0] != "data"
               and not k.startswith("accounting")}
    board = []
    for start in STARTS:
        for method in runs(start):
            scores = np.array([[returns[f"{method}|{start}|{t}|{s}"] / returns[f"expert|{start}|{t}|{s}"]
                                for t in TASKS] for s in range(scale.seeds)])
            acct = results[f"accounting|{start}|{method}|0"].get("accounting", {})
            board.append({"start": start, "method": method, "iqm": iqm_interval(scores),
                          "per_task": dict(zip(TASKS, scores.mean(0).tolist())),
                          "transformer_params_pct": acct.get("relative_to_single_model_percent")})
    board.sort(key=lambda r: (r["start"], -r["iqm"]["mean"]))
    multi = {start: iqm_interval(np.array([[returns[f"multi|{t}|{s}"] / returns[f"expert|{start}|{t}|{s}"]
                                            for t in TASKS] for s in range(scale.seeds)])) for start in STARTS}
    base = common.base_models(scale, results, {f"{t} {LEVEL} ({start})": (t, LEVEL, f"expert|{start}|{t}")
                                               for start in STARTS for t in TASKS})
    table = [f"# {TITLE}", "", "Each task's return over its own expert's, IQM [95% stratified bootstrap interval] "
             f"over {len(TASKS)} tasks x {scale.seeds} seed(s), {scale.episodes} episodes each (scale {scale.name}; "
             f"experts trained {scale.steps} steps on {LEVEL} data). {', '.join(SELECT)} merged into one bundle, "
             "every method at its default hyper-parameters (not searched). 1.0 = the experts themselves; the "
             "multi-task DT (one DT trained on the three tasks' data, the same steps) is the reference a merge "
             f"competes with: {', '.join(f'{common.show(multi[s], 3)} of the {STARTS[s]} experts' for s in STARTS)}.",
             "",
             "| start | rank | method | IQM of return / expert | " + " | ".join(TASKS) + " | transformer params |",
             "| --- | --- | --- | --- | " + "--- | " * len(TASKS) + "--- |"]
    rank = {}
    for row in board:
        rank[row["start"]] = rank.get(row["start"], 0) + 1
        pct = row["transformer_params_pct"]
        table.append(f"| {STARTS[row['start']]} | {rank[row['start']]} | {row['method']} | "
                     f"{common.show(row['iqm'], 3)} | " + " | ".join(f"{row['per_task'][t]:.2f}" for t in TASKS)
                     + f" | {f'{pct:.1f}%' if pct is not None else '–'} |")
    table += common.base_table(base)

    def draw(axes):
        for ax, start in zip(axes[0], STARTS):
            rows = [r for r in board if r["start"] == start][::-1]
            y = range(len(rows))
            means = [r["iqm"]["mean"] for r in rows]
            ax.barh(y, means, xerr=common.error_bars([r["iqm"] for r in rows]), capsize=2, color="tab:blue")
            ax.axvline(1.0, color="k", ls="--", lw=1, label="experts")
            ax.axvline(multi[start]["mean"], color="tab:red", ls=":", lw=1, label="multi-task DT")
            ax.set_yticks(list(y), [r["method"] for r in rows], fontsize=7)
            ax.set_xlabel("IQM of return / expert's", fontsize=8)
            ax.set_title(f"{STARTS[start]} ({scale.name})", fontsize=9)
            ax.legend(fontsize=6)

    summary = {"leaderboard": board, "multi_task": multi, "base_models": base}
    return common.publish(out, NAME, scale, summary, table, draw, panels=(1, len(STARTS)))


def findings(summary: dict) -> list[dict]:
    shared = [r for r in summary["leaderboard"] if r["start"] == "shared"]
    best = max(shared, key=lambda r: r["iqm"]["mean"])
    return [common.finding("A training-free merge of three shared-start DTs keeps at least 85% of the experts' score "
                           "(the paper's best training-free merge, Fisher, kept about 79%).",
                           f"best shared-start method {best['method']}: IQM {common.show(best['iqm'], 3)} of the "
                           "experts' return (the best of many methods: the choice is made on the same episodes)",
                           common.versus(best["iqm"], 0.85), "agrees if the best method's interval lies above 0.85, "
                           "disagrees if below", common.unmet(summary["base_models"]))]
