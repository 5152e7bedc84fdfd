"""Merge-Freeze-Finetune (Lawson & Qureshi, 2023, Section III-B).

Merge a subset of the trunk across N task models, freeze it, and finetune every unmerged
parameter (embeddings, head, anything not selected) separately on each task's own data. The
result is one multi-task bundle whose shared tensors are bit-identical to the merge.
"""

from __future__ import annotations

from pathlib import Path

import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator
from safetensors.torch import load_file

from dtmerge.data import dataset_files
from dtmerge.merge.engine import MergeConfig, MergeError, merge
from dtmerge.outputs import claim_outputs
from dtmerge.store.bundle import load_bundle_task, read_bundle_meta, write_bundle
from dtmerge.store.checkpoint import carried_meta, load_checkpoint, read_meta, save_checkpoint
from dtmerge.train import TrainConfig, train
from dtmerge.train.config import check_finetune_fields


class MFFConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    merge: MergeConfig = Field(description="the merge; its output is the merged (not yet finetuned) bundle")
    output: str = Field(description="the final multi-task bundle")
    datasets: dict[str, str] = Field(default_factory=dict,
                                     description="task -> dataset to finetune on (default: each model's own)")
    finetune: dict = Field(default_factory=dict, description="TrainConfig fields for the finetuning runs "
                                                             "(steps, lr, batch_size, ...)")

    @field_validator("finetune")
    @classmethod
    def _finetune(cls, v):
        return check_finetune_fields(v, {"dataset", "task", "out", "init", "freeze"})


def merge_freeze_finetune(cfg: MFFConfig, resume: bool = False, overwrite: bool = False,
                          progress: bool = True) -> Path:
    """Merge, freeze the merged tensors, finetune the rest per task, and write one bundle.

    Outputs: `cfg.output`, the merged bundle `cfg.merge.output`, and the finetuning runs in
    `<output>.runs/`; `resume` continues stopped finetuning runs (each checked to start from the
    same merge), `overwrite` replaces earlier outputs."""
    if cfg.merge.format != "bundle":
        raise MergeError("merge-freeze-finetune needs merge.format: bundle")
    work = Path(cfg.output).with_name(Path(cfg.output).name + ".runs")
    sources = {path: read_meta(path) for path in cfg.merge.models}
    tasks = [m["task"] for m in sources.values()]
    unknown = sorted(set(cfg.datasets) - set(tasks))
    if unknown:
        raise MergeError(f"datasets: no model of task {unknown[0]!r} (the models' tasks: {', '.join(tasks)})")
    datasets = {m["task"]: cfg.datasets.get(m["task"]) or m["dataset"] for m in sources.values()}
    claim_outputs([cfg.output, cfg.merge.output, work],
                  [*cfg.merge.models, *(f for d in datasets.values() for f in dataset_files(d))], overwrite, resume)
    merged = merge(cfg.merge, overwrite=True)  # claimed above; a merge is deterministic, so resuming redoes it
    bmeta = read_bundle_meta(merged)
    shared_names = bmeta["shared"]
    shared = load_file(merged / "shared.safetensors")
    finetuned = {}
    for task, path in zip(bmeta["merge"]["tasks"], bmeta["merge"]["models"]):
        init = work / task / "init"
        model, _ = load_bundle_task(merged, task)
        save_checkpoint(init, model, {**carried_meta(sources[path]), "merged_from": str(merged)})
        tcfg = TrainConfig(**{**cfg.finetune, "dataset": datasets[task], "task": task,
                              "out": str(work / task / "finetune"), "init": str(init), "freeze": shared_names})
        finetuned[task] = train(tcfg, resume=resume, overwrite=overwrite, progress=progress)
    per_task = {}
    for task, ckpt in finetuned.items():
        model, meta = load_checkpoint(ckpt)
        sd = model.state_dict()
        changed = [n for n in shared_names if not torch.equal(sd[n], shared[n])]
        if changed:
            raise MergeError(f"{ckpt}: frozen merged tensors changed during finetuning: {changed[:3]}")
        per_task[task] = (meta, {n: t for n, t in sd.items() if n not in shared})
    info = {"merge": bmeta["merge"], "mff": {"finetune": cfg.finetune, "datasets": datasets,
                                             "checkpoints": {t: str(c) for t, c in finetuned.items()}}}
    return write_bundle(cfg.output, shared, per_task, info)
