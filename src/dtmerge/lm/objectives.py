"""The extra terms of the paper's Eq. 5, L = L_MSE + l1 L_cos + l2 L_LM + l3 L_2 (Section III-C),
and the named presets of its Table III.

L_cos pulls each DT input embedding toward the language model's token-embedding space: minus the
mean, over tokens, of the maximum cosine similarity to k-means centres of the LM's token
embeddings (Reid et al., 2022). The original code took, per hidden dimension, the maximum over
centres of e_j * c_j and averaged those — not a cosine maximum; this is the real one.
L_2 keeps the trunk near the LM: by default the original's sum over tensors of the (unsquared)
Frobenius norm of their difference, or the squared L2 distance.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from dtmerge.atomic import atomic_path, file_sha256
from dtmerge.data.make import data_home
from dtmerge.lm.gpt2 import read_gpt2
from dtmerge.lm.pretrain import tokenize_corpus
from dtmerge.runtime import host_to_device
from dtmerge.store.checkpoint import read_tensors


def cos_to_centres_loss(embeddings: torch.Tensor, centres: torch.Tensor, mask: torch.Tensor | None = None):
    """-mean over tokens of max_c cos(e, c); embeddings (..., H), centres (C, H), mask (...) of real tokens."""
    sim = F.normalize(embeddings.float(), dim=-1) @ F.normalize(centres.float(), dim=-1).T
    best = sim.max(dim=-1).values
    if mask is not None:  # a masked mean, not best[mask]: boolean indexing waits for the GPU
        weights = mask.to(best.dtype)
        return -(best * weights).sum() / weights.sum()
    return -best.mean()


def sigmoid_decay(step: int, until: int = 5000) -> float:
    """The original schedule: ~1 at step 0, 0.5 at until/2, ~0.007 at `until`, -> 0 after."""
    return 1.0 / (1.0 + math.exp(-((until - step) / (until / 10) - 5)))


def l2_to_reference(params: dict[str, torch.Tensor], reference: dict[str, torch.Tensor], norm: str = "fro"):
    """sum_n ||theta_n - ref_n||_F ("fro", the original's) or sum_n ||theta_n - ref_n||^2 ("squared")."""
    if norm not in ("fro", "squared"):
        raise ValueError(f"norm must be fro or squared, not {norm!r}")
    diffs = [params[n] - reference[n] for n in reference]
    if norm == "fro":  # vector_norm has a zero (sub)gradient at zero distance; sqrt(sum(x^2)) would give NaN
        return torch.stack([torch.linalg.vector_norm(d) for d in diffs]).sum()
    return torch.stack([d.pow(2).sum() for d in diffs]).sum()


def token_centres(lm_dir, clusters: int = 1000, seed: int = 0) -> torch.Tensor:
    """k-means centres of an LM's token embeddings (wte), computed once and cached under
    `$DTMERGE_HOME/kmeans`, keyed by the SHA-256 of the LM's weights (never written into the LM's
    own directory, which is an input).

    Spherical k-means: scikit-learn's KMeans on L2-normalised embeddings, so clusters follow cosine
    similarity like the original's cosine k-means; centres are returned normalised.
    """
    lm_dir = Path(lm_dir)
    key = file_sha256(lm_dir / "model.safetensors")[:16]
    cache = data_home() / "kmeans" / f"{key}-{clusters}-seed{seed}.safetensors"
    if cache.is_file():
        centres = read_tensors(cache).get("centres")
        if centres is not None and centres.shape[0] == clusters and torch.isfinite(centres).all():
            return centres
    _, tensors = read_gpt2(lm_dir)
    if "wte.weight" not in tensors:
        raise ValueError(f"{lm_dir}: no wte.weight (token embeddings) to cluster")
    try:
        from sklearn.cluster import KMeans
    except ImportError:
        raise ImportError("L_cos needs scikit-learn for k-means: pip install 'dtmerge[lm]'") from None
    wte = F.normalize(tensors["wte.weight"].float(), dim=-1).numpy()
    if clusters > len(wte):
        raise ValueError(f"{clusters} clusters for only {len(wte)} token embeddings in {lm_dir}")
    km = KMeans(n_clusters=clusters, n_init=1, random_state=seed).fit(wte)
    centres = F.normalize(torch.from_numpy(km.cluster_centers_).float(), dim=-1)
    from safetensors.torch import save_file

    with atomic_path(cache, ".safetensors") as tmp:
        save_file({"centres": centres.contiguous()}, tmp)
    return centres


class LMCoTraining:
    """L_LM: language modelling through the DT's own trunk (co-training, Reid et al., 2022).

    Text blocks from the LM's tokenizer are embedded with the LM's token embeddings `wte` (trained
    along, the LM head tied to them) plus the DT's timestep embedding as positions (it is the LM's
    position embedding when shared), run through the trunk, and scored with cross-entropy.
    """

    def __init__(self, lm_dir, corpus: list[str], seq_len: int, batch_size: int, seed: int, device):
        from transformers import AutoTokenizer


        tokenizer = AutoTokenizer.from_pretrained(str(lm_dir))
        self.tokens = tokenize_corpus(corpus, tokenizer)
        if len(self.tokens) <= seq_len:
            raise ValueError(f"the LM corpus has {len(self.tokens)} tokens, fewer than one block of {seq_len}")
        _, tensors = read_gpt2(lm_dir)
        self.wte = torch.nn.Parameter(tensors["wte.weight"].clone().to(device))
        self.seq_len, self.batch_size, self.device = seq_len, batch_size, device
        self.rng = np.random.default_rng(seed)

    def loss(self, model) -> torch.Tensor:
        starts = self.rng.integers(0, len(self.tokens) - self.seq_len, size=self.batch_size)
        ids = host_to_device(self.tokens[starts[:, None] + np.arange(self.seq_len)], self.device)
        pos = torch.arange(self.seq_len, device=self.device)
        h = model.transformer(self.wte[ids] + model.embed_timestep(pos))
        logits = h[:, :-1] @ self.wte.T
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), ids[:, 1:].reshape(-1))

    def state(self) -> dict:
        return {"wte": self.wte.detach(), "rng": self.rng.bit_generator.state}

    def load_state(self, state: dict) -> None:
        with torch.no_grad():
            self.wte.copy_(state["wte"])
        self.rng.bit_generator.state = state["rng"]


