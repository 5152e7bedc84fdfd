"""The paper's Section V-A / Fig. 3 experiment at small scale: train one DT per task on its medium
data, then for every ordered pair (target, source) put the source's attention into the target
(alpha 0.5 = average, 1 = swap) and evaluate the target. Scores are reported raw and relative to
the target's own score (the paper's "normalized by original performance").

    python experiments/attention_swap.py --out runs/attention-swap [--steps 5000] [--transitions 100000]

Resumable: trained models and finished evaluations are reused when the command is run again.
Writes results.json and results.md into --out.
"""

from __future__ import annotations

import argparse
import json
from itertools import permutations
from pathlib import Path

from dtmerge import MergeConfig, TrainConfig, evaluate_checkpoint, make_dataset, merge, train
from dtmerge.atomic import write_json
from dtmerge.envs import SCORE_LABEL, TASKS


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="runs/attention-swap")
    ap.add_argument("--steps", type=int, default=5000)
    ap.add_argument("--transitions", type=int, default=100_000)
    ap.add_argument("--episodes", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    out = Path(args.out)

    def score(path, task, name):
        cache = out / "evals" / f"{name}.json"
        if not cache.is_file():
            r = evaluate_checkpoint(path, args.episodes, [TASKS[task].rtg_targets[0]], seed=10_000 + args.seed,
                                    out=cache, progress=False)
        r = json.loads(cache.read_text())["targets"][0]
        return {"score": r["score_mean"], "stderr": r["score_stderr"]}

    models, original = {}, {}
    for task in TASKS:
        data = make_dataset(task=task, level="medium", transitions=args.transitions, seed=args.seed)
        run = out / "models" / task
        models[task] = train(TrainConfig(dataset=str(data), out=str(run), steps=args.steps,
                                         warmup_steps=max(1, args.steps // 10), seed=args.seed,
                                         save_every=1000), resume=True)
        original[task] = score(models[task], task, f"{task}-original")
    rows = []
    for target, source in permutations(TASKS, 2):
        for alpha in (0.5, 1.0):
            name = f"{target}-attn-from-{source}-alpha{alpha}"
            merged = merge(MergeConfig(models=[str(models[target]), str(models[source])], select=["attn"],
                                       method="interpolate", params={"alpha": alpha}, format="checkpoint",
                                       output=str(out / "merged" / name)), overwrite=True)
            s = score(merged, target, name)
            rows.append({"target": target, "source": source, "alpha": alpha, **s,
                         "relative": s["score"] / original[target]["score"]})
    table = [f"{SCORE_LABEL}, mean ± s.e. over {args.episodes} episodes; relative = merged / original score",
             "", "| target | source of attention | alpha | score | relative |", "| --- | --- | --- | --- | --- |"]
    table += [f"| {t} | (original) | 0 | {o['score']:.1f} ± {o['stderr']:.1f} | 1.00 |" for t, o in original.items()]
    table += [f"| {r['target']} | {r['source']} | {r['alpha']:g} | {r['score']:.1f} ± {r['stderr']:.1f} | "
              f"{r['relative']:.2f} |" for r in rows]
    write_json(out / "results.json", {"args": vars(args), "original": original, "merged": rows})
    (out / "results.md").write_text("\n".join(table) + "\n")
    print("\n".join(table))


if __name__ == "__main__":
    main()
