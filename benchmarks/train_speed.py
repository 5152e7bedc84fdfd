"""Training steps/s: dtmerge (vectorised window sampler, bf16 autocast where native, its own trunk)
against a baseline written the way the original DT code works: the per-sample Python loop that
rebuilds the returns-to-go for every window, fp32, and kzl/decision-transformer's model (Hugging
Face GPT2Model fed inputs_embeds, eager attention). Also dtmerge's model with the original loop in
fp32, to separate the model from the sampler and precision. All: embed 128, 3 layers, 1 head,
ReLU, dropout 0.1, batch 64, K 20, AdamW, clip 0.25. Last, the fp32 step's achieved GFLOP/s as a
share of a plain fp32 matrix product's on the same threads, both measured in this run (the aim:
75%; run it with OMP_NUM_THREADS=1 for the one-thread figure).

    python benchmarks/train_speed.py [--steps 40]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from common import report
from torch.utils._python_dispatch import TorchDispatchMode

from dtmerge.data import WindowSampler
from dtmerge.data.rollout import random_policy, rollout
from dtmerge.envs import get_task
from dtmerge.model import DecisionTransformer, DTConfig
from dtmerge.runtime import autocast, resolve_precision
from dtmerge.train.loop import action_mse, adamw


def original_get_batch(trajs, p, batch_size, K, mean, std, rng, scale=1000.0, max_ep_len=1000):
    """kzl/decision-transformer gym/experiment.py get_batch, nearly verbatim."""
    s, a, rtg, timesteps, mask = [], [], [], [], []
    idx = rng.choice(len(trajs), size=batch_size, p=p)
    for i in idx:
        traj = trajs[i]
        si = rng.integers(0, traj["rewards"].shape[0])
        s.append(traj["observations"][si:si + K].reshape(1, -1, mean.shape[0]))
        a.append(traj["actions"][si:si + K].reshape(1, -1, traj["actions"].shape[1]))
        timesteps.append(np.arange(si, si + s[-1].shape[1]).reshape(1, -1))
        timesteps[-1][timesteps[-1] >= max_ep_len] = max_ep_len - 1
        rew = traj["rewards"][si:]
        cums = np.zeros_like(rew)  # discount_cumsum(gamma=1) over the rest of the trajectory
        cums[-1] = rew[-1]
        for t in reversed(range(rew.shape[0] - 1)):
            cums[t] = rew[t] + cums[t + 1]
        rtg.append(cums[:s[-1].shape[1] + 1].reshape(1, -1, 1))
        if rtg[-1].shape[1] <= s[-1].shape[1]:
            rtg[-1] = np.concatenate([rtg[-1], np.zeros((1, 1, 1))], axis=1)
        tlen = s[-1].shape[1]
        s[-1] = np.concatenate([np.zeros((1, K - tlen, mean.shape[0])), s[-1]], axis=1)
        s[-1] = (s[-1] - mean) / std
        a[-1] = np.concatenate([np.ones((1, K - tlen, a[-1].shape[2])) * -10.0, a[-1]], axis=1)
        rtg[-1] = np.concatenate([np.zeros((1, K - tlen, 1)), rtg[-1]], axis=1) / scale
        timesteps[-1] = np.concatenate([np.zeros((1, K - tlen)), timesteps[-1]], axis=1)
        mask.append(np.concatenate([np.zeros((1, K - tlen)), np.ones((1, tlen))], axis=1))
    f = lambda x, dt=torch.float32: torch.from_numpy(np.concatenate(x, axis=0)).to(dt)  # noqa: E731
    return {"states": f(s), "actions": f(a), "returns_to_go": f(rtg)[:, :-1], "timesteps": f(timesteps, torch.long),
            "mask": f(mask, torch.bool)}


class OriginalDT(torch.nn.Module):
    """kzl/decision-transformer gym/decision_transformer/models/decision_transformer.py, condensed."""

    def __init__(self, state_dim, act_dim, hidden=128, max_ep_len=1000):
        super().__init__()
        import transformers

        cfg = transformers.GPT2Config(vocab_size=1, n_embd=hidden, n_layer=3, n_head=1, n_inner=4 * hidden,
                                      activation_function="relu", n_positions=1024, resid_pdrop=0.1,
                                      attn_pdrop=0.1, bos_token_id=0, eos_token_id=0)
        cfg._attn_implementation = "eager"
        self.transformer = transformers.GPT2Model(cfg)
        self.embed_timestep = torch.nn.Embedding(max_ep_len, hidden)
        self.embed_return = torch.nn.Linear(1, hidden)
        self.embed_state = torch.nn.Linear(state_dim, hidden)
        self.embed_action = torch.nn.Linear(act_dim, hidden)
        self.embed_ln = torch.nn.LayerNorm(hidden)
        self.predict_action = torch.nn.Sequential(torch.nn.Linear(hidden, act_dim), torch.nn.Tanh())

    def forward(self, states, actions, returns_to_go, timesteps, mask):
        B, K = states.shape[:2]
        t = self.embed_timestep(timesteps)
        x = torch.stack((self.embed_return(returns_to_go) + t, self.embed_state(states) + t,
                         self.embed_action(actions) + t), dim=1).permute(0, 2, 1, 3).reshape(B, 3 * K, -1)
        x = self.embed_ln(x)
        m = torch.stack((mask, mask, mask), dim=1).permute(0, 2, 1).reshape(B, 3 * K).long()
        x = self.transformer(inputs_embeds=x, attention_mask=m).last_hidden_state
        return self.predict_action(x.reshape(B, K, 3, -1).permute(0, 2, 1, 3)[:, 1])


def time_steps(model, get_batch, precision, steps, warmup=5):
    """The step as `dtmerge train` takes it: its loss (a masked mean) and its optimiser."""
    device = torch.device("cpu")
    opt = adamw(model.parameters(), 1e-4, 1e-4, device)
    times, sample_times = [], []
    for i in range(warmup + steps):
        t0 = time.perf_counter()
        b = get_batch()
        t1 = time.perf_counter()
        with autocast(device, precision):
            pred = model(b["states"], b["actions"], b["returns_to_go"], b["timesteps"], b["mask"])
        loss = action_mse(pred, b)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 0.25)
        opt.step()
        if i >= warmup:
            times.append(time.perf_counter() - t0)
            sample_times.append(t1 - t0)
    return {"steps_per_s": len(times) / sum(times), "ms_per_step": 1000 * np.median(times),
            "ms_batch_building": 1000 * np.median(sample_times), "precision": precision}


class _RecordMatmuls(TorchDispatchMode):
    """Every matrix product an fp32 step dispatches (forward and backward), with its operands'
    shapes and strides, to be replayed alone."""

    OPS = (torch.ops.aten.mm.default, torch.ops.aten.addmm.default, torch.ops.aten.bmm.default)

    def __init__(self):
        super().__init__()
        self.calls = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func in self.OPS:
            self.calls.append((func, [(a.shape, a.stride()) if isinstance(a, torch.Tensor) else a for a in args]))
        return func(*args, **(kwargs or {}))


def replay_seconds(calls, repeats: int) -> float:
    """What the step's matmuls cost with nothing else in the step: each recorded product run alone on
    random operands of its shapes and strides, its best time over `repeats` (as the peak is taken),
    summed over the products."""
    total = 0.0
    for func, args in calls:
        operands = [torch.empty_strided(a[0], a[1]).normal_() if isinstance(a, tuple) else a for a in args]
        func(*operands)  # warm up
        total += min(_timed(lambda: func(*operands)) for _ in range(repeats))
    return total


def share_of_matmul_peak(cfg: DTConfig, batch: dict, steps_per_s: float, repeats: int = 20) -> dict:
    """The fp32 step's achieved GFLOP/s (the matrix-product FLOPs of its forward and backward, counted by
    torch's FlopCounterMode) against what a plain fp32 matrix product reaches on the same threads, in
    this run: the best of a square 1024 product and the trunk's largest one (B*3K x 128 @ 128 x 512).
    Also the ceiling: the step's own products replayed alone, at their shapes, as a share of that peak
    (the step cannot do better than its matmuls do without everything else)."""
    from torch.utils.flop_counter import FlopCounterMode

    model = DecisionTransformer(cfg).train()
    with FlopCounterMode(display=False) as counter, _RecordMatmuls() as recorded:
        pred = model(batch["states"], batch["actions"], batch["returns_to_go"], batch["timesteps"], batch["mask"])
        action_mse(pred, batch).backward()
    flops = counter.get_total_flops()
    alone = flops / replay_seconds(recorded.calls, repeats) / 1e9
    rows = batch["states"].shape[0] * batch["states"].shape[1] * 3
    peak = 0.0
    for m, k, n in ((1024, 1024, 1024), (rows, cfg.n_embd, 4 * cfg.n_embd)):
        a, b = torch.randn(m, k), torch.randn(k, n)
        a @ b  # warm up
        best = min(_timed(lambda: a @ b) for _ in range(repeats))
        peak = max(peak, 2 * m * k * n / best / 1e9)
    achieved = flops * steps_per_s / 1e9
    return {"step_gflop": flops / 1e9, "step_gflops_per_s": achieved, "matmul_peak_gflops_per_s": peak,
            "share_of_peak": achieved / peak, "target_share": 0.75, "matmul_calls": len(recorded.calls),
            "matmuls_alone_gflops_per_s": alone, "matmuls_alone_share_of_peak": alone / peak}


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=60)
    args = ap.parse_args()
    task = get_task("halfcheetah")
    traj = rollout(task, random_policy(task, 0), 100_000, seed=0, progress=False)
    mean, std = traj.state_stats()
    trajs = [{"observations": traj.observations[s:s + n], "actions": traj.actions[s:s + n],
              "rewards": traj.rewards[s:s + n]} for s, n in zip(traj.starts, traj.lengths)]
    p = traj.lengths / traj.lengths.sum()
    cfg = DTConfig(state_dim=task.obs_dim, act_dim=task.act_dim)
    rng = np.random.default_rng(0)
    original_batch = lambda: original_get_batch(trajs, p, 64, 20, mean, std, rng)  # noqa: E731
    torch.manual_seed(0)
    baseline = time_steps(OriginalDT(task.obs_dim, task.act_dim).train(), original_batch, "fp32", args.steps)
    torch.manual_seed(0)
    ours_model_only = time_steps(DecisionTransformer(cfg).train(), original_batch, "fp32", args.steps)
    sampler = WindowSampler(traj, 20, mean, std, seed=0)
    precision = resolve_precision("auto", torch.device("cpu"))
    torch.manual_seed(0)
    ours = time_steps(DecisionTransformer(cfg).train(), lambda: sampler.sample(64), precision, args.steps)
    torch.manual_seed(0)
    ours_fp32 = time_steps(DecisionTransformer(cfg).train(), lambda: sampler.sample(64), "fp32", args.steps)
    report("train_speed", {
        "what": "DT training steps/s, batch 64, K 20, embed 128, 3 layers, halfcheetah 100k transitions",
        "baseline_original_model_and_loop_fp32": baseline, "dtmerge_model_original_loop_fp32": ours_model_only,
        "dtmerge_fp32": ours_fp32, "dtmerge": ours,
        "speedup": ours["steps_per_s"] / baseline["steps_per_s"],
        "speedup_model_only_fp32": ours_model_only["steps_per_s"] / baseline["steps_per_s"],
        "speedup_vs_dtmerge_model_with_original_loop_fp32": ours["steps_per_s"] / ours_model_only["steps_per_s"],
        "target": ">= 2x",
        "fp32_step_against_matmul_peak": share_of_matmul_peak(cfg, sampler.sample(64), ours_fp32["steps_per_s"])})


if __name__ == "__main__":
    main()