class ExtraTerms:
    """The weighted L_cos, L_LM and L_2 terms of one training run.

    The L_2 reference is the trunk's blocks as they were at the start (the LM's weights for an LM
    init), as in the original code; L_cos reads the DT's input embeddings (the `embed_ln` output
    that enters the trunk) through a forward hook. The reference and the centres are put on the
    training `device` once, not copied there every step.
    """

    def __init__(self, model, cos_weight: float = 0.0, cos_until: int = 5000, centres=None,
                 l2_weight: float = 0.0, l2_norm: str = "fro", lm_weight: float = 0.0,
                 lm: LMCoTraining | None = None, device="cpu"):
        self.cos_weight, self.cos_until, self.l2_weight, self.l2_norm = cos_weight, cos_until, l2_weight, l2_norm
        self.lm_weight, self.lm = lm_weight, lm
        self.centres = None if centres is None else centres.to(device)
        self.reference = {n: p.detach().to(device, copy=True) for n, p in model.named_parameters()
                          if n.startswith("transformer.h.")} if l2_weight else {}
        self._embeddings = None
        if cos_weight:
            if centres is None:
                raise ValueError("L_cos needs the centres of a language model's token embeddings")
            model.embed_ln.register_forward_hook(lambda module, inputs, output: setattr(self, "_embeddings", output))

    def __call__(self, step: int, model, mask) -> dict[str, torch.Tensor]:
        """{name: weighted term}; the training loss adds them to the action MSE."""
        terms = {}
        if self.cos_weight:
            token_mask = mask.repeat_interleave(3, dim=1)
            weight = self.cos_weight * sigmoid_decay(step, self.cos_until)
            terms["cos"] = weight * cos_to_centres_loss(self._embeddings, self.centres, token_mask)
        if self.lm_weight:
            terms["lm"] = self.lm_weight * self.lm.loss(model)
        if self.l2_weight:
            params = dict(model.named_parameters())
            terms["l2"] = self.l2_weight * l2_to_reference(params, self.reference, self.l2_norm)
        return terms

    def parameters(self) -> list[torch.nn.Parameter]:
        """Parameters the terms train besides the model's (the co-trained token embeddings)."""
        return [self.lm.wte] if self.lm is not None else []

    def state(self) -> dict:
        return {"lm": self.lm.state()} if self.lm is not None else {}

    def load_state(self, state: dict) -> None:
        if self.lm is not None:
            self.lm.load_state(state["lm"])
