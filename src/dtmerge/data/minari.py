"""Minari datasets on local disk: read with h5py, write with minari's own API.

A Minari dataset directory `<root>/<dataset_id>/data/` holds `metadata.json` and `main_data.hdf5`
with one group `episode_{i}` per episode (N+1 observations, N actions/rewards/terminations/
truncations). Reading needs no minari install and no network; writing uses
`minari.create_dataset_from_buffers` (the `dtmerge[minari]` extra) so the files are Minari's own.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import warnings
from pathlib import Path

import h5py
import numpy as np

from dtmerge.atomic import swap
from dtmerge.data.d4rl import read_array
from dtmerge.data.trajectories import DatasetError, Trajectories
from dtmerge.envs import TASKS, Task
from dtmerge.errors import DtmergeError
from dtmerge.outputs import claim_outputs
from dtmerge.validate import parse_json, read_json_file


def minari_root() -> Path:
    return Path(os.environ.get("MINARI_DATASETS_PATH", Path.home() / ".minari" / "datasets"))


SAFE_ID = re.compile(r"^[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)*$")


def _safe_id(dataset_id: str) -> bool:
    """A Minari id names a folder under the Minari root: plain path parts only, never `.` or `..`."""
    return bool(SAFE_ID.match(dataset_id)) and not any(part in (".", "..") for part in dataset_id.split("/"))


def check_minari_id(dataset_id: str) -> str:
    if not _safe_id(dataset_id):
        raise DatasetError(dataset_id, "not a valid Minari dataset id (letters, digits, '_', '-', '.' in "
                           "'/'-separated parts, no '..'), e.g. mujoco/hopper/medium-v0")
    return dataset_id


def find_minari_dir(spec) -> Path | None:
    """Resolve a local path or a dataset id under the Minari root to the dataset's `data/` folder."""
    bases = [Path(spec)]
    if _safe_id(str(spec)):
        bases.append(minari_root() / str(spec))
    for base in bases:
        for cand in (base / "data", base):
            if (cand / "metadata.json").is_file():
                return cand
    return None


def read_minari(spec) -> Trajectories:
    data_dir = find_minari_dir(spec)
    if data_dir is None:
        raise DatasetError(spec, f"no Minari dataset here (looked for data/metadata.json at this path "
                           f"and under MINARI_DATASETS_PATH={minari_root()})")
    meta = _metadata(data_dir / "metadata.json")
    if meta.get("data_format", "hdf5") != "hdf5":
        raise DatasetError(data_dir, f"data_format {meta['data_format']!r} is not supported (only hdf5)")
    main = data_dir / "main_data.hdf5"
    if not main.is_file():
        raise DatasetError(main, "file not found")
    obs, next_obs, act, rew, term, trunc = [], [], [], [], [], []
    try:
        f = h5py.File(main, "r")
    except OSError as e:
        raise DatasetError(main, f"not a readable HDF5 file ({e})") from None
    with f:
        names = sorted((k for k in f.keys() if re.fullmatch(r"episode_\d+", k)), key=lambda k: int(k[8:]))
        if not names:
            raise DatasetError(main, "no episode_* groups (empty dataset)")
        for name in names:
            ep = f[name]
            if not isinstance(ep, h5py.Group):
                raise DatasetError(main, f"{name} is an array, expected an episode group")
            missing = [k for k in ("observations", "actions", "rewards", "terminations", "truncations")
                       if k not in ep]
            if missing:
                raise DatasetError(main, f"{name} lacks {', '.join(missing)}")
            if isinstance(ep["observations"], h5py.Group):
                raise DatasetError(main, f"{name}/observations is a group; only flat Box observations are supported")
            o, a, r, te, tr = (read_array(main, ep, k) for k in ("observations", "actions", "rewards", "terminations",
                                                                  "truncations"))
            n = len(a) if a.ndim else 0
            if o.ndim == 0 or len(o) != n + 1:
                raise DatasetError(main, f"{name} has {len(o) if o.ndim else 0} observations for {n} actions "
                                   f"(expected N+1)")
            for key, arr in (("rewards", r), ("terminations", te), ("truncations", tr)):
                if arr.ndim == 0 or len(arr) != n:
                    raise DatasetError(main, f"{name}/{key} has {len(arr) if arr.ndim else 0} rows, expected {n}")
            if n == 0:
                raise DatasetError(main, f"{name} is empty")
            if te.dtype.kind not in "biuf" or tr.dtype.kind not in "biuf":
                raise DatasetError(main, f"{name}: terminations and truncations must be true/false values")
            obs.append(o[:-1])
            next_obs.append(o[1:])
            act.append(a)
            rew.append(r)
            term.append(te)
            t = np.array(tr, bool)
            t[-1] = not te[-1]  # an episode always ends at its last step
            trunc.append(t)
    attrs = {"minari_id": meta.get("dataset_id"), "env_spec": meta.get("env_spec")}
    task = _task_from_env_spec(meta.get("env_spec"))
    if task is not None:
        attrs["task"] = task.name
    return Trajectories.from_flat(data_dir, np.concatenate(obs), np.concatenate(act), np.concatenate(rew),
                                  np.concatenate(term), np.concatenate(trunc), np.concatenate(next_obs), attrs)


