"""Task registry: the three locomotion tasks, their gymnasium ids, sizes and D4RL reference scores.

Scores are normalised with D4RL's constants (d4rl/infos.py) but measured on gymnasium's `-v5`
environments, so every normalised number is labelled "D4RL-normalised (-v5)".
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from pydantic import AfterValidator

from dtmerge.errors import DtmergeError

SCORE_LABEL = "D4RL-normalised (-v5)"


@dataclass(frozen=True)
class Task:
    name: str
    env_id: str
    obs_dim: int
    act_dim: int
    ref_min: float  # D4RL REF_MIN_SCORE (random policy)
    ref_max: float  # D4RL REF_MAX_SCORE (expert policy)
    rtg_targets: tuple[float, ...]  # the original DT's evaluation targets (high, low)
    max_episode_steps: int = 1000

    def normalized_score(self, episode_return):
        """100 * (R - min) / (max - min); works on floats and numpy arrays."""
        return 100.0 * (episode_return - self.ref_min) / (self.ref_max - self.ref_min)

    def make_env(self, **kwargs):
        import gymnasium as gym

        return gym.make(self.env_id, **kwargs)


TASKS: dict[str, Task] = {
    t.name: t
    for t in (
        Task("halfcheetah", "HalfCheetah-v5", 17, 6, -280.178953, 12135.0, (12000.0, 6000.0)),
        Task("hopper", "Hopper-v5", 11, 3, -20.272305, 3234.3, (3600.0, 1800.0)),
        Task("walker2d", "Walker2d-v5", 17, 6, 1.629008, 4592.3, (5000.0, 2500.0)),
    )
}


def get_task(name: str) -> Task:
    """Look a task up by name ('hopper') or gymnasium id ('Hopper-v5')."""
    key = name.lower()
    for task in TASKS.values():
        if key in (task.name, task.env_id.lower()):
            return task
    raise DtmergeError(f"unknown task {name!r}; known tasks: {', '.join(TASKS)}")


def _registered(name: str) -> str:
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; tasks: {', '.join(TASKS)}")
    return name


TaskName = Annotated[str, AfterValidator(_registered)]
"""A task name in a metadata file: only registered names pass, so a name can never steer a path."""
