"""The schemas of the store's metadata files, checked before a single tensor is read.

Task names come only from the task registry (so a name can never steer a file path), shapes
must fit the model config, and numbers must be finite.
"""

from __future__ import annotations

import math
from typing import Annotated, Literal

from pydantic import Field, model_validator

from dtmerge.envs import TASKS, TaskName
from dtmerge.model import DTConfig
from dtmerge.validate import Schema

CHECKPOINT_FORMAT = "dtmerge.dt/1"
BUNDLE_FORMAT = "dtmerge.bundle/1"
FISHER_FORMAT = "dtmerge.fisher/1"
GRAM_FORMAT = "dtmerge.regmean/1"
ESTIMATORS = ("exact", "empirical", "batch")


Sha256 = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]


class TaskMeta(Schema):
    """What acting on one task needs besides the tensors (a checkpoint's or a bundle task's)."""

    task: TaskName
    env_id: str
    config: DTConfig
    state_mean: list[float]
    state_std: list[float]
    rtg_scale: float = Field(gt=0)
    rtg_targets: list[float]
    dataset: str

    @model_validator(mode="after")
    def _fits(self):
        task = TASKS[self.task]
        if (self.config.state_dim, self.config.act_dim) != (task.obs_dim, task.act_dim):
            raise ValueError(f"config dims {self.config.state_dim}/{self.config.act_dim} do not fit task "
                             f"{self.task} ({task.obs_dim}/{task.act_dim})")
        if self.env_id != task.env_id:
            raise ValueError(f"env_id {self.env_id!r} is not task {self.task}'s ({task.env_id})")
        for name in ("state_mean", "state_std"):
            if len(getattr(self, name)) != self.config.state_dim:
                raise ValueError(f"{name} has {len(getattr(self, name))} entries, config.state_dim is "
                                 f"{self.config.state_dim}")
        if any(s <= 0 for s in self.state_std):
            raise ValueError("state_std entries must be positive")
        return self


class CheckpointMeta(TaskMeta):
    """meta.json of a checkpoint directory."""

    format: Literal["dtmerge.dt/1"] = CHECKPOINT_FORMAT
    dtmerge_version: str
    dataset_attrs: dict
    seed: int
    step: int = Field(ge=0)
    train_config: dict
    frozen: list[str]
    init: str
    init_kind: Literal["bundle", "gpt2"] | None = None
    init_trunk_sha256: Sha256
    init_seed: int | None = None  # the seed of the starting weights (absent in checkpoints made before it was)
    dataset_sha256: Sha256 | None = None  # the training data's content (Trajectories.fingerprint)
    merge: dict | None = None  # provenance of a merged checkpoint
    perturbation: dict | None = None  # provenance of a perturbed one
    merged_from: str | None = None  # the merged bundle an MFF finetune started from
    alignment: dict | None = None  # provenance of a permutation-aligned one (dtmerge align)
    imported: dict | None = None  # provenance of one imported from another format (dtmerge import)


class BundleMeta(Schema):
    """bundle.json of a multi-task bundle."""

    format: Literal["dtmerge.bundle/1"] = BUNDLE_FORMAT
    dtmerge_version: str
    tasks: dict[TaskName, TaskMeta] = Field(min_length=1)
    shared: list[str]
    merge: dict | None = None
    mff: dict | None = None
    multitask: dict | None = None

    @model_validator(mode="after")
    def _keys_are_tasks(self):
        for key, meta in self.tasks.items():
            if key != meta.task:
                raise ValueError(f"tasks.{key} describes task {meta.task!r}")
        return self


class FisherMeta(Schema):
    """fisher.json beside a checkpoint: how the Fisher was computed and which files it belongs to."""

    format: Literal["dtmerge.fisher/1"] = FISHER_FORMAT
    estimator: Literal[ESTIMATORS]
    dataset: str
    task: TaskName
    batches: int = Field(gt=0)
    batch_size: int = Field(gt=0)
    seed: int
    windows: int = Field(gt=0)
    action_tokens: int = Field(ge=0)
    normalised_by: Literal["windows", "action tokens"]
    model_sha256: Sha256
    fisher_sha256: Sha256
    tensors: list[str] = Field(min_length=1)
    total: float = Field(ge=0, description="the Fisher summed over every block tensor (transformer.h.*): the "
                                           "paper's per-model normaliser")
    trunk_total: float = Field(ge=0, description="the Fisher summed over every stored tensor")

    @model_validator(mode="after")
    def _totals(self):
        if self.total > self.trunk_total * (1 + 1e-6) or not math.isfinite(self.trunk_total):
            raise ValueError("total (blocks) exceeds trunk_total (every tensor)")
        return self


class GramMeta(Schema):
    """regmean.json beside a checkpoint: the data its RegMean Grams come from and the files they belong to."""

    format: Literal["dtmerge.regmean/1"] = GRAM_FORMAT
    dataset: str
    batches: int = Field(gt=0)
    batch_size: int = Field(gt=0)
    seed: int
    tokens: int = Field(gt=0)
    model_sha256: Sha256
    gram_sha256: Sha256
    tensors: list[str] = Field(min_length=1)
