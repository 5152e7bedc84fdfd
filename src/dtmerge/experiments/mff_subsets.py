"""Table II: Merge-Freeze-Finetune between the HalfCheetah and Hopper expert DTs over different
subsets, against using one model's frozen transformer for both tasks and against merging the
attention without finetuning; return as a percentage of each model's own, and the transformer
parameters the pair needs relative to one model."""

from __future__ import annotations

from pathlib import Path

from dtmerge.experiments import common
from dtmerge.experiments.scales import Scale
from dtmerge.experiments.store import Node

NAME = "mff-subsets"
TITLE = "Table II: Merge-Freeze-Finetune over subsets, HalfCheetah + Hopper experts"
TASKS = ("hopper", "halfcheetah")
# configuration -> (what is merged, how, finetune after?, the paper's Hopper %, Cheetah %, size %)
CONFIGS = {
    "Frozen from Hopper": (["trunk"], ("hopper", 1.0), True, 100, 3, 100),
    "Frozen from HalfCheetah": (["trunk"], ("halfcheetah", 1.0), True, 48, 100, 100),
    "Transformer (MFF)": (["trunk"], None, True, 61, 86, 100),
    "Attention+MLP (MFF)": (["attn", "mlp"], None, True, 90, 98, 100.26),
    "Attention (MFF)": (["attn"], None, True, 101, 101, 166.82),
    "Attention (M)": (["attn"], None, False, 79, 98, 166.82),
}
RECOVERED = 95  # % of the unmerged return that counts as "recovers": the paper's 101% against its M row's 79%


def _merge_spec(select: list[str], frozen_from: tuple | None) -> dict:
    if frozen_from is None:
        return {"select": select, "method": "average", "format": "bundle"}
    return {"select": select, "method": "interpolate", "params": {"alpha": 1.0}, "format": "bundle"}


def nodes(scale: Scale) -> dict:
    out = {}
    for seed in range(scale.seeds):
        dts = {t: common.dt(scale, t, "expert", seed) for t in TASKS}
        for t in TASKS:
            out[f"data|{t}|expert"] = common.dataset(scale, t, "expert")
            out[f"Original|{t}|{seed}"] = common.evaluation(scale, dts[t], t)
        for name, (select, frozen_from, finetune, *_) in CONFIGS.items():
            if frozen_from:  # the source keeps its model unmodified; the other task gets its trunk, frozen
                source = frozen_from[0]
                order = [t for t in TASKS if t != source] + [source]  # interpolate: [target, source]
            else:
                order = list(TASKS)
            deps = {f"model{i}": dts[t] for i, t in enumerate(order)}
            merge = _merge_spec(select, frozen_from)
            if finetune:
                bundle = Node("mff", {"merge": merge, "finetune": scale.finetune_spec(seed)}, deps)
            else:
                bundle = Node("merge", merge, deps)
            for t in TASKS:
                if frozen_from and t == frozen_from[0]:
                    continue  # unmodified: its original evaluation
                out[f"{name}|{t}|{seed}"] = common.evaluation(scale, bundle, t, bundle_task=True)
            out[f"{name}|size|{seed}"] = bundle
    return out


