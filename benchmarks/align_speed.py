"""Permutation alignment time: weight matching of two 128/3/1 DTs and of two GPT-2-small-sized
trunks (768 wide, 12 layers, 12 heads, 85M parameters), and activation matching of the small pair
on 2,048 windows; each against the time of a plain 2-way average of the same two models' trunks,
measured in the same run. Two independently initialised models are aligned (the hard case: many
passes), so the numbers are an upper end for trained models.

    python benchmarks/align_speed.py [--skip-gpt2]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import report  # noqa: E402

from dtmerge.merge.align import activation_matching, weight_matching  # noqa: E402
from dtmerge.merge.methods import METHODS  # noqa: E402
from dtmerge.model import DecisionTransformer, DTConfig  # noqa: E402


def pair(**shape):
    models = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        models.append(DecisionTransformer(DTConfig(state_dim=17, act_dim=6, dropout=0.0, **shape)).eval())
    return models


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def average_seconds(a, b) -> float:
    sa, sb = a.state_dict(), b.state_dict()
    names = [n for n in sa if n.startswith("transformer.")]
    return timed(lambda: {n: METHODS["average"].fn([sa[n], sb[n]]) for n in names})[0]


def windows(model, n: int, seed: int) -> dict:
    g = torch.Generator().manual_seed(seed)
    c, K = model.config, model.config.context_len
    return {"states": torch.randn(n, K, c.state_dim, generator=g), "actions": torch.randn(n, K, c.act_dim, generator=g),
            "returns_to_go": torch.randn(n, K, 1, generator=g), "mask": torch.ones(n, K, dtype=torch.bool),
            "timesteps": torch.randint(0, c.max_ep_len, (n, K), generator=g)}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--skip-gpt2", action="store_true", help="only the 128/3/1 pair")
    args = ap.parse_args()
    result = {}
    shapes = {"dt_128x3x1": {"n_embd": 128, "n_layer": 3, "n_head": 1}}
    if not args.skip_gpt2:
        shapes["gpt2_small_trunk"] = {"n_embd": 768, "n_layer": 12, "n_head": 12}
    for name, shape in shapes.items():
        a, b = pair(**shape)
        seconds, _ = timed(lambda: weight_matching(a.state_dict(), b.state_dict(), a.config, seed=0))
        avg = average_seconds(a, b)
        result[name] = {"trunk_params": sum(p.numel() for p in a.transformer.parameters()),
                        "weight_matching_s": seconds, "average_merge_s": avg, "ratio_to_average": seconds / avg}
        if name == "dt_128x3x1":
            batches = [(windows(a, 256, s), windows(b, 256, s)) for s in range(8)]  # 2,048 windows
            seconds, _ = timed(lambda: activation_matching(a, b, batches))
            result[name] |= {"activation_matching_2048_windows_s": seconds}
    report("align_speed", result)


if __name__ == "__main__":
    main()
