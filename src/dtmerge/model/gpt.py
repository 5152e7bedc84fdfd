"""A GPT-2 style causal trunk with Hugging Face GPT-2 parameter names and layouts.

Names (`h.{i}.ln_1`, `h.{i}.attn.c_attn` fused qkv, `h.{i}.attn.c_proj`, `h.{i}.ln_2`,
`h.{i}.mlp.c_fc`, `h.{i}.mlp.c_proj`, `ln_f`) and Conv1D weight layouts (in, out) are GPT-2's, so
pretrained GPT-2 blocks load by name and merges line up tensor by tensor. There is no position
embedding inside the trunk: a Decision Transformer adds its own timestep embedding to the inputs.
"""

from __future__ import annotations

import math
from contextlib import contextmanager

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from dtmerge.runtime import dropout_rng

ACTIVATIONS = {
    "relu": nn.ReLU,
    "gelu": nn.GELU,
    "gelu_new": lambda: nn.GELU(approximate="tanh"),  # GPT-2's own activation
}


class Conv1D(nn.Module):
    """GPT-2's linear layer: weight stored as (in_features, out_features)."""

    def __init__(self, n_in: int, n_out: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(n_in, n_out))
        self.bias = nn.Parameter(torch.zeros(n_out))

    def forward(self, x):
        return torch.addmm(self.bias, x.reshape(-1, x.shape[-1]), self.weight).view(*x.shape[:-1], -1)


_SUPPLY = None  # while `supplied_masks` is active: (shape, p) -> the keep-mask for the next dropout


@contextmanager
def supplied_masks(supply):
    """Every dropout takes its keep-mask from `supply(shape, p)`, in call order, instead of drawing
    it: how `fit_many` gives each of its stacked models the masks its own run would draw."""
    global _SUPPLY
    previous, _SUPPLY = _SUPPLY, supply
    try:
        yield
    finally:
        _SUPPLY = previous


def cpu_keep_mask(rng: np.random.Generator, shape, p: float) -> torch.Tensor:
    """The keep-mask CPU dropout draws: 16-bit integers from numpy's PCG64 (p is rounded to a
    multiple of 1/65536)."""
    return torch.from_numpy(rng.integers(0, 1 << 16, size=tuple(shape), dtype=np.uint16) >= round(p * (1 << 16)))


def dropout(x, p: float, training: bool):
    """Inverted dropout. On CPU the keep-mask comes from numpy's PCG64 (`cpu_keep_mask`): torch's CPU
    `bernoulli_` took a quarter of a DT training step here, numpy's generator is ~7x faster. The
    generator is seeded by `seed_everything` and saved in resumable checkpoints, so runs stay
    repeatable."""
    if not training or p == 0.0:
        return x
    if _SUPPLY is not None:
        keep = _SUPPLY(x.shape, p)
    elif x.is_cuda:
        return F.dropout(x, p, True)
    else:
        keep = cpu_keep_mask(dropout_rng(), x.shape, p)
    return x * keep.to(x.dtype) * (1.0 / (1.0 - p))


class Dropout(nn.Module):
    def __init__(self, p: float):
        super().__init__()
        self.p = p

    def forward(self, x):
        return dropout(x, self.p, self.training)


def explicit_attention(q, k, v, attn_mask, dropout_p: float, training: bool):
    """softmax(QK^T / sqrt(d)) V written out. On CPU this is 1.1-4x faster than
    `scaled_dot_product_attention` at DT sizes (60 tokens; 4x in bf16, benchmarks/README), so
    CPU runs use it and CUDA runs use SDPA; both compute the same function (tests/test_model.py)."""
    att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(q.shape[-1]))
    att = torch.softmax(att.masked_fill(~attn_mask, float("-inf")), dim=-1)
    return dropout(att, dropout_p, training) @ v


