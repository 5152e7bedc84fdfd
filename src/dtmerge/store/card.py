"""Model cards: every checkpoint and bundle directory carries a README.md in the Hugging Face Hub's
model-card format (a YAML header with the library, tags, datasets and, once measured, the
evaluation scores as a model index; then what the model is and how it was made), written with
`huggingface_hub`'s `ModelCard`, so uploading the directory with the Hub's own client gives a
usable model page."""

from __future__ import annotations

import json
from pathlib import Path

from dtmerge import __version__
from dtmerge.atomic import atomic_path

TAGS = ["decision-transformer", "reinforcement-learning", "offline-rl", "mujoco", "dtmerge"]
TEMPLATE = "---\n{{ card_data }}\n---\n\n{{ body }}\n"


CARD_OMITS = ("state_mean", "state_std", "dataset_attrs", "config", "rtg_targets")  # in the files, not the card


def checkpoint_provenance(meta: dict) -> dict:
    """What a checkpoint's card says about how it was made: its metadata less the bulky parts."""
    return {k: v for k, v in meta.items() if k not in CARD_OMITS and v is not None}


def bundle_provenance(meta: dict) -> dict:
    """What a bundle's card says about how it was made (its tasks' metadata is in the table)."""
    return {k: v for k, v in meta.items() if k != "tasks" and v is not None}


def card_text(tasks: dict[str, dict], provenance: dict, scores: list[dict] | None = None) -> str:
    """The card of a model acting on `tasks` (task -> its metadata), made as `provenance` says,
    with `scores` (dtmerge eval results) when they exist."""
    from huggingface_hub import EvalResult, ModelCard, ModelCardData

    datasets = sorted({m["dataset"] for m in tasks.values() if not m["dataset"].startswith("(")})
    evals = [EvalResult(task_type="reinforcement-learning", dataset_type=r["env_id"], dataset_name=r["env_id"],
                        metric_type="d4rl_normalized_score", metric_name=f"D4RL-normalised score, RTG {t['target']:g}",
                        metric_value=round(t["score_mean"], 2))
             for r in scores or [] for t in r["targets"]]
    data = ModelCardData(library_name="dtmerge", tags=TAGS + sorted(tasks), datasets=datasets or None,
                         model_name=", ".join(sorted(tasks)) + " Decision Transformer", eval_results=evals or None)
    first = next(iter(tasks.values()))
    c = first["config"]
    lines = [f"# Decision Transformer: {', '.join(sorted(tasks))}", "",
             f"A {c['n_embd']}-wide, {c['n_layer']}-layer, {c['n_head']}-head Decision Transformer "
             f"({'one model per task, sharing tensors' if len(tasks) > 1 else 'one task'}) made with "
             f"dtmerge {__version__}. Load and run it with `dtmerge eval <this directory>`"
             + (" --task TASK" if len(tasks) > 1 else "") + ".", "",
             "| task | environment | data | context K | RTG scale |", "| --- | --- | --- | --- | --- |"]
    lines += [f"| {t} | {m['env_id']} | {m['dataset']} | {m['config']['context_len']} | {m['rtg_scale']:g} |"
              for t, m in sorted(tasks.items())]
    if scores:
        lines += ["", "## Evaluation", "", "| task | RTG target | return | D4RL-normalised score | episodes |",
                  "| --- | --- | --- | --- | --- |"]
        lines += [f"| {r['task']} | {t['target']:g} | {t['return_mean']:.1f} ± {t['return_stderr']:.1f} | "
                  f"{t['score_mean']:.1f} ± {t['score_stderr']:.1f} | {r['episodes']} |"
                  for r in scores for t in r["targets"]]
    lines += ["", "## How it was made", "", "```json", json.dumps(provenance, indent=2, default=str), "```"]
    return ModelCard.from_template(data, template_str=TEMPLATE, body="\n".join(lines)).content


def write_card(directory, tasks: dict[str, dict], provenance: dict, scores: list[dict] | None = None) -> Path:
    """Write README.md into `directory` (one being built, or one this command made)."""
    path = Path(directory) / "README.md"
    with atomic_path(path) as tmp:
        tmp.write_text(card_text(tasks, provenance, scores))
    return path
