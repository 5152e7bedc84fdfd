"""Read and write the D4RL HDF5 layout: flat `observations, actions, rewards, terminals, timeouts`.

Only h5py is needed (no d4rl, gym or mujoco-py import); trajectories end at a terminal or timeout.
"""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np

from dtmerge.atomic import atomic_path
from dtmerge.data.trajectories import DatasetError, Trajectories
from dtmerge.validate import parse_json

REQUIRED_KEYS = ("observations", "actions", "rewards", "terminals", "timeouts")


def read_d4rl(path) -> Trajectories:
    path = Path(path)
    if not path.is_file():
        raise DatasetError(path, "file not found")
    try:
        f = h5py.File(path, "r")
    except OSError as e:
        raise DatasetError(path, f"not a readable HDF5 file ({e})") from None
    with f:
        missing = [k for k in REQUIRED_KEYS if k not in f]
        if missing:
            raise DatasetError(path, f"missing D4RL key(s) {', '.join(missing)}; "
                               f"found: {', '.join(sorted(f.keys())) or 'nothing'}")
        arrays = {key: read_array(path, f, key) for key in REQUIRED_KEYS + ("next_observations",) if key in f}
        attrs = {k: _attr(path, k, v) for k, v in f.attrs.items()}
        if "dtmerge" in attrs:
            extra = parse_json(attrs.pop("dtmerge"), f"{path}: attribute 'dtmerge'") \
                if isinstance(attrs["dtmerge"], str) else None
            if not isinstance(extra, dict):
                raise DatasetError(path, "attribute 'dtmerge' should be a JSON object")
            attrs.update(extra)
    return Trajectories.from_flat(path, arrays["observations"], arrays["actions"], arrays["rewards"],
                                  arrays["terminals"], arrays["timeouts"],
                                  arrays.get("next_observations"), attrs)


def write_d4rl(traj: Trajectories, path) -> Path:
    """Write `traj` as a D4RL HDF5 file atomically; metadata goes into a JSON file attribute."""
    path = Path(path)
    with atomic_path(path, ".hdf5") as tmp:
        with h5py.File(tmp, "w") as f:
            f.create_dataset("observations", data=traj.observations)
            f.create_dataset("actions", data=traj.actions)
            f.create_dataset("rewards", data=traj.rewards)
            f.create_dataset("terminals", data=traj.terminals)
            f.create_dataset("timeouts", data=traj.timeouts)
            if traj.next_observations is not None:
                f.create_dataset("next_observations", data=traj.next_observations)
            f.attrs["dtmerge"] = json.dumps(traj.attrs)
    return path


def read_array(file, group, key: str) -> np.ndarray:
    """Array `key` of HDF5 group `group` in `file`: a dataset stored in the file itself (an external
    link, which would read another file, is refused), read whole."""
    name = group.name.rstrip("/") + "/" + key if group.name != "/" else key
    if isinstance(group.get(key, getlink=True), h5py.ExternalLink):
        raise DatasetError(file, f"'{name}' links to another file; dtmerge reads arrays stored in the file itself")
    try:
        obj = group[key]
    except (KeyError, OSError):
        raise DatasetError(file, f"'{name}' cannot be opened (a broken link?)") from None
    if not isinstance(obj, h5py.Dataset):
        raise DatasetError(file, f"'{name.lstrip('/')}' is a group, expected an array")
    try:
        return obj[()]
    except (OSError, ValueError, TypeError) as e:
        raise DatasetError(file, f"cannot read '{name.lstrip('/')}' ({e})") from None


def _attr(file, key: str, value):
    if isinstance(value, bytes):
        try:
            return value.decode()
        except UnicodeDecodeError:
            raise DatasetError(file, f"attribute {key!r} is not UTF-8 text") from None
    if isinstance(value, np.generic):
        return value.item()
    return value
