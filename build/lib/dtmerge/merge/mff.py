"""Merge-Freeze-Finetune (Lawson & Qureshi, 2023, Section III-B).

Merge a subset of the trunk across N task models, freeze it, and finetune every unmerged
parameter (embeddings, head, anything not selected) separately on each task's own data. The
result is one multi-task bundle whose shared tensors are bit-identical to the merge.
"""

from __future__ import annotations

from pathlib import Path

import torch
from pydantic import BaseModel, ConfigDict, Field
from safetensors.torch import load_file

from dtmerge.checkpoint import load_checkpoint, read_meta
from dtmerge.merge.bundle import load_bundle_task, read_bundle_meta, write_bundle
from dtmerge.merge.engine import MergeConfig, MergeError, merge
from dtmerge.train import TrainConfig, train


class MFFConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    merge: MergeConfig = Field(description="the merge; its output is the merged (not yet finetuned) bundle")
    output: str = Field(description="the final multi-task bundle")
    datasets: dict[str, str] = Field(default_factory=dict,
                                     description="task -> dataset to finetune on (default: each model's own)")
    finetune: dict = Field(default_factory=dict, description="TrainConfig fields for the finetuning runs "
                                                             "(steps, lr, batch_size, ...)")


def merge_freeze_finetune(cfg: MFFConfig, progress: bool = True) -> Path:
    if cfg.merge.format != "bundle":
        raise MergeError("merge-freeze-finetune needs merge.format: bundle")
    merged = merge(cfg.merge)
    bmeta = read_bundle_meta(merged)
    shared_names = bmeta["shared"]
    shared = load_file(merged / "shared.safetensors")
    work = Path(cfg.output).with_name(Path(cfg.output).name + ".runs")
    finetuned = {}
    for task, path in zip(bmeta["merge"]["tasks"], bmeta["merge"]["models"]):
        init = work / task / "init"
        model, tmeta = load_bundle_task(merged, task)
        from dtmerge.checkpoint import save_checkpoint

        source_meta = read_meta(path)
        save_checkpoint(init, model, {**{k: v for k, v in source_meta.items()
                                         if k not in ("format", "dtmerge_version", "config")},
                                      "merged_from": str(merged)})
        dataset = cfg.datasets.get(task) or source_meta.get("dataset")
        if not dataset:
            raise MergeError(f"no dataset for {task}: give datasets: {{{task}: ...}}")
        tcfg = TrainConfig(**{"eval_episodes": 0, **cfg.finetune, "dataset": dataset, "task": task,
                              "out": str(work / task / "finetune"), "init": str(init), "freeze": shared_names})
        ckpt = train(tcfg, resume=(work / task / "finetune" / "checkpoint").exists(), progress=progress)
        finetuned[task] = ckpt
    per_task = {}
    for task, ckpt in finetuned.items():
        model, meta = load_checkpoint(ckpt)
        sd = model.state_dict()
        changed = [n for n in shared_names if not torch.equal(sd[n], shared[n])]
        if changed:
            raise MergeError(f"{ckpt}: frozen merged tensors changed during finetuning: {changed[:3]}")
        per_task[task] = (meta, {n: t for n, t in sd.items() if n not in shared})
    info = {"merge": bmeta["merge"], "mff": {"finetune": cfg.finetune, "datasets":
                                             {t: read_meta(c)["dataset"] for t, c in finetuned.items()},
                                             "checkpoints": {t: str(c) for t, c in finetuned.items()}}}
    return write_bundle(cfg.output, shared, per_task, info)
