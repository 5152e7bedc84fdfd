"""Merge checkpoints tensor by tensor: selector x method -> a multi-task bundle (or one checkpoint).

Tensors are streamed from the safetensors files (one tensor per model at a time), so merging
GPT-2-sized trunks never holds more than the output plus a few tensors in memory. Unselected
tensors come from each task's own model (bundle) or from the target (checkpoint); per-task
embeddings and heads are never merged; every merged tensor is checked finite.
"""

from __future__ import annotations

import inspect
import tempfile
import typing
import zlib
from contextlib import ExitStack
from pathlib import Path
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError
from safetensors import safe_open

from dtmerge.errors import DtmergeError
from dtmerge.merge.align import ALIGN_METHODS, align_checkpoint
from dtmerge.merge.fisher import read_fisher_meta
from dtmerge.merge.methods import METHODS, method_taking
from dtmerge.merge.regmean import read_grams
from dtmerge.model import DTConfig
from dtmerge.model.selectors import resolve_mergeable
from dtmerge.outputs import claim_outputs
from dtmerge.runtime import MAX_SEED
from dtmerge.store.bundle import write_bundle
from dtmerge.store.checkpoint import (
    carried_meta,
    check_weights,
    load_checkpoint,
    read_meta,
    save_checkpoint,
    trunk_sha256,
)
from dtmerge.validate import one_line, read_yaml_mapping

TRUNK_FIELDS = ("n_embd", "n_layer", "n_head", "n_inner", "activation")


class MergeError(DtmergeError):
    """A merge that cannot be done as configured."""


class MergeConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    models: list[str] = Field(min_length=2, description="checkpoint directories, one per task")
    target: str | None = Field(None, description="model giving unselected tensors / interpolated from "
                                                  "(default: the first)")
    select: list[str] = Field(["attn"], description="groups, globs or names; '!item' excludes")
    method: str = Field("average", description=f"one of: {', '.join(METHODS)}")
    params: dict = Field(default_factory=dict, description="the method's parameters, e.g. {alpha: 0.5}")
    base: str | None = Field(None, description="shared starting checkpoint (task_arithmetic, ties, dare)")
    fisher_normalize: Literal["total", "selected", "l2", "none"] = Field(
        "total", description="divide each model's Fisher by its sum over every block (total, the paper's code), "
                             "its sum over the selected tensors (selected), its L2 norm over them (l2), or nothing")
    force: bool = Field(False, description="merge against a base the models were not trained from")
    align: Literal[ALIGN_METHODS] | None = Field(None, description="permute every model into the target's basis "
                                                  "first (dtmerge align): weights or activations")
    output: str = Field(description="where the result goes")
    format: Literal["bundle", "checkpoint"] = Field("bundle", description="bundle: every task, sharing the "
                                                    "merged tensors; checkpoint: the target model only")


MAX_PARAM = 1e3  # a merge weight or scale beyond this is a typo, not a merge (and overflows)


