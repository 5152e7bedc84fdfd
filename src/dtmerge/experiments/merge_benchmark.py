"""The policy-merging benchmark: every merge method on the same three expert DTs (HalfCheetah,
Hopper, Walker2d), in two regimes, beside a multi-task DT trained on the same data, from two kinds
of start: independent random ones (each task its own, as the paper's DTs), one random trunk
shared by the three, and the language model Table III pre-trains (ChibiT, with the paper's L_cos);
from the last two, task vectors have a common base: the start itself. Attention and MLP
of every block are merged into one bundle; each task keeps its own embeddings and head, as merged
(training-free) or finetuned on its own data with the merged tensors frozen (Merge-Freeze-Finetune,
the scale's finetuning steps per task).

Score = each task's return over its own expert's, per seed, aggregated over tasks and seeds as
the interquartile mean (IQM) with a 95% stratified bootstrap interval (seeds resampled within each
task). Methods that need a common base are not run on independent starts (they refuse models
without one). A method with hyper-parameters (`SPACES`) has them searched by `dtmerge search` on
selection episodes (reset seeds below 10,000), one search per start and seed, and is scored on the
held-out episodes every other model is scored on; its defaults are reported beside, and its MFF
merges with the parameters the search chose.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from scipy.stats import trim_mean

from dtmerge.envs import TASKS
from dtmerge.experiments import common
from dtmerge.experiments.lm_init import lm_dt
from dtmerge.experiments.scales import Scale
from dtmerge.experiments.store import Node
from dtmerge.merge.methods import METHODS

NAME = "merge-benchmark"
TITLE = "The policy-merging benchmark: merge methods on the same expert DTs, training-free and with MFF"
LEVEL = "expert"
SELECT = ["attn", "mlp"]
STARTS = {"independent": "independent random starts", "shared": "one shared random start",
          "chibit": "one ChibiT (LM) start"}
REGIMES = {"training-free": "training-free", "mff": "Merge-Freeze-Finetune"}
MFF_AIM = (1.01, 0.98)  # an MFF merge at <= 101% of one model's transformer parameters keeping >= 98%
FREE_AIM = 0.85  # a training-free merge from a common start keeping >= 85% (the paper's best: ~79%)
AIMS = {"training-free": FREE_AIM, "mff": MFF_AIM[1]}  # the share of the experts' score each regime aims at
PAIRWISE = ("interpolate", "slerp")  # two models only: the benchmark merges three
METHOD_NAMES = tuple(m for m in METHODS if m not in PAIRWISE)
RESAMPLES = 10_000
THIRD = 1 / 3  # the task-vector scale that equals averaging three models (those methods' default)
# Each searched method's [low, high] per hyper-parameter, and the first trial where its default is
# not a number; ranges around the values the methods' papers use.
SPACES = {
    "task_arithmetic": ({"scale": (0.2, 1.2)}, {"scale": THIRD}),
    "ties": ({"density": (0.1, 1.0), "scale": (0.3, 1.5)}, {}),
    "dare": ({"density": (0.1, 1.0), "scale": (0.2, 1.2)}, {"scale": THIRD}),
    "breadcrumbs": ({"density": (0.3, 0.9), "gamma": (0.0, 0.1), "scale": (0.2, 1.2)}, {"scale": THIRD}),
    "della": ({"density": (0.3, 0.9), "epsilon": (0.0, 0.1), "scale": (0.3, 1.5)}, {}),
    "tsv": ({"scale": (0.3, 1.5)}, {}),
    "iso_c": ({"scale": (0.3, 1.5)}, {}),
    "ram": ({"density": (0.05, 1.0), "unique_scale": (0.5, 2.0)}, {}),  # density: DT task vectors are dense
    "regmean": ({"alpha": (0.1, 1.0)}, {}),
}


def _needs(method: str) -> str | None:
    m = METHODS[method]
    return "base" if m.needs_base else "fisher" if m.needs_fisher else "grams" if m.needs_grams else None


def runs(start: str) -> list[str]:
    """The methods run from a kind of start (base-needing ones only where there is a common base)."""
    return [m for m in METHOD_NAMES if start != "independent" or _needs(m) != "base"]


def _experts(scale: Scale, start: str, seed: int) -> dict[str, Node]:
    if start == "shared":
        return {t: common.shared_start_dt(scale, t, LEVEL, seed) for t in TASKS}
    if start == "chibit":
        return {t: lm_dt(scale, t, LEVEL, "chibit", seed) for t in TASKS}
    return {t: common.dt(scale, t, LEVEL, seed) for t in TASKS}


def _inputs(scale: Scale, method: str, experts: dict[str, Node], seed: int) -> dict[str, Node]:
    """The models a merge takes (with the Fisher or Grams it needs beside them) and its base."""
    need = _needs(method)
    deps = {}
    for i, t in enumerate(TASKS):
        model = experts[t]
        if need == "fisher":
            model = common.fisher(scale, model, seed)
        elif need == "grams":
            model = Node("grams", {"batches": scale.fisher_batches, "batch_size": 64, "seed": seed}, {"model": model})
        deps[f"model{i}"] = model
    if need == "base":  # the weights the first task's DT started from: the trunk, which the three share
        first = experts[next(iter(TASKS))]
        deps["base"] = Node("start", first.spec, first.deps)
    return deps


def _merge(scale: Scale, method: str, deps: dict[str, Node], seed: int) -> Node:
    """The training-free merge: a search of the method's parameters where it has them."""
    if method in SPACES:
        space, start = SPACES[method]
        return Node("search", {"select": SELECT, "method": method, "space": space, "start": start,
                               "trials": scale.search_trials, "episodes": common.selection_episodes(scale),
                               "report_episodes": scale.episodes, "seed": seed, "max_steps": scale.max_steps,
                               **scale.runtime()}, deps)
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
                deps = _inputs(scale, method, experts, seed)
                merged = _merge(scale, method, deps, seed)
                out[f"merged|{start}|{method}|{seed}"] = merged  # a search reports its held-out returns itself
                for t in TASKS if merged.kind == "merge" else ():  # a search scores both sets of episodes itself
                    out[f"{method}|{start}|{t}|{seed}"] = common.evaluation(scale, merged, t, bundle_task=True)
                    out[f"selection|{method}|{start}|{t}|{seed}"] = common.evaluation(scale, merged, t, True,
                                                                                     selection=True)
                searched = {"search": merged} if merged.kind == "search" else {}  # MFF merges as it chose
                mff = Node("mff", {"merge": {"select": SELECT, "method": method, "format": "bundle"},
                                   "finetune": scale.finetune_spec(seed)}, {**deps, **searched})
                out[f"mff-bundle|{start}|{method}|{seed}"] = mff
                for t in TASKS:
                    out[f"mff|{method}|{start}|{t}|{seed}"] = common.evaluation(scale, mff, t, bundle_task=True)
                    out[f"mff-selection|{method}|{start}|{t}|{seed}"] = common.evaluation(scale, mff, t, True,
                                                                                         selection=True)
    return out


