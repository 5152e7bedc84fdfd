"""Do the base DTs learn their data? D4RL-normalised score against training steps for every task
and data level the experiments train on, at the scale's recipe (the paper's learning rate, 1e-4)
and at a faster one (3e-4, on the expert data), and with the original DT code's initialisation of
the embeddings and head (PyTorch's defaults; expert data), beside each dataset's mean trajectory
score and its behaviour policy's, with the training loss. Not a figure of the paper: every merging result
stands on these models, so a report must show that they fit their data before it judges a merge.

Where one falls short, two checks say why: every medium-expert DT is asked for the return of its
data's medium half and of its expert half (a DT that follows its conditioning scores higher with
the second), and the long schedule trains the DT that falls short (HalfCheetah medium-expert) four
times the recipe's steps, on one seed.

The recipe's curve is read off the very DTs the other experiments merge: every DT of a scale keeps
its weights at the scale's `curve_steps` (snapshots), so the curve costs only evaluations. Where a
scale trains a dataset longer (`dataset_steps`: HalfCheetah medium-expert at mini), the other
experiments merge the long schedule's DT, and the recipe's curve is of DTs trained for it alone."""

from __future__ import annotations

from pathlib import Path

from dtmerge.envs import SCORE_LABEL, TASKS
from dtmerge.experiments import common
from dtmerge.experiments.scales import Scale
from dtmerge.zoo import zoo_manifest

NAME = "dt-curves"
TITLE = "Base DTs: score against training steps, beside their data's"
LEVELS = ("medium", "medium-expert", "expert")
FAST = {"lr": 3e-4}  # the faster schedule; run on the expert data only, to the recipe's middle curve step
LONG = 4  # the long schedule trains this many times the recipe's steps (the DT that falls short of its data)
LONG_CASES = ("halfcheetah",), ("medium-expert",)
STYLES = {"recipe": "-", "fast": "--", "original init": "-.", "long": (0, (4, 1, 1, 1, 1, 1))}  # data: dotted


def schedules(scale: Scale) -> dict:
    """name -> (tasks, levels, steps evaluated, extra train settings, seeds). The original
    initialisation shows why it was replaced, and the long schedule whether the DT that falls short
    at the recipe gets there with more steps, each on one seed; the recipe and the faster schedule
    take every seed."""
    steps = [s for s in scale.curve_steps if s < scale.steps] + [scale.steps]
    fast_steps = steps[:max(1, len(steps) - 1)]
    long_steps = [scale.steps, 2 * scale.steps, LONG * scale.steps]
    long = {"steps": long_steps[-1], "keep_steps": [*steps, *long_steps[1:-1]]}
    return {"recipe": (TASKS, LEVELS, steps, {"steps": scale.steps}, scale.seeds),  # every dataset, the same steps
            "fast": (TASKS, ("expert",), fast_steps, {**FAST, "steps": fast_steps[-1]}, scale.seeds),
            "original init": (TASKS, ("expert",), fast_steps, {"embed_init": "original", "steps": fast_steps[-1]}, 1),
            "long": (*LONG_CASES, long_steps, long, 1)}


def rtg_targets(task: str) -> list[float]:
    """The returns a medium-expert DT is asked for to see whether it follows its conditioning: the
    mean return of the medium half's behaviour policy, then the expert half's."""
    policies = zoo_manifest()["policies"]
    return [round(policies[f"{task}-{p}"]["stochastic"]["return_mean"], -1) for p in ("medium", "expert")]


def nodes(scale: Scale) -> dict:
    out = {}
    for name, (tasks, levels, steps, extra, seeds) in schedules(scale).items():
        for level in levels:
            for t in tasks:
                out[f"data|{t}|{level}"] = common.dataset(scale, t, level)
                for seed in range(seeds):
                    model = common.dt(scale, t, level, seed, **extra)
                    out[f"train|{name}|{t}|{level}|{seed}"] = model
                    for s in steps:
                        kept = model if s == steps[-1] else common.snapshot(model, s)
                        out[f"{name}|{t}|{level}|{s}|{seed}"] = common.evaluation(scale, kept, t)
                    if level == "medium-expert":
                        out[f"rtg|{name}|{t}|{seed}"] = common.evaluation(scale, model, t, targets=rtg_targets(t))
    return out


