"""Permutation alignment ("re-basin") of one Decision Transformer to another before merging.

A trained network's hidden units are defined only up to their order. Reorder an MLP's hidden units
(c_fc's columns with c_proj's rows), the query/key dimensions of a head (q's and k's columns
together), its value/output dimensions (v's columns with attn.c_proj's rows), or whole heads, and
the model computes exactly the same function. So does one permutation of the residual stream applied
to everything that reads or writes it: every block, `ln_f`, and the per-task embeddings,
`embed_ln` and action head (LayerNorm commutes with a permutation). Two independently trained DTs
therefore need not have their units in corresponding places, and averaging them unit by unit
mixes unrelated units. Aligning the source to the target first (Ainsworth et al., Git Re-Basin,
ICLR 2023; for transformers Verma & Elbayad 2024, Imfeld et al. 2024) removes that freedom:

- `weights`: weight matching. Alternate over the permutations in a seeded random order; each step
  is an exact linear assignment (scipy's `linear_sum_assignment`) maximising the inner product of
  the two trunks' weights given the other permutations, until a full pass changes nothing.
- `activations`: activation matching. Each model runs windows of its own training data (the same
  seed, so two models of one task see the same windows; models of different tasks are paired by
  window slot and token position); each permutation maximises the correlation of the paired units.

Only the trunk (`transformer.*`) decides the match, since the per-task parameters belong to one task
each; they are permuted along, which is what makes the result compute the source's own function.
Permutations are index arrays: unit `k` of the aligned model is unit `perm[k]` of the source.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from tqdm.auto import tqdm

from dtmerge.atomic import atomic_dir
from dtmerge.data import dataset_files, load_dataset
from dtmerge.errors import DtmergeError
from dtmerge.merge.fisher import read_fisher_meta, write_fisher
from dtmerge.model import DecisionTransformer, DTConfig
from dtmerge.outputs import claim_outputs
from dtmerge.store.bundle import is_bundle
from dtmerge.store.checkpoint import (
    carried_meta,
    load_checkpoint,
    read_meta,
    read_tensors,
    save_checkpoint,
    window_sampler,
)

ALIGN_METHODS = ("weights", "activations")

Perms = dict[str, np.ndarray]


# --- the permutation spec ------------------------------------------------------------------------

def split_attention(state: dict[str, torch.Tensor], n_layer: int) -> dict[str, torch.Tensor]:
    """A state dict with each fused `c_attn` split into its q, k and v parts (names `...attn.q.weight`)."""
    out = dict(state)
    for i in range(n_layer):
        for kind in ("weight", "bias"):
            fused = out.pop(f"transformer.h.{i}.attn.c_attn.{kind}")
            for part, t in zip("qkv", fused.chunk(3, dim=-1)):
                out[f"transformer.h.{i}.attn.{part}.{kind}"] = t
    return out


def join_attention(state: dict[str, torch.Tensor], n_layer: int) -> dict[str, torch.Tensor]:
    out = dict(state)
    for i in range(n_layer):
        for kind in ("weight", "bias"):
            out[f"transformer.h.{i}.attn.c_attn.{kind}"] = torch.cat(
                [out.pop(f"transformer.h.{i}.attn.{part}.{kind}") for part in "qkv"], dim=-1).contiguous()
    return out


def permutation_spec(cfg: DTConfig) -> dict[str, tuple]:
    """Which permuted axis each axis of each (attention-split) tensor is: `res` (the residual stream),
    `mlp.i` (block i's MLP units), `q.i` (its query/key dimensions), `v.i` (value/output dimensions),
    None (not permuted)."""
    res = ("res",)
    spec = {"embed_timestep.weight": (None, "res"), "embed_ln.weight": res, "embed_ln.bias": res,
            "predict_action.0.weight": (None, "res"), "predict_action.0.bias": (None,),
            "transformer.ln_f.weight": res, "transformer.ln_f.bias": res}
    for name in ("return", "state", "action"):
        spec[f"embed_{name}.weight"] = ("res", None)
        spec[f"embed_{name}.bias"] = res
    for i in range(cfg.n_layer):
        h = f"transformer.h.{i}"
        spec |= {f"{h}.ln_1.weight": res, f"{h}.ln_1.bias": res, f"{h}.ln_2.weight": res, f"{h}.ln_2.bias": res,
                 f"{h}.attn.q.weight": ("res", f"q.{i}"), f"{h}.attn.q.bias": (f"q.{i}",),
                 f"{h}.attn.k.weight": ("res", f"q.{i}"), f"{h}.attn.k.bias": (f"q.{i}",),
                 f"{h}.attn.v.weight": ("res", f"v.{i}"), f"{h}.attn.v.bias": (f"v.{i}",),
                 f"{h}.attn.c_proj.weight": (f"v.{i}", "res"), f"{h}.attn.c_proj.bias": res,
                 f"{h}.mlp.c_fc.weight": ("res", f"mlp.{i}"), f"{h}.mlp.c_fc.bias": (f"mlp.{i}",),
                 f"{h}.mlp.c_proj.weight": (f"mlp.{i}", "res"), f"{h}.mlp.c_proj.bias": res}
    return spec


def identity(cfg: DTConfig) -> Perms:
    """The permutations that change nothing: `res`, and per block `mlp.i`, `heads.i` (whole heads),
    `qk.i` and `vo.i` (within each head: entry h*d + j is the source dimension of head h's j-th)."""
    perms = {"res": np.arange(cfg.n_embd)}
    d = cfg.n_embd // cfg.n_head
    for i in range(cfg.n_layer):
        perms |= {f"mlp.{i}": np.arange(cfg.inner), f"heads.{i}": np.arange(cfg.n_head),
                  f"qk.{i}": np.tile(np.arange(d), cfg.n_head), f"vo.{i}": np.tile(np.arange(d), cfg.n_head)}
    return perms


def random_perms(cfg: DTConfig, seed: int) -> Perms:
    """Uniformly random permutations of every kind (for tests and for checking a spec)."""
    rng = np.random.default_rng(seed)
    d = cfg.n_embd // cfg.n_head
    return {name: (np.concatenate([rng.permutation(d) for _ in range(cfg.n_head)]) if name[:2] in ("qk", "vo")
                   else rng.permutation(len(p))) for name, p in identity(cfg).items()}


def axis_index(axis: str, perms: Perms, n_head: int) -> np.ndarray:
    """The index array of one permuted axis: `q.i` and `v.i` compose the head permutation with the
    within-head one."""
    if axis == "res" or axis.startswith("mlp."):
        return perms[axis]
    within = perms[("qk." if axis.startswith("q.") else "vo.") + axis.split(".")[1]]
    heads = perms["heads." + axis.split(".")[1]]
    d = len(within) // n_head
    return np.concatenate([heads[h] * d + within[h * d:(h + 1) * d] for h in range(n_head)])


def permute_tensor(t: torch.Tensor, axes: tuple, perms: Perms, n_head: int, skip: str | None = None):
    """One tensor with each of its permuted axes (but `skip`) reordered."""
    for dim, axis in enumerate(axes):
        if axis is not None and axis != skip:
            t = t.index_select(dim, torch.from_numpy(axis_index(axis, perms, n_head)))
    return t


def permute(state: dict[str, torch.Tensor], cfg: DTConfig, perms: Perms) -> dict:
    """An attention-split state dict with every axis permuted."""
    spec = permutation_spec(cfg)
    return {name: permute_tensor(t, spec[name], perms, cfg.n_head) for name, t in state.items()}


def apply_permutation(state: dict[str, torch.Tensor], cfg: DTConfig, perms: Perms) -> dict[str, torch.Tensor]:
    """A model's state dict with its units reordered by `perms`: the same function, other positions."""
    return join_attention(permute(split_attention(state, cfg.n_layer), cfg, perms), cfg.n_layer)


# --- solving one permutation from a similarity matrix --------------------------------------------

def assign(similarity: np.ndarray) -> tuple[np.ndarray, float]:
    """The permutation maximising sum_k similarity[k, perm[k]], and that sum."""
    rows, cols = linear_sum_assignment(similarity, maximize=True)
    return cols[np.argsort(rows)], float(similarity[rows, cols].sum())


def assign_heads(sim_q: np.ndarray, sim_v: np.ndarray, n_head: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Heads as whole units plus the dimensions within each: for every (target head, source head)
    pair the best within-head matches of q/k and of v/o, then the best head assignment over their sums."""
    d = sim_q.shape[0] // n_head
    block = lambda sim, h, g: sim[h * d:(h + 1) * d, g * d:(g + 1) * d]  # noqa: E731
    blocks = [[(assign(block(sim_q, h, g)), assign(block(sim_v, h, g))) for g in range(n_head)] for h in range(n_head)]
    heads, _ = assign(np.array([[q[1] + v[1] for q, v in row] for row in blocks]))
    qk = np.concatenate([blocks[h][heads[h]][0][0] for h in range(n_head)])
    vo = np.concatenate([blocks[h][heads[h]][1][0] for h in range(n_head)])
    return heads, qk, vo


def groups(cfg: DTConfig) -> list[str]:
    """What one step of the alternation solves: `res`, `mlp.i`, and `attn.i` (heads, q/k and v/o jointly)."""
    return ["res"] + [f"{kind}.{i}" for i in range(cfg.n_layer) for kind in ("mlp", "attn")]


def solve(group: str, similarity, cfg: DTConfig) -> Perms:
    """The permutations of `group` maximising `similarity(axis)`, an (n, n) target-by-source matrix."""
    if group.startswith("attn."):
        i = group.split(".")[1]
        heads, qk, vo = assign_heads(similarity(f"q.{i}"), similarity(f"v.{i}"), cfg.n_head)
        return {f"heads.{i}": heads, f"qk.{i}": qk, f"vo.{i}": vo}
    return {group: assign(similarity(group))[0]}


# --- weight matching -----------------------------------------------------------------------------

def weight_matching(target: dict, source: dict, cfg: DTConfig, seed: int = 0, max_passes: int = 100,
                    progress: bool = False) -> Perms:
    """Permutations of `source` (a state dict) that maximise its inner product with `target`'s trunk."""
    spec = permutation_spec(cfg)
    trunk = lambda s: {k: v.double() for k, v in split_attention(s, cfg.n_layer).items()  # noqa: E731
                       if k.startswith("transformer.")}
    a, b = trunk(target), trunk(source)
    perms = identity(cfg)
    rng = np.random.default_rng(seed)

    def similarity_given(current: Perms):
        def similarity(axis: str) -> np.ndarray:
            """sum over the tensors with this axis of <target's unit k, source's unit j>, the source's
            other axes already permuted."""
            total = 0.0
            for name, axes in spec.items():
                if name not in a or axis not in axes:
                    continue
                dim = axes.index(axis)
                wb = permute_tensor(b[name], axes, current, cfg.n_head, skip=axis)
                total = total + (a[name].movedim(dim, 0).reshape(a[name].shape[dim], -1)
                                 @ wb.movedim(dim, 0).reshape(wb.shape[dim], -1).T)
            return np.asarray(total)
        return similarity

    for _ in tqdm(range(max_passes), desc="weight matching (passes; stops when one changes nothing)",
                  disable=not progress):
        changed = False
        for group in rng.permutation(groups(cfg)):
            new = solve(str(group), similarity_given(perms), cfg)
            if any(not np.array_equal(new[k], perms[k]) for k in new):
                perms |= new
                changed = True
        if not changed:
            break
    return perms


# --- activation matching -------------------------------------------------------------------------

def activations(model: DecisionTransformer, batch: dict, keep: torch.Tensor) -> dict[str, torch.Tensor]:
    """Every permuted axis's units as (samples, units) over the tokens `keep` (B, K) marks: the
    residual stream after embed_ln and after each block, each MLP's hidden units, each attention's
    q and k (stacked as samples) and v."""
    cfg, feats, hooks = model.config, {}, []
    C = cfg.n_embd
    keep = keep.repeat_interleave(3, dim=1).reshape(-1)

    def record(name, fn=lambda out: out):
        def hook(module, inputs, out):
            units = fn(out)
            feats.setdefault(name, []).append(units.reshape(-1, units.shape[-1])[keep].float())
        return hook

    hooks.append(model.embed_ln.register_forward_hook(record("res")))
    for i, block in enumerate(model.transformer.h):
        hooks.append(block.register_forward_hook(record("res")))
        hooks.append(block.mlp.act.register_forward_hook(record(f"mlp.{i}")))
        hooks.append(block.attn.c_attn.register_forward_hook(record(f"q.{i}", lambda out: out[..., :C])))
        hooks.append(block.attn.c_attn.register_forward_hook(record(f"q.{i}", lambda out: out[..., C:2 * C])))
        hooks.append(block.attn.c_attn.register_forward_hook(record(f"v.{i}", lambda out: out[..., 2 * C:])))
    try:
        model.eval()
        with torch.no_grad():  # every token through every block (acting keeps only state tokens in the last)
            x = model.tokens(batch["states"], batch["actions"], batch["returns_to_go"], batch["timesteps"])
            model.transformer(x, batch["mask"].repeat_interleave(3, dim=1))
    finally:
        for h in hooks:
            h.remove()
    return {name: torch.cat(parts) for name, parts in feats.items()}


class Correlation:
    """Pearson correlation of every unit of one model with every unit of the other, accumulated over
    paired samples batch by batch (so a few thousand windows never sit in memory at once)."""

    def __init__(self):
        self.n, self.sums = 0, None

    def add(self, a: torch.Tensor, b: torch.Tensor) -> None:
        """One batch of paired samples (float32 products, float64 running sums)."""
        terms = tuple(t.double() for t in (a.sum(0), b.sum(0), a.pow(2).sum(0), b.pow(2).sum(0), a.T @ b))
        self.sums = terms if self.sums is None else tuple(s + t for s, t in zip(self.sums, terms))
        self.n += len(a)

    def matrix(self) -> np.ndarray:
        sa, sb, saa, sbb, sab = (t / self.n for t in self.sums)
        sd_a, sd_b = (saa - sa ** 2).clamp_min(0).sqrt(), (sbb - sb ** 2).clamp_min(0).sqrt()
        return ((sab - sa[:, None] * sb[None, :]) / (sd_a[:, None] * sd_b[None, :] + 1e-12)).cpu().numpy()


def activation_matching(target: DecisionTransformer, source: DecisionTransformer, batches,
                        progress: bool = False) -> Perms:
    """Permutations of `source` maximising the correlation of its units with `target`'s; `batches`
    yields (target's windows, source's windows) pairs, each model's from its own data."""
    stats: dict[str, Correlation] = {}
    for target_batch, source_batch in tqdm(batches, desc="activation matching (batches)", disable=not progress):
        both = target_batch["mask"] & source_batch["mask"]  # tokens real in both windows: the paired samples
        fa, fb = activations(target, target_batch, both), activations(source, source_batch, both)
        for axis in fa:
            stats.setdefault(axis, Correlation()).add(fa[axis], fb[axis])
    cfg = target.config
    perms = identity(cfg)
    for group in groups(cfg):
        perms |= solve(group, lambda axis: stats[axis].matrix(), cfg)
    return perms


# --- checkpoints ---------------------------------------------------------------------------------

class AlignError(DtmergeError):
    """Two models that cannot be aligned as asked."""


ALIGNED_SHAPE = ("n_embd", "n_layer", "n_head", "n_inner")


def own_windows(model: DecisionTransformer, meta: dict, windows: int, seed: int, batch_size: int = 256):
    """`windows` windows of the model's own training data (normalised as it was trained), in batches."""
    traj, _ = load_dataset(meta["dataset"], meta["task"])
    sampler = window_sampler(traj, model, meta, seed)
    for start in range(0, windows, batch_size):
        yield sampler.sample(min(batch_size, windows - start))


def find_permutations(target, source, method: str = "weights", windows: int = 2048, seed: int = 0,
                      progress: bool = False):
    """Load two checkpoints and the permutations aligning `source` to `target`: (perms, source model,
    its metadata)."""
    if method not in ALIGN_METHODS:
        raise AlignError(f"unknown alignment method {method!r}: {' or '.join(ALIGN_METHODS)}")
    t_model, t_meta = load_checkpoint(target)
    s_model, s_meta = load_checkpoint(source)
    diff = [f for f in ALIGNED_SHAPE if getattr(t_model.config, f) != getattr(s_model.config, f)]
    if diff:
        raise AlignError(f"{source}: its trunk differs from {target}'s in {', '.join(diff)}; only same-shaped "
                         "trunks can be aligned")
    if method == "weights":
        perms = weight_matching(t_model.state_dict(), s_model.state_dict(), t_model.config, seed, progress=progress)
    else:
        pairs = zip(own_windows(t_model, t_meta, windows, seed), own_windows(s_model, s_meta, windows, seed))
        perms = activation_matching(t_model, s_model, pairs, progress)
    return perms, s_model, s_meta


def align_checkpoint(target, source, out, method: str = "weights", windows: int = 2048, seed: int = 0,
                     overwrite: bool = False, progress: bool = False) -> Path:
    """Write `source` permuted into `target`'s basis as an ordinary checkpoint at `out` (it computes
    exactly what `source` computes); a Fisher beside `source` is permuted along."""
    source, out = Path(source), Path(out)
    for path in (target, source):
        if is_bundle(path):
            raise AlignError(f"{path}: a multi-task bundle; align takes single-task checkpoints")
    extra = [source / "fisher.safetensors", source / "fisher.json"] if (source / "fisher.json").exists() else []
    data = [] if method == "weights" else [f for p in (target, source) for f in _dataset_files(p)]
    claim_outputs([out], [target, source, *extra, *data], overwrite)
    if extra:  # checked before any work, and written with the model, so a bad Fisher costs no output
        fmeta = read_fisher_meta(source)
        fisher = read_tensors(source / "fisher.safetensors")
    perms, model, meta = find_permutations(target, source, method, windows, seed, progress)
    cfg = model.config
    model.load_state_dict(apply_permutation(model.state_dict(), cfg, perms))
    record = {"target": str(target), "method": method, "seed": seed, **({"windows": windows} if data else {})}
    with atomic_dir(out) as tmp:  # the checkpoint and its Fisher are swapped in together
        save_checkpoint(tmp, model, {**carried_meta(meta), "alignment": record})
        if extra:
            info = {k: v for k, v in fmeta.items() if k not in ("model_sha256", "fisher_sha256", "tensors", "total",
                                                                  "trunk_total", "format")}
            write_fisher(tmp, apply_permutation(fisher, cfg, perms), info)
    return out


def _dataset_files(checkpoint) -> list[Path]:
    return dataset_files(read_meta(checkpoint)["dataset"])
