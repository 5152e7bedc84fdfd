"""D4RL-style datasets made offline from the shipped behaviour policies.

Levels follow D4RL: `random` (uniform random actions), `medium` (a policy at about a third of the
expert's return), `expert`, and `medium-expert` (the medium and expert datasets concatenated).
Actions are sampled from the policy's Gaussian, as D4RL sampled from its SAC policies. Datasets
are cached as D4RL HDF5 under `$DTMERGE_HOME/datasets` (default ~/.cache/dtmerge) and written
atomically, so a stopped run never leaves a file that looks whole.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np

from dtmerge.data.d4rl import write_d4rl
from dtmerge.data.rollout import random_policy, rollout
from dtmerge.data.trajectories import Trajectories
from dtmerge.envs import TASKS, Task, get_task

LEVELS = ("random", "medium", "expert", "medium-expert")
DEFAULT_SIZE = {"random": 1_000_000, "medium": 1_000_000, "expert": 1_000_000, "medium-expert": 2_000_000}
ID_PATTERN = re.compile(rf"^({'|'.join(TASKS)})-({'|'.join(sorted(LEVELS, key=len, reverse=True))})"
                        r"(?:-(\d+))?(?:-seed(\d+))?$")


def data_home() -> Path:
    return Path(os.environ.get("DTMERGE_HOME", Path.home() / ".cache" / "dtmerge"))


def parse_id(dataset_id: str) -> tuple[Task, str, int, int] | None:
    """`hopper-medium`, `hopper-medium-50000`, `walker2d-medium-expert-2000-seed3` -> parts, else None."""
    m = ID_PATTERN.match(dataset_id)
    if m is None:
        return None
    task, level, size, seed = m.groups()
    return get_task(task), level, int(size) if size else DEFAULT_SIZE[level], int(seed or 0)


def dataset_path(task: Task, level: str, transitions: int, seed: int) -> Path:
    name = f"{task.name}-{level}"
    if transitions != DEFAULT_SIZE[level]:
        name += f"-{transitions}"
    if seed:
        name += f"-seed{seed}"
    return data_home() / "datasets" / f"{name}.hdf5"


def make_trajectories(task: Task, level: str, transitions: int, seed: int = 0,
                      progress: bool = True) -> Trajectories:
    if level not in LEVELS:
        raise ValueError(f"unknown level {level!r}; levels: {', '.join(LEVELS)}")
    if level == "medium-expert":
        half = transitions // 2
        parts = [make_trajectories(task, lvl, n, seed, progress)
                 for lvl, n in (("medium", half), ("expert", transitions - half))]
        attrs = {"task": task.name, "level": level, "seed": seed, "parts": [p.attrs for p in parts]}
        traj = Trajectories.concatenate(parts, f"<{task.name}-{level}>", attrs)
    elif level == "random":
        traj = rollout(task, random_policy(task, seed), transitions, seed, progress=progress,
                       attrs={"level": level, "seed": seed, "policy": "uniform random actions in [-1, 1]",
                              "action_sampling": "uniform"})
    else:
        from dtmerge.zoo import load_zoo_actor

        actor = load_zoo_actor(task.name, level)
        rng = np.random.default_rng(seed)
        traj = rollout(task, lambda obs: actor.act(obs, rng), transitions, seed, progress=progress,
                       attrs={"level": level, "seed": seed, "policy": f"dtmerge zoo {task.name}-{level}",
                              "policy_train_steps": actor.meta.get("train_steps"),
                              "policy_algo": actor.meta.get("algo"),
                              "action_sampling": "stochastic: clip(mean + exp(log_std) * N(0, 1), -1, 1)"})
    returns = traj.returns()
    traj.attrs.update({"transitions": len(traj), "trajectories": traj.num_trajectories,
                       "return_mean": float(returns.mean()), "return_std": float(returns.std()),
                       "score_mean": float(task.normalized_score(returns).mean()),
                       "env_id": task.env_id})
    return traj


def make_dataset(dataset_id: str | None = None, task: str | None = None, level: str | None = None,
                 transitions: int | None = None, seed: int = 0, force: bool = False,
                 progress: bool = True) -> Path:
    """Return the cached HDF5 path of a made dataset, making it first if needed."""
    if dataset_id is not None:
        parsed = parse_id(dataset_id)
        if parsed is None:
            raise ValueError(f"{dataset_id!r} is not a dataset id like hopper-medium or hopper-medium-50000")
        task_, level, size, seed = parsed
        transitions = transitions or size
    else:
        task_, transitions = get_task(task), transitions or DEFAULT_SIZE[level]
    path = dataset_path(task_, level, transitions, seed)
    if path.exists() and not force:
        return path
    return write_d4rl(make_trajectories(task_, level, transitions, seed, progress), path)
