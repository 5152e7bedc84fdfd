"""Batched evaluation in MuJoCo: every episode of every RTG target runs at once.

`run_episodes` puts one gymnasium environment per episode in a SyncVectorEnv and asks the policy
for all live episodes' actions in one call per step. Each sub-environment counts exactly its first
episode (later auto-resets are ignored), so short episodes cannot bias the mean the way
auto-resetting evaluation loops do. Episode i of every RTG target starts from reset seed
`seed + i`, so targets are compared on the same start states.
"""

from __future__ import annotations

import time
import warnings
from pathlib import Path
from typing import Protocol

import gymnasium as gym
import numpy as np
import torch
from tqdm.auto import tqdm

from dtmerge.atomic import write_json
from dtmerge.envs import SCORE_LABEL, Task, get_task
from dtmerge.errors import DtmergeError
from dtmerge.model import DecisionTransformer
from dtmerge.outputs import claim_outputs
from dtmerge.runtime import autocast, make_deterministic, pick_device, resolve_precision
from dtmerge.store.bundle import is_bundle, load_bundle_task
from dtmerge.store.checkpoint import CheckpointError, load_checkpoint


class BatchPolicy(Protocol):
    def act(self, obs: np.ndarray, live: np.ndarray, t: int) -> np.ndarray:
        """Actions (len(live), act_dim) for the live episodes' observations (n, obs_dim) at step t."""

    def observe(self, reward: np.ndarray, t: int) -> None:
        """Rewards (n,) of step t for every episode (finished ones included, to be ignored)."""


def run_episodes(task: Task, seeds: list[int], policy: BatchPolicy, progress: bool = True,
                 desc: str = "episodes", max_steps: int | None = None) -> dict:
    """Run one episode per seed, all at once (each cut at `max_steps` if given, for quick checks);
    returns per-episode returns, lengths and timing."""
    n, T = len(seeds), min(task.max_episode_steps, max_steps or task.max_episode_steps)
    envs = gym.vector.SyncVectorEnv([task.make_env for _ in range(n)])
    obs, _ = envs.reset(seed=list(seeds))
    returns, lengths = np.zeros(n), np.zeros(n, np.int64)
    done = np.zeros(n, bool)
    t_policy = t_env = 0.0
    bar = tqdm(total=T, desc=desc, unit="step", disable=not progress, leave=False)
    for t in range(T):
        t0 = time.perf_counter()
        actions = np.zeros((n, task.act_dim), np.float32)
        actions[~done] = policy.act(obs, ~done, t)
        t1 = time.perf_counter()
        obs, reward, terminated, truncated, _ = envs.step(actions)
        t_env += time.perf_counter() - t1
        t_policy += t1 - t0
        policy.observe(reward, t)
        returns[~done] += reward[~done]
        lengths[~done] += 1
        done |= terminated | truncated
        bar.update()
        if done.all():
            break
    bar.close()
    envs.close()
    return {"returns": returns, "lengths": lengths,
            "timing": {"model_s": t_policy, "env_s": t_env, "env_steps": int(lengths.sum()),
                       "model_share": t_policy / max(t_policy + t_env, 1e-9)}}


