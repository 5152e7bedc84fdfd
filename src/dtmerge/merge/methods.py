"""Merge methods: small pure functions over one tensor from each model, in a registry.

Every method gets `tensors` (one per model, same shape) and keyword arguments; it never sees
names, files or models, so each is checked against exact answers in tests/test_merge_methods.py.
Data-dependent methods get their statistics (Fisher diagonals, per-model normalisers) passed in.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch


@dataclass(frozen=True)
class Method:
    fn: Callable
    needs_base: bool = False
    needs_fisher: bool = False
    params: tuple[str, ...] = ()


METHODS: dict[str, Method] = {}


def register(name: str, needs_base=False, needs_fisher=False, params=()):
    def deco(fn):
        METHODS[name] = Method(fn, needs_base, needs_fisher, tuple(params))
        return fn

    return deco


@register("interpolate", params=("alpha",))
def interpolate(tensors, alpha: float = 0.5):
    """(1 - alpha) * target + alpha * source: 0.5 averages, 1 swaps in the source's weights.

    Merging Decision Transformers (Lawson & Qureshi, 2023), Section V; weight interpolation as in
    model soups (Wortsman et al., 2022). `tensors` = [target, source].
    """
    if len(tensors) != 2:
        raise ValueError(f"interpolate merges exactly 2 models (target, source), got {len(tensors)}")
    target, source = tensors
    if alpha == 0:
        return target.clone()
    if alpha == 1:
        return source.clone()
    return torch.lerp(target, source, alpha)


@register("average", params=("weights",))
def average(tensors, weights: list[float] | None = None):
    """Weighted N-way mean, sum_i w_i theta_i / sum_i w_i (uniform by default).

    Merging Decision Transformers (Lawson & Qureshi, 2023), Eq. 2; model soups (Wortsman et al., 2022).
    """
    w = torch.ones(len(tensors)) if weights is None else torch.as_tensor(weights, dtype=torch.float64)
    if len(w) != len(tensors) or (w < 0).any() or w.sum() <= 0:
        raise ValueError(f"average needs {len(tensors)} non-negative weights with a positive sum, got {weights}")
    w = (w / w.sum()).tolist()
    out = torch.zeros_like(tensors[0], dtype=torch.float64)
    for wi, t in zip(w, tensors):
        out += wi * t.double()
    return out.to(tensors[0].dtype)


@register("task_arithmetic", needs_base=True, params=("scale",))
def task_arithmetic(tensors, base, scale: float | None = None):
    """base + scale * sum_i (theta_i - base); scale 1/N equals averaging.

    Editing Models with Task Arithmetic (Ilharco et al., 2023); Lawson & Qureshi (2023) Eq. 1.
    """
    scale = 1.0 / len(tensors) if scale is None else scale
    delta = torch.zeros_like(base, dtype=torch.float64)
    for t in tensors:
        delta += t.double() - base.double()
    return (base.double() + scale * delta).to(base.dtype)


@register("fisher", needs_fisher=True, params=("floor",))
def fisher(tensors, fishers, normalizers=None, floor: float = 1e-12):
    """sum_i F_i theta_i / sum_i F_i, each F_i first divided by its model's normaliser.

    Merging Models with Fisher-Weighted Averaging (Matena & Raffel, 2022); Lawson & Qureshi (2023)
    Eq. 4, where each model's Fisher is normalised by its total information. `floor` is added to
    every weight, so elements with no information from any model fall back to the plain mean.
    """
    normalizers = [1.0] * len(tensors) if normalizers is None else normalizers
    num = torch.zeros_like(tensors[0], dtype=torch.float64)
    den = torch.zeros_like(num)
    for t, f, z in zip(tensors, fishers, normalizers):
        w = f.double() / z + floor
        num += w * t.double()
        den += w
    return (num / den).to(tensors[0].dtype)


@register("ties", needs_base=True, params=("density", "scale"))
def ties(tensors, base, density: float = 0.2, scale: float = 1.0):
    """TIES: trim each task vector to its top-`density` magnitudes, elect a sign per element
    (sign of the summed trimmed vectors), average the entries that agree with it, add to base.

    TIES-Merging: Resolving Interference When Merging Models (Yadav et al., 2023).
    """
    if not 0 < density <= 1:
        raise ValueError(f"ties density must be in (0, 1], got {density}")
    deltas = []
    for t in tensors:
        d = (t.double() - base.double()).flatten()
        k = max(1, int(round(density * d.numel())))
        keep = torch.zeros_like(d, dtype=torch.bool)
        keep[d.abs().topk(k).indices] = True
        deltas.append(torch.where(keep, d, torch.zeros_like(d)))
    stacked = torch.stack(deltas)
    sign = torch.sign(stacked.sum(0))
    agree = (torch.sign(stacked) == sign) & (stacked != 0)
    merged = (stacked * agree).sum(0) / agree.sum(0).clamp(min=1)
    return (base.double() + scale * merged.view_as(base)).to(base.dtype)


@register("dare", needs_base=True, params=("density", "scale", "seed"))
def dare(tensors, base, density: float = 0.9, scale: float | None = None, seed: int = 0, generator=None):
    """DARE: drop each task-vector element with probability 1 - density, rescale the survivors by
    1 / density, then task arithmetic (scale 1/N by default).

    Language Models are Super Mario: Absorbing Abilities from Homologous Models as a Free Lunch
    (Yu et al., 2024).
    """
    if not 0 < density <= 1:
        raise ValueError(f"dare density must be in (0, 1], got {density}")
    g = generator or torch.Generator().manual_seed(seed)
    scale = 1.0 / len(tensors) if scale is None else scale
    delta = torch.zeros_like(base, dtype=torch.float64)
    for t in tensors:
        keep = torch.rand(base.shape, generator=g) < density
        delta += torch.where(keep, (t.double() - base.double()) / density, torch.zeros_like(delta))
    return (base.double() + scale * delta).to(base.dtype)
