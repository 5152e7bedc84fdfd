"""Attention perturbations of a trained DT (Lawson & Qureshi, 2023, Table I).

  random    attention weights replaced by fixed random ones (GPT-2 init, N(0, 0.02), output
            projection scaled by 1/sqrt(2 n_layer); biases 0), the same for every experiment
            with the same seed
  identity  every attention weight set to 1 and bias to 0, as the paper describes ("identity
            parameters"): an all-ones matrix, not an identity map. Its output adds the same value
            to every dimension of the residual stream, which every later LayerNorm subtracts, so it
            is the same map as `remove` (tests/test_merge.py checks the actions are equal)
  identity-map  the value and output projections set to the identity and their biases to 0
            (queries and keys as trained): each token adds the attention-weighted average of the
            LayerNorm'd inputs it attends to, a true identity attention
  remove    the attention output projection set to zero, so each block's attention adds nothing
            and information passes through the residual connections only
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from dtmerge.model.selectors import SelectorError, resolve
from dtmerge.outputs import claim_outputs
from dtmerge.store.checkpoint import carried_meta, load_checkpoint, save_checkpoint

KINDS = ("random", "identity", "identity-map", "remove")


def perturb_state(state: dict[str, torch.Tensor], names: list[str], kind: str, n_layer: int,
                  seed: int = 0) -> dict[str, torch.Tensor]:
    """A copy of `state` with the attention tensors `names` perturbed."""
    if kind not in KINDS:
        raise ValueError(f"unknown perturbation {kind!r}; kinds: {', '.join(KINDS)}")
    out = dict(state)
    g = torch.Generator().manual_seed(seed)
    for name in names:
        t = state[name]
        if kind == "identity":
            out[name] = torch.ones_like(t) if name.endswith(".weight") else torch.zeros_like(t)
        elif kind == "identity-map":
            out[name] = _identity_map(name, t)
        elif kind == "remove":
            out[name] = torch.zeros_like(t) if ".c_proj." in name else t.clone()
        elif name.endswith(".weight"):
            std = 0.02 / math.sqrt(2 * n_layer) if ".c_proj." in name else 0.02
            out[name] = torch.randn(t.shape, generator=g, dtype=t.dtype) * std
        else:
            out[name] = torch.zeros_like(t)
    return out


def _identity_map(name: str, t: torch.Tensor) -> torch.Tensor:
    """c_attn (Conv1D, (C, 3C): q | k | v columns): v's block the identity, its bias 0, q and k kept;
    c_proj (C, C): the identity, bias 0."""
    out = t.clone()
    if ".c_attn." in name:
        C = t.shape[0] if t.dim() == 2 else t.shape[0] // 3
        if t.dim() == 2:
            out[:, 2 * C:] = torch.eye(C, dtype=t.dtype)
        else:
            out[2 * C:] = 0
    elif ".c_proj." in name:
        out = torch.eye(t.shape[0], dtype=t.dtype) if t.dim() == 2 else torch.zeros_like(t)
    return out


def perturb_checkpoint(checkpoint, output, kind: str, select=("attn",), seed: int = 0,
                       overwrite: bool = False) -> Path:
    """Write a copy of `checkpoint` to `output` with its selected attention perturbed."""
    claim_outputs([output], [checkpoint], overwrite)
    model, meta = load_checkpoint(checkpoint)
    groups = model.parameter_groups()
    names = resolve(list(select), groups, [n for n, _ in model.named_parameters()])
    not_attn = [n for n in names if n not in set(groups["attn"])]
    if not_attn:
        raise SelectorError(f"perturbations apply to attention tensors only, not {not_attn[:3]}")
    model.load_state_dict(perturb_state(model.state_dict(), names, kind, model.config.n_layer, seed))
    return save_checkpoint(output, model, {**carried_meta(meta), "perturbation": {"kind": kind, "select": list(select),
                                                                     "seed": seed, "source": str(checkpoint)}})