def selection_score(results: dict, regime: str, method: str, start: str, seed: int) -> float:
    """A merge's mean D4RL-normalised score over the tasks on selection episodes (what a search
    maximises; for a searched method, its best trial's): the leaderboard's winners are chosen by
    it, so the held-out score a finding judges is not also the score it was picked on."""
    if regime == "training-free" and method in SPACES:
        return results[f"merged|{start}|{method}|{seed}"]["best"]["selection_mean"]
    key = "mff-selection" if regime == "mff" else "selection"
    return float(np.mean([results[f"{key}|{method}|{start}|{t}|{seed}"]["targets"][0]["score_mean"] for t in TASKS]))


def merged_returns(results: dict, regime: str, method: str, start: str, seed: int, pick: str = "best") \
        -> dict[str, float]:
    """Each task's held-out return of a merge: its evaluations, or for a training-free searched
    method the search's held-out report of its `pick` (the best trial on selection episodes, or its
    `defaults`)."""
    if regime == "mff":
        return {t: common.mean_return(results[f"mff|{method}|{start}|{t}|{seed}"]) for t in TASKS}
    if method in SPACES:
        return results[f"merged|{start}|{method}|{seed}"][pick]["held_out_return"]
    return {t: common.mean_return(results[f"{method}|{start}|{t}|{seed}"]) for t in TASKS}


def _stratified_picks(scores: np.ndarray, seed: int) -> np.ndarray:
    """Bootstrap resamples of a (seeds, tasks) array's seeds, drawn with replacement within each
    task (rliable's stratified scheme; Agarwal et al., 2021): (RESAMPLES, seeds, tasks) indices."""
    n, tasks = scores.shape
    return np.random.default_rng(seed).integers(0, n, size=(RESAMPLES, n, tasks))


