"""What language-model work costs here: one ChibiT pre-training step (128 wide, 3 layers, 1 head,
vocab 8000, batch 16 x 256 tokens) and one DT training step with a GPT-2-small-shaped trunk
(768 wide, 12 layers, 12 heads; batch 64, K 20), bf16 where native. Random weights: the cost of a
step does not depend on them. Median of a few steps after warm-up.

    python benchmarks/lm_cost.py [--steps 5]
"""

from __future__ import annotations

import argparse
import time

import torch
from common import report

from dtmerge.model import DecisionTransformer, DTConfig
from dtmerge.runtime import autocast, pick_device, resolve_precision


def median_step_ms(step, steps: int) -> float:
    step()
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        step()
        times.append(time.perf_counter() - t)
    return 1000 * sorted(times)[len(times) // 2]


def main():
    from transformers import GPT2Config, GPT2LMHeadModel

    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=5)
    args = ap.parse_args()
    device = pick_device("auto")
    precision = resolve_precision("auto", device)
    torch.manual_seed(0)

    lm = GPT2LMHeadModel(GPT2Config(vocab_size=8000, n_embd=128, n_layer=3, n_head=1, bos_token_id=0,
                                    eos_token_id=0)).to(device).train()
    lm_opt = torch.optim.AdamW(lm.parameters(), lr=3e-4)
    ids = torch.randint(0, 8000, (16, 256), device=device)

    def lm_step():
        with autocast(device, precision):
            loss = lm(input_ids=ids, labels=ids).loss
        lm_opt.zero_grad(set_to_none=True)
        loss.backward()
        lm_opt.step()

    dt = DecisionTransformer(DTConfig(state_dim=17, act_dim=6, n_embd=768, n_layer=12, n_head=12,
                                      activation="gelu_new")).to(device).train()
    dt_opt = torch.optim.AdamW(dt.parameters(), lr=1e-4)
    B, K = 64, 20
    batch = (torch.randn(B, K, 17, device=device), torch.rand(B, K, 6, device=device) * 2 - 1,
             torch.randn(B, K, 1, device=device), torch.randint(0, 1000, (B, K), device=device),
             torch.ones(B, K, dtype=torch.bool, device=device))

    def dt_step():
        with autocast(device, precision):
            pred = dt(*batch)
        loss = ((pred.float() - batch[1]) ** 2).mean()
        dt_opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(dt.parameters(), 0.25)
        dt_opt.step()

    chibit_ms = median_step_ms(lm_step, args.steps)
    gpt2_ms = median_step_ms(dt_step, args.steps)
    trunk = sum(p.numel() for n, p in dt.named_parameters() if n.startswith("transformer."))
    report("lm_cost", {
        "device": str(device), "precision": precision,
        "chibit_pretrain_ms_per_step": chibit_ms, "chibit_tokens_per_s": 16 * 256 / (chibit_ms / 1000),
        "gpt2_small_dt_ms_per_step": gpt2_ms, "gpt2_small_dt_transformer_params": trunk,
        "gpt2_small_dt_hours_per_100k_steps": gpt2_ms * 100_000 / 3.6e6})


if __name__ == "__main__":
    main()
