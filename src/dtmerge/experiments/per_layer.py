"""Fig. 2a: merge one unit at a time (each block's ln_1, attn, ln_2, mlp, and ln_f) between expert
DTs of two tasks, at alpha 0.5 (average) and 1 (swap in the other task's unit), for all 6 ordered
pairs; return relative to the target's unmerged return, averaged over the pairs within a seed, then
mean and 95% bootstrap interval over seeds (pairs of one seed share models, so they are not
independent evidence); per pair too, for the paper's HalfCheetah <-> Walker2d claim."""

from __future__ import annotations

from itertools import permutations
from pathlib import Path

import numpy as np

from dtmerge.envs import TASKS
from dtmerge.experiments import common
from dtmerge.experiments.scales import Scale

NAME = "per-layer"
TITLE = "Fig. 2a: merging a single unit at a time"
ALPHAS = (0.5, 1.0)
PAIRS = list(permutations(TASKS, 2))  # (target, source)


def nodes(scale: Scale) -> dict:
    out = {}
    n_layer = scale.model.get("n_layer", 3)
    for seed in range(scale.seeds):
        dts = {t: common.dt(scale, t, "expert", seed) for t in TASKS}
        for t in TASKS:
            out[f"data|{t}|expert"] = common.dataset(scale, t, "expert")
            out[f"original|{t}|{seed}"] = common.evaluation(scale, dts[t], t)
        for target, source in permutations(TASKS, 2):
            for unit in common.units(n_layer):
                for alpha in ALPHAS:
                    merged = common.interpolate(dts[target], dts[source], [unit], alpha)
                    out[f"merged|{target}|{source}|{unit}|{alpha}|{seed}"] = common.evaluation(scale, merged, target)
    return out


def _ratio(results: dict, target: str, source: str, unit: str, alpha: float, seed: int) -> float:
    return (common.mean_return(results[f"merged|{target}|{source}|{unit}|{alpha}|{seed}"])
            / common.mean_return(results[f"original|{target}|{seed}"]))


def report(scale: Scale, results: dict, out: Path) -> dict:
    n_layer = scale.model.get("n_layer", 3)
    seeds = range(scale.seeds)
    rows = []
    for unit in common.units(n_layer):
        row = {"unit": unit}
        for alpha in ALPHAS:
            row[str(alpha)] = common.summarise(
                sum(_ratio(results, t, s, unit, alpha, seed) for t, s in PAIRS) / len(PAIRS) for seed in seeds)
        rows.append(row)
    attn = [u for u in common.units(n_layer) if u.endswith(".attn")]
    pairs = {f"{s}->{t}": common.summarise(sum(_ratio(results, t, s, u, 1.0, seed) for u in attn) / len(attn)
                                           for seed in seeds) for t, s in PAIRS}
    base = common.base_models(scale, results, {f"{t} expert": (t, "expert", f"original|{t}") for t in TASKS})
    table = [f"# {TITLE}", "", f"Return after merging one unit, divided by the target's unmerged return; averaged over "
             f"the 6 ordered task pairs within a seed, then mean [95% bootstrap interval] over {scale.seeds} seed(s), "
             f"{scale.episodes} episodes each (scale {scale.name}).", "",
             "| unit | alpha 0.5 (average) | alpha 1 (swap) |", "| --- | --- | --- |"]
    table += [f"| {r['unit']} | {common.show(r['0.5'])} | {common.show(r['1.0'])} |" for r in rows]
    table += ["", "Attention swapped in (alpha 1), averaged over the layers, per pair (source->target):", "",
              "| pair | return / unmerged |", "| --- | --- |"]
    table += [f"| {name} | {common.show(c)} |" for name, c in pairs.items()]
    table += common.base_table(base)

    def draw(ax):
        x = range(len(rows))
        for k, alpha in enumerate(ALPHAS):
            cells = [r[str(alpha)] for r in rows]
            ax.bar([i + (k - 0.5) * 0.4 for i in x], [c["mean"] for c in cells], 0.4, yerr=common.error_bars(cells),
                   capsize=2, label=f"alpha = {alpha:g}")
        ax.axhline(1.0, color="k", lw=0.8, ls="--", label="unmerged (reference)")
        ax.set_xticks(list(x), [r["unit"] for r in rows], rotation=60, ha="right", fontsize=8)
        ax.set_ylabel("return / unmerged return")
        ax.set_title(TITLE + f" ({scale.name}; bars: 95% interval over seeds)", fontsize=9)
        ax.legend(fontsize=7)

    return common.publish(out, NAME, scale, {"rows": rows, "pairs": pairs, "base_models": base}, table, draw)


def findings(summary: dict) -> list[dict]:
    rows, unmet = summary["rows"], common.unmet(summary["base_models"])
    seeds = len(rows[0]["1.0"]["values"])
    kind = {part: [r for r in rows if r["unit"].endswith(part)] for part in ("ln_1", "attn", "ln_2", "mlp")}
    per_seed = {part: [sum(r[a]["values"][s] for r in rs for a in ("0.5", "1.0")) / (2 * len(rs)) for s in range(seeds)]
                for part, rs in kind.items()}
    attn_swap = common.summarise(sum(r["1.0"]["values"][s] for r in kind["attn"]) / len(kind["attn"])
                                 for s in range(seeds))
    mlp_margin = common.summarise(min(per_seed[p][s] for p in per_seed if p != "mlp") - per_seed["mlp"][s]
                                  for s in range(seeds))
    hw = common.summarise((summary["pairs"]["halfcheetah->walker2d"]["values"][s]
                           + summary["pairs"]["walker2d->halfcheetah"]["values"][s]) / 2 for s in range(seeds))
    return [
        common.finding("A single attention layer can be swapped in from another task's DT with little loss (Fig. 2a).",
                       f"attention swapped (alpha 1), averaged over layers and pairs: {common.show(attn_swap)} of the "
                       "original return", common.versus(attn_swap, 0.8),
                       "agrees if the 95% interval over seeds lies above 0.80, disagrees if below", unmet),
        common.finding("HalfCheetah and Walker2d swap attention layers at no cost (Fig. 2a).",
                       f"both directions, averaged over layers: {common.show(hw)} of the original return",
                       common.versus(hw, 0.9), "agrees if the interval lies above 0.90, disagrees if below", unmet),
        common.finding("Merging MLP layers hurts most (Fig. 2a).",
                       "mean over both alphas: " + ", ".join(f"{p} {np.mean(v):.2f}" for p, v in per_seed.items())
                       + f"; lowest other kind minus MLP {common.show(mlp_margin)}", common.versus(mlp_margin, 0.0),
                       "agrees if the interval of (lowest other unit kind - MLP) lies above 0, disagrees if below",
                       unmet),
    ]
