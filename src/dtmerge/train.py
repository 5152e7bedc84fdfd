"""Train a Decision Transformer on one offline dataset (the original DT recipe, made resumable), or
one multi-task DT on several: a shared trunk and timestep embedding, per-task embeddings and heads
in registered modules, a batch from every task each step and the sum of their losses (the paper's
multi-task baseline, without the original's bug that left two tasks' heads untrained). A
multi-task run is saved as a multi-task bundle, evaluated like a merged one.

AdamW with linear warmup, gradient clipping, action MSE on real (unpadded) tokens (plus, if asked,
the L_cos and L_2 terms of the paper's Eq. 5); bf16 autocast where the hardware has native bf16;
a random, checkpoint or GPT-2 initialisation, with any selector of parameters frozen. Every
`save_every` steps the run writes a checkpoint that holds the optimizer moments and all RNG states,
so `resume=True` ends with exactly the weights an uninterrupted run would have.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from tqdm.auto import tqdm

from dtmerge.atomic import write_json
from dtmerge.checkpoint import (
    CheckpointError,
    load_checkpoint,
    load_train_state,
    read_meta,
    save_checkpoint,
    trunk_sha256,
)
from dtmerge.data import WindowSampler, load_dataset
from dtmerge.model import DecisionTransformer, DTConfig
from dtmerge.runtime import RunConfig, autocast, dropout_rng, pick_device, resolve_precision, seed_everything


class ModelShape(BaseModel):
    """The DT architecture minus the task's state/action sizes (which come from the dataset)."""

    model_config = ConfigDict(extra="forbid")
    n_embd: int = Field(128, gt=0, description="embedding width")
    n_layer: int = Field(3, gt=0, description="transformer blocks")
    n_head: int = Field(1, gt=0, description="attention heads")
    activation: str = Field("relu", description="MLP activation: relu, gelu or gelu_new")
    dropout: float = Field(0.1, ge=0.0, lt=1.0, description="embedding, attention and residual dropout")
    context_len: int = Field(20, gt=0, description="K: timesteps per training window")


class TrainConfig(RunConfig):
    dataset: list[str] = Field(description="D4RL .hdf5 file, Minari dataset directory or id, or a made id like "
                                           "hopper-medium; several (one per task) train one multi-task DT")
    task: str | None = Field(None, description="halfcheetah, hopper or walker2d (default: from the dataset)")

    @field_validator("dataset", mode="before")
    @classmethod
    def _one_or_more(cls, v):
        return [v] if isinstance(v, str) else v
    out: str = Field("runs/dt", description="run directory (checkpoint/, metrics.jsonl, eval.json)")
    steps: int = Field(10000, gt=0, description="optimizer steps in total")
    batch_size: int = Field(64, gt=0, description="windows per step")
    lr: float = Field(1e-4, gt=0, description="AdamW learning rate after warmup")
    weight_decay: float = Field(1e-4, ge=0, description="AdamW weight decay")
    warmup_steps: int = Field(10000, gt=0, description="linear learning-rate warmup steps")
    grad_clip: float = Field(0.25, gt=0, description="gradient norm clip")
    rtg_scale: float = Field(1000.0, gt=0, description="returns-to-go are divided by this")
    eval_episodes: int = Field(10, ge=0, description="episodes per RTG target after training (0: skip)")
    eval_targets: list[float] | None = Field(None, description="RTG targets (default: the task's two)")
    model: ModelShape = Field(default_factory=ModelShape)
    init: str | None = Field(None, description="start from a DT checkpoint (its architecture and state "
                                               "normalisation are kept) or a GPT-2 model (Hugging Face "
                                               "directory or hub id: its trunk) instead of a random init")
    share_lm_positions: bool = Field(True, description="with a GPT-2 init, use its position embedding as "
                                                       "the timestep embedding (tiled past its length)")
    freeze: list[str] = Field(default_factory=list, description="selector of parameters to keep fixed "
                                                                 "(groups such as attn, mlp; globs; '!item')")
    cos_weight: float = Field(0.0, ge=0, description="l1 of Eq. 5: weight of L_cos, the pull of input "
                                                     "embeddings toward the LM's token clusters (needs a GPT-2 init)")
    cos_until: int = Field(5000, gt=0, description="the L_cos weight decays (sigmoid) to ~0 by this step")
    cos_clusters: int = Field(1000, gt=0, description="k-means centres of the LM's token embeddings")
    l2_weight: float = Field(0.0, ge=0, description="l3 of Eq. 5: weight of L_2, the distance of the trunk's "
                                                    "blocks to their initial (e.g. the LM's) weights")
    l2_norm: Literal["fro", "squared"] = Field("fro", description="fro: sum of per-tensor Frobenius norms (the "
                                                                  "original); squared: squared L2 distance")
    lm_weight: float = Field(0.0, ge=0, description="l2 of Eq. 5: weight of L_LM, language modelling through "
                                                    "the trunk on --lm-corpus (co-training; needs a GPT-2 init)")
    lm_corpus: list[str] = Field(default_factory=list, description="text files for L_LM")
    lm_seq_len: int = Field(1024, gt=1, description="tokens per L_LM block (the original: 1024)")
    lm_batch_size: int = Field(2, gt=0, description="L_LM blocks per step (the original: 2)")
    preset: Literal["chibit", "chibit-co", "chibit-r", "gpt2-r"] | None = Field(
        None, description="Table III's variants: sets cos/lm/l2 weights not given explicitly (with --init "
                          "a ChibiT or GPT-2 model; chibit-co also needs --lm-corpus)")

    @model_validator(mode="before")
    @classmethod
    def _apply_preset(cls, data):
        if isinstance(data, dict) and data.get("preset"):
            from dtmerge.lm.objectives import PRESETS

            if data["preset"] not in PRESETS:
                raise ValueError(f"unknown preset {data['preset']!r}; presets: {', '.join(PRESETS)}")
            data = {**PRESETS[data["preset"]], **data}
        return data


