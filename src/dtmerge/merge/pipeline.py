"""Finetune-then-merge (Lawson & Qureshi, 2023, Section V-F, Table V).

Start from a multi-task DT (a bundle, e.g. trained on medium data with one `--dataset` per task),
finetune a copy per task on better data with L_2 toward the starting weights and the final
LayerNorm and timestep embedding frozen (as the paper's code did), then merge the finetuned trunks
directly or with Fisher weights into one multi-task bundle — no further training after the merge.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from dtmerge.atomic import write_json
from dtmerge.data import dataset_files
from dtmerge.evaluate import evaluate_checkpoint
from dtmerge.merge.engine import MergeConfig, MergeError, merge
from dtmerge.merge.fisher import compute_fisher
from dtmerge.outputs import claim_outputs
from dtmerge.store.bundle import read_bundle_meta
from dtmerge.train import TrainConfig, train
from dtmerge.train.config import check_finetune_fields


class FinetuneMergeConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    multitask: str = Field(description="the multi-task bundle to start every finetuning run from")
    datasets: dict[str, str] = Field(description="task -> dataset to finetune that task's copy on")
    output: str = Field(description="the merged multi-task bundle")
    method: Literal["average", "fisher"] = Field("fisher", description="how the finetuned trunks are merged")
    select: list[str] = Field(["trunk"], description="what is merged (the paper: all transformer parameters)")
    finetune: dict = Field(default_factory=dict, description="TrainConfig fields for each finetuning run; "
                           "defaults: l2_weight 1e-4, freeze [ln_f, embed_timestep.weight]")

    @field_validator("finetune")
    @classmethod
    def _finetune(cls, v):
        return check_finetune_fields(v, {"dataset", "task", "out", "init"})
    fisher: dict = Field(default_factory=dict, description="compute_fisher arguments (estimator, batches, ...)")
    eval_episodes: int = Field(10, ge=0, description="episodes per task to evaluate the merged bundle on (0: skip)")


def finetune_then_merge(cfg: FinetuneMergeConfig, resume: bool = False, overwrite: bool = False,
                        progress: bool = True) -> Path:
    """Outputs: the merged bundle `cfg.output` and the finetuning runs in `<output>.runs/`."""
    tasks = list(read_bundle_meta(cfg.multitask)["tasks"])
    missing = [t for t in tasks if t not in cfg.datasets]
    if missing:
        raise MergeError(f"no finetuning dataset for {missing}; the bundle holds {tasks}")
    unknown = sorted(set(cfg.datasets) - set(tasks))
    if unknown:
        raise MergeError(f"datasets: the bundle holds no task {unknown[0]!r} (its tasks: {', '.join(tasks)})")
    work = Path(cfg.output).with_name(Path(cfg.output).name + ".runs")
    claim_outputs([cfg.output, work], [cfg.multitask, *(f for d in cfg.datasets.values() for f in dataset_files(d))],
                  overwrite, resume)
    defaults = {"l2_weight": 1e-4, "freeze": ["ln_f", "embed_timestep.weight"]}
    checkpoints = []
    for task in tasks:
        tcfg = TrainConfig(**{**defaults, **cfg.finetune, "dataset": cfg.datasets[task], "task": task,
                              "init": cfg.multitask, "out": str(work / task)})
        ckpt = train(tcfg, resume=resume, overwrite=overwrite, progress=progress)
        if cfg.method == "fisher" and not (ckpt / "fisher.json").is_file():
            compute_fisher(ckpt, progress=progress, **cfg.fisher)
        checkpoints.append(str(ckpt))
    bundle = merge(MergeConfig(models=checkpoints, select=cfg.select, method=cfg.method, output=cfg.output),
                   overwrite=overwrite or resume)
    if cfg.eval_episodes:
        results = [evaluate_checkpoint(bundle, cfg.eval_episodes, task=t, progress=progress) for t in tasks]
        write_json(work / "eval.json", {"results": results})
    return bundle
