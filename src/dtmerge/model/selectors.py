"""Selectors: which tensors a merge (or a freeze) touches.

A selector is a list of items, combined in order: a named group of the model (`h.1.attn`,
`h.0.ln_1`, `attn`, `mlp`, `ln`, `ln_f`, `trunk`, ...), a glob over parameter names
(`transformer.h.*.mlp.c_fc.*`), or an exact parameter name; an item starting with `!` removes
what it matches. Never bare substrings: the original code's `attn` also caught mask buffers and
its `ln` caught `embed_ln`. An item that matches nothing is an error listing what exists.
"""

from __future__ import annotations

import fnmatch

import torch

from dtmerge.errors import DtmergeError
from dtmerge.model.dt import DecisionTransformer, DTConfig

PER_TASK_PREFIXES = ("embed_", "predict_")


class SelectorError(DtmergeError):
    """A selector that matches nothing, or matches what may not be merged."""


def model_groups(config: DTConfig) -> tuple[dict[str, list[str]], list[str]]:
    """Named groups and all parameter names of a model with this config (built on the meta device)."""
    with torch.device("meta"):
        model = DecisionTransformer(config)
    return model.parameter_groups(), [n for n, _ in model.named_parameters()]


def resolve(selector, groups: dict[str, list[str]], names: list[str]) -> list[str]:
    items = [selector] if isinstance(selector, str) else list(selector)
    if not items:
        raise SelectorError("empty selector: name at least one group or pattern")
    chosen: set[str] = set()
    for item in items:
        negate = item.startswith("!")
        key = item[1:] if negate else item
        if key in groups:
            matched = set(groups[key])
        elif key in names:
            matched = {key}
        else:
            matched = set(fnmatch.filter(names, key))
        if not matched:
            raise SelectorError(
                f"selector item {item!r} matches nothing. Groups: {', '.join(groups)}. "
                f"Or a glob over parameter names such as {names[0]!r}, 'transformer.h.*.attn.*'")
        chosen = chosen - matched if negate else chosen | matched
    if not chosen:
        raise SelectorError(f"selector {items} selects nothing after exclusions")
    return [n for n in names if n in chosen]


def resolve_mergeable(selector, config: DTConfig) -> list[str]:
    """Resolve for merging: per-task embeddings and heads (their shapes differ) are refused."""
    groups, names = model_groups(config)
    chosen = resolve(selector, groups, names)
    per_task = [n for n in chosen if n.startswith(PER_TASK_PREFIXES)]
    if per_task:
        raise SelectorError(f"per-task tensors are never merged (their shapes differ between tasks): "
                            f"{per_task[:4]}{' ...' if len(per_task) > 4 else ''}; select trunk groups instead")
    return chosen
