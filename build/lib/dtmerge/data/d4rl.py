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
        arrays = {}
        for key in REQUIRED_KEYS + ("next_observations",):
            if key in f:
                if not isinstance(f[key], h5py.Dataset):
                    raise DatasetError(path, f"'{key}' is a group, expected an array")
                arrays[key] = f[key][()]
        for key in ("rewards", "terminals", "timeouts"):  # D4RL squeezes [N, 1] columns
            if arrays[key].ndim == 2 and arrays[key].shape[1] == 1:
                arrays[key] = arrays[key][:, 0]
            if arrays[key].ndim != 1:
                raise DatasetError(path, f"'{key}' must be one-dimensional, got shape {arrays[key].shape}")
        for key in ("observations", "actions"):
            if arrays[key].ndim != 2:
                raise DatasetError(path, f"'{key}' must be two-dimensional, got shape {arrays[key].shape}")
        attrs = {k: _attr(v) for k, v in f.attrs.items()}
        if "dtmerge" in attrs:
            attrs.update(json.loads(attrs.pop("dtmerge")))
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


def _attr(value):
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, np.generic):
        return value.item()
    return value
