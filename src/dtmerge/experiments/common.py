"""Building blocks the experiments share: nodes for datasets, DTs, merges and evaluations, and
the statistics and figures of their reports."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from dtmerge.atomic import atomic_path, write_json
from dtmerge.envs import TASKS
from dtmerge.experiments.scales import REPORT_EVAL_SEED, Scale
from dtmerge.experiments.store import Node
from dtmerge.model.groups import BLOCK_PARTS
from dtmerge.runtime import derive_seed


def dataset(scale: Scale, task: str, level: str) -> Node:
    """One dataset per task and level, shared by every model seed (as D4RL has one file)."""
    size = scale.transitions * (2 if level == "medium-expert" else 1)
    return Node("dataset", {"task": task, "level": level, "transitions": size, "seed": 0})


def dt(scale: Scale, task: str, level: str, seed: int, **extra) -> Node:
    """A single-task DT at the scale's recipe (`extra`: settings that differ, such as `init_seed`,
    or `steps` to train exactly that long), trained longer where its dataset needs it (the scale's
    `dataset_steps`)."""
    settings = extra if "steps" in extra else {**longer(scale, task, level), **extra}
    return Node("dt", scale.train_spec(seed, **settings), {"data": dataset(scale, task, level)})


def longer(scale: Scale, task: str, level: str) -> dict:
    """The settings of a DT whose dataset needs more than the recipe's steps (`dataset_steps`): its
    steps, and its weights kept at the recipe's curve steps, at the recipe's own end and at each
    doubling of it, so that what the extra steps bought can be read off the same run."""
    steps = scale.dataset_steps.get(f"{task}-{level}")
    if steps is None:
        return {}
    doublings = [scale.steps * 2 ** k for k in range(steps.bit_length()) if scale.steps * 2 ** k < steps]
    return {"steps": steps, "keep_steps": [s for s in scale.curve_steps if s < scale.steps] + doublings}


def shared_start_dt(scale: Scale, task: str, level: str, seed: int) -> Node:
    """A DT of the Random-shared arm: every task's DT of one seed starts from the same random trunk
    (`init_seed` given), where `dt` gives each task its own."""
    return dt(scale, task, level, seed, init_seed=derive_seed("shared-start", seed))


def fisher(scale: Scale, model: Node, seed: int) -> Node:
    """The Fisher of a model on its own data, from the scale's number of 64-window batches."""
    return Node("fisher", {"estimator": "exact", "batches": scale.fisher_batches, "batch_size": 64, "seed": seed},
                {"model": model})


def snapshot(model: Node, step: int) -> Node:
    """The weights a DT run kept at `step` (one of the scale's `curve_steps`)."""
    return Node("snapshot", {"step": step}, {"model": model})


def interpolate(target: Node, source: Node, select: list[str], alpha: float) -> Node:
    """`target` with the selected tensors moved `alpha` of the way to `source`'s (1 = swapped in)."""
    return Node("merge", {"select": select, "method": "interpolate", "params": {"alpha": alpha},
                          "format": "checkpoint"}, {"model0": target, "model1": source})


def evaluation(scale: Scale, model: Node, task: str, bundle_task: bool = False, targets: list[float] | None = None,
               selection: bool = False) -> Node:
    """The reported evaluation: reset seeds from REPORT_EVAL_SEED, the task's high RTG target (or `targets`);
    `selection`: the episodes a choice is made on instead, as `dtmerge search` makes them (half as many,
    from reset seed 0)."""
    episodes, seed = (selection_episodes(scale), 0) if selection else (scale.episodes, REPORT_EVAL_SEED)
    spec = {"episodes": episodes, "seed": seed, "targets": targets or [TASKS[task].rtg_targets[0]],
            "max_steps": scale.max_steps, **scale.runtime()}
    return Node("eval", {**spec, "task": task} if bundle_task else spec, {"model": model})


