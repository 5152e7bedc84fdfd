"""Per-window Fisher: torch.func-vectorised (vmap over windows) against a per-window Python loop
(one forward/backward per window, or per action output for the exact estimator), on the same
DT (embed 128, 3 layers, K 20) and the same windows. Results are checked equal. Also the exact
estimator with every window of the batch in one vmap (`window_chunk`, what a GPU uses) against its
one-window-at-a-time default.

    python benchmarks/fisher_speed.py [--windows 32]
"""

from __future__ import annotations

import argparse
import time

import torch
from common import report

from dtmerge.merge.fisher import fisher_terms
from dtmerge.model import DecisionTransformer, DTConfig

KEYS = ("states", "actions", "returns_to_go", "timesteps", "mask")


def loop_fisher(model, batch, estimator, names):
    params = dict(model.named_parameters())
    out = {n: torch.zeros_like(params[n]) for n in names}
    for i in range(len(batch["mask"])):
        x = [batch[k][i:i + 1] for k in KEYS]
        m = batch["mask"][i]
        pred = model(*x)[0]
        if estimator == "empirical":
            loss = 0.5 * (((pred - batch["actions"][i]) ** 2) * m[:, None]).sum()
            grads = [torch.autograd.grad(loss, [params[n] for n in names])]
        else:
            grads = [torch.autograd.grad(pred[t, k], [params[n] for n in names], retain_graph=True)
                     for t in range(pred.shape[0]) if m[t] for k in range(pred.shape[1])]
        for g in grads:
            for n, v in zip(names, g):
                out[n] += v ** 2
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--windows", type=int, default=32)
    ap.add_argument("--exact-windows", type=int, default=4, help="windows for the (slow) exact comparison")
    args = ap.parse_args()
    torch.manual_seed(0)
    model = DecisionTransformer(DTConfig(state_dim=11, act_dim=3)).eval()
    names = [n for n, _ in model.named_parameters() if n.startswith("transformer.")]
    result = {"what": "diagonal Fisher of the trunk, DT 128/3/1, K 20, hopper-sized (act_dim 3)"}
    for est, B in (("empirical", args.windows), ("exact", args.exact_windows)):
        g = torch.Generator().manual_seed(1)
        batch = {"states": torch.randn(B, 20, 11, generator=g), "actions": torch.rand(B, 20, 3, generator=g) * 2 - 1,
                 "returns_to_go": torch.randn(B, 20, 1, generator=g),
                 "timesteps": torch.randint(0, 1000, (B, 20), generator=g), "mask": torch.ones(B, 20, dtype=torch.bool)}
        fisher_terms(model, {k: v[:2] for k, v in batch.items()}, est, names)  # warm-up of both paths
        loop_fisher(model, {k: v[:2] for k, v in batch.items()}, est, names)
        t = time.perf_counter()
        vec = fisher_terms(model, batch, est, names)
        t_vec = time.perf_counter() - t
        t = time.perf_counter()
        ref = loop_fisher(model, batch, est, names)
        t_loop = time.perf_counter() - t
        err = max(float((vec[n] - ref[n]).abs().max() / ref[n].abs().max().clamp(min=1e-30)) for n in names)
        result[est] = {"windows": B, "vectorised_s": t_vec, "loop_s": t_loop, "speedup": t_loop / t_vec,
                       "max_relative_difference": err}
        if est == "exact":
            t = time.perf_counter()
            chunked = fisher_terms(model, batch, est, names, window_chunk=B)
            t_chunk = time.perf_counter() - t
            result["exact_windows_in_one_vmap"] = {
                "windows": B, "seconds": t_chunk, "against_one_at_a_time": t_vec / t_chunk,
                "max_relative_difference": max(float((chunked[n] - vec[n]).abs().max()
                                                     / vec[n].abs().max().clamp(min=1e-30)) for n in names)}
    result["target"] = ">= 10x"
    report("fisher_speed", result)


if __name__ == "__main__":
    main()
