"""Fig. 2b: incremental merging at alpha 0.5, HalfCheetah -> Hopper and Hopper -> HalfCheetah:
the merged set grows in depth order (h.0.ln_1, h.0.attn, ... ln_f); return relative to the
target's unmerged return, one curve per direction, mean and 95% bootstrap interval over seeds;
the paper's two panels."""

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
            out[f"data|{target}|expert"] = common.dataset(scale, target, "expert")
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
    base = common.base_models(scale, results, {f"{t} expert": (t, "expert", f"original|{t}") for _, t in DIRECTIONS})
    table = [f"# {TITLE}", "", f"Return of the target after merging every unit up to and including the one named, "
             f"divided by its unmerged return; mean [95% bootstrap interval] over {scale.seeds} seed(s), "
             f"{scale.episodes} episodes each (scale {scale.name}).", "",
             *common.curve_table("merged through", units, curves), *common.base_table(base)]

    def draw(axes):
        for ax, (name, points) in zip(axes[0], curves.items()):
            ax.errorbar(range(1, len(units) + 1), [p["mean"] for p in points], yerr=common.error_bars(points),
                        marker="o", capsize=2)
            ax.axhline(1.0, color="k", lw=0.8, ls="--", label="unmerged (reference)")
            ax.set_xticks(range(1, len(units) + 1), units, rotation=60, ha="right", fontsize=7)
            ax.set_ylabel("return / unmerged return")
            ax.set_xlabel("merged through (depth order)")
            ax.set_ylim(bottom=0)
            ax.set_title(f"{name} ({scale.name})", fontsize=9)
            ax.legend(fontsize=7)

    return common.publish(out, NAME, scale, {"curves": curves, "base_models": base}, table, draw, panels=(1, 2))


def findings(summary: dict) -> list[dict]:
    curves = summary["curves"]
    seeds = len(next(iter(curves.values()))[-1]["values"])
    worst = common.summarise(max(points[-1]["values"][s] for points in curves.values()) for s in range(seeds))
    return [common.finding("Merging the whole transformer collapses the return: \"close to zero\" (Fig. 2b); "
                           "read here as below a quarter of the original.",
                           "everything merged: " + ", ".join(f"{n} {common.show(p[-1])}" for n, p in curves.items())
                           + f" of original; higher of the two per seed {common.show(worst)}",
                           common.below(worst, 0.25),
                           "agrees if the interval of the higher direction per seed lies below 0.25, disagrees if "
                           "above", common.unmet(summary["base_models"]))]
