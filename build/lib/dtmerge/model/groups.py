"""Named parameter groups, resolved from the module tree (never by substring).

Merging selects tensors by these names: `h.1.attn`, `h.0.ln_1`, `attn` (every block's attention),
`mlp`, `ln` (block and final LayerNorms, not `embed_ln`), `ln_f`, `trunk` (the whole transformer),
`embed` (per-task input embeddings incl. `embed_ln`) and `head` (per-task action head).
"""

from __future__ import annotations

import torch.nn as nn

BLOCK_PARTS = ("ln_1", "attn", "ln_2", "mlp")


def _names(module: nn.Module, prefix: str) -> list[str]:
    return [f"{prefix}.{n}" for n, _ in module.named_parameters()]


def parameter_groups(model: nn.Module) -> dict[str, list[str]]:
    trunk = model.transformer
    groups: dict[str, list[str]] = {}
    for i, block in enumerate(trunk.h):
        groups[f"h.{i}"] = _names(block, f"transformer.h.{i}")
        for part in BLOCK_PARTS:
            groups[f"h.{i}.{part}"] = _names(getattr(block, part), f"transformer.h.{i}.{part}")
    groups["ln_f"] = _names(trunk.ln_f, "transformer.ln_f")
    n = len(trunk.h)
    groups["attn"] = [p for i in range(n) for p in groups[f"h.{i}.attn"]]
    groups["mlp"] = [p for i in range(n) for p in groups[f"h.{i}.mlp"]]
    groups["ln"] = [p for i in range(n) for part in ("ln_1", "ln_2") for p in groups[f"h.{i}.{part}"]] + groups["ln_f"]
    groups["trunk"] = _names(trunk, "transformer")
    groups["embed"] = [n for n, _ in model.named_parameters() if n.startswith("embed_")]
    groups["head"] = [n for n, _ in model.named_parameters() if n.startswith("predict_")]
    return groups
