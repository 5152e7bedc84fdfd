"""Fig. 2b: incremental merging at alpha 0.5, HalfCheetah -> Hopper and Hopper -> HalfCheetah:
the merged set grows in depth order (h.0.ln_1, h.0.attn, ... ln_f); return relative to the
target's unmerged return, one curve per direction, mean +/- s.e. over seeds."""

from __future__ import annotations

from pathlib import Path

from dtmerge.experiments import common
from dtmerge.experiments.scales import Scale

NAME = "incremental"
TITLE = "Fig. 2b: incremental merging, alpha = 0.5"
DIRECTIONS = (("halfcheetah", "hopper"), ("hopper", "halfcheetah"))  # (source, target)


def nodes(scale: Scale) -> dict:
    out = {}
    units = common.units(scale.model.get("n_layer", 3))
    for seed in range(scale.seeds):
        for source, target in DIRECTIONS:
            dts = {t: common.dt(scale, t, "expert", seed) for t in (source, target)}
            out[f"original|{target}|{seed}"] = common.evaluation(scale, dts[target], target)
            for k in range(1, len(units) + 1):
                merged = common.interpolate(dts[target], dts[source], units[:k], 0.5)
                out[f"merged|{source}|{target}|{k}|{seed}"] = common.evaluation(scale, merged, target)
    return out


def report(scale: Scale, results: dict, out: Path) -> dict:
    units = common.units(scale.model.get("n_layer", 3))
    curves = {}
    for source, target in DIRECTIONS:
        points = []
        for k in range(1, len(units) + 1):
            ratios = [common.mean_return(results[f"merged|{source}|{target}|{k}|{seed}"])
                      / common.mean_return(results[f"original|{target}|{seed}"]) for seed in range(scale.seeds)]
            points.append({"merged_through": units[k - 1], **common.summarise(ratios)})
        curves[f"{source}->{target}"] = points
    table = [f"# {TITLE}", "", f"Return of the target after merging every unit up to and including the one named, "
             f"divided by its unmerged return; mean ± s.e. over {scale.seeds} seed(s), {scale.episodes} episodes "
             f"each (scale {scale.name}).", "", "| merged through | " + " | ".join(curves) + " |",
             "| --- |" + " --- |" * len(curves)]
    for i, unit in enumerate(units):
        table.append(f"| {unit} | " + " | ".join(f"{c[i]['mean']:.2f} ± {c[i]['se']:.2f}" for c in curves.values())
                     + " |")

    def draw(ax):
        for name, points in curves.items():
            ax.errorbar(range(1, len(units) + 1), [p["mean"] for p in points], yerr=[p["se"] for p in points],
                        marker="o", capsize=2, label=name)
        ax.axhline(1.0, color="k", lw=0.8)
        ax.set_xticks(range(1, len(units) + 1), units, rotation=60, ha="right", fontsize=8)
        ax.set_ylabel("return / unmerged return")
        ax.set_xlabel("merged through (depth order)")
        ax.set_title(TITLE + f" ({scale.name})")
        ax.legend()

    return common.publish(out, NAME, scale, {"curves": curves}, table, draw)


def findings(summary: dict) -> list[dict]:
    last = {name: points[-1]["mean"] for name, points in summary["curves"].items()}
    return [common.finding("Merging the whole transformer collapses the return (Fig. 2b).",
                           "everything merged: " + ", ".join(f"{n} {v:.2f}" for n, v in last.items()) + " of original",
                           all(v <= 0.25 for v in last.values()), "agrees if <= 0.25 in both directions")]