def train(cfg: TrainConfig, resume: bool = False, progress: bool = True) -> Path:
    """Train, checkpoint to `<out>/checkpoint` (a bundle for several datasets), and (if eval_episodes)
    write `<out>/eval.json`."""
    out = Path(cfg.out)
    ckpt = out / "checkpoint"
    if ckpt.exists() and not resume:
        raise FileExistsError(f"{ckpt} exists: pass --resume to continue that run, or choose another --out")
    multi = len(cfg.dataset) > 1
    if multi and (cfg.task or cfg.cos_weight or (cfg.init and not _is_language_model(cfg.init))):
        raise ValueError("a multi-task run takes no --task, no --cos-weight, and only a language model as --init")
    data = [load_dataset(d, cfg.task) for d in cfg.dataset]
    names = [task.name for _, task in data]
    if len(set(names)) != len(names):
        raise ValueError(f"a multi-task run needs one dataset per task, got tasks {names}")
    device = pick_device(cfg.device)
    precision = resolve_precision(cfg.precision, device)
    seed_everything(cfg.seed)
    built = [_initial_model(cfg, traj, task) for traj, task in data]
    models = [b[0] for b in built]
    for m in models[1:]:  # one trunk and timestep embedding for every task
        m.transformer, m.embed_timestep = models[0].transformer, models[0].embed_timestep
    for m in models:
        m.to(device)
    frozen = set(_resolve_freeze(cfg.freeze, models[0]))
    for m in models:
        for name, p in m.named_parameters():
            p.requires_grad_(name not in frozen)
    init_meta = {**built[0][3], "init_trunk_sha256": trunk_sha256(models[0].state_dict())}
    extra = _extra_terms(cfg, models[0], init_meta, device)
    trainable = [p for p in torch.nn.ModuleList(models).parameters() if p.requires_grad] + extra.parameters()
    optim = torch.optim.AdamW(trainable, lr=cfg.lr, weight_decay=cfg.weight_decay)
    samplers = [WindowSampler(traj, m.config.context_len, mean, std, cfg.rtg_scale, m.config.max_ep_len,
                              seed=cfg.seed + i)
                for i, ((traj, _), m, (_, mean, std, _)) in enumerate(zip(data, models, built))]
    step = 0
    if resume and ckpt.exists():
        step = _restore(ckpt, cfg, models, names, optim, samplers, extra, device)
    metas = [{"task": task.name, "env_id": task.env_id, "dataset": d, "dataset_attrs": traj.attrs,
              "state_mean": np.asarray(mean).tolist(), "state_std": np.asarray(std).tolist(),
              "rtg_scale": cfg.rtg_scale, "rtg_targets": list(task.rtg_targets), "seed": cfg.seed,
              "train_config": cfg.model_dump(), "frozen": sorted(frozen), **init_meta}
             for d, (traj, task), (_, mean, std, _) in zip(cfg.dataset, data, built)]
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "config.json", cfg.model_dump())

    for m in models:
        m.train()
    bar = tqdm(total=cfg.steps, initial=step, desc=f"train {'+'.join(names)}", unit="step", disable=not progress)
    t_last, step_last = time.perf_counter(), step
    with open(out / "metrics.jsonl", "a") as log:
        while step < cfg.steps:
            batches = [s.sample(cfg.batch_size, device) for s in samplers]
            lr = cfg.lr * min((step + 1) / cfg.warmup_steps, 1.0)
            for group in optim.param_groups:
                group["lr"] = lr
            mses = []
            for m, b in zip(models, batches):
                with autocast(device, precision):
                    pred = m(b["states"], b["actions"], b["returns_to_go"], b["timesteps"], b["mask"])
                mses.append(((pred.float() - b["actions"]) ** 2)[b["mask"]].mean())
            mse = torch.stack(mses).sum()  # the original multi-task code summed the tasks' losses
            terms = extra(step, models[0], batches[0]["mask"])
            loss = mse + sum(terms.values())
            optim.zero_grad(set_to_none=True)
            loss.backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(trainable, cfg.grad_clip, error_if_nonfinite=True)
            optim.step()
            step += 1
            bar.update()
            if step % cfg.log_every == 0 or step == cfg.steps:
                now = time.perf_counter()
                rec = {"step": step, "loss": loss.item(), "mse": mse.item(),
                       **({f"mse_{n}": v.item() for n, v in zip(names, mses)} if multi else {}),
                       **{f"loss_{k}": v.item() for k, v in terms.items()}, "lr": lr,
                       "grad_norm": grad_norm.item(), "steps_per_s": (step - step_last) / (now - t_last)}
                t_last, step_last = now, step
                log.write(json.dumps(rec) + "\n")
                log.flush()
                bar.set_postfix(loss=f"{rec['loss']:.4f}")
            if step % cfg.save_every == 0 or step == cfg.steps:
                _save(ckpt, models, metas, _train_state(step, optim, samplers, extra, device), step)
    bar.close()
    if cfg.eval_episodes:
        from dtmerge.evaluate import evaluate_checkpoint

        results = [evaluate_checkpoint(ckpt, cfg.eval_episodes, cfg.eval_targets, seed=cfg.seed, device=cfg.device,
                                       precision=cfg.precision, progress=progress, task=n) for n in names]
        write_json(out / "eval.json", results[0] if not multi else {"results": results})
    return ckpt


