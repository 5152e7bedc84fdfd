"""Checkpoints as safetensors plus JSON: loading someone's model never runs code (no pickle).

A checkpoint is a directory:
  model.safetensors        the model's tensors
  meta.json                model config, task, dataset, state mean/std, RTG scale, step, seed, version
  train_state.safetensors  (training runs only) optimizer moments and RNG states ...
  train_state.json         ... and the rest of the resumable state, tensors referenced by key
The directory is written to a temporary name and swapped in whole.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch
from pydantic import ValidationError
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from dtmerge import __version__
from dtmerge.atomic import atomic_dir, read_json, write_json
from dtmerge.data import WindowSampler
from dtmerge.envs import get_task
from dtmerge.errors import DtmergeError
from dtmerge.model import DecisionTransformer, DTConfig
from dtmerge.store.card import checkpoint_provenance, write_card
from dtmerge.store.schema import CHECKPOINT_FORMAT, CheckpointMeta
from dtmerge.validate import one_line, read_validated

FORMAT = CHECKPOINT_FORMAT
STRUCTURAL = ("format", "dtmerge_version", "config")


class CheckpointError(DtmergeError):
    """A checkpoint that cannot be loaded; the message names the file and the problem."""


def carried_meta(meta: dict) -> dict:
    """A checkpoint's metadata minus what `save_checkpoint` writes itself: to derive a new one."""
    return {k: v for k, v in meta.items() if k not in STRUCTURAL}


def hand_built_meta(task_name: str, **extra) -> dict:
    """Complete checkpoint metadata for a model built in code rather than trained on a dataset
    (identity state normalisation, no dataset): for experiments, benchmarks and tests."""
    task = get_task(task_name)
    return {"task": task.name, "env_id": task.env_id, "dataset": "(none: built in code)", "dataset_attrs": {},
            "state_mean": [0.0] * task.obs_dim, "state_std": [1.0] * task.obs_dim, "rtg_scale": 1000.0,
            "rtg_targets": list(task.rtg_targets), "seed": 0, "step": 0, "train_config": {}, "frozen": [],
            "init": "built in code", "init_trunk_sha256": "0" * 64, **extra}


def save_checkpoint(path, model: DecisionTransformer, meta: dict, train_state: dict | None = None) -> Path:
    """Write a checkpoint directory atomically; its meta.json is validated before it is written."""
    path = Path(path)
    try:
        checked = CheckpointMeta.model_validate({"dtmerge_version": __version__,
                                                 "config": model.config.model_dump(), **meta})
    except ValidationError as e:
        raise CheckpointError(f"{path / 'meta.json'}: refusing to write invalid metadata: {one_line(e)}") from None
    with atomic_dir(path) as tmp:
        tensors = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
        save_file(tensors, tmp / "model.safetensors")
        written = checked.model_dump(mode="json")
        write_json(tmp / "meta.json", written)
        write_card(tmp, {written["task"]: written}, checkpoint_provenance(written))
        if train_state is not None:
            write_train_state(tmp, train_state)
    return path


def write_train_state(directory: Path, state: dict) -> None:
    """A resumable training state as train_state.safetensors + train_state.json in `directory`."""
    tensors, skeleton = flatten_tensors(state)
    save_file(tensors, Path(directory) / "train_state.safetensors")
    write_json(Path(directory) / "train_state.json", skeleton)


def read_tensors(file) -> dict[str, torch.Tensor]:
    file = Path(file)
    if not file.is_file():
        raise CheckpointError(f"{file}: file not found")
    try:
        return load_file(file)
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{file}: not a readable safetensors file ({e})") from None


def read_meta(path) -> dict:
    """A checkpoint's meta.json, validated (see dtmerge.store.schema)."""
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"{path}: not a checkpoint directory")
    return read_validated(path / "meta.json", CheckpointMeta, CheckpointError).model_dump()


def load_checkpoint(path, device="cpu") -> tuple[DecisionTransformer, dict]:
    """Rebuild the model from meta.json and load its tensors, checking names and shapes exactly."""
    path = Path(path)
    meta = read_meta(path)
    model = DecisionTransformer(DTConfig(**meta["config"]))
    tensors = read_tensors(path / "model.safetensors")
    check_tensors(path / "model.safetensors", model.state_dict(), tensors)
    model.load_state_dict(tensors)
    return model.to(device), meta