def _resampled_iqms(scores: np.ndarray, picks: np.ndarray) -> np.ndarray:
    resampled = np.take_along_axis(scores[None].repeat(RESAMPLES, 0), picks, axis=1)
    return trim_mean(resampled.reshape(RESAMPLES, -1), 0.25, axis=1)


def iqm_interval(scores: np.ndarray, seed: int = 0) -> dict:
    """IQM of a (seeds, tasks) array of normalised scores and its 95% stratified bootstrap interval."""
    point = float(trim_mean(scores.ravel(), 0.25))
    n = scores.shape[0]
    if n < 2:
        return {"mean": point, "lo": None, "hi": None, "values": scores.tolist(), "n": n}
    lo, hi = np.percentile(_resampled_iqms(scores, _stratified_picks(scores, seed)), [2.5, 97.5])
    return {"mean": point, "lo": float(lo), "hi": float(hi), "values": scores.tolist(), "n": n}


def iqm_difference(a: np.ndarray, b: np.ndarray, seed: int = 0) -> dict:
    """IQM(a) - IQM(b) of two (seeds, tasks) arrays of the same seeds and tasks, with a 95% interval
    from one stratified bootstrap that resamples both alike: a seed's two entries stay a pair, so
    what the seeds share (their base models) is not counted as noise."""
    point = float(trim_mean(a.ravel(), 0.25) - trim_mean(b.ravel(), 0.25))
    n = a.shape[0]
    if n < 2:
        return {"mean": point, "lo": None, "hi": None, "n": n}
    picks = _stratified_picks(a, seed)
    lo, hi = np.percentile(_resampled_iqms(a, picks) - _resampled_iqms(b, picks), [2.5, 97.5])
    return {"mean": point, "lo": float(lo), "hi": float(hi), "n": n}


def by_selection(entries) -> list[dict]:
    """Entries best first by selection score, ties by method name (never by the held-out score
    they are then judged on)."""
    return sorted(entries, key=lambda r: (-r["selection_score"], r["method"]))


def cell_winners(board: list[dict]) -> list[dict]:
    """Each (regime, start) cell's winner: the entry with the highest selection score (so the
    held-out IQM it is reported with is not also the one it was picked on), its held-out IQM, and
    how far it is ahead of the cell's next entry by selection score and of plain averaging, each
    as a paired IQM difference with its interval."""
    winners = []
    for regime in REGIMES:
        for start in STARTS:
            cell = by_selection(r for r in board if r["regime"] == regime and r["start"] == start)
            if not cell:
                continue
            first = cell[0]
            ahead = lambda other: iqm_difference(np.array(first["iqm"]["values"]),  # noqa: E731
                                                 np.array(other["iqm"]["values"]))
            average = next((r for r in cell if r["method"] == "average"), None)
            winners.append({"regime": regime, "start": start, "method": first["method"], "iqm": first["iqm"],
                            "runner_up": cell[1]["method"] if len(cell) > 1 else None,
                            "over_runner_up": ahead(cell[1]) if len(cell) > 1 else None,
                            "over_average": ahead(average) if average is not None and average is not first else None})
    return winners


