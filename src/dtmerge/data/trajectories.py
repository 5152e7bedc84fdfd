"""Offline data as flat arrays plus trajectory boundaries, with the checks every reader shares.

All steps of all trajectories are stored back to back (as in D4RL files); `starts[i]` and
`lengths[i]` say where trajectory i lies. Keeping the arrays flat is what lets the window sampler
gather a whole batch with one fancy-indexing call instead of a Python loop.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np

from dtmerge.envs import Task
from dtmerge.errors import DtmergeError


class DatasetError(DtmergeError):
    """A dataset file that cannot be used; the message names the file and the problem."""

    def __init__(self, path, problem: str):
        super().__init__(f"{path}: {problem}")
        self.path = str(path)
        self.problem = problem

    def __reduce__(self):  # rebuilt from both arguments when it crosses a process boundary
        return type(self), (self.path, self.problem)


def _checked(source, name: str, arr) -> np.ndarray:
    """`arr` as an array of numbers of the shape its role needs: (N, dim) for observations and
    actions, (N,) for the rest ((N, 1) is squeezed, as D4RL stores it), 0/1 for the flags."""
    arr = np.asarray(arr)
    if arr.dtype.kind not in "biuf":
        raise DatasetError(source, f"'{name}' holds {arr.dtype} values, expected real numbers")
    if name in ("observations", "actions", "next_observations"):
        if arr.ndim != 2:
            raise DatasetError(source, f"'{name}' must be two-dimensional, got shape {arr.shape}")
        return arr
    if arr.ndim == 2 and arr.shape[1] == 1:
        arr = arr[:, 0]
    if arr.ndim != 1:
        raise DatasetError(source, f"'{name}' must be one-dimensional, got shape {arr.shape}")
    if name in ("terminals", "timeouts") and not np.isin(arr, (0, 1)).all():
        raise DatasetError(source, f"'{name}' must hold true/false (0/1) values")
    return arr


@dataclass
class Trajectories:
    observations: np.ndarray  # (N, obs_dim) float32
    actions: np.ndarray  # (N, act_dim) float32
    rewards: np.ndarray  # (N,) float32
    terminals: np.ndarray  # (N,) bool: the MDP ended here (not a time limit)
    starts: np.ndarray  # (T,) int64: first step of each trajectory
    lengths: np.ndarray  # (T,) int64
    next_observations: np.ndarray | None = None  # (N, obs_dim), needed to write Minari's N+1 layout
    source: str = "<memory>"
    attrs: dict = field(default_factory=dict)  # free-form metadata (task, dataset id, policy, ...)

    @classmethod
    def from_flat(cls, source, observations, actions, rewards, terminals, timeouts,
                  next_observations=None, attrs=None) -> "Trajectories":
        """Split D4RL-style flat arrays into trajectories that end at a terminal or a timeout.

        Steps after the last terminal/timeout form a final (unfinished) trajectory, as in the
        original DT data script.
        """
        observations, actions, rewards, terminals, timeouts, next_observations = (
            None if arr is None else _checked(source, name, arr) for name, arr in (
                ("observations", observations), ("actions", actions), ("rewards", rewards),
                ("terminals", terminals), ("timeouts", timeouts), ("next_observations", next_observations)))
        n = len(observations)
        for name, arr in (("actions", actions), ("rewards", rewards), ("terminals", terminals),
                          ("timeouts", timeouts), ("next_observations", next_observations)):
            if arr is not None and len(arr) != n:
                raise DatasetError(source, f"'{name}' has {len(arr)} rows but 'observations' has {n}")
        if n == 0:
            raise DatasetError(source, "the dataset is empty (0 transitions)")
        ends = np.flatnonzero(np.asarray(terminals, bool) | np.asarray(timeouts, bool))
        if len(ends) == 0 or ends[-1] != n - 1:
            ends = np.append(ends, n - 1)
        starts = np.concatenate([[0], ends[:-1] + 1]).astype(np.int64)
        traj = cls(
            observations=np.asarray(observations, np.float32).reshape(n, -1),
            actions=np.asarray(actions, np.float32).reshape(n, -1),
            rewards=np.asarray(rewards, np.float32).reshape(n),
            terminals=np.asarray(terminals, bool).reshape(n),
            starts=starts,
            lengths=(ends + 1 - starts).astype(np.int64),
            next_observations=None if next_observations is None
            else np.asarray(next_observations, np.float32).reshape(n, -1),
            source=str(source),
            attrs=dict(attrs or {}),
        )
        traj.check()
        return traj

    @classmethod
    def concatenate(cls, parts: list["Trajectories"], source: str, attrs=None) -> "Trajectories":
        offsets = np.cumsum([0] + [len(p) for p in parts[:-1]])
        has_next = all(p.next_observations is not None for p in parts)
        return cls(
            observations=np.concatenate([p.observations for p in parts]),
            actions=np.concatenate([p.actions for p in parts]),
            rewards=np.concatenate([p.rewards for p in parts]),
            terminals=np.concatenate([p.terminals for p in parts]),
            starts=np.concatenate([p.starts + o for p, o in zip(parts, offsets)]),
            lengths=np.concatenate([p.lengths for p in parts]),
            next_observations=np.concatenate([p.next_observations for p in parts]) if has_next else None,
            source=source,
            attrs=dict(attrs or {}),
        )

    def __len__(self) -> int:
        return len(self.rewards)

    @property
    def num_trajectories(self) -> int:
        return len(self.starts)

    @property
    def obs_dim(self) -> int:
        return self.observations.shape[1]

    @property
    def act_dim(self) -> int:
        return self.actions.shape[1]

    @property
    def timeouts(self) -> np.ndarray:
        """True at the last step of every trajectory that did not end in a terminal."""
        out = np.zeros(len(self), bool)
        last = self.starts + self.lengths - 1
        out[last] = ~self.terminals[last]
        return out

    def check(self, task: Task | None = None) -> None:
        """Raise DatasetError for non-finite values or sizes that do not fit `task`."""
        for name in ("observations", "actions", "rewards", "next_observations"):
            arr = getattr(self, name)
            if arr is not None and not np.isfinite(arr).all():
                bad = int(np.flatnonzero(~np.isfinite(arr).reshape(len(arr), -1).all(axis=1))[0])
                raise DatasetError(self.source, f"'{name}' contains NaN or inf (first at row {bad})")
        if task is not None:
            if self.obs_dim != task.obs_dim:
                raise DatasetError(self.source, f"observations have {self.obs_dim} columns but "
                                   f"{task.name} ({task.env_id}) has obs_dim {task.obs_dim}")
            if self.act_dim != task.act_dim:
                raise DatasetError(self.source, f"actions have {self.act_dim} columns but "
                                   f"{task.name} ({task.env_id}) has act_dim {task.act_dim}")

    def returns(self) -> np.ndarray:
        """Undiscounted return of each trajectory (float64)."""
        return np.add.reduceat(self.rewards.astype(np.float64), self.starts)

    def returns_to_go(self) -> np.ndarray:
        """Per step, the undiscounted sum of rewards from that step to the end of its trajectory."""
        c = np.cumsum(self.rewards.astype(np.float64))
        traj_end_cum = np.repeat(c[self.starts + self.lengths - 1], self.lengths)
        return traj_end_cum - c + self.rewards

    def timesteps(self) -> np.ndarray:
        """Per step, its index inside its trajectory."""
        return np.arange(len(self)) - np.repeat(self.starts, self.lengths)

    def fingerprint(self) -> str:
        """SHA-256 of the data itself (not of the file or its path): a moved or copied dataset
        keeps it, any changed value changes it."""
        h = hashlib.sha256()
        for arr in (self.observations, self.actions, self.rewards, self.terminals, self.starts, self.lengths):
            h.update(np.ascontiguousarray(arr).tobytes())
        return h.hexdigest()

    def state_stats(self) -> tuple[np.ndarray, np.ndarray]:
        """Per-dimension mean and std of all observations (std + 1e-6, as in the original DT)."""
        obs = self.observations.astype(np.float64)
        return obs.mean(0).astype(np.float32), (obs.std(0) + 1e-6).astype(np.float32)

    def summary(self, task: Task | None = None) -> dict:
        r = self.returns()
        out = {
            "source": self.source,
            "transitions": len(self),
            "trajectories": self.num_trajectories,
            "obs_dim": self.obs_dim,
            "act_dim": self.act_dim,
            "terminals": int(self.terminals.sum()),
            "trajectory_length": {"mean": float(self.lengths.mean()), "min": int(self.lengths.min()),
                                  "max": int(self.lengths.max())},
            "return": {"mean": float(r.mean()), "std": float(r.std()), "min": float(r.min()),
                       "max": float(r.max())},
        }
        if task is not None:
            s = task.normalized_score(r)
            out["task"] = task.name
            out["normalized_return"] = {"mean": float(s.mean()), "min": float(s.min()), "max": float(s.max())}
        return out
