"""A framework-free MLP actor: safetensors weights + JSON, run with numpy.

The observation normalisation the agent was trained with is part of the actor (`obs_mean`,
`obs_std`, `obs_clip`), so it acts on raw environment observations. Actions are the Gaussian
mean (deterministic) or a sample from N(mean, exp(log_std)^2), clipped to [-1, 1] — exactly how
stable-baselines3 acts with a PPO policy in a Box action space.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import Field
from safetensors import SafetensorError
from safetensors.numpy import load_file, save_file

from dtmerge.atomic import atomic_path, read_json, write_json
from dtmerge.envs import TaskName, get_task
from dtmerge.errors import DtmergeError
from dtmerge.validate import Schema, read_validated

FORMAT = "dtmerge.actor/1"
ZOO_DIR = Path(__file__).parent / "policies"
ACTIVATIONS = {"relu": lambda x: np.maximum(x, 0.0), "tanh": np.tanh}


class ActorError(DtmergeError):
    """An actor file that cannot be used; the message names the file and the problem."""


class ActorMeta(Schema):
    """`<stem>.json` of an actor: its structure, then where it came from and how it measured."""

    format: Literal["dtmerge.actor/1"] = FORMAT
    obs_dim: int = Field(gt=0)
    act_dim: int = Field(gt=0)
    layers: int = Field(gt=0)
    activation: Literal[tuple(ACTIVATIONS)]
    obs_clip: float = Field(gt=0)
    action_sampling: str
    task: TaskName | None = None
    env_id: str | None = None
    algo: str | None = None
    preset: str | None = None
    level: str | None = None
    train_steps: int | None = None
    seed: int | None = None
    snapshot_eval: dict | None = None
    measured: dict | None = None
    measured_episodes: int | None = None
    measured_seed: int | None = None
    selection: dict | None = None


@dataclass
class Actor:
    weights: list[np.ndarray]  # (out, in) per layer
    biases: list[np.ndarray]
    log_std: np.ndarray
    obs_mean: np.ndarray
    obs_std: np.ndarray
    obs_clip: float
    activation: str
    meta: dict = field(default_factory=dict)

    @property
    def obs_dim(self) -> int:
        return self.weights[0].shape[1]

    @property
    def act_dim(self) -> int:
        return self.weights[-1].shape[0]

    def mean_action(self, obs: np.ndarray) -> np.ndarray:
        x = np.clip((np.asarray(obs, np.float32) - self.obs_mean) / self.obs_std, -self.obs_clip, self.obs_clip)
        act = ACTIVATIONS[self.activation]
        for i, (w, b) in enumerate(zip(self.weights, self.biases)):
            x = x @ w.T + b
            if i < len(self.weights) - 1:
                x = act(x)
        return x

    def act(self, obs: np.ndarray, rng: np.random.Generator | None = None) -> np.ndarray:
        """Deterministic (mean) actions when `rng` is None, else Gaussian samples; both clipped."""
        mean = self.mean_action(obs)
        if rng is not None:
            mean = mean + np.exp(self.log_std) * rng.standard_normal(mean.shape).astype(np.float32)
        return np.clip(mean, -1.0, 1.0).astype(np.float32)

    def save(self, stem) -> Path:
        """Write `<stem>.safetensors` and `<stem>.json` (each atomically)."""
        stem = Path(stem)
        tensors = {"obs_mean": self.obs_mean, "obs_std": self.obs_std, "log_std": self.log_std}
        for i, (w, b) in enumerate(zip(self.weights, self.biases)):
            tensors[f"layers.{i}.weight"], tensors[f"layers.{i}.bias"] = w, b
        with atomic_path(stem.with_suffix(".safetensors")) as tmp:
            save_file({k: np.ascontiguousarray(v, np.float32) for k, v in tensors.items()}, tmp)
        write_json(stem.with_suffix(".json"), {
            "format": FORMAT, "obs_dim": self.obs_dim, "act_dim": self.act_dim, "layers": len(self.weights),
            "activation": self.activation, "obs_clip": self.obs_clip,
            "action_sampling": "deterministic: clip(mean, -1, 1); "
                               "stochastic: clip(mean + exp(log_std) * N(0, 1), -1, 1)",
            **self.meta})
        return stem

    @classmethod
    def load(cls, stem) -> "Actor":
        stem = Path(stem)
        meta_file, weight_file = stem.with_suffix(".json"), stem.with_suffix(".safetensors")
        meta = read_validated(meta_file, ActorMeta, ActorError).model_dump(exclude_none=True)
        try:
            t = load_file(weight_file)
        except FileNotFoundError:
            raise ActorError(f"{weight_file}: file not found") from None
        except (SafetensorError, OSError, ValueError) as e:
            raise ActorError(f"{weight_file}: not a readable safetensors file ({e})") from None
        n = meta["layers"]
        need = ["obs_mean", "obs_std", "log_std"] + [f"layers.{i}.{p}" for i in range(n) for p in ("weight", "bias")]
        missing = [k for k in need if k not in t]
        if missing:
            raise ActorError(f"{weight_file}: missing tensors {missing}")
        actor = cls([t[f"layers.{i}.weight"] for i in range(n)], [t[f"layers.{i}.bias"] for i in range(n)],
                    t["log_std"], t["obs_mean"], t["obs_std"], meta["obs_clip"],
                    meta["activation"], {k: v for k, v in meta.items() if k not in _STRUCTURAL})
        actor._check(weight_file, meta)
        return actor

    def _check(self, file, meta):
        dim = self.obs_dim
        for i, (w, b) in enumerate(zip(self.weights, self.biases)):
            if w.ndim != 2 or w.shape[1] != dim or b.shape != (w.shape[0],):
                raise ActorError(f"{file}: layers.{i} has shape {w.shape} / {b.shape}, expected input size {dim}")
            dim = w.shape[0]
        for name, arr, size in (("obs_mean", self.obs_mean, self.obs_dim), ("obs_std", self.obs_std, self.obs_dim),
                                ("log_std", self.log_std, self.act_dim)):
            if arr.shape != (size,):
                raise ActorError(f"{file}: {name} has shape {arr.shape}, expected ({size},)")
        for name, arr in [("obs_std", self.obs_std)] + [(f"layers.{i}.weight", w) for i, w in enumerate(self.weights)]:
            if not np.isfinite(arr).all():
                raise ActorError(f"{file}: {name} contains NaN or inf")
        if (self.obs_std <= 0).any():
            raise ActorError(f"{file}: obs_std must be positive")
        if (meta.get("obs_dim"), meta.get("act_dim")) != (self.obs_dim, self.act_dim):
            raise ActorError(f"{file}: tensors give obs/act dims {self.obs_dim}/{self.act_dim}, "
                             f"the JSON says {meta.get('obs_dim')}/{meta.get('act_dim')}")
        if "task" in meta:
            task = get_task(meta["task"])
            if (task.obs_dim, task.act_dim) != (self.obs_dim, self.act_dim):
                raise ActorError(f"{file}: dims {self.obs_dim}/{self.act_dim} do not fit {task.name}")


_STRUCTURAL = {"format", "obs_dim", "act_dim", "layers", "activation", "obs_clip", "action_sampling"}


def zoo_manifest() -> dict:
    path = ZOO_DIR / "manifest.json"
    if not path.is_file():
        return {"policies": {}}
    return read_json(path)


def load_zoo_actor(task: str, level: str) -> Actor:
    """The shipped behaviour policy for `task` at `level` (medium or expert)."""
    stem = ZOO_DIR / f"{get_task(task).name}-{level}"
    if not stem.with_suffix(".json").is_file():
        shipped = sorted(zoo_manifest()["policies"]) or ["none"]
        raise ActorError(f"{stem}.json: no shipped {level} policy for {task}; shipped: {', '.join(shipped)}")
    return Actor.load(stem)