def report(scale: Scale, results: dict, out: Path) -> dict:
    returns = {k: common.mean_return(v) for k, v in results.items() if k.split("|")[0] in ("expert", "multi")}
    board = []
    for regime in REGIMES:
        for start in STARTS:
            for method in runs(start):
                def normalised(pick, regime=regime, method=method, start=start):
                    """(seeds, tasks) held-out returns over the experts'."""
                    return np.array([[merged_returns(results, regime, method, start, s, pick)[t]
                                      / returns[f"expert|{start}|{t}|{s}"] for t in TASKS] for s in range(scale.seeds)])
                scores = normalised("best")
                made = results[f"{'mff-bundle' if regime == 'mff' else 'merged'}|{start}|{method}|0"]
                searched = method in SPACES
                board.append({"regime": regime, "start": start, "method": method, "iqm": iqm_interval(scores),
                              "selection_score": float(np.mean([selection_score(results, regime, method, start, s)
                                                                for s in range(scale.seeds)])),
                              "per_task": dict(zip(TASKS, scores.mean(0).tolist())),
                              "defaults_iqm": iqm_interval(normalised("defaults"))
                              if searched and regime == "training-free" else None,
                              "chosen": [results[f"merged|{start}|{method}|{s}"]["best"]["params"]
                                         for s in range(scale.seeds)] if searched else None,
                              "transformer_params_pct": made.get("accounting", {}).get(
                                  "relative_to_single_model_percent")})
    board.sort(key=lambda r: (list(REGIMES).index(r["regime"]), r["start"], -r["iqm"]["mean"]))
    multi = {start: iqm_interval(np.array([[returns[f"multi|{t}|{s}"] / returns[f"expert|{start}|{t}|{s}"]
                                            for t in TASKS] for s in range(scale.seeds)])) for start in STARTS}
    base = common.base_models(scale, results, {
        **{f"{t} {LEVEL} ({start})": (t, LEVEL, f"expert|{start}|{t}") for start in STARTS for t in TASKS},
        **{f"{t} {LEVEL} (multi-task)": (t, LEVEL, f"multi|{t}") for t in TASKS}})
    table = [f"# {TITLE}", "", "Each task's return over its own expert's, IQM [95% stratified bootstrap interval] "
             f"over {len(TASKS)} tasks x {scale.seeds} seed(s), {scale.episodes} episodes each (scale {scale.name}; "
             f"experts trained {scale.steps} steps on {LEVEL} data). {', '.join(SELECT)} merged into one bundle; "
             f"Merge-Freeze-Finetune then trains each task's embeddings and head {scale.finetune_steps} steps on its "
             f"own data, the merged tensors frozen. Hyper-parameters searched ({scale.search_trials} trials of "
             f"`dtmerge search` per start and seed, on {common.selection_episodes(scale)} selection episodes per task) "
             "where a method has them, and MFF merges with the chosen ones; `at defaults`: the same method at its "
             "own defaults, on the same held-out episodes. 1.0 = the experts themselves; the multi-task DT (one DT "
             "trained on the three tasks' data, the same steps) is the reference a merge competes with: "
             f"{', '.join(f'{common.show(multi[s], 3)} of the {STARTS[s]} experts' for s in STARTS)}. "
             "`selection score`: the mean D4RL-normalised score over the tasks on the selection episodes (a "
             "searched method's best trial), by which the findings choose their entries. Methods that need a common "
             f"base are not run from independent starts; {' and '.join(PAIRWISE)} merge two models only and are left "
             f"out. With {scale.seeds} seeds a percentile interval has few distinct resamples per task, so it is "
             "if anything too narrow."]
    for regime, title in REGIMES.items():
        table += ["", f"## {title}", "",
                  "| start | rank | method | IQM of return / expert | at defaults | " + " | ".join(TASKS)
                  + " | selection score | transformer params |",
                  "| --- | --- | --- | --- | --- | " + "--- | " * len(TASKS) + "--- | --- |"]
        rank = {}
        for row in (r for r in board if r["regime"] == regime):
            rank[row["start"]] = rank.get(row["start"], 0) + 1
            pct, defaults = row["transformer_params_pct"], row["defaults_iqm"]
            table.append(f"| {STARTS[row['start']]} | {rank[row['start']]} | {row['method']} | "
                         f"{common.show(row['iqm'], 3)} | {common.show(defaults, 3) if defaults else '–'} | "
                         + " | ".join(f"{row['per_task'][t]:.2f}" for t in TASKS)
                         + f" | {row['selection_score']:.1f} | {f'{pct:.1f}%' if pct is not None else '–'} |")
    winners = cell_winners(board)
    table += ["", "## Winners", "", "Each cell's entry with the highest selection score, its held-out IQM, and its "
              "lead (a paired IQM difference, seeds resampled alike) over the cell's next entry by selection score "
              "and over plain averaging; a lead whose interval lies above 0 is one the seeds show.", "",
              "| regime | start | winner | IQM of return / expert | next by selection score | lead | "
              "lead over average |", "| --- | --- | --- | --- | --- | --- | --- |"]
    for w in winners:
        lead, over = w["over_runner_up"], w["over_average"]
        table.append(f"| {REGIMES[w['regime']]} | {STARTS[w['start']]} | {w['method']} | {common.show(w['iqm'], 3)} | "
                     f"{w['runner_up'] or '–'} | {common.show(lead, 3) if lead else '–'} | "
                     f"{common.show(over, 3) if over else '– (average itself)'} |")
    table += common.base_table(base)

    def draw(axes):
        right = 1.05 * max([1.0, *(m["mean"] for m in multi.values()),
                            *((r["iqm"]["hi"] if r["iqm"]["hi"] is not None else r["iqm"]["mean"]) for r in board)])
        for row_axes, regime in zip(axes, REGIMES):
            for ax, start in zip(row_axes, STARTS):
                rows = [r for r in board if r["regime"] == regime and r["start"] == start][::-1]
                y = range(len(rows))
                ax.barh(y, [r["iqm"]["mean"] for r in rows], xerr=common.error_bars([r["iqm"] for r in rows]),
                        capsize=2, color="tab:blue" if regime == "training-free" else "tab:green")
                ax.axvline(1.0, color="k", ls="--", lw=1)
                ax.axvline(multi[start]["mean"], color="tab:red", ls=":", lw=1.2)
                if regime == "mff" or start != "independent":  # the training-free aim is for a common start
                    ax.axvline(AIMS[regime], color="tab:gray", ls="-.", lw=1)
                ax.set_xlim(0, right)  # one scale for every panel, so starts and regimes compare by eye
                ax.set_yticks(list(y), [r["method"] for r in rows], fontsize=7)
                ax.set_xlabel("IQM of return / expert's\n(dashed: the experts; dotted red: the multi-task DT;\n"
                              "dash-dot: the aim)", fontsize=7)
                ax.set_title(f"{'MFF' if regime == 'mff' else regime}: {STARTS[start]} ({scale.name})", fontsize=8)

    summary = {"leaderboard": board, "winners": winners, "multi_task": multi, "base_models": base, "returns": returns}
    return common.publish(out, NAME, scale, summary, table, draw, panels=(len(REGIMES), len(STARTS)))