class _Inputs:
    """The models of a merge, opened lazily as safetensors files, with their metadata checked."""

    def __init__(self, cfg: MergeConfig):
        self.method = method_taking(cfg.method, cfg.params, MergeError)
        hints = typing.get_type_hints(self.method.fn)
        for key, value in cfg.params.items():
            try:
                TypeAdapter(hints[key]).validate_python(value, strict=True)
            except ValidationError:
                expected = getattr(hints[key], "__name__", str(hints[key]))
                raise MergeError(f"method {cfg.method}: parameter {key}={value!r} is not a {expected}") from None
            numbers = value if isinstance(value, list) else [value]
            if key == "seed" and not 0 <= value <= MAX_SEED or key != "seed" and any(
                    isinstance(x, (int, float)) and not abs(x) <= MAX_PARAM for x in numbers):
                bound = f"0..{MAX_SEED}" if key == "seed" else f"finite and within +-{MAX_PARAM:g}"
                raise MergeError(f"method {cfg.method}: parameter {key}={value!r} must be {bound}")
        self.paths = [Path(p) for p in cfg.models]
        target = Path(cfg.target) if cfg.target else self.paths[0]
        if target not in self.paths:
            raise MergeError(f"target {target} is not one of the models")
        self.paths.remove(target)
        self.paths.insert(0, target)  # target first: interpolate's [target, source] order
        self.metas = [read_meta(p) for p in self.paths]
        self.configs = [DTConfig(**m["config"]) for m in self.metas]
        for p, c in zip(self.paths[1:], self.configs[1:]):
            diff = {f: (getattr(self.configs[0], f), getattr(c, f)) for f in TRUNK_FIELDS
                    if getattr(self.configs[0], f) != getattr(c, f)}
            if diff:
                raise MergeError(f"{p} has a different architecture from {self.paths[0]}: {diff}")
        for p, c in zip(self.paths, self.configs):  # every model checked as a lone one would be
            check_weights(p / "model.safetensors", c)
        self.tasks = [m["task"] for m in self.metas]
        self.selected = resolve_mergeable(cfg.select, self.configs[0])
        self.fisher_paths = [p / "fisher.safetensors" for p in self.paths] if self.method.needs_fisher else []
        if self.method.needs_fisher:
            self._check_fishers()
        self.grams = [read_grams(p, self.selected) for p in self.paths] if self.method.needs_grams else []
        self.base = None
        if self.method.needs_base:
            self._check_base(cfg)

    def _check_fishers(self):
        self.fisher_metas = {}
        for p in self.paths:
            fmeta = self.fisher_metas[p] = read_fisher_meta(p)
            missing = [n for n in self.selected if n not in fmeta["tensors"]]
            if missing:
                raise MergeError(f"{p / 'fisher.safetensors'} has no Fisher for {missing[:3]}; "
                                 f"recompute it with dtmerge fisher")

    def _check_base(self, cfg: MergeConfig):
        if cfg.base is None:
            raise MergeError(f"method {cfg.method} needs base: the checkpoint the models were fine-tuned from")
        base_model, base_meta = load_checkpoint(cfg.base)
        bc = DTConfig(**base_meta["config"])
        if any(getattr(bc, f) != getattr(self.configs[0], f) for f in TRUNK_FIELDS):
            raise MergeError(f"base {cfg.base} has a different architecture from the models")
        base_hash = trunk_sha256(base_model.state_dict())
        strangers = [str(p) for p, m in zip(self.paths, self.metas) if m.get("init_trunk_sha256") != base_hash]
        if strangers and not cfg.force:
            raise MergeError(f"{', '.join(strangers)} did not start from base {cfg.base} (their recorded "
                             f"init_trunk_sha256 differs); task vectors need a shared base. Pass force to merge anyway")
        self.base = {n: base_model.state_dict()[n] for n in self.selected}

    def fisher_normalizers(self, how: str) -> list[float]:
        """One divisor per model: `total` is the Fisher summed over every block of the trunk as
        recorded in fisher.json (the paper's code: `transformer.h.*`), `selected` the sum over the
        merged tensors only, `l2` their L2 norm, `none` 1."""
        if how == "none":
            return [1.0] * len(self.paths)
        out = []
        for path, fp in zip(self.paths, self.fisher_paths):
            if how == "total":
                out.append(self.fisher_metas[path]["total"])
            else:
                with safe_open(fp, framework="pt") as f:
                    power = 2 if how == "l2" else 1
                    total = sum(float(f.get_tensor(n).double().pow(power).sum()) for n in self.selected)
                out.append(total ** 0.5 if how == "l2" else total)
            if out[-1] <= 0:
                raise MergeError(f"{fp}: the Fisher is zero over the tensors it is normalised by ({how}); "
                                 f"cannot normalise by it")
        return out


def plan(cfg: MergeConfig) -> str:
    """What a merge would do: every merged tensor, and where every other tensor comes from."""
    inp = _Inputs(cfg)
    lines = [f"method {cfg.method} {cfg.params or ''} over {len(inp.paths)} models: "
             + ", ".join(f"{t} ({p})" for t, p in zip(inp.tasks, inp.paths)),
             f"merged ({len(inp.selected)} tensors):"]
    lines += [f"  {n}" for n in inp.selected]
    with safe_open(inp.paths[0] / "model.safetensors", framework="pt") as f:
        rest = [n for n in f.keys() if n not in set(inp.selected)]
    if cfg.format == "bundle":
        lines.append(f"kept per task ({len(rest)} tensors each, from that task's own model):")
    else:
        lines.append(f"from the target {inp.tasks[0]} ({inp.paths[0]}) ({len(rest)} tensors):")
    lines += [f"  {n}" for n in rest]
    return "\n".join(lines)