def _save(ckpt: Path, models, metas, train_state: dict, step: int) -> None:
    """A checkpoint for one task; for several, a bundle whose shared tensors are the trunk and
    timestep embedding."""
    if len(models) == 1:
        save_checkpoint(ckpt, models[0], {**metas[0], "step": step}, train_state)
        return
    from dtmerge.merge.bundle import write_bundle

    first = models[0].state_dict()
    shared = {n: t for n, t in first.items() if n.startswith(("transformer.", "embed_timestep."))}
    per_task = {meta["task"]: ({**meta, "config": m.config.model_dump()},
                               {n: t for n, t in m.state_dict().items() if n not in shared})
                for m, meta in zip(models, metas)}
    write_bundle(ckpt, shared, per_task, {"multitask": {"step": step, "train_config": metas[0]["train_config"]}},
                 train_state)


def _initial_model(cfg: TrainConfig, traj, task):
    """A fresh DT, or one from the `init` checkpoint, bundle or language model, with the state
    statistics to use (an initialised DT keeps the ones it was trained with)."""
    from dtmerge.merge.bundle import is_bundle, load_bundle_task

    if cfg.init is None:
        model = DecisionTransformer(DTConfig(state_dim=task.obs_dim, act_dim=task.act_dim,
                                             **cfg.model.model_dump()))
        state_mean, state_std = traj.state_stats()
        init_meta = {"init": "random"}
    elif is_bundle(cfg.init):  # one task of a multi-task bundle, e.g. to finetune a copy per task
        model, meta = load_bundle_task(cfg.init, task.name)
        state_mean, state_std = (np.asarray(meta[k], np.float32) for k in ("state_mean", "state_std"))
        init_meta = {"init": str(cfg.init), "init_kind": "bundle"}
    elif _is_language_model(cfg.init):
        from dtmerge.lm import dt_from_gpt2

        model = dt_from_gpt2(cfg.init, task.obs_dim, task.act_dim, cfg.model.context_len,
                             dropout=cfg.model.dropout, share_position_embedding=cfg.share_lm_positions)
        state_mean, state_std = traj.state_stats()
        init_meta = {"init": str(cfg.init), "init_kind": "gpt2"}
    else:
        model, meta = load_checkpoint(cfg.init)
        if meta["task"] != task.name:
            raise CheckpointError(f"{cfg.init}: init checkpoint is for {meta['task']}, the dataset for {task.name}")
        state_mean, state_std = (np.asarray(meta[k], np.float32) for k in ("state_mean", "state_std"))
        init_meta = {"init": str(cfg.init)}
    return model, state_mean, state_std, init_meta


