"""Fig. 3: interpolate every attention parameter of a target DT toward a source DT's, alpha from
0 (the target) to 1 (the source's attention swapped in), for the 6 ordered task pairs; return
relative to the target's unmerged return, mean +/- s.e. over seeds."""

from __future__ import annotations

from itertools import permutations
from pathlib import Path

from dtmerge.envs import TASKS
from dtmerge.experiments import common
from dtmerge.experiments.scales import Scale

NAME = "attention-interp"
TITLE = "Fig. 3: interpolating attention between DTs of different tasks"
ALPHAS = tuple(round(0.1 * i, 1) for i in range(1, 11))


def nodes(scale: Scale) -> dict:
    out = {}
    for seed in range(scale.seeds):
        dts = {t: common.dt(scale, t, "expert", seed) for t in TASKS}
        for t in TASKS:
            out[f"original|{t}|{seed}"] = common.evaluation(scale, dts[t], t)
        for target, source in permutations(TASKS, 2):
            for alpha in ALPHAS:
                merged = common.interpolate(dts[target], dts[source], ["attn"], alpha)
                out[f"merged|{target}|{source}|{alpha}|{seed}"] = common.evaluation(scale, merged, target)
    return out


def report(scale: Scale, results: dict, out: Path) -> dict:
    curves = {}
    for target, source in permutations(TASKS, 2):
        points = [{"alpha": 0.0, "mean": 1.0, "se": 0.0, "values": [1.0] * scale.seeds}]
        for alpha in ALPHAS:
            ratios = [common.mean_return(results[f"merged|{target}|{source}|{alpha}|{seed}"])
                      / common.mean_return(results[f"original|{target}|{seed}"]) for seed in range(scale.seeds)]
            points.append({"alpha": alpha, **common.summarise(ratios)})
        curves[f"{source}->{target}"] = points
    header = ["alpha"] + list(curves)
    table = [f"# {TITLE}", "", f"Return of the target with its attention interpolated toward the source's, divided "
             f"by its unmerged return; mean ± s.e. over {scale.seeds} seed(s), {scale.episodes} episodes each "
             f"(scale {scale.name}). Columns are source->target.", "", "| " + " | ".join(header) + " |",
             "| --- |" + " --- |" * len(curves)]
    for i, alpha in enumerate((0.0,) + ALPHAS):
        table.append(f"| {alpha:g} | " + " | ".join(f"{c[i]['mean']:.2f} ± {c[i]['se']:.2f}" for c in curves.values())
                     + " |")

    def draw(ax):
        for name, points in curves.items():
            ax.errorbar([p["alpha"] for p in points], [p["mean"] for p in points], yerr=[p["se"] for p in points],
                        marker="o", ms=3, capsize=2, label=name)
        ax.axhline(1.0, color="k", lw=0.8)
        ax.set_xlabel("alpha (0: target's attention, 1: source's)")
        ax.set_ylabel("return / unmerged return")
        ax.set_title(TITLE + f" ({scale.name})", fontsize=9)
        ax.legend(fontsize=7)

    return common.publish(out, NAME, scale, {"curves": curves}, table, draw)


def findings(summary: dict) -> list[dict]:
    swapped = {name: points[-1]["mean"] for name, points in summary["curves"].items()}
    mean = sum(swapped.values()) / len(swapped)
    return [common.finding("All attention parameters can be swapped between tasks with small losses (Fig. 3).",
                           f"alpha 1, mean over the 6 pairs: {mean:.2f} of the original return (lowest "
                           f"{min(swapped.values()):.2f}, {min(swapped, key=swapped.get)})",
                           mean >= 0.8, "agrees if the mean is >= 0.80")]
