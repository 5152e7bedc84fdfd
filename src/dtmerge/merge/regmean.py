"""The input Gram matrices RegMean merges with, computed once and stored beside a checkpoint.

For every linear layer of the trunk (`attn.c_attn`, `attn.c_proj`, `mlp.c_fc`, `mlp.c_proj` of
each block) the Gram matrix G = X^T X of the layer's inputs X, over the real (unpadded) tokens of
windows of the model's own data, with the model in eval mode and every token computed (no
last-step shortcut). RegMean then solves each layer's least-squares merge: the weight whose
outputs are closest to every model's own outputs on that model's own inputs.

Files: `<checkpoint>/regmean.safetensors` (one (in, in) Gram per layer weight, float64, divided by
the number of tokens) and `regmean.json` (data, sizes, seed, and the SHA-256 of the weights they
belong to and of the Gram file). Replaced as one unit under the checkpoint's writer lock, as the
Fisher is (`dtmerge.merge.fisher`).
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from dtmerge.atomic import atomic_path, atomic_update, file_sha256, write_json
from dtmerge.data import dataset_files, load_dataset
from dtmerge.model.gpt import Conv1D
from dtmerge.outputs import claim_outputs, writer_lock
from dtmerge.runtime import pick_device
from dtmerge.store.checkpoint import CheckpointError, load_checkpoint, window_sampler
from dtmerge.store.schema import GRAM_FORMAT, GramMeta
from dtmerge.validate import read_validated


def compute_grams(checkpoint, dataset: str | None = None, batches: int = 4, batch_size: int = 64, seed: int = 0,
                  progress: bool = True, overwrite: bool = False, device: str = "cpu") -> Path:
    """Record the trunk's linear-layer input Grams on `dataset` (default: the checkpoint's own)."""
    checkpoint = Path(checkpoint)
    with writer_lock(checkpoint.resolve()):
        weights = file_sha256(checkpoint / "model.safetensors")  # what the Grams are computed from
        model, meta = load_checkpoint(checkpoint, pick_device(device))
        dataset = dataset or meta.get("dataset")
        claim_outputs([checkpoint / "regmean.safetensors", checkpoint / "regmean.json"],
                      [checkpoint / "model.safetensors", checkpoint / "meta.json", *dataset_files(dataset)], overwrite)
        traj, _ = load_dataset(dataset, meta["task"])
        sampler = window_sampler(traj, model, meta, seed)
        grams, tokens = layer_grams(model.eval(), (sampler.sample(batch_size, device) for _ in tqdm(
            range(batches), desc="regmean grams", disable=not progress)))
        with atomic_update(checkpoint, unchanged={"model.safetensors": weights}) as copy:
            with atomic_path(copy / "regmean.safetensors") as tmp:
                save_file({n: (g / tokens).contiguous() for n, g in grams.items()}, tmp)
            write_json(copy / "regmean.json", {
                "format": GRAM_FORMAT, "dataset": str(dataset), "batches": batches, "batch_size": batch_size,
                "seed": seed, "tokens": tokens, "model_sha256": weights,
                "gram_sha256": file_sha256(copy / "regmean.safetensors"), "tensors": sorted(grams)})
    return checkpoint / "regmean.safetensors"


@torch.no_grad()
def layer_grams(model, batches) -> tuple[dict[str, torch.Tensor], int]:
    """Per trunk linear weight, the sum of x x^T over real tokens' inputs x (float64, on the CPU),
    and the number of tokens."""
    grams: dict[str, torch.Tensor] = {}
    real: list[torch.Tensor] = []

    def recorder(name):
        def hook(module, inputs):
            x = inputs[0][real[0]].double()  # (tokens, in)
            grams[name] = grams.get(name, 0) + (x.T @ x).cpu()
        return hook

    layers = {f"transformer.{n}.weight": m for n, m in model.transformer.named_modules() if isinstance(m, Conv1D)}
    handles = [m.register_forward_pre_hook(recorder(n)) for n, m in layers.items()]
    tokens = 0
    try:
        for batch in batches:
            key_mask = batch["mask"].repeat_interleave(3, dim=1)
            real[:] = [key_mask]
            model.transformer(model.tokens(batch["states"], batch["actions"], batch["returns_to_go"],
                                           batch["timesteps"]), key_mask)
            tokens += int(key_mask.sum())
    finally:
        for h in handles:
            h.remove()
    return grams, tokens


def read_grams(checkpoint, names: list[str]) -> dict[str, torch.Tensor]:
    """The Grams beside `checkpoint` for weights `names`, checked to belong to its weights and to
    be symmetric, finite and positive semi-definite on the diagonal."""
    checkpoint = Path(checkpoint)
    meta_file, file = checkpoint / "regmean.json", checkpoint / "regmean.safetensors"
    if not (meta_file.exists() or meta_file.is_symlink()):
        raise CheckpointError(f"{meta_file}: file not found; compute it first with `dtmerge regmean {checkpoint}`")
    meta = read_validated(meta_file, GramMeta, CheckpointError)
    if meta.model_sha256 != file_sha256(checkpoint / "model.safetensors"):
        raise CheckpointError(f"{file} does not fit this checkpoint: it was computed for other weights; recompute it")
    if not file.is_file() or meta.gram_sha256 != file_sha256(file):
        raise CheckpointError(f"{file}: missing or not the file regmean.json describes (gram_sha256 differs); "
                              f"recompute it with `dtmerge regmean {checkpoint} --overwrite`")
    try:
        grams = load_file(file)
    except (SafetensorError, OSError) as e:
        raise CheckpointError(f"{file}: not a readable safetensors file ({e})") from None
    out = {}
    for name in names:
        g = grams.get(name)
        if g is None:
            continue  # not a linear weight: RegMean averages it
        if g.dim() != 2 or g.shape[0] != g.shape[1] or not torch.isfinite(g).all() or (g.diagonal() < 0).any() \
                or not torch.allclose(g, g.T, rtol=1e-6, atol=1e-9):
            raise CheckpointError(f"{file}: {name} is not a symmetric, finite Gram matrix")
        out[name] = g
    return out