def merge(cfg: MergeConfig, overwrite: bool = False) -> Path:
    """Merge as configured and write the bundle (or checkpoint) to `cfg.output`."""
    inputs = [*cfg.models, *(p for p in (cfg.target, cfg.base) if p)]
    claim_outputs([cfg.output], inputs, overwrite)
    if not cfg.align:
        return _merge(cfg, cfg.models)
    target = cfg.target or cfg.models[0]
    Path(cfg.output).resolve().parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=Path(cfg.output).resolve().parent, prefix=".dtmerge-align-") as tmp:
        aligned = [m if m == target else str(align_checkpoint(target, m, Path(tmp) / str(i), cfg.align))
                   for i, m in enumerate(cfg.models)]
        return _merge(cfg.model_copy(update={"models": aligned, "target": target}), cfg.models)


def _merge(cfg: MergeConfig, recorded_models: list[str]) -> Path:
    """The merge itself; `recorded_models` are the paths the provenance names (the user's, not
    the aligned copies')."""
    inp = _Inputs(cfg)
    merged = merged_tensors(cfg, inp)
    recorded = {str(Path(m)): str(r) for m, r in zip(cfg.models, recorded_models)}
    provenance = {"merge": {**cfg.model_dump(exclude={"output"}), "models": [recorded[str(p)] for p in inp.paths],
                            "tasks": inp.tasks, "merged_tensors": len(inp.selected)}}
    if cfg.format == "checkpoint":
        model, meta = load_checkpoint(inp.paths[0])
        model.load_state_dict({**model.state_dict(), **merged})
        return save_checkpoint(cfg.output, model, {**carried_meta(meta), **provenance})
    if len(set(inp.tasks)) != len(inp.tasks):
        raise MergeError(f"a bundle holds one model per task, got tasks {inp.tasks}; use format: checkpoint")

    def own(path):
        def load():
            with safe_open(path / "model.safetensors", framework="pt") as f:
                return {n: f.get_tensor(n) for n in f.keys() if n not in merged}
        return load

    per_task = {t: (m, own(p)) for t, m, p in zip(inp.tasks, inp.metas, inp.paths)}
    return write_bundle(cfg.output, merged, per_task, provenance)


def merged_tensors(cfg: MergeConfig, inp: _Inputs | None = None) -> dict[str, torch.Tensor]:
    """The selected tensors merged as `cfg` says, in memory (what a merge would write); `inp`: the
    inputs already opened and checked for this config."""
    inp = inp or _Inputs(cfg)
    method = inp.method
    normalizers = inp.fisher_normalizers(cfg.fisher_normalize) if method.needs_fisher else None
    merged: dict[str, torch.Tensor] = {}
    with ExitStack() as stack:
        files = [stack.enter_context(safe_open(p / "model.safetensors", framework="pt")) for p in inp.paths]
        fishers = [stack.enter_context(safe_open(fp, framework="pt")) for fp in inp.fisher_paths]
        for name in inp.selected:
            tensors = [f.get_tensor(name) for f in files]
            kwargs = dict(cfg.params)
            if method.needs_base:
                kwargs["base"] = inp.base[name]
            if method.needs_grams:
                kwargs["grams"] = [g.get(name) for g in inp.grams]
            if method.needs_fisher:
                kwargs.update(fishers=[f.get_tensor(name) for f in fishers], normalizers=normalizers)
            if "generator" in inspect.signature(method.fn).parameters:  # a stream per tensor: a merge repeats
                kwargs["generator"] = torch.Generator().manual_seed(kwargs.get("seed", 0) + zlib.crc32(name.encode()))
            try:
                out = method.fn(tensors, **kwargs)
            except ValueError as e:
                raise MergeError(f"method {cfg.method}: {e}") from None
            if out.shape != tensors[0].shape or not torch.isfinite(out).all():
                raise MergeError(f"merging {name} with {cfg.method} gave a non-finite or mis-shaped tensor")
            merged[name] = out
    return merged


def load_merge_config(path, overrides: dict | None = None) -> MergeConfig:
    """A merge config from YAML, with `overrides` (flags) on top; errors name the file and field."""
    data = read_yaml_mapping(path, "merge config", MergeError)
    data.update({k: v for k, v in (overrides or {}).items() if v is not None})
    try:
        return MergeConfig(**data)
    except ValidationError as e:
        raise MergeError(f"{path}: invalid merge config: {one_line(e)}") from None


__all__ = ["MergeConfig", "MergeError", "load_merge_config", "merge", "plan"]