class CausalSelfAttention(nn.Module):
    def __init__(self, n_embd: int, n_head: int, dropout: float):
        super().__init__()
        if n_embd % n_head:
            raise ValueError(f"n_embd {n_embd} is not divisible by n_head {n_head}")
        self.n_head = n_head
        self.c_attn = Conv1D(n_embd, 3 * n_embd)
        self.c_proj = Conv1D(n_embd, n_embd)
        self.dropout = dropout
        self.resid_dropout = Dropout(dropout)

    def forward(self, x, attn_mask=None, keep=None):
        """`keep` (a slice of positions) computes queries, and so outputs, only for those tokens."""
        B, T, C = x.shape
        if keep is None:
            q, k, v = self.c_attn(x).split(C, dim=2)
        else:
            w, b = self.c_attn.weight, self.c_attn.bias
            q = x[:, keep] @ w[:, :C] + b[:C]
            k, v = (x @ w[:, C:] + b[C:]).split(C, dim=2)
        heads = lambda t: t.view(B, t.shape[1], self.n_head, C // self.n_head).transpose(1, 2)  # noqa: E731
        q, k, v = heads(q), heads(k), heads(v)
        if attn_mask is None:
            attn_mask = torch.ones(T, T, dtype=torch.bool, device=x.device).tril()
        if keep is not None:
            attn_mask = attn_mask[..., keep, :]
        p = self.dropout if self.training else 0.0
        if x.is_cuda and (_SUPPLY is None or p == 0.0):  # SDPA draws its own dropout
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=p)
        else:
            y = explicit_attention(q, k, v, attn_mask, p, self.training)
        y = y.transpose(1, 2).reshape(B, -1, C)
        return self.resid_dropout(self.c_proj(y))


class MLP(nn.Module):
    def __init__(self, n_embd: int, n_inner: int, activation: str, dropout: float):
        super().__init__()
        self.c_fc = Conv1D(n_embd, n_inner)
        self.act = ACTIVATIONS[activation]()
        self.c_proj = Conv1D(n_inner, n_embd)
        self.dropout = Dropout(dropout)

    def forward(self, x):
        return self.dropout(self.c_proj(self.act(self.c_fc(x))))


class Block(nn.Module):
    """Pre-LayerNorm transformer block with residual connections, as in GPT-2."""

    def __init__(self, n_embd, n_head, n_inner, activation, dropout, eps):
        super().__init__()
        self.ln_1 = nn.LayerNorm(n_embd, eps=eps)
        self.attn = CausalSelfAttention(n_embd, n_head, dropout)
        self.ln_2 = nn.LayerNorm(n_embd, eps=eps)
        self.mlp = MLP(n_embd, n_inner, activation, dropout)

    def forward(self, x, attn_mask=None, keep=None):
        x = (x if keep is None else x[:, keep]) + self.attn(self.ln_1(x), attn_mask, keep)
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    """Embedding dropout, `n_layer` blocks and a final LayerNorm; input and output are (B, T, n_embd)."""

    def __init__(self, n_embd: int, n_layer: int, n_head: int, n_inner: int, activation: str = "relu",
                 dropout: float = 0.1, eps: float = 1e-5):
        super().__init__()
        self.drop = Dropout(dropout)
        self.h = nn.ModuleList(Block(n_embd, n_head, n_inner, activation, dropout, eps) for _ in range(n_layer))
        self.ln_f = nn.LayerNorm(n_embd, eps=eps)
        self.init_weights()

    def init_weights(self, std: float = 0.02):
        """GPT-2's initialisation from the global torch RNG: weights N(0, 0.02), residual projections
        scaled by 1/sqrt(2 * n_layer), biases 0, LayerNorms 1 and 0."""
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, 0.0, std / math.sqrt(2 * len(self.h)))
            elif name.endswith(".weight") and p.dim() == 2:
                nn.init.normal_(p, 0.0, std)
            elif name.endswith(".weight"):
                nn.init.ones_(p)
            else:
                nn.init.zeros_(p)

    def forward(self, x, key_mask=None, keep=None):
        """`key_mask` (B, T) bool marks real tokens; padded keys are hidden from every query.
        `keep` (a slice) returns only those positions, skipping the last block's work for the rest.

        Each token may always attend to itself, so rows of padding stay finite (they are never
        read by a real token).
        """
        attn_mask = None
        if key_mask is not None:
            T = x.shape[1]
            causal = torch.ones(T, T, dtype=torch.bool, device=x.device).tril()
            eye = torch.eye(T, dtype=torch.bool, device=x.device)
            attn_mask = (causal & (key_mask[:, None, :] | eye))[:, None]  # (B, 1, T, T)
        x = self.drop(x)
        for i, block in enumerate(self.h):
            x = block(x, attn_mask, keep if i == len(self.h) - 1 else None)
        return self.ln_f(x)