def findings(summary: dict) -> list[dict]:
    """Each aim judged on the entry chosen by its selection-episode score (not by the held-out
    score it is judged on), with the base models it was made from (and the multi-task DT) as its
    precondition; the other entries' distance to the aim is given beside."""
    board = summary["leaderboard"]
    most, keep = MFF_AIM

    def judged(entries, aim):
        best = by_selection(entries)[0]
        others = sorted(entries, key=lambda r: -r["iqm"]["mean"])
        below = ", ".join(f"{r['method']} ({r['start']}) {r['iqm']['mean'] - aim:+.2f}" for r in others[:5])
        return best, (f"chosen on selection episodes: {best['method']} from {STARTS[best['start']]}, IQM "
                      f"{common.show(best['iqm'], 3)} of the experts' return on held-out ones (of {len(entries)} "
                      f"entries; the five highest held-out IQMs against the aim: {below})")

    def precondition(starts):
        return common.unmet([r for r in summary["base_models"]
                             if r["model"].endswith(tuple(f"({s})" for s in starts)) or "(multi-task)" in r["model"]])

    common_starts = [s for s in STARTS if s != "independent"]
    best, ours = judged([r for r in board if r["regime"] == "training-free" and r["start"] in common_starts],
                         FREE_AIM)
    out = [common.finding("A training-free merge of three DTs from a common start (one random trunk, or the "
                          f"language model) keeps at least {FREE_AIM:.0%} of the experts' score (the paper's best "
                          "training-free merge, Fisher, kept about 79%).", ours, common.versus(best["iqm"], FREE_AIM),
                          f"agrees if the chosen entry's interval lies above {FREE_AIM}, disagrees if below",
                          precondition(common_starts))]
    small = [r for r in board if r["regime"] == "mff" and r["transformer_params_pct"] is not None
             and r["transformer_params_pct"] <= most * 100]
    if small:
        mff, ours = judged(small, keep)
        agrees = common.versus(mff["iqm"], keep)
    else:
        least = min((r["transformer_params_pct"] for r in board if r["regime"] == "mff"
                     and r["transformer_params_pct"] is not None), default=None)
        mff, agrees = None, None
        ours = ("no MFF entry is that small here" + (f" (the smallest: {least:.1f}% of one model's transformer)"
                                                     if least is not None else " (none has its size recorded)"))
    out.append(common.finding(f"An MFF merge at <= {most:.0%} of one model's transformer parameters keeps at least "
                              f"{keep:.0%} of the experts' score (the paper's best: 95.0 against 99.7).", ours, agrees,
                              f"agrees if the chosen entry's interval lies above {keep}, disagrees if below",
                              precondition(STARTS)))
    return out
