"""Initialise a DT's trunk from Hugging Face GPT-2 weights, by parameter name.

The trunk already uses GPT-2's names and Conv1D layouts, so `h.{i}.*` and `ln_f.*` copy over
one to one. Optionally the LM's position embedding `wpe` becomes the DT's timestep embedding
(tiled past its length, as the original code did with `--extend_positions`). Only safetensors
checkpoints are read: a `pytorch_model.bin` is a pickle, and loading it could run code.
"""

from __future__ import annotations

from pathlib import Path

import torch

from dtmerge.atomic import read_json
from dtmerge.model import DecisionTransformer, DTConfig
from dtmerge.store.checkpoint import CheckpointError, read_tensors

SUPPORTED = {"scale_attn_weights": True, "scale_attn_by_inverse_layer_idx": False, "reorder_and_upcast_attn": False}


def resolve_lm_dir(spec: str) -> Path:
    """A local HF-format directory, or a hub id fetched with huggingface_hub where the network allows."""
    path = Path(spec)
    if path.is_dir():
        return path
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(spec, allow_patterns=["config.json", "model.safetensors"]))
    except Exception as e:  # offline, unknown id, or huggingface_hub missing
        raise CheckpointError(
            f"{spec}: not a local directory, and fetching it from the Hugging Face hub failed ({type(e).__name__}). "
            f"On a machine with internet run `huggingface-cli download {spec} config.json model.safetensors "
            f"--local-dir DIR`, copy DIR here and pass DIR instead") from None


def read_gpt2(spec) -> tuple[dict, dict[str, torch.Tensor]]:
    """HF GPT-2 config and tensors, with names stripped of any `transformer.` prefix."""
    path = resolve_lm_dir(str(spec))
    cfg_file = path / "config.json"
    try:
        cfg = read_json(cfg_file)
    except (FileNotFoundError, ValueError) as e:
        raise CheckpointError(f"{e} (expected a Hugging Face model directory)") from None
    if cfg.get("model_type") != "gpt2":
        raise CheckpointError(f"{cfg_file}: model_type is {cfg.get('model_type')!r}, expected 'gpt2'")
    for key, value in SUPPORTED.items():
        if cfg.get(key, value) != value:
            raise CheckpointError(f"{cfg_file}: {key}={cfg[key]} is not supported (dtmerge's trunk assumes {value})")
    weights = path / "model.safetensors"
    if not weights.is_file() and (path / "pytorch_model.bin").is_file():
        raise CheckpointError(f"{path}: only pytorch_model.bin (a pickle) is here; dtmerge reads model.safetensors "
                              f"only, because unpickling can run code. Convert it where you trust the file")
    tensors = {k.removeprefix("transformer."): v for k, v in read_tensors(weights).items()}
    return cfg, tensors


def dt_from_gpt2(spec, state_dim: int, act_dim: int, context_len: int = 20, max_ep_len: int = 1000,
                 dropout: float | None = None, share_position_embedding: bool = True, task_seed: int = 0,
                 embed_init: str = "gpt2") -> DecisionTransformer:
    """A DT whose trunk (and, if asked, timestep embedding) comes from a GPT-2 checkpoint.

    `dropout` defaults to the LM's `resid_pdrop`. Embeddings and the action head start fresh, drawn
    from `task_seed` (see `DecisionTransformer.init_weights`).
    """
    cfg, tensors = read_gpt2(spec)
    config = DTConfig(state_dim=state_dim, act_dim=act_dim, n_embd=cfg["n_embd"], n_layer=cfg["n_layer"],
                      n_head=cfg["n_head"], n_inner=cfg.get("n_inner"),
                      activation=cfg.get("activation_function", "gelu_new"),
                      dropout=cfg.get("resid_pdrop", 0.1) if dropout is None else dropout,
                      context_len=context_len, max_ep_len=max_ep_len,
                      layer_norm_epsilon=cfg.get("layer_norm_epsilon", 1e-5))
    model = DecisionTransformer(config)
    model.init_weights(task_seed, task_seed, embed_init)
    state = model.state_dict()
    trunk = {n for n in state if n.startswith("transformer.")}
    missing = sorted(n for n in trunk if n.removeprefix("transformer.") not in tensors)
    if missing:
        raise CheckpointError(f"{spec}: GPT-2 weights lack {missing[:3]}")
    for name in trunk:
        src = tensors[name.removeprefix("transformer.")]
        if src.shape != state[name].shape:
            raise CheckpointError(f"{spec}: {name} has shape {tuple(src.shape)}, expected {tuple(state[name].shape)}")
        state[name] = src
    if share_position_embedding:
        if "wpe.weight" not in tensors:
            raise CheckpointError(f"{spec}: no wpe.weight to share as the timestep embedding")
        wpe = tensors["wpe.weight"]
        reps = -(-max_ep_len // wpe.shape[0])
        state["embed_timestep.weight"] = wpe.repeat(reps, 1)[:max_ep_len].clone()
    model.load_state_dict(state)
    return model
