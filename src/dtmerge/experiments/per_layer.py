"""Fig. 2a: merge one unit at a time (each block's ln_1, attn, ln_2, mlp, and ln_f) between expert
DTs of two tasks, at alpha 0.5 (average) and 1 (swap in the other task's unit), for all 6 ordered
pairs; return relative to the target's unmerged return, mean +/- s.e. over pairs and seeds."""

from __future__ import annotations

from itertools import permutations
from pathlib import Path

from dtmerge.envs import TASKS
from dtmerge.experiments import common
from dtmerge.experiments.scales import Scale

NAME = "per-layer"
TITLE = "Fig. 2a: merging a single unit at a time"
ALPHAS = (0.5, 1.0)


def nodes(scale: Scale) -> dict:
    out = {}
    n_layer = scale.model.get("n_layer", 3)
    for seed in range(scale.seeds):
        dts = {t: common.dt(scale, t, "expert", seed) for t in TASKS}
        for t in TASKS:
            out[f"original|{t}|{seed}"] = common.evaluation(scale, dts[t], t)
        for target, source in permutations(TASKS, 2):
            for unit in common.units(n_layer):
                for alpha in ALPHAS:
                    merged = common.interpolate(dts[target], dts[source], [unit], alpha)
                    out[f"merged|{target}|{source}|{unit}|{alpha}|{seed}"] = common.evaluation(scale, merged, target)
    return out


def report(scale: Scale, results: dict, out: Path) -> dict:
    n_layer = scale.model.get("n_layer", 3)
    rows = []
    for unit in common.units(n_layer):
        row = {"unit": unit}
        for alpha in ALPHAS:
            ratios = [common.mean_return(results[f"merged|{t}|{s}|{unit}|{alpha}|{seed}"])
                      / common.mean_return(results[f"original|{t}|{seed}"])
                      for seed in range(scale.seeds) for t, s in permutations(TASKS, 2)]
            row[str(alpha)] = common.summarise(ratios)
        rows.append(row)
    table = [f"# {TITLE}", "", f"Return after merging one unit, divided by the target's unmerged return; mean ± s.e. "
             f"over the 6 ordered task pairs x {scale.seeds} seed(s), {scale.episodes} episodes each "
             f"(scale {scale.name}).", "", "| unit | alpha 0.5 (average) | alpha 1 (swap) |", "| --- | --- | --- |"]
    table += [f"| {r['unit']} | {r['0.5']['mean']:.2f} ± {r['0.5']['se']:.2f} | {r['1.0']['mean']:.2f} ± "
              f"{r['1.0']['se']:.2f} |" for r in rows]

    def draw(ax):
        x = range(len(rows))
        for k, alpha in enumerate(ALPHAS):
            ax.bar([i + (k - 0.5) * 0.4 for i in x], [r[str(alpha)]["mean"] for r in rows], 0.4,
                   yerr=[r[str(alpha)]["se"] for r in rows], capsize=2, label=f"alpha = {alpha:g}")
        ax.axhline(1.0, color="k", lw=0.8)
        ax.set_xticks(list(x), [r["unit"] for r in rows], rotation=60, ha="right", fontsize=8)
        ax.set_ylabel("return / unmerged return")
        ax.set_title(TITLE + f" ({scale.name})")
        ax.legend()

    return common.publish(out, NAME, scale, {"rows": rows}, table, draw)


def findings(summary: dict) -> list[dict]:
    rows = summary["rows"]
    kind = {part: [r for r in rows if r["unit"].endswith(part)] for part in ("ln_1", "attn", "ln_2", "mlp")}
    mean = {part: sum(r[a]["mean"] for r in rs for a in ("0.5", "1.0")) / (2 * len(rs)) for part, rs in kind.items()}
    attn_swap = sum(r["1.0"]["mean"] for r in kind["attn"]) / len(kind["attn"])
    return [
        common.finding("A single attention layer can be swapped in from another task's DT with little loss (Fig. 2a).",
                       f"attention swapped (alpha 1): {attn_swap:.2f} of the original return, averaged over layers",
                       attn_swap >= 0.8, "agrees if >= 0.80"),
        common.finding("Merging MLP layers hurts most (Fig. 2a).",
                       "mean over both alphas: " + ", ".join(f"{p} {v:.2f}" for p, v in mean.items()),
                       min(mean, key=mean.get) == "mlp", "agrees if the MLP mean is the lowest of the four unit kinds"),
    ]