WEIGHT_DTYPES = (torch.float32, torch.bfloat16, torch.float16, torch.float64)


def window_sampler(traj, model: DecisionTransformer, meta: dict, seed: int) -> WindowSampler:
    """Windows of `traj` shaped and normalised as the checkpoint's model was trained on them."""
    return WindowSampler(traj, model.config.context_len, meta["state_mean"], meta["state_std"], meta["rtg_scale"],
                         model.config.max_ep_len, seed=seed)


def check_weights(file, config: DTConfig) -> None:
    """Check model file `file` against the model `config` describes (as loading it would):
    readable, every tensor's name and shape, a float dtype a model can hold, finite values."""
    with torch.device("meta"):  # shapes only, nothing allocated
        expected = DecisionTransformer(config).state_dict()
    check_tensors(file, expected, read_tensors(file))


def check_tensors(file, expected: dict[str, torch.Tensor], found: dict[str, torch.Tensor]) -> None:
    missing = sorted(set(expected) - set(found))
    extra = sorted(set(found) - set(expected))
    if missing or extra:
        raise CheckpointError(f"{file}: tensors do not match the model config "
                              f"(missing: {missing[:5] or 'none'}, unexpected: {extra[:5] or 'none'})")
    for name, t in expected.items():
        tensor = found[name]
        if tensor.shape != t.shape:
            raise CheckpointError(f"{file}: tensor {name} has shape {tuple(tensor.shape)}, "
                                  f"config expects {tuple(t.shape)}")
        if tensor.dtype not in WEIGHT_DTYPES:
            raise CheckpointError(f"{file}: tensor {name} has dtype {str(tensor.dtype).removeprefix('torch.')}; "
                                  f"weights must be float32, bfloat16, float16 or float64")
        if not torch.isfinite(tensor).all():
            raise CheckpointError(f"{file}: tensor {name} contains NaN or inf")


def load_train_state(path) -> dict:
    path = Path(path)
    try:
        skeleton = read_json(path / "train_state.json")
    except (FileNotFoundError, ValueError) as e:
        raise CheckpointError(f"{e}; cannot resume") from None
    try:
        return unflatten_tensors(skeleton, read_tensors(path / "train_state.safetensors"))
    except (KeyError, TypeError, ValueError):
        raise CheckpointError(f"{path / 'train_state.json'}: does not match train_state.safetensors; "
                              f"cannot resume") from None


def flatten_tensors(obj, prefix: str = "") -> tuple[dict[str, torch.Tensor], object]:
    """Split a nested dict/list structure into {key: tensor} and a JSON skeleton that names them."""
    tensors: dict[str, torch.Tensor] = {}

    def walk(o, key):
        if isinstance(o, torch.Tensor):
            tensors[key] = o.detach().contiguous().cpu()
            return {"__tensor__": key}
        if isinstance(o, dict):
            return {"__dict__": [[k, walk(v, f"{key}.{k}")] for k, v in o.items()]}
        if isinstance(o, (list, tuple)):
            return [walk(v, f"{key}.{i}") for i, v in enumerate(o)]
        return o

    return tensors, walk(obj, prefix or "s")


def unflatten_tensors(skeleton, tensors: dict[str, torch.Tensor]):
    def walk(o):
        if isinstance(o, dict) and "__tensor__" in o:
            return tensors[o["__tensor__"]]
        if isinstance(o, dict) and "__dict__" in o:
            return {k: walk(v) for k, v in o["__dict__"]}
        if isinstance(o, list):
            return [walk(v) for v in o]
        return o

    return walk(skeleton)


def trunk_sha256(tensors) -> str:
    """Hash of the trunk (`transformer.*`) tensors: identifies the starting point of a fine-tune."""
    h = hashlib.sha256()
    for name in sorted(n for n in tensors if n.startswith("transformer.")):
        t = tensors[name]
        h.update(name.encode())
        h.update(t.detach().contiguous().cpu().numpy().tobytes())
    return h.hexdigest()
