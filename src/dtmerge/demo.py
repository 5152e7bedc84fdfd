"""The main job, end to end on data made on the spot (no download):

  zoo medium datasets -> one DT per task -> an attention swap between two of them
  -> Fisher Merge-Freeze-Finetune of all three into one bundle -> MuJoCo scores, one table.
"""

from __future__ import annotations

from pathlib import Path

from dtmerge.atomic import atomic_path, write_json
from dtmerge.data.make import make_dataset
from dtmerge.envs import SCORE_LABEL, TASKS
from dtmerge.errors import DtmergeError
from dtmerge.evaluate import evaluate_checkpoint
from dtmerge.merge.engine import MergeConfig, merge
from dtmerge.merge.fisher import compute_fisher
from dtmerge.merge.mff import MFFConfig, merge_freeze_finetune
from dtmerge.outputs import claim_outputs, run_directory
from dtmerge.plots import plot_curves
from dtmerge.store.bundle import trunk_accounting
from dtmerge.train import TrainConfig, train


def run_demo(out="demo-out", steps: int = 600, finetune_steps: int = 1200, transitions: int = 50_000,
             episodes: int = 10, seed: int = 0, resume: bool = False, overwrite: bool = False,
             progress: bool = True) -> dict:
    """Run the demo into `out`; `resume` continues (and reuses) a stopped or finished demo there."""
    claim_outputs([out], [], overwrite, resume)
    for name, value in (("steps", steps), ("finetune_steps", finetune_steps), ("transitions", transitions),
                        ("episodes", episodes)):
        if value < 1:  # refused before anything is made
            raise DtmergeError(f"--{name.replace('_', '-')} must be at least 1, got {value}")
    with run_directory(out, overwrite, resume) as work:
        return _demo(work, steps, finetune_steps, transitions, episodes, seed, resume, progress)


def _demo(out: Path, steps: int, finetune_steps: int, transitions: int, episodes: int, seed: int, resume: bool,
          progress: bool) -> dict:
    eval_kw = dict(episodes=episodes, seed=10_000 + seed, progress=progress)

    def score(path, task):
        r = evaluate_checkpoint(path, targets=[TASKS[task].rtg_targets[0]], task=task, **eval_kw)["targets"][0]
        return {k: r[k] for k in ("return_mean", "return_stderr", "score_mean", "score_stderr")}

    models, rows = {}, {t: {} for t in TASKS}
    for name in TASKS:
        data = make_dataset(task=name, level="medium", transitions=transitions, seed=seed, progress=progress)
        cfg = TrainConfig(dataset=str(data), out=str(out / "single" / name), steps=steps,
                          warmup_steps=max(1, steps // 10), seed=seed, save_every=steps)
        models[name] = train(cfg, resume=resume, progress=progress)
        rows[name]["single"] = score(models[name], name)

    swap = merge(MergeConfig(models=[str(models["hopper"]), str(models["halfcheetah"])], select=["attn"],
                             method="interpolate", params={"alpha": 1.0}, format="checkpoint",
                             output=str(out / "swap-attn-halfcheetah-into-hopper")), overwrite=resume)
    rows["hopper"]["attention swap"] = score(swap, "hopper")

    for name, ckpt in models.items():
        if not (ckpt / "fisher.json").exists():
            compute_fisher(ckpt, estimator="exact", batches=1, batch_size=64, seed=seed, progress=progress)
    bundle = merge_freeze_finetune(MFFConfig(
        merge=MergeConfig(models=[str(m) for m in models.values()], select=["attn", "mlp"], method="fisher",
                          output=str(out / "merged-fisher")),
        output=str(out / "mff-bundle"),
        finetune={"steps": finetune_steps, "warmup_steps": max(1, finetune_steps // 10), "seed": seed,
                  "save_every": finetune_steps}), resume=resume, progress=progress)
    for name in TASKS:
        rows[name]["Fisher MFF bundle"] = score(bundle, name)

    columns = ["single", "attention swap", "Fisher MFF bundle"]
    fmt = lambda r: f"{r['score_mean']:.1f} ± {r['score_stderr']:.1f}" if r else "–"  # noqa: E731
    table = [f"{SCORE_LABEL} score, mean ± s.e. over {episodes} episodes, RTG target = the task's high target",
             "", "| task | " + " | ".join(columns) + " |", "| --- |" + " --- |" * len(columns)]
    table += [f"| {t} | " + " | ".join(fmt(rows[t].get(c)) for c in columns) + " |" for t in TASKS]
    acc = trunk_accounting(bundle)
    table += ["", "attention swap: hopper's DT with halfcheetah's attention in every layer (alpha = 1)",
              f"Fisher MFF bundle: attention + MLP merged across all three tasks, frozen, the rest finetuned "
              f"{finetune_steps} steps per task; transformer parameters "
              f"{acc['relative_to_single_model_percent']:.2f}% of one single-task model",
              f"single: one DT per task, {steps} steps on {transitions:,} transitions of TASK-medium"]
    summary = {"steps": steps, "finetune_steps": finetune_steps, "transitions": transitions, "episodes": episodes,
               "seed": seed, "results": rows, "accounting": acc, "table": "\n".join(table)}
    plot_curves({t: out / "single" / t / "metrics.jsonl" for t in TASKS}, out / "training-loss.png", "step", "loss",
                "action MSE", f"DT training on {transitions:,}-transition medium datasets", logy=True, overwrite=resume)
    write_json(out / "results.json", summary)
    with atomic_path(out / "results.md") as tmp:
        tmp.write_text(summary["table"] + "\n")
    return summary
