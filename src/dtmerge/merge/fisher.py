"""Diagonal Fisher information of a DT's trunk, computed once and stored beside its checkpoint.

Estimators (the model is in eval mode; padded tokens are masked out):
  exact      Fisher of the Gaussian policy N(mu(x), I) over its action means, per window x:
             F = E_x sum_{t,k} (d mu_tk / d theta)^2 — the expectation over actions is taken in
             closed form (Matena & Raffel, 2022). Costs K x act_dim backward passes per window.
  empirical  per-window squared gradient of the log-likelihood of the dataset's actions,
             E_x (d/dtheta 0.5 ||a - mu(x)||^2)^2.
  batch      the original code's estimate: squared gradients of the batch-mean MSE, summed over
             batches and divided by the number of action tokens (for comparison only).
Per-window gradients are vectorised with torch.func: vmap over windows (empirical), vmap over a
window's outputs (exact).
Files: `<checkpoint>/fisher.safetensors` (one tensor per trunk parameter) and `fisher.json`
(estimator, data, sizes, seed, the per-model totals, and the SHA-256 of the model file it belongs
to and of the Fisher file itself). The pair is replaced as one unit (the checkpoint directory is
swapped for a copy holding the new pair) under the checkpoint's writer lock, so a stopped or
concurrent `fisher` leaves the old pair or the new one, never a mix; and the JSON names the
tensors' hash, so a pair mixed by hand is refused, never trusted.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch.func import functional_call, grad, vjp, vmap
from tqdm.auto import tqdm

from dtmerge.atomic import atomic_path, atomic_update, file_sha256, write_json
from dtmerge.data import dataset_files, load_dataset
from dtmerge.outputs import claim_outputs, writer_lock
from dtmerge.runtime import pick_device
from dtmerge.store.checkpoint import CheckpointError, load_checkpoint, window_sampler
from dtmerge.store.schema import ESTIMATORS, FISHER_FORMAT, FisherMeta
from dtmerge.validate import read_validated

BATCH_KEYS = ("states", "actions", "returns_to_go", "timesteps", "mask")


def fisher_terms(model, batch: dict, estimator: str, names: list[str],
                 window_chunk: int = 1) -> dict[str, torch.Tensor]:
    """Sum over the windows of `batch` of each window's diagonal Fisher (batch: its own estimate);
    `window_chunk`: windows the exact estimator vectorises at once (1: one at a time)."""
    params = {n: p.detach() for n, p in model.named_parameters()}
    trunk = {n: params[n] for n in names}
    rest = {n: p for n, p in params.items() if n not in trunk}
    args = tuple(batch[k] for k in BATCH_KEYS)

    if estimator == "batch":
        model.zero_grad(set_to_none=True)
        pred = model(*args)
        loss = ((pred - batch["actions"]) ** 2)[batch["mask"]].mean()
        grads = torch.autograd.grad(loss, [dict(model.named_parameters())[n] for n in names])
        return {n: g.detach() ** 2 for n, g in zip(names, grads)}

    def mean_action(tp, s, a, r, t, m):
        out = functional_call(model, {**rest, **tp}, (s[None], a[None], r[None], t[None], m[None]))[0]
        return out * m[:, None]  # padded tokens contribute nothing

    if estimator == "empirical":  # vmap over windows of the per-window gradient
        def per_window(tp, s, a, r, t, m):
            g = grad(lambda tp: 0.5 * ((mean_action(tp, s, a, r, t, m) - a * m[:, None]) ** 2).sum())(tp)
            return {n: v ** 2 for n, v in g.items()}

        per = vmap(per_window, in_dims=(None, 0, 0, 0, 0, 0))(trunk, *args)
        return {n: v.sum(0) for n, v in per.items()}
    if estimator != "exact":
        raise ValueError(f"unknown Fisher estimator {estimator!r}; estimators: {', '.join(ESTIMATORS)}")
    # exact: per window, one forward and a vmap over the outputs' cotangents (the rows of the
    # Jacobian). One window at a time, only its real rows: on a CPU this beats vmapping over windows
    # too ~4x, whose memory is windows x outputs x parameters (benchmarks/fisher_speed.py). A GPU is
    # launch-bound one window at a time, so there `window_chunk` windows go through one vmap, every
    # row of each (a padded row's output is masked to zero, so its gradient is zero).
    out = {n: torch.zeros_like(p) for n, p in trunk.items()}
    if window_chunk > 1:
        K, A = batch["actions"].shape[1:]
        basis = torch.eye(K * A, device=batch["actions"].device).reshape(K * A, K, A)

        def window_fisher(s, a, r, t, m):
            _, pullback = vjp(lambda tp: mean_action(tp, s, a, r, t, m), trunk)
            return {n: g.mul_(g).sum(0) for n, g in vmap(pullback)(basis)[0].items()}

        for i in range(0, len(batch["mask"]), window_chunk):
            for n, v in vmap(window_fisher)(*(x[i:i + window_chunk] for x in args)).items():
                out[n] += v.sum(0)
        return out
    for i in range(len(batch["mask"])):
        x = tuple(v[i] for v in args)
        pred, pullback = vjp(lambda tp: mean_action(tp, *x), trunk)
        real = torch.nonzero(x[-1]).flatten()
        basis = torch.zeros(len(real) * pred.shape[1], *pred.shape, device=pred.device)
        rows = torch.arange(len(basis), device=pred.device)
        columns = torch.arange(pred.shape[1], device=pred.device).repeat(len(real))
        basis[rows, real.repeat_interleave(pred.shape[1]), columns] = 1.0
        for n, g in vmap(pullback)(basis)[0].items():
            out[n] += (g ** 2).sum(0)
    return out


def compute_fisher(checkpoint, dataset: str | None = None, estimator: str = "exact", batches: int = 4,
                   batch_size: int = 64, seed: int = 0, progress: bool = True, overwrite: bool = False,
                   device: str = "cpu") -> Path:
    """Compute the trunk's diagonal Fisher on `dataset` (default: the one it was trained on), in
    fp32 on `device`, summed in float64."""
    checkpoint = Path(checkpoint)
    with writer_lock(checkpoint.resolve()):
        return _compute_fisher(checkpoint, dataset, estimator, batches, batch_size, seed, progress, overwrite,
                               pick_device(device))


def _compute_fisher(checkpoint: Path, dataset, estimator, batches, batch_size, seed, progress, overwrite,
                    device) -> Path:
    weights = file_sha256(checkpoint / "model.safetensors")  # what the Fisher is computed from
    model, meta = load_checkpoint(checkpoint, device)
    model.eval()
    dataset = dataset or meta.get("dataset")
    if not dataset:
        raise CheckpointError(f"{checkpoint}: no dataset recorded; pass --dataset")
    if estimator not in ESTIMATORS:
        raise CheckpointError(f"unknown Fisher estimator {estimator!r}; estimators: {', '.join(ESTIMATORS)}")
    claim_outputs([checkpoint / "fisher.safetensors", checkpoint / "fisher.json"],
                  [checkpoint / "model.safetensors", checkpoint / "meta.json", *dataset_files(dataset)], overwrite)
    traj, task = load_dataset(dataset, meta["task"])
    sampler = window_sampler(traj, model, meta, seed)
    names = [n for n, _ in model.named_parameters() if n.startswith("transformer.")]
    chunk = window_chunk(device, model, names)
    total = {n: torch.zeros_like(p, dtype=torch.float64) for n, p in model.named_parameters() if n in names}
    windows = tokens = 0
    for _ in tqdm(range(batches), desc=f"fisher {estimator}", disable=not progress):
        batch = sampler.sample(batch_size, device)
        for n, v in fisher_terms(model, batch, estimator, names, chunk).items():
            total[n] += v.double()
        windows += batch_size
        tokens += int(batch["mask"].sum())
    denom = tokens if estimator == "batch" else windows
    fisher = {n: (v / denom).float().cpu() for n, v in total.items()}
    with atomic_update(checkpoint, unchanged={"model.safetensors": weights}) as copy:
        write_fisher(copy, fisher, {
            "estimator": estimator, "dataset": str(dataset), "task": task.name, "batches": batches,
            "batch_size": batch_size, "seed": seed, "windows": windows, "action_tokens": tokens,
            "normalised_by": "action tokens" if estimator == "batch" else "windows"})
    return checkpoint / "fisher.safetensors"


GPU_CHUNK_BYTES = 2**31  # the exact estimator's per-row gradients held at once on a GPU (the peak: ~1.5x)


def window_chunk(device: torch.device, model, names: list[str]) -> int:
    """Windows the exact estimator vectorises at once: one on a CPU (fastest there), on a GPU as
    many as fit their per-row gradients (context x actions x trunk parameters each) in GPU_CHUNK_BYTES."""
    if device.type != "cuda":
        return 1
    rows = model.config.context_len * model.config.act_dim
    params = sum(p.numel() for n, p in model.named_parameters() if n in names)
    return max(1, GPU_CHUNK_BYTES // (4 * rows * params))


BLOCK_PREFIX = "transformer.h."


def write_fisher(checkpoint, fisher: dict[str, torch.Tensor], info: dict) -> Path:
    """Store a diagonal Fisher in checkpoint directory `checkpoint` (one not yet in place: see
    `atomic_update`): the tensors, then fisher.json naming their hash, the model's hash, and the
    totals merging normalises by."""
    checkpoint = Path(checkpoint)
    with atomic_path(checkpoint / "fisher.safetensors") as tmp:
        save_file({n: t.contiguous() for n, t in fisher.items()}, tmp)
    sums = {n: float(v.double().sum()) for n, v in fisher.items()}
    write_json(checkpoint / "fisher.json", {
        "format": FISHER_FORMAT, **info, "model_sha256": file_sha256(checkpoint / "model.safetensors"),
        "fisher_sha256": file_sha256(checkpoint / "fisher.safetensors"), "tensors": sorted(fisher),
        "total": sum(v for n, v in sums.items() if n.startswith(BLOCK_PREFIX)), "trunk_total": sum(sums.values())})
    return checkpoint / "fisher.safetensors"


def read_fisher_meta(checkpoint) -> dict:
    """fisher.json of a checkpoint, validated, and checked to belong to that checkpoint's weights
    and to the Fisher file beside it; every Fisher tensor is checked finite and non-negative."""
    checkpoint = Path(checkpoint)
    meta_file, file = checkpoint / "fisher.json", checkpoint / "fisher.safetensors"
    if not (meta_file.exists() or meta_file.is_symlink()):  # anything else there is refused as it is read
        raise CheckpointError(f"{meta_file}: file not found; compute it first with `dtmerge fisher {checkpoint}`")
    meta = read_validated(meta_file, FisherMeta, CheckpointError).model_dump()
    if meta["model_sha256"] != file_sha256(checkpoint / "model.safetensors"):
        raise CheckpointError(f"{file} does not fit this checkpoint: it was computed for other weights "
                              f"(model_sha256 differs); recompute it")
    if not file.is_file() or meta["fisher_sha256"] != file_sha256(file):
        raise CheckpointError(f"{file}: missing or not the file fisher.json describes (fisher_sha256 differs); "
                              f"recompute it with `dtmerge fisher {checkpoint} --overwrite`")
    try:  # one tensor at a time: Fisher files are as large as the model
        with safe_open(file, framework="pt") as f, safe_open(checkpoint / "model.safetensors", framework="pt") as m:
            if sorted(f.keys()) != meta["tensors"]:
                raise CheckpointError(f"{file}: tensors differ from fisher.json's list")
            model_names = set(m.keys())
            for n in f.keys():
                t = f.get_tensor(n)
                if n not in model_names or list(t.shape) != m.get_slice(n).get_shape():
                    raise CheckpointError(f"{file}: {n} does not fit the model's tensors")
                if not torch.isfinite(t).all() or (t < 0).any():
                    raise CheckpointError(f"{file}: {n} has negative or non-finite values")
    except (SafetensorError, OSError) as e:
        raise CheckpointError(f"{file}: not a readable safetensors file ({e})") from None
    return meta