def _metadata(file: Path) -> dict:
    """A Minari metadata.json, checked for the fields dtmerge reads."""
    meta = read_json_file(file)
    if not isinstance(meta, dict):
        raise DatasetError(file, f"expected a JSON object, got {type(meta).__name__}")
    for key, types in (("data_format", (str,)), ("dataset_id", (str,)), ("env_spec", (str, dict))):
        if meta.get(key) is not None and not isinstance(meta[key], types):
            raise DatasetError(file, f"{key} should be {' or '.join(t.__name__ for t in types)}, "
                               f"got {type(meta[key]).__name__}")
    return meta


def write_minari(traj: Trajectories, dataset_id: str, task: Task, root=None, overwrite: bool = False) -> Path:
    """Write `traj` as Minari dataset `dataset_id` under `root` (default: the Minari root).

    Reference scores are D4RL's, so `minari.get_normalized_score` works on the result. The
    dataset is built in a temporary root and moved into place only when complete (an existing
    one, with `overwrite`, is swapped out only then).
    """
    check_minari_id(dataset_id)
    root = (Path(root) if root is not None else minari_root()).resolve()  # minari resolves a relative root twice
    claim_outputs([root / dataset_id], [traj.source], overwrite)
    try:
        import minari
        from minari.data_collector import EpisodeBuffer
    except ImportError:
        raise ImportError("writing Minari datasets needs minari: pip install 'dtmerge[minari]'") from None
    if traj.next_observations is None:
        raise DatasetError(traj.source, "cannot write Minari format: the dataset has no next_observations "
                           "(Minari stores N+1 observations per episode)")
    dest = root / dataset_id
    root.mkdir(parents=True, exist_ok=True)
    buffers = []
    for i, (s, n) in enumerate(zip(traj.starts, traj.lengths)):
        sl = slice(s, s + n)
        buffers.append(EpisodeBuffer(
            id=i,
            observations=np.concatenate([traj.observations[sl], traj.next_observations[s + n - 1][None]]),
            actions=traj.actions[sl],
            rewards=traj.rewards[sl].tolist(),
            terminations=traj.terminals[sl].tolist(),
            truncations=traj.timeouts[sl].tolist(),
        ))
    tmp_root = Path(tempfile.mkdtemp(prefix=".minari-", dir=root))
    old = os.environ.get("MINARI_DATASETS_PATH")
    os.environ["MINARI_DATASETS_PATH"] = str(tmp_root)
    try:
        with warnings.catch_warnings():  # minari nags about optional fields (email, permalink)
            warnings.filterwarnings("ignore", message=".*is set to None", category=UserWarning)
            minari.create_dataset_from_buffers(
                dataset_id, buffers, env=task.env_id, eval_env=task.env_id,
                algorithm_name=traj.attrs.get("policy", "unknown"), author="dtmerge",
                ref_min_score=task.ref_min, ref_max_score=task.ref_max,
                description=json.dumps(traj.attrs), data_format="hdf5")
        dest.parent.mkdir(parents=True, exist_ok=True)
        if dest.exists():
            swap(tmp_root / dataset_id, dest)
        else:
            os.replace(tmp_root / dataset_id, dest)
    finally:
        if old is None:
            os.environ.pop("MINARI_DATASETS_PATH", None)
        else:
            os.environ["MINARI_DATASETS_PATH"] = old
        shutil.rmtree(tmp_root, ignore_errors=True)
    return dest


def _task_from_env_spec(env_spec) -> Task | None:
    if not env_spec:
        return None
    try:
        env_id = (parse_json(env_spec, "env_spec") if isinstance(env_spec, str) else env_spec).get("id", "")
    except (DtmergeError, AttributeError):
        return None
    if not isinstance(env_id, str):
        return None
    prefix = env_id.split("-")[0].lower()
    return TASKS.get(prefix)
