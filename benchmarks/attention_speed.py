"""One DT attention layer (batch 64, 60 tokens, width 128, causal + padding mask), forward and
backward: torch's scaled_dot_product_attention against the explicit softmax(QK^T/sqrt d)V that
dtmerge uses on CPU. Median of 30 runs, one thread.

    python benchmarks/attention_speed.py
"""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F
from common import report

from dtmerge.model.gpt import explicit_attention


def main():
    torch.set_num_threads(1)
    B, T, D = 64, 60, 128
    q, k, v = (torch.randn(B, 1, T, D, requires_grad=True) for _ in range(3))
    key = torch.ones(B, T, dtype=torch.bool)
    key[:, :9] = False
    mask = (torch.ones(T, T, dtype=torch.bool).tril() & (key[:, None, :] | torch.eye(T, dtype=torch.bool)))[:, None]
    variants = {"sdpa": lambda: F.scaled_dot_product_attention(q, k, v, attn_mask=mask),
                "explicit": lambda: explicit_attention(q, k, v, mask, 0.0, False)}
    result = {"what": "attention forward + backward, batch 64, 60 tokens, width 128, 1 head, 1 thread"}
    for precision in ("fp32", "bf16"):
        for name, fn in variants.items():
            times = []
            for _ in range(30):
                t = time.perf_counter()
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
                    y = fn()
                y.float().sum().backward()
                times.append(time.perf_counter() - t)
            result[f"{name}_{precision}_ms"] = 1000 * sorted(times)[len(times) // 2]
        result[f"sdpa_over_explicit_{precision}"] = result[f"sdpa_{precision}_ms"] / result[f"explicit_{precision}_ms"]
    report("attention_speed", result)


if __name__ == "__main__":
    main()