def behaviour_scores(task: str, level: str) -> list[float]:
    """The D4RL score of the shipped policies that rolled out a dataset (stochastic actions, as they
    made it; medium-expert: its medium and expert halves)."""
    policies = zoo_manifest()["policies"]
    parts = ("medium", "expert") if level == "medium-expert" else (level,)
    return [policies[f"{task}-{p}"]["stochastic"]["score_mean"] for p in parts]


def report(scale: Scale, results: dict, out: Path) -> dict:
    rows, curves, response = [], {}, []
    for name, (tasks, levels, steps, _, seeds) in schedules(scale).items():
        for level in levels:
            for t in tasks:
                data_score = results[f"data|{t}|{level}"]["score_mean"]
                points = [{"step": s, **common.interval(results[f"{name}|{t}|{level}|{s}|{seed}"]["targets"][0]
                                                         ["score_mean"] for seed in range(seeds))} for s in steps]
                final = points[-1]
                ratio = common.interval(v / data_score for v in final["values"])
                mse = [results[f"train|{name}|{t}|{level}|{seed}"]["mse"] for seed in range(seeds)]
                curves[f"{name}|{t}|{level}"] = {"points": points, "mse": mse}
                rows.append({"schedule": name, "task": t, "level": level, "data": data_score,
                             "behaviour": behaviour_scores(t, level), "steps": steps[-1], "dt": final,
                             "of_data": ratio, "learned": common.versus(ratio, common.LEARNED)})
                if level == "medium-expert":
                    response.append(rtg_response(results, name, t, steps[-1], seeds))
    verdict = {True: "yes", False: "no", None: "inconclusive"}
    table = [f"# {TITLE}", "", f"{SCORE_LABEL} score of each DT at its last step against its dataset's mean trajectory "
             f"score; mean [95% bootstrap interval] over {scale.seeds} seed(s), {scale.episodes} episodes each (scale "
             f"{scale.name}: {scale.transitions:,} transitions a dataset, twice that for medium-expert). `recipe` is "
             f"the scale's (lr 1e-4, warmup {scale.warmup_steps}); `fast` trains at lr {FAST['lr']:g}; `original init` "
             f"trains as the recipe (to the same middle step as `fast`) with the original DT code's embeddings and "
             f"head (PyTorch defaults), on one seed. Learned: the "
             f"interval of DT / data lies above {common.LEARNED:.0%}.", "",
             "| schedule | task | level | data | behaviour policy | steps | DT | DT / data | learned |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    table += [f"| {r['schedule']} | {r['task']} | {r['level']} | {r['data']:.1f} | "
              f"{' / '.join(f'{b:.1f}' for b in r['behaviour'])} | {r['steps']} | {common.show(r['dt'], 1)} | "
              f"{common.show(r['of_data'])} | {verdict[r['learned']]} |" for r in rows]
    every_step = sorted({p["step"] for c in curves.values() for p in c["points"]})
    table += ["", "Score at every evaluated step (mean [interval]):", "",
              "| schedule | task | level | " + " | ".join(f"step {s}" for s in every_step) + " |",
              "| --- | --- | --- |" + " --- |" * len(every_step)]
    for key, c in curves.items():
        at = {p["step"]: common.show(p, 1) for p in c["points"]}
        table.append(f"| {' | '.join(key.split('|'))} | " + " | ".join(at.get(s, "") for s in every_step) + " |")
    table += ["", "Does a medium-expert DT follow its return conditioning? Its last step's score when asked for the "
              "return of the data's medium half and of its expert half (the behaviour policies' mean returns); "
              "follows: the interval of the difference lies above 0.", "",
              "| schedule | task | steps | medium target | expert target | expert - medium | follows |",
              "| --- | --- | --- | --- | --- | --- | --- |"]
    table += [f"| {r['schedule']} | {r['task']} | {r['steps']} | {r['targets'][0]:.0f}: {common.show(r['low'], 1)} | "
              f"{r['targets'][1]:.0f}: {common.show(r['high'], 1)} | {common.show(r['difference'], 1)} | "
              f"{verdict[r['follows']]} |" for r in response]
    return common.publish(out, NAME, scale, {"rows": rows, "curves": curves, "rtg_response": response}, table,
                          lambda axes: _draw(axes[0], scale, rows, curves), panels=(1, len(LEVELS) + 1))