class DTPolicy:
    """A Decision Transformer acting in many episodes at once, with DT's RTG bookkeeping.

    The context is the last K steps; the return-to-go starts at the target / scale and drops by
    reward / scale after every step. Histories are stored behind K - 1 padding steps, so a window
    is one slice of them. By default (`static` False, the CPU's way) windows shorter than K are fed
    unpadded and only live episodes are computed, which gives the same predictions as masked left
    padding at the least work. `static` (the default on CUDA) feeds every episode a full K-step
    window, the padding masked, finished episodes computed and ignored: the same shapes every step,
    so the forward is captured once as a CUDA graph and replayed (one launch a step instead of some
    hundred kernels for a model this small, which a GPU spends its time launching).
    """

    def __init__(self, model: DecisionTransformer, task: Task, state_mean, state_std, targets: np.ndarray,
                 rtg_scale: float, device, precision: str, static: bool | None = None):
        self.device = torch.device(device)
        n, T = len(targets), task.max_episode_steps
        self.model, self.precision, self.scale = model.eval(), precision, rtg_scale
        self.K = model.config.context_len
        self.pad = self.K - 1
        self.static = self.device.type == "cuda" if static is None else static
        self.mean = torch.as_tensor(np.asarray(state_mean), dtype=torch.float32, device=device)
        self.std = torch.as_tensor(np.asarray(state_std), dtype=torch.float32, device=device)
        self.states = torch.zeros(n, self.pad + T, task.obs_dim, device=device)
        self.actions = torch.zeros(n, self.pad + T, task.act_dim, device=device)
        self.rtg = torch.zeros(n, self.pad + T, 1, device=device)
        self.rtg[:, self.pad, 0] = torch.as_tensor(targets / rtg_scale, dtype=torch.float32)
        self.timesteps = torch.cat([torch.zeros(self.pad, dtype=torch.long), torch.arange(T)]).to(device)
        self.real = torch.arange(self.pad + T, device=device) >= self.pad  # False on the padding steps
        self.window = None  # static: the model's inputs, at fixed addresses a CUDA graph reads
        self.graph = None

    def act(self, obs, live, t):
        p = self.pad + t
        self.states[:, p] = (torch.as_tensor(obs, dtype=torch.float32, device=self.device) - self.mean) / self.std
        idx = torch.as_tensor(np.flatnonzero(live), device=self.device)
        if self.static:
            self.actions[:, p] = self._static_forward(slice(p - self.K + 1, p + 1))
            return self.actions[idx, p].cpu().numpy()
        lo = max(self.pad, p - self.K + 1)
        with torch.inference_mode(), autocast(self.device, self.precision):
            pred = self.model(self.states[idx, lo:p + 1], self.actions[idx, lo:p + 1], self.rtg[idx, lo:p + 1],
                              self.timesteps[lo:p + 1].expand(len(idx), -1), last_only=True)[:, -1].float()
        self.actions[idx, p] = pred
        return pred.cpu().numpy()

    def _static_forward(self, steps: slice) -> torch.Tensor:
        """Every episode's action for the window `steps`, through the captured graph on CUDA."""
        n = self.states.shape[0]
        fresh = {"states": self.states[:, steps], "actions": self.actions[:, steps], "rtg": self.rtg[:, steps],
                 "timesteps": self.timesteps[steps].expand(n, -1), "mask": self.real[steps].expand(n, -1)}
        if self.window is None:
            self.window = {k: v.clone() for k, v in fresh.items()}
            if self.device.type == "cuda":
                self._capture()
        else:
            for k, v in fresh.items():
                self.window[k].copy_(v)
        if self.graph is None:
            return self._forward()
        self.graph.replay()
        return self.out.clone()

    def _forward(self) -> torch.Tensor:
        w = self.window
        # autocast's weight cache off: a graph must not keep casts made while it was captured
        with torch.no_grad(), autocast(self.device, self.precision, cache_enabled=self.device.type != "cuda"):
            return self.model(w["states"], w["actions"], w["rtg"], w["timesteps"], w["mask"],
                              last_only=True)[:, -1].float()

    def _capture(self) -> None:
        """Record the forward as a CUDA graph, after warm-up passes, all on a side stream of the
        policy's device (as CUDA graphs need; the outer stream context restores the caller's stream
        even if the capture fails); where capture fails, warn and go on without one: the same
        shapes, run eagerly."""
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        try:
            with torch.cuda.device(self.device), torch.cuda.stream(side):
                for _ in range(3):
                    self._forward()
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph, stream=side):
                    self.out = self._forward()
            self.graph = graph
        except RuntimeError as e:
            torch.cuda.synchronize(self.device)
            warnings.warn(f"evaluation: could not capture the forward as a CUDA graph ({e}); running it eagerly")
        torch.cuda.current_stream(self.device).wait_stream(side)

    def observe(self, reward, t):
        p = self.pad + t
        if p + 1 < self.rtg.shape[1]:
            r = torch.as_tensor(reward / self.scale, dtype=torch.float32, device=self.device)
            self.rtg[:, p + 1, 0] = self.rtg[:, p, 0] - r


