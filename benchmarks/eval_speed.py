"""Evaluation of 25 episodes x up to 1000 steps: all at once (one vector env, one batched forward
per step) against one episode at a time (the original DT evaluation loop's shape: batch size 1).
Both use the same model and code path; HalfCheetah never terminates early, so every episode is
the full 1000 steps. Also prints the share of time spent in env stepping vs the model.

    python benchmarks/eval_speed.py [--episodes 25] [--sequential-episodes 5]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from common import report

from dtmerge.envs import get_task
from dtmerge.evaluate import evaluate
from dtmerge.model import DecisionTransformer, DTConfig


def original_episode(model, task, mean, std, target, seed, scale=1000.0, K=20):
    """kzl/decision-transformer evaluate_episode_rtg with DecisionTransformer.get_action, nearly verbatim."""
    env = task.make_env()
    state, _ = env.reset(seed=seed)
    mean, std = torch.from_numpy(mean).float(), torch.from_numpy(std).float()
    states = torch.from_numpy(state).reshape(1, task.obs_dim).float()
    actions = torch.zeros((0, task.act_dim))
    rewards = torch.zeros(0)
    target_return = torch.tensor(target / scale).reshape(1, 1)
    timesteps = torch.tensor(0, dtype=torch.long).reshape(1, 1)
    episode_return = 0.0
    for t in range(task.max_episode_steps):
        actions = torch.cat([actions, torch.zeros((1, task.act_dim))], dim=0)
        rewards = torch.cat([rewards, torch.zeros(1)])
        s = ((states - mean) / std).reshape(1, -1, task.obs_dim)[:, -K:]
        a = actions.reshape(1, -1, task.act_dim)[:, -K:]
        r = target_return.reshape(1, -1, 1)[:, -K:]
        ts = timesteps.reshape(1, -1)[:, -K:]
        n = s.shape[1]
        mask = torch.cat([torch.zeros(K - n), torch.ones(n)]).to(torch.bool).reshape(1, -1)
        s = torch.cat([torch.zeros((1, K - n, task.obs_dim)), s], dim=1)
        a = torch.cat([torch.zeros((1, K - n, task.act_dim)), a], dim=1)
        r = torch.cat([torch.zeros((1, K - n, 1)), r], dim=1)
        ts = torch.cat([torch.zeros((1, K - n), dtype=torch.long), ts], dim=1)
        with torch.no_grad():
            action = model(s, a, r, ts, mask)[0, -1]
        actions[-1] = action
        state, reward, terminated, truncated, _ = env.step(action.numpy())
        states = torch.cat([states, torch.from_numpy(state).reshape(1, task.obs_dim).float()], dim=0)
        rewards[-1] = reward
        target_return = torch.cat([target_return, (target_return[0, -1] - reward / scale).reshape(1, 1)], dim=1)
        timesteps = torch.cat([timesteps, torch.ones((1, 1), dtype=torch.long) * (t + 1)], dim=1)
        episode_return += reward
        if terminated or truncated:
            break
    return episode_return


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--episodes", type=int, default=25)
    ap.add_argument("--sequential-episodes", type=int, default=5,
                    help="episodes actually run one at a time; the per-episode time is scaled to --episodes")
    args = ap.parse_args()
    task = get_task("halfcheetah")
    torch.manual_seed(0)
    model = DecisionTransformer(DTConfig(state_dim=task.obs_dim, act_dim=task.act_dim))
    mean, std = np.zeros(task.obs_dim, np.float32), np.ones(task.obs_dim, np.float32)
    kw = dict(targets=[12000.0], device="cpu", precision="auto", progress=False)
    t0 = time.perf_counter()
    batched = evaluate(model, task, mean, std, episodes=args.episodes, seed=0, **kw)
    t_batched = time.perf_counter() - t0
    seq_timing = {"model_s": 0.0, "env_s": 0.0}
    t0 = time.perf_counter()
    for i in range(args.sequential_episodes):
        r = evaluate(model, task, mean, std, episodes=1, seed=i, **kw)
        for k in seq_timing:
            seq_timing[k] += r["timing"][k]
    t_seq = (time.perf_counter() - t0) * args.episodes / args.sequential_episodes
    t0 = time.perf_counter()
    for i in range(args.sequential_episodes):
        original_episode(model.eval(), task, mean, std, 12000.0, seed=i)
    t_orig = (time.perf_counter() - t0) * args.episodes / args.sequential_episodes
    bt = batched["timing"]
    report("eval_speed", {
        "what": f"{args.episodes} HalfCheetah episodes x 1000 steps, DT 128/3/1, K 20, "
                f"precision {batched['precision']}",
        "batched_s": t_batched, "original_loop_s": t_orig, "same_code_batch1_s": t_seq,
        "one_at_a_time_measured_episodes": args.sequential_episodes,
        "speedup_vs_original_loop": t_orig / t_batched, "speedup_vs_same_code_batch1": t_seq / t_batched,
        "target": ">= 5x",
        "batched_share": {"model": bt["model_s"] / t_batched, "env": bt["env_s"] / t_batched},
        "one_at_a_time_share": {k.replace("_s", ""): v / sum(seq_timing.values()) for k, v in seq_timing.items()},
        "env_steps": bt["env_steps"]})


if __name__ == "__main__":
    main()