def rtg_response(results: dict, name: str, task: str, steps: int, seeds: int) -> dict:
    """The score at the medium and at the expert return target, seed by seed, and their difference."""
    per_seed = [[t["score_mean"] for t in results[f"rtg|{name}|{task}|{seed}"]["targets"]] for seed in range(seeds)]
    difference = common.interval(high - low for low, high in per_seed)
    return {"schedule": name, "task": task, "steps": steps, "targets": rtg_targets(task),
            "low": common.interval(low for low, _ in per_seed), "high": common.interval(high for _, high in per_seed),
            "difference": difference, "follows": common.versus(difference, 0.0)}


def _draw(axes, scale: Scale, rows: list[dict], curves: dict) -> None:
    """One panel per level: score against steps per task (the faster schedule dashed), the data's
    mean score as a dotted line; a last panel with the training loss."""
    for ax, level in zip(axes, LEVELS):
        for i, t in enumerate(TASKS):
            data = next(r["data"] for r in rows if r["task"] == t and r["level"] == level)
            ax.axhline(data, color=f"C{i}", ls=":", lw=1)
            for name, style in STYLES.items():
                c = curves.get(f"{name}|{t}|{level}")
                if c is None:
                    continue
                ax.errorbar([p["step"] for p in c["points"]], [p["mean"] for p in c["points"]],
                            yerr=common.error_bars(c["points"]), color=f"C{i}", ls=style, marker="o", ms=3, capsize=2,
                            label=t if name == "recipe" else f"{t} ({name})")
        ax.set_title(f"{level} ({scale.name})", fontsize=9)
        ax.set_xlabel("training steps")
    axes[0].set_ylabel(f"{SCORE_LABEL} (dotted: the data's mean)")
    for ax in axes[:len(LEVELS)]:
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=6)
    loss = axes[-1]
    for i, t in enumerate(TASKS):
        for level, style in zip(LEVELS, ("-", "--", ":")):
            for mse in curves[f"recipe|{t}|{level}"]["mse"][:1]:
                loss.plot([m[0] for m in mse], [m[1] for m in mse], color=f"C{i}", ls=style, lw=0.8,
                          label=f"{t} {level}")
    loss.set_yscale("log")
    loss.set_title("training action MSE (seed 0)", fontsize=9)
    loss.set_xlabel("training steps")
    loss.legend(fontsize=5)


def findings(summary: dict) -> list[dict]:
    recipe = [r for r in summary["rows"] if r["schedule"] == "recipe"]
    short = [f"{r['task']} {r['level']} {common.show(r['of_data'])}" for r in recipe if r["learned"] is not True]
    learned = [r["learned"] for r in recipe]
    return [common.finding(
        f"Precondition of every merging result: each unmerged DT reaches {common.LEARNED:.0%} of its data's mean "
        "score.",
        f"{sum(v is True for v in learned)} of {len(recipe)} DTs at the recipe's {recipe[0]['steps']} steps"
        + (f"; not shown for: {', '.join(short)}" if short else ""), common.every(learned),
        f"per DT, the 95% interval of DT / data over seeds above {common.LEARNED:.0%}; agrees if every DT's is")]