def evaluate(model: DecisionTransformer, task: Task, state_mean, state_std, targets=None, episodes: int = 10,
             seed: int = 0, rtg_scale: float = 1000.0, device="cpu", precision: str = "auto",
             progress: bool = True, max_steps: int | None = None, static_shapes: bool | None = None) -> dict:
    """Roll out `episodes` episodes per RTG target; returns per-target returns, scores and timing.
    `static_shapes` (default: on CUDA only) acts on full windows through a CUDA graph (`DTPolicy`)."""
    if episodes < 1:
        raise DtmergeError(f"episodes must be at least 1, got {episodes}")
    device = pick_device(str(device))
    precision = resolve_precision(precision, device)
    make_deterministic(device)
    targets = [float(t) for t in (targets or task.rtg_targets)]
    if not all(np.isfinite(targets)):
        raise DtmergeError(f"RTG targets must be finite numbers, got {targets}")
    policy = DTPolicy(model.to(device), task, state_mean, state_std, np.repeat(targets, episodes), rtg_scale,
                      device, precision, static_shapes)
    seeds = [seed + i for _ in targets for i in range(episodes)]
    run = run_episodes(task, seeds, policy, progress, desc=f"eval {task.name}", max_steps=max_steps)
    per_target = []
    for j, target in enumerate(targets):
        sl = slice(j * episodes, (j + 1) * episodes)
        per_target.append({"target": target, **episode_stats(task, run["returns"][sl], run["lengths"][sl])})
    return {"task": task.name, "env_id": task.env_id, "episodes": episodes, "seed": seed, "max_steps": max_steps,
            "score": SCORE_LABEL,
            "precision": precision, "device": str(device), "targets": per_target, "timing": run["timing"]}


def episode_stats(task: Task, returns: np.ndarray, lengths: np.ndarray) -> dict:
    """Mean ± standard error of return and D4RL-normalised score, plus the raw episodes."""
    s = task.normalized_score(returns)
    return {"return_mean": float(returns.mean()), "return_stderr": _stderr(returns),
            "score_mean": float(s.mean()), "score_stderr": _stderr(s), "length_mean": float(lengths.mean()),
            "returns": returns.tolist(), "lengths": lengths.tolist()}


def load_policy_model(path, task: str | None = None):
    """A checkpoint, or one task of a multi-task bundle, as (model, metadata)."""
    if is_bundle(path):
        return load_bundle_task(path, task)
    model, meta = load_checkpoint(path)
    if task is not None and get_task(task).name != meta["task"]:
        raise CheckpointError(f"{path}: this checkpoint is for {meta['task']}, not {task}")
    return model, meta


def evaluate_checkpoint(path, episodes: int = 10, targets=None, seed: int = 0, device="auto",
                        precision: str = "auto", out=None, progress: bool = True, task: str | None = None,
                        overwrite: bool = False, max_steps: int | None = None) -> dict:
    """Evaluate a checkpoint (or a bundle's `task`); with `out`, also write the result as JSON."""
    if out is not None:
        claim_outputs([out], [path], overwrite)
    model, meta = load_policy_model(path, task)
    task = get_task(meta["task"])
    result = evaluate(model, task, meta["state_mean"], meta["state_std"], targets, episodes, seed,
                      meta["rtg_scale"], device, precision, progress, max_steps)
    result["checkpoint"] = str(path)
    result["step"] = meta.get("step")
    if out is not None:
        write_json(Path(out), result)
    return result


TABLE_HEADER = (f"| task | RTG target | return (mean ± s.e.) | {SCORE_LABEL} | episode length |\n"
                "| --- | --- | --- | --- | --- |")


def format_result(result: dict) -> str:
    """One Markdown row per RTG target."""
    return "\n".join(f"| {result['task']} | {t['target']:g} | {t['return_mean']:.1f} ± {t['return_stderr']:.1f} | "
                     f"{t['score_mean']:.1f} ± {t['score_stderr']:.1f} | {t['length_mean']:.0f} |"
                     for t in result["targets"])


def _stderr(x: np.ndarray) -> float:
    return float(x.std(ddof=1) / np.sqrt(len(x))) if len(x) > 1 else 0.0
