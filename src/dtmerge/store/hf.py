"""Hugging Face `transformers` Decision Transformers in and out (`DecisionTransformerModel`).

The two models compute the same actions; names map one to one (`encoder.*` <-> `transformer.*`,
the embeddings and action head by the same names), except for three things:
- HF adds its position embedding at position 0 (`encoder.wpe.weight[0]`) to every token after
  `embed_ln`; that constant folds exactly into `embed_ln.bias` (and export writes it there, with a
  zero position embedding).
- HF's state and return heads (`predict_state`, `predict_return`) do not act; import drops them
  (recorded in meta.json), export writes them as zeros.
- The HF format carries no state normalisation or RTG scale: import takes them from the dataset
  (or files given), export writes them to `dtmerge.json` beside the model, which import reads back.
What cannot map is refused: `action_tanh: false` (dtmerge's action head ends in tanh), attention
variants dtmerge does not compute (`scale_attn_weights: false`, scaling by layer index, cross
attention), activations it does not have. Weights come from safetensors; a `pytorch_model.bin` is
read only when asked, and then with `torch.load(weights_only=True)`, which runs no code.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from dtmerge.atomic import atomic_dir, write_json
from dtmerge.data import dataset_files, load_dataset
from dtmerge.envs import get_task
from dtmerge.errors import DtmergeError
from dtmerge.model import DecisionTransformer, DTConfig
from dtmerge.model.gpt import ACTIVATIONS
from dtmerge.outputs import claim_outputs
from dtmerge.store.checkpoint import check_tensors, hand_built_meta, load_checkpoint, save_checkpoint, trunk_sha256
from dtmerge.validate import read_json_file, read_text

SIDECAR = "dtmerge.json"  # what export writes beside an HF model for import to read back
UNMAPPED = ("predict_state.weight", "predict_state.bias", "predict_return.weight", "predict_return.bias")
MUST_BE = {"action_tanh": True, "scale_attn_weights": True, "scale_attn_by_inverse_layer_idx": False,
           "add_cross_attention": False}


class HFError(DtmergeError):
    """A Hugging Face model that cannot become a dtmerge checkpoint, or the other way round."""


def _hf_name(name: str) -> str:
    return "encoder." + name.removeprefix("transformer.") if name.startswith("transformer.") else name


def read_hf_dir(source, allow_bin: bool = False) -> tuple[Path, dict, dict[str, torch.Tensor]]:
    """The directory, config.json and tensors of a local HF model (a hub id is fetched first)."""
    path = Path(source)
    if not path.is_dir():
        path = _download(str(source))
    config = read_json_file(path / "config.json", HFError)
    if not isinstance(config, dict) or config.get("model_type") != "decision_transformer":
        raise HFError(f"{path / 'config.json'}: model_type is {config.get('model_type')!r} (expected "
                      f"'decision_transformer')" if isinstance(config, dict) else f"{path}: config.json is no object")
    weights, pickled = path / "model.safetensors", path / "pytorch_model.bin"
    if weights.is_file():
        try:
            return path, config, load_file(weights)
        except (SafetensorError, OSError) as e:
            raise HFError(f"{weights}: not a readable safetensors file ({e})") from None
    if pickled.is_file() and not allow_bin:
        raise HFError(f"{path}: only pytorch_model.bin, a pickle; pass --allow-bin to read it with "
                      f"torch.load(weights_only=True), which runs no code")
    if pickled.is_file():
        try:
            return path, config, torch.load(pickled, map_location="cpu", weights_only=True)
        except Exception as e:  # weights_only refuses anything but tensors and containers
            raise HFError(f"{pickled}: not a plain state dict ({type(e).__name__}: {e})") from None
    raise HFError(f"{path}: no model.safetensors (or pytorch_model.bin)")


def _download(repo_id: str) -> Path:
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(repo_id, allow_patterns=["config.json", "*.safetensors", "*.bin", SIDECAR]))
    except Exception as e:  # no network, no such repository, ...
        raise HFError(f"{repo_id}: not a local directory, and the Hub did not give it ({type(e).__name__})") from None


def dt_config(config: dict, where, context_len: int) -> DTConfig:
    """The dtmerge model config an HF config describes, or the one-line reason it cannot map."""
    for key, value in MUST_BE.items():
        if config.get(key, value) != value:
            raise HFError(f"{where}: {key}: {config[key]!r} cannot map (dtmerge computes {key}: {value!r})")
    activation = config.get("activation_function", "relu")
    if activation not in ACTIVATIONS:
        raise HFError(f"{where}: activation_function {activation!r} cannot map (dtmerge has {', '.join(ACTIVATIONS)})")
    try:
        return DTConfig(state_dim=config["state_dim"], act_dim=config["act_dim"], n_embd=config["hidden_size"],
                        n_layer=config["n_layer"], n_head=config["n_head"], n_inner=config.get("n_inner"),
                        activation=activation, max_ep_len=config["max_ep_len"], context_len=context_len,
                        layer_norm_epsilon=config.get("layer_norm_epsilon", 1e-5),
                        dropout=config.get("resid_pdrop", 0.1))
    except KeyError as e:
        raise HFError(f"{where}: no {e.args[0]} in config.json") from None
    except ValueError as e:
        raise HFError(f"{where}: {e}") from None


def from_hf(config: dict, tensors: dict[str, torch.Tensor], where, context_len: int = 20) -> DecisionTransformer:
    """A dtmerge DT computing the actions the HF model computes (position 0 folded into embed_ln)."""
    model = DecisionTransformer(dt_config(config, where, context_len))
    file = Path(where) / "model.safetensors"
    expected = {_hf_name(n): t for n, t in model.state_dict().items()}
    wpe = tensors.get("encoder.wpe.weight")
    if wpe is not None:
        expected["encoder.wpe.weight"] = torch.empty(wpe.shape[0] if isinstance(wpe, torch.Tensor) else 1,
                                                     model.config.n_embd)
    if not all(isinstance(t, torch.Tensor) for t in tensors.values()):
        raise HFError(f"{file}: holds something other than tensors")
    missing = [n for n in expected if n not in tensors]
    if missing:
        raise HFError(f"{where}: no tensor {missing[0]} in the model file")
    check_tensors(file, expected, {n: tensors[n] for n in expected})  # shapes, dtypes, finiteness, before any use
    state = {name: tensors[_hf_name(name)].float() for name in model.state_dict()}
    if wpe is not None:
        state["embed_ln.bias"] = state["embed_ln.bias"] + wpe[0].float()
    model.load_state_dict(state)
    return model


def to_hf(model: DecisionTransformer) -> tuple[dict, dict[str, torch.Tensor]]:
    """The HF config and tensors of a dtmerge DT (a zero position embedding; zero state and return heads)."""
    c = model.config
    config = {"model_type": "decision_transformer", "architectures": ["DecisionTransformerModel"],
              "state_dim": c.state_dim, "act_dim": c.act_dim, "hidden_size": c.n_embd, "n_layer": c.n_layer,
              "n_head": c.n_head, "n_inner": c.n_inner, "activation_function": c.activation,
              "max_ep_len": c.max_ep_len, "n_positions": 3 * c.context_len, "action_tanh": True, "vocab_size": 1,
              "resid_pdrop": c.dropout, "embd_pdrop": c.dropout, "attn_pdrop": c.dropout,
              "layer_norm_epsilon": c.layer_norm_epsilon, "bos_token_id": None, "eos_token_id": None}
    tensors = {_hf_name(n): t.detach().clone().contiguous() for n, t in model.state_dict().items()}
    tensors["encoder.wpe.weight"] = torch.zeros(3 * c.context_len, c.n_embd)
    tensors["encoder.wte.weight"] = torch.zeros(1, c.n_embd)
    tensors.update({"predict_state.weight": torch.zeros(c.state_dim, c.n_embd),
                    "predict_state.bias": torch.zeros(c.state_dim),
                    "predict_return.weight": torch.zeros(1, c.n_embd), "predict_return.bias": torch.zeros(1)})
    return config, tensors


def import_hf(source, out, dataset=None, task=None, state_mean=None, state_std=None, rtg_scale: float | None = None,
              context_len: int | None = None, allow_bin: bool = False, overwrite: bool = False) -> Path:
    """Write the HF Decision Transformer at `source` (a directory, or a hub id) as a dtmerge
    checkpoint at `out`; state statistics from `dtmerge.json` beside it, `dataset`, or the files
    `state_mean`/`state_std` (whitespace- or comma-separated numbers)."""
    claim_outputs([out], [source, *(dataset_files(dataset) if dataset else [])], overwrite)
    path, config, tensors = read_hf_dir(source, allow_bin)
    sidecar = path / SIDECAR
    saved = read_json_file(sidecar, HFError) if sidecar.is_file() else {}
    if not isinstance(saved, dict):
        raise HFError(f"{sidecar}: expected a JSON object")
    model = from_hf(config, tensors, path, context_len or saved.get("context_len", 20))
    task_name, mean, std, data = task or saved.get("task"), saved.get("state_mean"), saved.get("state_std"), None
    if dataset is not None:
        data, task_ = load_dataset(dataset, task_name)
        task_name = task_.name
        mean, std = (x.tolist() for x in data.state_stats())
    if state_mean is not None or state_std is not None:
        mean, std = _numbers(state_mean), _numbers(state_std)
    if task_name is None or mean is None or std is None:
        raise HFError(f"{source}: the HF format holds no task or state normalisation; pass --dataset (or --task "
                      f"with --state-mean and --state-std)")
    get_task(task_name)
    meta = hand_built_meta(task_name, state_mean=[float(x) for x in mean], state_std=[float(x) for x in std],
                           rtg_scale=float(rtg_scale or saved.get("rtg_scale", 1000.0)),
                           dataset=str(dataset) if dataset else "(none: imported)",
                           dataset_attrs=dict(data.attrs) if data is not None else {},
                           init=f"hf:{source}", init_trunk_sha256=trunk_sha256(model.state_dict()),
                           imported={"source": str(source), "format": "transformers DecisionTransformerModel",
                                     "dropped": [n for n in UNMAPPED if n in tensors],
                                     "folded": "encoder.wpe.weight[0] into embed_ln.bias"})
    return save_checkpoint(out, model, meta)


def export_hf(checkpoint, out, overwrite: bool = False) -> Path:
    """Write a dtmerge checkpoint as an HF model directory (config.json, model.safetensors) that
    `DecisionTransformerModel.from_pretrained` loads, with dtmerge.json for the normalisation."""
    claim_outputs([out], [checkpoint], overwrite)
    model, meta = load_checkpoint(checkpoint)
    config, tensors = to_hf(model)
    with atomic_dir(out) as tmp:
        write_json(tmp / "config.json", config)
        save_file(tensors, tmp / "model.safetensors", metadata={"format": "pt"})
        write_json(tmp / SIDECAR, {k: meta[k] for k in ("task", "env_id", "state_mean", "state_std", "rtg_scale",
                                                          "rtg_targets")} | {"context_len": model.config.context_len})
    return Path(out)


def _numbers(file) -> list[float]:
    if file is None:
        raise HFError("--state-mean and --state-std go together")
    text = read_text(file, HFError)
    try:
        values = np.array(text.replace(",", " ").split(), dtype=np.float64)
    except ValueError:
        raise HFError(f"{file}: expected numbers separated by spaces or commas") from None
    if not np.isfinite(values).all():
        raise HFError(f"{file}: holds NaN or inf")
    return values.tolist()
