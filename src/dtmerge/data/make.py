"""D4RL-style datasets made offline from the shipped behaviour policies.

Levels follow D4RL: `random` (uniform random actions), `medium` (a policy at about a third of the
expert's return), `expert`, and `medium-expert` (the medium and expert datasets concatenated).
Actions are sampled from the policy's Gaussian, as D4RL sampled from its SAC policies. Datasets
are cached as D4RL HDF5 under `$DTMERGE_HOME/datasets` (default ~/.cache/dtmerge), written
atomically, with a sidecar `<file>.json` (written last) recording the file's size and SHA-256: a
cached file is reused only if it still matches, so neither a stopped run nor a damaged file is
ever trusted.
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

import numpy as np

from dtmerge.atomic import file_sha256, read_json, write_json
from dtmerge.data.d4rl import write_d4rl
from dtmerge.data.rollout import random_policy, rollout
from dtmerge.data.trajectories import DatasetError, Trajectories
from dtmerge.envs import TASKS, Task, get_task
from dtmerge.zoo import load_zoo_actor

LEVELS = ("random", "medium", "expert", "medium-expert")
DEFAULT_SIZE = {"random": 1_000_000, "medium": 1_000_000, "expert": 1_000_000, "medium-expert": 2_000_000}
MAX_TRANSITIONS = 10_000_000  # 5x D4RL's largest; about 1.5 GB of float32 for the 17-dim tasks
CACHE_FORMAT = "dtmerge.cache/1"
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
    size = int(size) if size else DEFAULT_SIZE[level]
    check_size(size, dataset_id)
    return get_task(task), level, size, int(seed or 0)


def check_size(transitions: int, what: str) -> None:
    """Refuse sizes no dataset can have before any work starts."""
    if not 1 <= transitions <= MAX_TRANSITIONS:
        raise DatasetError(what, f"{transitions} transitions is out of range: a made dataset has 1 to "
                           f"{MAX_TRANSITIONS:,}")


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
                 transitions: int | None = None, seed: int = 0, overwrite: bool = False,
                 progress: bool = True) -> Path:
    """Return the cached HDF5 path of a made dataset, making it first if it is missing or fails
    verification (`overwrite` makes it again regardless)."""
    if dataset_id is not None:
        parsed = parse_id(dataset_id)
        if parsed is None:
            raise DatasetError(dataset_id, "not a dataset id like hopper-medium or hopper-medium-50000")
        task_, level, size, seed = parsed
        transitions = transitions or size
    else:
        task_, transitions = get_task(task), transitions or DEFAULT_SIZE[level]
    check_size(transitions, f"{task_.name}-{level}")
    if seed < 0:
        raise DatasetError(f"{task_.name}-{level}", f"seed must be non-negative, got {seed}")
    path = dataset_path(task_, level, transitions, seed)
    if not overwrite:
        problem = cache_problem(path)
        if problem is None:
            return path
        if path.exists():
            print(f"{path}: cached dataset not trusted ({problem}); making it again", file=sys.stderr)
    write_d4rl(make_trajectories(task_, level, transitions, seed, progress), path)
    write_json(sidecar(path), {"format": CACHE_FORMAT, "size": path.stat().st_size, "sha256": file_sha256(path)})
    return path


def sidecar(path: Path) -> Path:
    return path.with_name(path.name + ".json")


def cache_problem(path: Path) -> str | None:
    """Why the cached file at `path` cannot be reused, or None if its size and hash match the record."""
    if not path.is_file():
        return "missing"
    try:
        record = read_json(sidecar(path))
    except (FileNotFoundError, ValueError):
        return "no valid size/hash record beside it"
    if not isinstance(record, dict) or record.get("format") != CACHE_FORMAT:
        return "no valid size/hash record beside it"
    if record.get("size") != path.stat().st_size:
        return f"size {path.stat().st_size} differs from the recorded {record.get('size')}"
    if record.get("sha256") != file_sha256(path):
        return "content differs from the recorded SHA-256"
    return None
