"""Offline datasets: D4RL HDF5 files and Minari directories, read into `Trajectories`."""

from __future__ import annotations

from pathlib import Path

from dtmerge.data.d4rl import read_d4rl, write_d4rl
from dtmerge.data.make import dataset_path, make_dataset, parse_id
from dtmerge.data.minari import find_minari_dir, read_minari, write_minari
from dtmerge.data.sampler import WindowSampler
from dtmerge.data.trajectories import DatasetError, Trajectories
from dtmerge.envs import TASKS, Task, get_task

__all__ = ["DatasetError", "Trajectories", "WindowSampler", "dataset_files", "load_dataset", "read_d4rl",
           "write_d4rl", "read_minari", "write_minari"]


def dataset_files(spec) -> list[Path]:
    """The files or directories a dataset spec reads: what no command may write over."""
    path = Path(spec)
    if path.suffix in (".hdf5", ".h5"):
        return [path]
    minari_dir = find_minari_dir(spec)
    if minari_dir is not None:
        return [minari_dir.parent if minari_dir.name == "data" else minari_dir]
    parsed = parse_id(str(spec))
    if parsed is not None:
        return [dataset_path(*parsed)]
    return [path]


def load_dataset(spec, task: str | Task | None = None) -> tuple[Trajectories, Task]:
    """Load a dataset given as a D4RL `.hdf5` path, a Minari directory or id, or a made-dataset id.

    Ids like `hopper-medium` or `hopper-medium-50000` name datasets made from the shipped behaviour
    policies; they are made (and cached under $DTMERGE_HOME) on first use.

    The task comes from `task`, else the dataset's metadata, else a file name that starts with a
    task name (`hopper-medium-v2.hdf5`). The dataset is checked against the task's sizes.
    """
    path = Path(spec)
    if path.suffix in (".hdf5", ".h5"):
        traj = read_d4rl(path)
    elif find_minari_dir(spec) is not None:
        traj = read_minari(spec)
    elif parse_id(str(spec)) is not None:
        traj = read_d4rl(make_dataset(str(spec)))
    else:
        raise DatasetError(spec, "not found: expected a D4RL .hdf5 file, a Minari dataset directory, "
                           "a Minari dataset id under MINARI_DATASETS_PATH, or an id like hopper-medium")
    if isinstance(task, str):
        task = get_task(task)
    if task is None:
        task = _infer_task(traj, path)
    traj.check(task)
    traj.attrs.setdefault("task", task.name)
    return traj, task


def _infer_task(traj: Trajectories, path: Path) -> Task:
    if traj.attrs.get("task") in TASKS:
        return TASKS[traj.attrs["task"]]
    for part in reversed(path.parts):
        for name, task in TASKS.items():
            if part.lower().startswith(name):
                return task
    raise DatasetError(traj.source, f"cannot tell which task this dataset is for; pass --task "
                       f"({', '.join(TASKS)})")
