"""Multi-task bundles: one artifact holding several tasks' DTs that share some tensors.

  bundle.json          format, the tasks (config, state stats, RTG scale/targets, dataset, source),
                       the names of the shared tensors and how they were made
  shared.safetensors   tensors every task uses, stored once
  <task>.safetensors   each task's own tensors (embeddings, head, anything not shared)
"""

from __future__ import annotations

from pathlib import Path

import torch
from pydantic import ValidationError
from safetensors import safe_open
from safetensors.torch import save_file

from dtmerge import __version__
from dtmerge.atomic import atomic_dir, write_json
from dtmerge.model import DecisionTransformer, DTConfig
from dtmerge.store.card import bundle_provenance, write_card
from dtmerge.store.checkpoint import CheckpointError, check_tensors, read_tensors, write_train_state
from dtmerge.store.schema import BUNDLE_FORMAT, BundleMeta, TaskMeta
from dtmerge.validate import one_line, read_validated

FORMAT = BUNDLE_FORMAT


def is_bundle(path) -> bool:
    """A directory with a bundle.json (whatever it is: reading it checks it)."""
    file = Path(path) / "bundle.json"
    return file.exists() or file.is_symlink()


def write_bundle(path, shared: dict[str, torch.Tensor], per_task: dict[str, tuple[dict, object]],
                 info: dict, train_state: dict | None = None) -> Path:
    """`per_task[task] = (meta, tensors)`; `tensors` may be a callable returning them, so that
    only one task's tensors need to be in memory at a time. A training run adds its resumable state."""
    tasks = {task: {k: meta[k] for k in TaskMeta.model_fields if k in meta} for task, (meta, _) in per_task.items()}
    try:  # validated before any file is written: task names become file names
        checked = BundleMeta.model_validate({"dtmerge_version": __version__, "tasks": tasks,
                                             "shared": sorted(shared), **info})
    except ValidationError as e:
        raise CheckpointError(f"{Path(path) / 'bundle.json'}: refusing to write invalid metadata: "
                              f"{one_line(e)}") from None
    with atomic_dir(path) as tmp:
        if train_state is not None:
            write_train_state(tmp, train_state)
        save_file({k: v.contiguous() for k, v in shared.items()}, tmp / "shared.safetensors")
        for task, (_, tensors) in per_task.items():
            tensors = tensors() if callable(tensors) else tensors
            overlap = set(tensors) & set(shared)
            if overlap:
                raise ValueError(f"tensors both shared and task-specific for {task}: {sorted(overlap)[:3]}")
            save_file({k: v.contiguous() for k, v in tensors.items()}, tmp / f"{task}.safetensors")
        written = checked.model_dump(mode="json")
        write_json(tmp / "bundle.json", written)
        write_card(tmp, written["tasks"], bundle_provenance(written))
    return Path(path)


def read_bundle_meta(path) -> dict:
    """A bundle's bundle.json, validated: task names are registered tasks, shapes fit configs."""
    return read_validated(Path(path) / "bundle.json", BundleMeta, CheckpointError).model_dump()


def load_bundle_task(path, task: str | None = None) -> tuple[DecisionTransformer, dict]:
    """Build the DT for one task of a bundle; returns it with checkpoint-style metadata."""
    path = Path(path)
    meta = read_bundle_meta(path)
    if task is None:
        if len(meta["tasks"]) != 1:
            raise CheckpointError(f"{path}: bundle holds {', '.join(meta['tasks'])}; choose one with --task")
        task = next(iter(meta["tasks"]))
    if task not in meta["tasks"]:
        raise CheckpointError(f"{path}: no task {task!r} in this bundle (it holds {', '.join(meta['tasks'])})")
    tmeta = meta["tasks"][task]
    model = DecisionTransformer(DTConfig(**tmeta["config"]))
    shared = read_tensors(path / "shared.safetensors")
    if sorted(shared) != meta["shared"]:
        raise CheckpointError(f"{path / 'shared.safetensors'}: its tensors differ from bundle.json's shared list")
    own = read_tensors(path / f"{task}.safetensors")
    if set(own) & set(shared):
        raise CheckpointError(f"{path / f'{task}.safetensors'}: holds tensors that are also shared")
    tensors = {**shared, **own}
    check_tensors(path / f"{task}.safetensors", model.state_dict(), tensors)
    model.load_state_dict(tensors)
    return model, {**tmeta, "bundle": str(path)}


def trunk_accounting(path) -> dict:
    """Transformer (trunk) parameters stored in the bundle relative to one single-task model.

    Counts `transformer.*` tensors only — the blocks and the final LayerNorm, the paper's
    "transformer parameters" — shared ones once, per-task ones once per task.
    """
    path = Path(path)
    meta = read_bundle_meta(path)

    def counts(file):
        with safe_open(file, framework="pt") as f:
            out = {}
            for name in f.keys():
                shape = f.get_slice(name).get_shape()
                out[name] = int(torch.tensor(shape).prod().item()) if shape else 1
            return out

    shared = counts(path / "shared.safetensors")
    per_task = {t: counts(path / f"{t}.safetensors") for t in meta["tasks"]}
    trunk = lambda d: sum(n for k, n in d.items() if k.startswith("transformer."))  # noqa: E731
    one_model = trunk(shared) + trunk(next(iter(per_task.values())))
    stored = trunk(shared) + sum(trunk(d) for d in per_task.values())
    total_stored = sum(shared.values()) + sum(sum(d.values()) for d in per_task.values())
    return {
        "tasks": list(meta["tasks"]),
        "counts": "transformer.* tensors (blocks + final LayerNorm); embeddings and heads not included",
        "single_model_transformer_params": one_model,
        "bundle_transformer_params": stored,
        "shared_transformer_params": trunk(shared),
        "relative_to_single_model_percent": 100.0 * stored / one_model,
        "all_params_stored": total_stored,
    }
