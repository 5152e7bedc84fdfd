"""The main job, end to end on data made on the spot: zoo datasets -> one DT per task -> MuJoCo scores."""

from __future__ import annotations

import json
from pathlib import Path

from dtmerge.atomic import write_json
from dtmerge.data.make import make_dataset
from dtmerge.envs import SCORE_LABEL, TASKS
from dtmerge.evaluate import evaluate_checkpoint
from dtmerge.train import TrainConfig, train


def run_demo(out="demo-out", steps: int = 1000, transitions: int = 50_000, episodes: int = 10, seed: int = 0,
             progress: bool = True) -> dict:
    out = Path(out)
    rows = {}
    for name, task in TASKS.items():
        data = make_dataset(task=name, level="medium", transitions=transitions, seed=seed, progress=progress)
        cfg = TrainConfig(dataset=str(data), out=str(out / name), steps=steps, warmup_steps=max(1, steps // 10),
                          seed=seed, eval_episodes=0, save_every=steps)
        ckpt = train(cfg, resume=(out / name / "checkpoint").exists(), progress=progress)
        result = evaluate_checkpoint(ckpt, episodes, [task.rtg_targets[0]], seed=10_000 + seed,
                                     out=out / name / "eval.json", progress=progress)
        rows[name] = result["targets"][0]
    table = [f"| task | dataset | DT steps | RTG target | return (mean ± s.e.) | {SCORE_LABEL} |",
             "| --- | --- | --- | --- | --- | --- |"]
    for name, r in rows.items():
        table.append(f"| {name} | {name}-medium ({transitions} transitions) | {steps} | {r['target']:g} | "
                     f"{r['return_mean']:.1f} ± {r['return_stderr']:.1f} | {r['score_mean']:.1f} ± {r['score_stderr']:.1f} |")
    summary = {"steps": steps, "transitions": transitions, "episodes": episodes, "seed": seed, "results": rows,
               "table": "\n".join(table)}
    write_json(out / "results.json", summary)
    (out / "results.md").write_text(summary["table"] + "\n")
    return summary


if __name__ == "__main__":
    print(json.dumps(run_demo(), indent=2))