def report(scale: Scale, results: dict, out: Path) -> dict:
    rows = {"Original": {t: {"mean": 100.0, "values": [100.0] * scale.seeds} for t in TASKS} | {"size": 200.0}}
    for name, (select, frozen_from, finetune, *paper) in CONFIGS.items():
        row = {}
        for t in TASKS:
            if frozen_from and t == frozen_from[0]:
                row[t] = {"mean": 100.0, "values": [100.0] * scale.seeds}  # its own model: a reference
                continue
            pct = [100 * common.mean_return(results[f"{name}|{t}|{seed}"])
                   / common.mean_return(results[f"Original|{t}|{seed}"]) for seed in range(scale.seeds)]
            row[t] = common.summarise(pct)
        size = results[f"{name}|size|0"].get("accounting", {}).get("relative_to_single_model_percent")
        row["size"] = 100.0 if frozen_from else size
        row["paper"] = dict(zip(("hopper", "halfcheetah", "size"), paper))
        rows[name] = row
    base = common.base_models(scale, results, {f"{t} expert": (t, "expert", f"Original|{t}") for t in TASKS})
    table = [f"# {TITLE}", "", f"Return as a percentage of each task's own unmerged DT, mean [95% bootstrap interval] "
             f"over {scale.seeds} seed(s), {scale.episodes} episodes each; MFF finetunes {scale.finetune_steps} steps "
             f"per task (scale {scale.name}); the paper's Table II in brackets. 100% without an interval: the task "
             "keeps its own unmodified model (a reference, not a measurement).", "",
             "| configuration | Hopper | Cheetah | transformer size |", "| --- | --- | --- | --- |"]
    for name, row in rows.items():
        paper = row.get("paper", {"hopper": 100, "halfcheetah": 100, "size": 200})
        size = "–" if row["size"] is None else f"{row['size']:.2f}%"
        table.append(f"| {name} | {_pct(row['hopper'])} ({paper['hopper']}%) | {_pct(row['halfcheetah'])} "
                     f"({paper['halfcheetah']}%) | {size} ({paper['size']}%) |")
    table += common.base_table(base)

    def draw(ax):
        names = [n for n in rows if n != "Original"]
        for k, t in enumerate(TASKS):
            cs = [rows[n][t] for n in names]
            measured = ["lo" in c for c in cs]
            x = [i + (k - 0.5) * 0.4 for i in range(len(names))]
            ax.plot(x, [rows[n]["paper"][t] for n in names], "k_", ms=10, mew=2, ls="none", zorder=3,
                    label="paper" if k == 0 else None)
            ax.bar(x, [c["mean"] for c in cs], 0.4,
                   yerr=common.error_bars([c if m else {**c, "lo": None, "hi": None} for c, m in zip(cs, measured)]),
                   capsize=2, label=t, color=f"C{k}", hatch=[None if m else "//" for m in measured])
        ax.axhline(100, color="k", lw=0.8, ls="--", label="unmerged (reference); hatched: unmodified model")
        ax.set_xticks(range(len(names)), names, rotation=25, ha="right", fontsize=7)
        ax.set_ylabel("% of the unmerged return")
        ax.set_title(TITLE + f" ({scale.name})", fontsize=9)
        ax.legend(fontsize=7)

    return common.publish(out, NAME, scale, {"rows": rows, "base_models": base}, table, draw)


def _pct(cell: dict) -> str:
    return "100% (own model)" if "lo" not in cell else common.show(cell, 0, "%")


def _lower_task(row: dict) -> list[float]:
    """Per seed, the lower of the two tasks' % (a merge recovers only if it does on both)."""
    return [min(h, c) for h, c in zip(row["hopper"]["values"], row["halfcheetah"]["values"])]


def findings(summary: dict) -> list[dict]:
    mff, merged = summary["rows"]["Attention (MFF)"], summary["rows"]["Attention (M)"]
    worst = common.summarise(_lower_task(mff))
    gain = common.summarise(a - b for a, b in zip(_lower_task(mff), _lower_task(merged)))
    unmet = common.unmet(summary["base_models"])
    return [common.finding("MFF over attention recovers the original return (Table II: 101% and 101%).",
                           f"Attention (MFF): Hopper {_pct(mff['hopper'])}, Cheetah {_pct(mff['halfcheetah'])}; the "
                           f"lower of the two per seed {common.show(worst, 0, '%')}", common.versus(worst, RECOVERED),
                           f"agrees if the interval of the lower task's % per seed lies above {RECOVERED}%, disagrees "
                           "if below", unmet),
            common.finding("Finetuning after the merge is what recovers it (Table II: attention merged without "
                           "finetuning keeps 79% on Hopper).",
                           f"Attention (M): Hopper {_pct(merged['hopper'])}, Cheetah {_pct(merged['halfcheetah'])}; "
                           f"MFF minus M on the lower task per seed {common.show(gain, 0, ' points')}",
                           common.versus(gain, 0), "agrees if the interval of the per-seed difference lies above 0, "
                           "disagrees if below", unmet)]
