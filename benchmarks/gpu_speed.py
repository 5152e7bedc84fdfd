"""The CUDA path's speed in one short run, for a session lent a GPU (it also runs on a CPU, to be
checked where there is none). On the device given:

- a DT training step (128/3/1, batch 64, K 20, the paper's DT; precision `auto`) through `train`,
  one model at a time, and N stacked through `train_many`: steps/s from the runs' own logs, after
  their first log interval (which holds start-up and, on CUDA, kernel selection);
- what the `paper` scale's DT training (100k steps per DT) then costs per DT and for N at once;
- evaluation of 50 HalfCheetah episodes: live windows against static shapes (on CUDA, a
  CUDA graph replayed each step), the model's time only;
- the exact Fisher of 8 windows: one window at a time against `window_chunk` windows per vmap.

    python benchmarks/gpu_speed.py [--device cuda] [--steps 300] [--models 8]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from common import report

from dtmerge.data import write_d4rl
from dtmerge.data.rollout import random_policy, rollout
from dtmerge.envs import get_task
from dtmerge.evaluate import evaluate
from dtmerge.experiments.scales import PAPER_STEPS
from dtmerge.merge.fisher import fisher_terms, window_chunk
from dtmerge.model import DecisionTransformer, DTConfig
from dtmerge.train import TrainConfig, train
from dtmerge.train.many import train_many

LOG_EVERY = 50


def logged_rate(run: Path) -> float:
    """Median steps/s over a run's log lines after its first."""
    rates = [json.loads(line)["steps_per_s"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    return float(np.median(rates[1:] or rates))


def training(data: Path, root: Path, device: str, steps: int, models: int) -> dict:
    cfg = lambda out, seed: TrainConfig(dataset=[str(data)], out=str(out), steps=steps, warmup_steps=10,  # noqa: E731
                                        seed=seed, device=device, log_every=LOG_EVERY, save_every=steps)
    train(cfg(root / "one", 0), progress=False)
    one = logged_rate(root / "one")
    train_many([cfg(root / f"many{i}", i) for i in range(models)], progress=False)
    many = logged_rate(root / "many0")  # one stacked step moves every model one step
    return {"one_model_steps_per_s": one, f"{models}_models_steps_per_s": many,
            f"{models}_models_model_steps_per_s": many * models,
            "stacking_speedup": many * models / one,
            "paper_dt_hours_one_at_a_time": PAPER_STEPS / one / 3600,
            f"paper_{models}_dts_hours_stacked": PAPER_STEPS / many / 3600}


def evaluation(device: str, episodes: int) -> dict:
    task = get_task("halfcheetah")  # never terminates early: every episode runs 1000 steps
    torch.manual_seed(0)
    model = DecisionTransformer(DTConfig(state_dim=task.obs_dim, act_dim=task.act_dim))
    mean, std = np.zeros(task.obs_dim, np.float32), np.ones(task.obs_dim, np.float32)
    out = {}
    for static in (False, True):
        r = evaluate(model, task, mean, std, targets=[12000.0], episodes=episodes, device=device, progress=False,
                     static_shapes=static)
        out["static_shapes" if static else "live_windows"] = {"model_s": r["timing"]["model_s"],
                                                               "env_s": r["timing"]["env_s"]}
    out["static_speedup_of_the_model"] = out["live_windows"]["model_s"] / out["static_shapes"]["model_s"]
    return out


def fisher(device: str, windows: int) -> dict:
    torch.manual_seed(0)
    model = DecisionTransformer(DTConfig(state_dim=11, act_dim=3)).eval().to(device)
    names = [n for n, _ in model.named_parameters() if n.startswith("transformer.")]
    g = torch.Generator().manual_seed(1)
    batch = {"states": torch.randn(windows, 20, 11, generator=g), "actions": torch.rand(windows, 20, 3, generator=g),
             "returns_to_go": torch.randn(windows, 20, 1, generator=g),
             "timesteps": torch.randint(0, 1000, (windows, 20), generator=g),
             "mask": torch.ones(windows, 20, dtype=torch.bool)}
    batch = {k: v.to(device) for k, v in batch.items()}
    chunk = window_chunk(torch.device(device), model, names)
    out = {"window_chunk": chunk}
    for label, c in (("one_window_at_a_time_s", 1), ("chunked_s", chunk)):
        fisher_terms(model, {k: v[:2] for k, v in batch.items()}, "exact", names, window_chunk=min(c, 2))  # warm-up
        _sync(device)
        t0 = time.perf_counter()
        fisher_terms(model, batch, "exact", names, window_chunk=c)
        _sync(device)
        out[label] = time.perf_counter() - t0
    out["chunked_speedup"] = out["one_window_at_a_time_s"] / out["chunked_s"]
    return out


def _sync(device: str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--steps", type=int, default=300, help="training steps per run")
    ap.add_argument("--models", type=int, default=8, help="DTs stacked in the batched run")
    ap.add_argument("--episodes", type=int, default=50)
    ap.add_argument("--fisher-windows", type=int, default=8)
    args = ap.parse_args()
    name = torch.cuda.get_device_name(args.device) if torch.device(args.device).type == "cuda" else "cpu"
    task = get_task("hopper")
    with tempfile.TemporaryDirectory() as tmp:
        data = write_d4rl(rollout(task, random_policy(task, 0), 20_000, seed=0, progress=False),
                          Path(tmp) / "hopper-random-20000.hdf5")
        result = {"device": name, "training": training(Path(data), Path(tmp), args.device, args.steps, args.models)}
    result["evaluation"] = evaluation(args.device, args.episodes)
    result["fisher_exact"] = fisher(args.device, args.fisher_windows)
    report("gpu_speed", result)


if __name__ == "__main__":
    main()
