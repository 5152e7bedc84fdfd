"""Batched evaluation in MuJoCo: every episode of every RTG target runs at once.

One gymnasium environment per episode inside a SyncVectorEnv and one batched model forward per
step. Each sub-environment counts exactly its first episode (later auto-resets are ignored), so
short episodes cannot bias the mean the way auto-resetting evaluation loops do. Episode i of
every target starts from reset seed `seed + i`, so targets are compared on the same start states.
"""

from __future__ import annotations

import time
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch
from tqdm.auto import tqdm

from dtmerge.atomic import write_json
from dtmerge.envs import SCORE_LABEL, Task, get_task
from dtmerge.model import DecisionTransformer
from dtmerge.runtime import autocast, pick_device, resolve_precision


def evaluate(model: DecisionTransformer, task: Task, state_mean, state_std, targets=None, episodes: int = 10,
             seed: int = 0, rtg_scale: float = 1000.0, device="cpu", precision: str = "auto",
             progress: bool = True) -> dict:
    """Roll out `episodes` episodes per RTG target; returns per-target returns, scores and timing."""
    if episodes < 1:
        raise ValueError("episodes must be at least 1")
    device = pick_device(str(device))
    precision = resolve_precision(precision, device)
    targets = [float(t) for t in (targets or task.rtg_targets)]
    model = model.to(device).eval()
    n, T, K = episodes * len(targets), task.max_episode_steps, model.config.context_len
    envs = gym.vector.SyncVectorEnv([task.make_env for _ in range(n)])
    obs, _ = envs.reset(seed=[seed + i % episodes for i in range(n)])

    mean = torch.as_tensor(np.asarray(state_mean), dtype=torch.float32, device=device)
    std = torch.as_tensor(np.asarray(state_std), dtype=torch.float32, device=device)
    states = torch.zeros(n, T, task.obs_dim, device=device)
    actions = torch.zeros(n, T, task.act_dim, device=device)
    rtg = torch.zeros(n, T, 1, device=device)
    rtg[:, 0, 0] = torch.tensor(np.repeat(targets, episodes) / rtg_scale, dtype=torch.float32)
    timesteps = torch.arange(T, device=device)
    returns, lengths = np.zeros(n), np.zeros(n, np.int64)
    done = np.zeros(n, bool)
    t_model = t_env = 0.0
    bar = tqdm(total=T, desc=f"eval {task.name}", unit="step", disable=not progress, leave=False)
    for t in range(T):
        states[:, t] = (torch.as_tensor(obs, dtype=torch.float32, device=device) - mean) / std
        live = torch.as_tensor(np.flatnonzero(~done), device=device)
        lo = max(0, t - K + 1)
        t0 = time.perf_counter()
        with torch.inference_mode(), autocast(device, precision):
            pred = model(states[live, lo:t + 1], actions[live, lo:t + 1], rtg[live, lo:t + 1],
                         timesteps[lo:t + 1].expand(len(live), -1))[:, -1].float()
        actions[live, t] = pred
        step_actions = np.zeros((n, task.act_dim), np.float32)
        step_actions[~done] = pred.cpu().numpy()
        t1 = time.perf_counter()
        obs, reward, terminated, truncated, _ = envs.step(step_actions)
        t_env += time.perf_counter() - t1
        t_model += t1 - t0
        returns[~done] += reward[~done]
        lengths[~done] += 1
        if t + 1 < T:
            rtg[:, t + 1, 0] = rtg[:, t, 0] - torch.as_tensor(reward / rtg_scale, dtype=torch.float32, device=device)
        done |= terminated | truncated
        bar.update()
        if done.all():
            break
    bar.close()
    envs.close()

    per_target = []
    for j, target in enumerate(targets):
        r, ln = returns[j * episodes:(j + 1) * episodes], lengths[j * episodes:(j + 1) * episodes]
        s = task.normalized_score(r)
        per_target.append({
            "target": target,
            "return_mean": float(r.mean()), "return_stderr": _stderr(r),
            "score_mean": float(s.mean()), "score_stderr": _stderr(s),
            "length_mean": float(ln.mean()),
            "returns": r.tolist(), "lengths": ln.tolist(),
        })
    return {
        "task": task.name, "env_id": task.env_id, "episodes": episodes, "seed": seed,
        "score": SCORE_LABEL, "precision": precision, "device": str(device),
        "targets": per_target,
        "timing": {"model_s": t_model, "env_s": t_env, "env_steps": int(lengths.sum()),
                   "model_share": t_model / max(t_model + t_env, 1e-9)},
    }


def evaluate_checkpoint(path, episodes: int = 10, targets=None, seed: int = 0, device="auto",
                        precision: str = "auto", out=None, progress: bool = True) -> dict:
    from dtmerge.checkpoint import load_checkpoint

    model, meta = load_checkpoint(path)
    task = get_task(meta["task"])
    result = evaluate(model, task, meta["state_mean"], meta["state_std"], targets, episodes, seed,
                      meta.get("rtg_scale", 1000.0), device, precision, progress)
    result["checkpoint"] = str(path)
    result["step"] = meta.get("step")
    if out is not None:
        write_json(Path(out), result)
    return result


def format_result(result: dict) -> str:
    """One Markdown row per RTG target."""
    rows = [f"| {result['task']} | {t['target']:g} | {t['return_mean']:.1f} ± {t['return_stderr']:.1f} | "
            f"{t['score_mean']:.1f} ± {t['score_stderr']:.1f} | {t['length_mean']:.0f} |"
            for t in result["targets"]]
    return "\n".join(rows)


TABLE_HEADER = (f"| task | RTG target | return (mean ± s.e.) | {SCORE_LABEL} | episode length |\n"
                "| --- | --- | --- | --- | --- |")


def _stderr(x: np.ndarray) -> float:
    return float(x.std(ddof=1) / np.sqrt(len(x))) if len(x) > 1 else 0.0