def _is_language_model(path) -> bool:
    return not (Path(path) / "meta.json").is_file() and not (Path(path) / "bundle.json").is_file()


def _extra_terms(cfg: TrainConfig, model, init_meta: dict, device):
    from dtmerge.lm.objectives import ExtraTerms, LMCoTraining, token_centres

    if (cfg.cos_weight or cfg.lm_weight) and init_meta.get("init_kind") != "gpt2":
        raise ValueError("cos_weight (L_cos) and lm_weight (L_LM) need a language-model init: pass --init "
                         "with a GPT-2 or ChibiT model")
    centres = lm = None
    if cfg.cos_weight or cfg.lm_weight:
        from dtmerge.lm.gpt2 import resolve_lm_dir

        lm_dir = resolve_lm_dir(cfg.init)
        if cfg.cos_weight:
            centres = token_centres(lm_dir, cfg.cos_clusters, cfg.seed)
        if cfg.lm_weight:
            if not cfg.lm_corpus or not cfg.share_lm_positions:
                raise ValueError("lm_weight (L_LM) needs --lm-corpus and the LM's positions as timestep embedding")
            lm = LMCoTraining(lm_dir, cfg.lm_corpus, cfg.lm_seq_len, cfg.lm_batch_size, cfg.seed, device)
    return ExtraTerms(model, cfg.cos_weight, cfg.cos_until, centres, cfg.l2_weight, cfg.l2_norm,
                      cfg.lm_weight, lm)


def _resolve_freeze(selector: list[str], model) -> list[str]:
    if not selector:
        return []
    from dtmerge.merge.selectors import resolve

    return resolve(selector, model.parameter_groups(), [n for n, _ in model.named_parameters()])


def _train_state(step, optim, samplers, extra, device) -> dict:
    state = {"step": step, "optimizer": optim.state_dict(), "torch_rng": torch.get_rng_state(),
             "sampler_rng": [s.get_state() for s in samplers], "dropout_rng": dropout_rng().bit_generator.state,
             "extra": extra.state()}
    if device.type == "cuda":
        state["cuda_rng"] = torch.cuda.get_rng_state(device)
    return state


def _restore(ckpt: Path, cfg: TrainConfig, models, names, optim, samplers, extra, device) -> int:
    from dtmerge.merge.bundle import is_bundle, load_bundle_task, read_bundle_meta

    saved = read_bundle_meta(ckpt)["multitask"]["train_config"] if is_bundle(ckpt) else read_meta(ckpt)["train_config"]
    ignore = {"steps", "device", "log_every", "save_every", "eval_episodes", "eval_targets"}
    diff = {k: (saved.get(k), v) for k, v in cfg.model_dump().items() if k not in ignore and saved.get(k) != v}
    if diff:
        raise CheckpointError(f"{ckpt}: cannot resume, the config differs from the saved run: {diff}")
    for model, name in zip(models, names):
        loaded, _ = load_bundle_task(ckpt, name) if len(models) > 1 else load_checkpoint(ckpt)
        model.load_state_dict(loaded.state_dict())
    state = load_train_state(ckpt)
    optim.load_state_dict(state["optimizer"])
    torch.set_rng_state(state["torch_rng"])
    if "cuda_rng" in state and device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda_rng"], device)
    for sampler, rng_state in zip(samplers, state["sampler_rng"]):
        sampler.set_state(rng_state)
    dropout_rng().bit_generator.state = state["dropout_rng"]
    extra.load_state(state["extra"])
    return int(state["step"])
