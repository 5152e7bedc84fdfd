"""Collect D4RL-style transitions by running a policy in many environments at once."""

from __future__ import annotations

from typing import Callable

import gymnasium as gym
import numpy as np
from tqdm.auto import tqdm

from dtmerge.data.trajectories import Trajectories
from dtmerge.envs import Task

Policy = Callable[[np.ndarray], np.ndarray]  # (n_envs, obs_dim) -> (n_envs, act_dim)


def random_policy(task: Task, seed: int) -> Policy:
    rng = np.random.default_rng(seed)
    return lambda obs: rng.uniform(-1.0, 1.0, (len(obs), task.act_dim)).astype(np.float32)


def rollout(task: Task, policy: Policy, transitions: int, seed: int = 0, num_envs: int = 16,
            attrs: dict | None = None, progress: bool = True) -> Trajectories:
    """Run `policy` until `transitions` steps of finished episodes exist, in a fixed order.

    Episodes are kept in the order they finish; the last one is cut to hit `transitions` exactly
    and marked as a timeout, like the partial final episode of D4RL files. Deterministic for a
    given seed and policy.
    """
    envs = gym.vector.SyncVectorEnv([task.make_env for _ in range(num_envs)],
                                    autoreset_mode=gym.vector.AutoresetMode.SAME_STEP)
    obs, _ = envs.reset(seed=seed)
    buf = [{"obs": [], "next": [], "act": [], "rew": [], "term": []} for _ in range(num_envs)]
    episodes: list[dict] = []
    collected = 0
    bar = tqdm(total=transitions, desc=f"rollout {task.name}", unit="step", disable=not progress)
    while collected < transitions:
        action = np.clip(policy(obs), -1.0, 1.0)
        next_obs, reward, terminated, truncated, info = envs.step(action)
        for i in range(num_envs):
            done = terminated[i] or truncated[i]
            b = buf[i]
            b["obs"].append(obs[i])
            b["next"].append(info["final_obs"][i] if done else next_obs[i])
            b["act"].append(action[i])
            b["rew"].append(reward[i])
            b["term"].append(terminated[i])
            if done:
                episodes.append({k: np.asarray(v) for k, v in b.items()})
                collected += len(b["rew"])
                bar.update(len(b["rew"]))
                buf[i] = {k: [] for k in b}
        obs = next_obs
    bar.close()
    envs.close()
    cat = {k: np.concatenate([e[k] for e in episodes])[:transitions] for k in episodes[0]}
    ends = np.cumsum([len(e["rew"]) for e in episodes])
    timeouts = np.zeros(transitions, bool)
    timeouts[ends[ends <= transitions] - 1] = True
    timeouts &= ~cat["term"]
    timeouts[-1] = not cat["term"][-1]
    return Trajectories.from_flat(f"<rollout {task.name} seed={seed}>", cat["obs"], cat["act"], cat["rew"],
                                  cat["term"], timeouts, cat["next"], {"task": task.name, **(attrs or {})})
