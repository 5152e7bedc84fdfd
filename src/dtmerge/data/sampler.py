"""Vectorised sampling of K-step training windows, as in the original Decision Transformer.

A trajectory is drawn with probability proportional to its length, a start step uniformly inside
it, and the K steps from there (fewer near the end) are left-padded: states 0, actions -10,
returns-to-go 0, timesteps 0, mask 0. The whole batch is one gather over the flat arrays: on the
CPU in numpy; on another device from a copy of the arrays put there once, so that only the drawn
row indices travel each step (drawn in numpy either way, so a resumed run draws the same).
"""

from __future__ import annotations

import numpy as np
import torch

from dtmerge.data.trajectories import Trajectories
from dtmerge.runtime import host_to_device

ACTION_PAD = -10.0


class WindowSampler:
    def __init__(self, traj: Trajectories, context_len: int, state_mean, state_std,
                 rtg_scale: float = 1000.0, max_ep_len: int = 1000, seed: int = 0):
        self.K = context_len
        self.starts = traj.starts
        self.lengths = traj.lengths
        self.p = traj.lengths / traj.lengths.sum()
        self.states = ((traj.observations - state_mean) / state_std).astype(np.float32)
        self.actions = traj.actions.astype(np.float32)
        self.rtg = (traj.returns_to_go() / rtg_scale).astype(np.float32)
        self.timesteps = np.minimum(traj.timesteps(), max_ep_len - 1).astype(np.int64)
        self.rng = np.random.Generator(np.random.PCG64(seed))
        self._on_device: tuple[str, dict[str, torch.Tensor]] | None = None  # (device asked for, arrays there)

    def indices(self, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
        """Flat row index of every window slot (B, K) and the mask of real (unpadded) slots."""
        traj = self.rng.choice(len(self.starts), size=batch_size, p=self.p)
        length = self.lengths[traj]
        offset = np.floor(self.rng.random(batch_size) * length).astype(np.int64)
        n_real = np.minimum(self.K, length - offset)
        slot = np.arange(self.K)[None, :] - (self.K - n_real)[:, None]  # < 0 on padding
        mask = slot >= 0
        rows = self.starts[traj][:, None] + offset[:, None] + np.maximum(slot, 0)
        return rows, mask

    def sample(self, batch_size: int, device="cpu") -> dict[str, torch.Tensor]:
        rows, mask = self.indices(batch_size)
        device = torch.device(device)
        return self.gather_on_device(rows, mask, device) if device.type != "cpu" else self.gather(rows, mask)

    def gather(self, rows: np.ndarray, mask: np.ndarray) -> dict[str, torch.Tensor]:
        m = mask[..., None]
        batch = {
            "states": np.where(m, self.states[rows], 0.0).astype(np.float32),
            "actions": np.where(m, self.actions[rows], ACTION_PAD).astype(np.float32),
            "returns_to_go": np.where(m, self.rtg[rows][..., None], 0.0).astype(np.float32),
            "timesteps": np.where(mask, self.timesteps[rows], 0),
            "mask": mask,
        }
        return {k: torch.from_numpy(v) for k, v in batch.items()}

    def gather_on_device(self, rows: np.ndarray, mask: np.ndarray, device: torch.device) -> dict[str, torch.Tensor]:
        """`gather`'s batch, gathered on `device` from the arrays kept there (the same numbers)."""
        if self._on_device is None or self._on_device[0] != str(device):  # "cuda" is not "cuda:0" to torch
            self._on_device = (str(device), {name: torch.from_numpy(getattr(self, name)).to(device)
                                             for name in ("states", "actions", "rtg", "timesteps")})
        data = self._on_device[1]
        rows_t, mask_t = host_to_device(rows, device), host_to_device(mask, device)
        m = mask_t.unsqueeze(-1)
        return {"states": torch.where(m, data["states"][rows_t], 0.0),
                "actions": torch.where(m, data["actions"][rows_t], ACTION_PAD),
                "returns_to_go": torch.where(m, data["rtg"][rows_t].unsqueeze(-1), 0.0),
                "timesteps": torch.where(mask_t, data["timesteps"][rows_t], 0), "mask": mask_t}

    def get_state(self) -> dict:
        return self.rng.bit_generator.state

    def set_state(self, state: dict) -> None:
        self.rng.bit_generator.state = state