def selection_episodes(scale: Scale) -> int:
    return max(1, scale.episodes // 2)


def units(n_layer: int) -> list[str]:
    """Every block's ln_1, attn, ln_2, mlp in depth order, then ln_f: the units of Fig. 2."""
    return [f"h.{i}.{part}" for i in range(n_layer) for part in BLOCK_PARTS] + ["ln_f"]


def mean_return(result: dict) -> float:
    return result["targets"][0]["return_mean"]


def task_average(cells: dict, row: str) -> float:
    """The mean over the three tasks of a table row's cells (`cells[f"{row}|{task}"]["mean"]`)."""
    return sum(cells[f"{row}|{t}"]["mean"] for t in TASKS) / len(TASKS)


def seed_averages(cells: dict, row: str) -> list[float]:
    """A table row's task average, seed by seed (`cells[f"{row}|{task}"]["values"]` per seed)."""
    per_task = [cells[f"{row}|{t}"]["values"] for t in TASKS]
    return [sum(values) / len(TASKS) for values in zip(*per_task)]


def summarise(values) -> dict:
    """Mean, standard error (0 for a single value), 95% bootstrap interval (`interval`) and the
    values themselves: pass one value per seed (anything within a seed averaged first)."""
    v = np.asarray(list(values), float)
    se = float(v.std(ddof=1) / np.sqrt(len(v))) if len(v) > 1 else 0.0
    return {**interval(v), "se": se}


def seed_scores(results: dict, key: str, seeds: int) -> dict:
    """The D4RL-normalised score of the evaluations `f"{key}|{seed}"`, summarised over seeds."""
    return summarise(results[f"{key}|{seed}"]["targets"][0]["score_mean"] for seed in range(seeds))


SUMMARY_FORMAT = 2  # results.json layout findings() reads (2: per-seed intervals and base models)
LEARNED = 0.9  # a base DT "has learned its data" when it reaches this fraction of the data's mean score
CONFIDENCE = 0.95
BOOTSTRAP_RESAMPLES = 10_000


def interval(values) -> dict:
    """Mean and 95% percentile-bootstrap interval of per-seed values (scipy.stats.bootstrap, fixed
    resampling seed so a report is reproducible); one value has no interval (lo = hi = None)."""
    from scipy.stats import bootstrap

    v = np.asarray(list(values), float)
    if len(v) < 2:
        return {"mean": float(v.mean()), "lo": None, "hi": None, "values": v.tolist()}
    if np.ptp(v) == 0:
        return {"mean": float(v[0]), "lo": float(v[0]), "hi": float(v[0]), "values": v.tolist()}
    ci = bootstrap((v,), np.mean, confidence_level=CONFIDENCE, n_resamples=BOOTSTRAP_RESAMPLES, method="percentile",
                   rng=np.random.default_rng(0)).confidence_interval
    return {"mean": float(v.mean()), "lo": float(ci.low), "hi": float(ci.high), "values": v.tolist()}


def versus(ci: dict, threshold: float) -> bool | None:
    """Is the interval above `threshold` (True), below it (False), or does it straddle it or not
    exist (None)?"""
    if ci["lo"] is None:
        return None
    if ci["lo"] > threshold:
        return True
    if ci["hi"] < threshold:
        return False
    return None


def every(outcomes) -> bool | None:
    """Several interval outcomes as one: True if all are, False if any is False, None otherwise."""
    outcomes = list(outcomes)
    return True if all(o is True for o in outcomes) else False if any(o is False for o in outcomes) else None


def below(ci: dict, threshold: float) -> bool | None:
    """Is the interval below `threshold` (True), above it (False), or neither (None)?"""
    above = versus(ci, threshold)
    return None if above is None else not above


def error_bars(cells: list[dict]) -> list[list[float]]:
    """matplotlib's asymmetric yerr from intervals (zero where a cell has none)."""
    return [[c["mean"] - (c["mean"] if c["lo"] is None else c["lo"]) for c in cells],
            [(c["mean"] if c["hi"] is None else c["hi"]) - c["mean"] for c in cells]]


def show(ci: dict, digits: int = 2, unit: str = "") -> str:
    """`mean [lo, hi]`, or the mean alone when there is no interval."""
    if ci["lo"] is None:
        return f"{ci['mean']:.{digits}f}{unit} (1 seed)"
    return f"{ci['mean']:.{digits}f}{unit} [{ci['lo']:.{digits}f}{unit}, {ci['hi']:.{digits}f}{unit}]"


def publish(out: Path, name: str, scale: Scale, summary: dict, table: list[str], draw, panels: tuple | None = None,
            **extra) -> dict:
    """Write an experiment's report: `<name>.png` drawn by `draw(ax)` (or by `draw(axes)` on a grid of
    `panels` = (rows, columns)), results.json (the summary, the scale and its settings, and anything
    in `extra`, such as the paper's numbers) and results.md (the tables)."""
    out.mkdir(parents=True, exist_ok=True)
    figure(out / f"{name}.png", draw, panels)
    settings = {k: v for k, v in dataclasses.asdict(scale).items() if k != "sized"}  # the sizes this report ran at
    write_json(out / "results.json", {"experiment": name, "scale": scale.name, "seeds": scale.seeds,
                                      "summary_format": SUMMARY_FORMAT, "settings": settings, **summary, **extra})
    with atomic_path(out / "results.md") as tmp:
        tmp.write_text("\n".join(table).rstrip() + "\n")
    return summary


def figure(out: Path, draw, panels: tuple | None = None) -> Path:
    """A PNG drawn by `draw(ax)`, or by `draw(axes)` on a (rows, columns) grid, written atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows, cols = panels or (1, 1)
    fig, axes = plt.subplots(rows, cols, figsize=(7 if cols == 1 else 3.6 * cols, 3.8 * rows), dpi=120,
                             squeeze=False)
    draw(axes if panels else axes[0, 0])
    for ax in axes.flat:
        ax.grid(alpha=0.3)
    fig.tight_layout()
    with atomic_path(out, ".png") as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return out


def curve_table(first: str, labels: list, curves: dict[str, list[dict]]) -> list[str]:
    """A Markdown table with a row per point (`labels`) and a column per curve, intervals in the cells."""
    lines = ["| " + " | ".join([first, *curves]) + " |", "| --- |" + " --- |" * len(curves)]
    return lines + [f"| {label} | " + " | ".join(show(c[i]) for c in curves.values()) + " |"
                    for i, label in enumerate(labels)]


def base_models(scale: Scale, results: dict, models: dict[str, tuple[str, str, str]]) -> list[dict]:
    """Each unmerged model's score beside its data's: `models[label] = (task, level, key)` names the
    evaluations `f"{key}|{seed}"`; the experiment's nodes hold the datasets as `f"data|{task}|{level}"`."""
    rows = []
    for label, (task, level, key) in models.items():
        data = results[f"data|{task}|{level}"]["score_mean"]
        scores = [results[f"{key}|{seed}"]["targets"][0]["score_mean"] for seed in range(scale.seeds)]
        ratio = interval(v / data for v in scores)
        rows.append({"model": label, "task": task, "level": level, "data": data, "score": interval(scores),
                     "of_data": ratio, "learned": versus(ratio, LEARNED)})
    return rows


def base_table(rows: list[dict]) -> list[str]:
    """The "base models" table every report carries."""
    mark = {True: "yes", False: "no", None: "not shown"}
    lines = ["", "## Base models", "", f"Each unmerged model against its dataset's mean trajectory score (mean [95% "
             f"bootstrap interval] over seeds). Learned: the interval of model / data lies above {LEARNED:.0%}; "
             f"where a model has not, this experiment's verdicts are inconclusive.", "",
             "| model | data | model score | model / data | learned |", "| --- | --- | --- | --- | --- |"]
    lines += [f"| {r['model']} | {r['data']:.1f} | {show(r['score'], 1)} | {show(r['of_data'])} | "
              f"{mark[r['learned']]} |" for r in rows]
    return lines


def unmet(rows: list[dict]) -> str | None:
    """Why the base models fail the precondition (how many, the lowest three), or None when every
    one is shown to have learned its data."""
    short = sorted((r for r in rows if r["learned"] is not True), key=lambda r: r["of_data"]["mean"])
    if not short:
        return None
    lowest = ", ".join(f"{r['model']} {show(r['of_data'])}" for r in short[:3])
    return (f"{len(short)} of {len(rows)} base models not shown at {LEARNED:.0%} of their data's score (lowest: "
            f"{lowest})")


def finding(claim: str, ours: str, agrees: bool | None, rule: str, precondition: str | None = None) -> dict:
    """One line of REPORT.md: the paper's claim, what our run measured, and the rule that judged it.
    `agrees` comes from an interval (`versus`): None means it straddles the claim or there is none.
    A failed precondition (the base models' `unmet` reason) makes any outcome inconclusive."""
    verdict = {True: "agrees", False: "disagrees", None: "inconclusive"}[None if precondition else agrees]
    return {"claim": claim, "ours": ours + (f"; inconclusive because {precondition}" if precondition else ""),
            "verdict": verdict, "rule": rule}


def paired_difference(cells: dict, better: str, worse: str) -> dict:
    """Task-average score of row `better` minus row `worse`, seed by seed (both rows come from the
    same seeds' models), summarised; the finding's noise band."""
    return summarise(b - w for b, w in zip(seed_averages(cells, better), seed_averages(cells, worse)))


DIFFERENCE_RULE = ("agrees if the 95% interval of the per-seed difference of task averages lies above 0, disagrees "
                   "if below, inconclusive if it straddles 0")
