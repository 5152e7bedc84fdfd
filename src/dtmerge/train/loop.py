"""The training loop: AdamW with linear warmup, gradient clipping, action MSE on real (unpadded)
tokens, bf16 autocast where the hardware has native bf16, checkpoints that resume bit-exactly.

`fit` gets everything it trains from its caller: the starting models (random, a checkpoint, a
bundle task or a language model: see `dtmerge.train.recipe`), their data, and the extra loss
terms (Eq. 5). Several tasks train one multi-task DT whose trunk their models share: a batch from
every task each step, the sum of their losses (the paper's multi-task baseline), saved as a bundle.
Every `save_every` steps the run writes a checkpoint holding the optimizer moments and every RNG
state, so resuming ends with exactly the weights an uninterrupted run would have; at each of
`keep_steps` it also keeps the weights alone, under `snapshots/`, for learning curves.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from dtmerge.atomic import atomic_path, write_json
from dtmerge.data import Trajectories, WindowSampler
from dtmerge.errors import DtmergeError
from dtmerge.loggers import Loggers
from dtmerge.model import DecisionTransformer
from dtmerge.runtime import (
    autocast,
    check_same_runtime,
    dropout_rng,
    make_deterministic,
    pick_device,
    resolve_precision,
    rng_states,
    runtime_kind,
    set_rng_states,
)
from dtmerge.store.bundle import is_bundle, load_bundle_task, read_bundle_meta, write_bundle
from dtmerge.store.checkpoint import CheckpointError, load_checkpoint, load_train_state, read_meta, save_checkpoint
from dtmerge.train.config import RESUMABLE_CHANGES, TrainConfig

SHARED_PREFIXES = ("transformer.", "embed_timestep.")  # what the tasks of a multi-task DT share


@dataclass
class TaskRun:
    """One task of a run: the model it starts from, its data, and what its checkpoint records."""

    model: DecisionTransformer
    traj: Trajectories
    state_mean: np.ndarray
    state_std: np.ndarray
    meta: dict  # task, env_id, dataset, init, init_trunk_sha256, ... (see dtmerge.store.schema)


def fit(cfg: TrainConfig, runs: list[TaskRun], run_dir: Path, extra, resume: bool = False,
        progress: bool = True) -> Path:
    """Train the models of `runs` (sharing one trunk if several) and checkpoint to `run_dir/checkpoint`."""
    run_dir = Path(run_dir)
    ckpt = run_dir / "checkpoint"
    device = pick_device(cfg.device)
    precision = resolve_precision(cfg.precision, device)
    make_deterministic(device, cfg.deterministic)
    models = [r.model.to(device) for r in runs]
    names = [r.meta["task"] for r in runs]
    trainable = [p for p in torch.nn.ModuleList(models).parameters() if p.requires_grad] + extra.parameters()
    optim = adamw(trainable, cfg.lr, cfg.weight_decay, device)
    samplers = [task_sampler(cfg, r, cfg.seed + i) for i, r in enumerate(runs)]
    step = 0
    if resume and ckpt.exists():
        step = _restore(ckpt, cfg, runs, optim, samplers, extra, device, precision)
    metas = [checkpoint_meta(cfg, r) for r in runs]
    run_dir.mkdir(parents=True, exist_ok=True)
    write_json(run_dir / "config.json", {**cfg.model_dump(), "runtime": runtime_kind(device, precision)})
    _truncate_log(run_dir / "metrics.jsonl", step)

    for m in models:
        m.train()
    bar = tqdm(total=cfg.steps, initial=step, desc=f"train {'+'.join(names)}", unit="step", disable=not progress)
    t_last, step_last = time.perf_counter(), step
    finite = FiniteWatch(device, [run_dir])
    with open(run_dir / "metrics.jsonl", "a") as log, Loggers(cfg.log, run_dir, "+".join(names),
                                                             cfg.model_dump()) as loggers:
        while step < cfg.steps:
            batches = [s.sample(cfg.batch_size, device) for s in samplers]
            lr = cfg.lr * min((step + 1) / cfg.warmup_steps, 1.0)
            for group in optim.param_groups:
                group["lr"] = lr
            mses = []
            for m, b in zip(models, batches):
                with autocast(device, precision):
                    pred = m(b["states"], b["actions"], b["returns_to_go"], b["timesteps"], b["mask"])
                mses.append(action_mse(pred, b))
            mse = torch.stack(mses).sum()  # the original multi-task code summed the tasks' losses
            terms = extra(step, models[0], batches[0]["mask"])
            loss = mse + sum(terms.values())
            optim.zero_grad(set_to_none=True)
            loss.backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(trainable, cfg.grad_clip)
            finite.watch(grad_norm.reshape(1), step + 1)
            optim.step()
            step += 1
            bar.update()
            logging = step % cfg.log_every == 0 or step == cfg.steps
            saving = step % cfg.save_every == 0 or step == cfg.steps
            if logging or saving or step in cfg.keep_steps:
                finite.check()  # before anything is logged or saved
            if logging:
                now = time.perf_counter()
                rec = {"step": step, "loss": loss.item(), "mse": mse.item(),
                       **({f"mse_{n}": v.item() for n, v in zip(names, mses)} if len(runs) > 1 else {}),
                       **{f"loss_{k}": v.item() for k, v in terms.items()}, "lr": lr,
                       "grad_norm": grad_norm.item(), "steps_per_s": (step - step_last) / (now - t_last)}
                t_last, step_last = now, step
                log.write(json.dumps(rec) + "\n")
                log.flush()
                loggers.log(rec, step)
                bar.set_postfix(loss=f"{rec['loss']:.4f}")
            if step in cfg.keep_steps:  # before the checkpoint: a stop between the two repeats this step
                _save(run_dir / "snapshots" / f"step-{step}", models, metas, None, step)
            if saving:
                _save(ckpt, models, metas, _train_state(step, optim, samplers, extra, device, precision), step)
    bar.close()
    return ckpt


def action_mse(pred: torch.Tensor, batch: dict) -> torch.Tensor:
    """The DT loss: mean squared action error over the real (unpadded) slots. Written as a masked
    mean, not `err[mask].mean()`, whose boolean indexing makes the host wait for a GPU every step
    (the gradients are the same bits)."""
    err = (pred.float() - batch["actions"]) ** 2
    weights = batch["mask"].unsqueeze(-1).to(err.dtype)
    return (err * weights).sum() / (weights.sum() * err.shape[-1])


def adamw(params, lr: float, weight_decay: float, device: torch.device) -> torch.optim.AdamW:
    """The optimiser; on CUDA the fused kernel (one launch for every tensor), elsewhere the default."""
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay,
                             **({"fused": True} if device.type == "cuda" else {}))


class FiniteWatch:
    """Catches a non-finite gradient norm without a host-device sync per step: the first step of
    each run whose norm is not finite is kept on the device, and `check` (at log and save steps,
    before anything is written) raises, naming it. The weights after that step are not finite,
    so they are never saved; the last checkpoint is from before it."""

    def __init__(self, device: torch.device, run_dirs: list[Path]):
        self.run_dirs = run_dirs
        self.first_bad = torch.zeros(len(run_dirs), dtype=torch.long, device=device)  # 0: none yet

    def watch(self, norms: torch.Tensor, step: int) -> None:
        newly = (self.first_bad == 0) & ~torch.isfinite(norms)
        self.first_bad = torch.where(newly, step, self.first_bad)

    def check(self) -> None:
        """Raise for the run that went bad first, if any did."""
        bad = [(step, run_dir) for run_dir, step in zip(self.run_dirs, self.first_bad.tolist()) if step]
        if bad:
            step, run_dir = min(bad, key=lambda b: b[0])
            raise DtmergeError(f"{run_dir}: step {step}: the loss or its gradient is not finite; lower --lr, "
                               "or check the data")


def task_sampler(cfg: TrainConfig, run: TaskRun, seed: int) -> WindowSampler:
    """The training windows of one task of a run."""
    return WindowSampler(run.traj, run.model.config.context_len, run.state_mean, run.state_std, cfg.rtg_scale,
                         run.model.config.max_ep_len, seed=seed)


def checkpoint_meta(cfg: TrainConfig, run: TaskRun) -> dict:
    """What a task's checkpoints record beyond its weights (the step is added at each save)."""
    return {**run.meta, "state_mean": np.asarray(run.state_mean).tolist(),
            "state_std": np.asarray(run.state_std).tolist(), "rtg_scale": cfg.rtg_scale, "seed": cfg.seed,
            "train_config": cfg.model_dump()}


def _save(ckpt: Path, models, metas, train_state: dict, step: int) -> None:
    """A checkpoint for one task; for several, a bundle whose shared tensors are the trunk and
    timestep embedding."""
    if len(models) == 1:
        save_checkpoint(ckpt, models[0], {**metas[0], "step": step}, train_state)
        return
    first = models[0].state_dict()
    shared = {n: t for n, t in first.items() if n.startswith(SHARED_PREFIXES)}
    per_task = {meta["task"]: ({**meta, "config": m.config.model_dump()},
                               {n: t for n, t in m.state_dict().items() if n not in shared})
                for m, meta in zip(models, metas)}
    info = {"step": step, "train_config": metas[0]["train_config"],
            "init_trunk_sha256": metas[0]["init_trunk_sha256"], "init_seed": metas[0].get("init_seed"),
            "dataset_sha256": [m["dataset_sha256"] for m in metas]}
    write_bundle(ckpt, shared, per_task, {"multitask": info}, train_state)


def _train_state(step, optim, samplers, extra, device, precision) -> dict:
    return {"step": step, "optimizer": optim.state_dict(), **rng_states(device),
            "sampler_rng": [s.get_state() for s in samplers], "dropout_rng": dropout_rng().bit_generator.state,
            "extra": extra.state(), "runtime": runtime_kind(device, precision)}


def _restore(ckpt: Path, cfg: TrainConfig, runs: list[TaskRun], optim, samplers, extra, device, precision) -> int:
    """Load the checkpoint's weights and training state, after checking it is this run's (a field
    added to the config after the run was saved counts as its default)."""
    multi = len(runs) > 1
    saved = read_bundle_meta(ckpt)["multitask"] if multi and is_bundle(ckpt) else read_meta(ckpt)
    defaults = TrainConfig(dataset=["(default)"]).model_dump()
    was = {k: saved["train_config"].get(k, defaults[k]) for k in defaults}
    diff = {k: (was[k], v) for k, v in cfg.model_dump().items() if k not in RESUMABLE_CHANGES and was[k] != v}
    if diff:
        raise CheckpointError(f"{ckpt}: cannot resume, the config differs from the saved run: {diff}")
    data = [r.meta["dataset_sha256"] for r in runs]
    if saved.get("dataset_sha256") not in (None, data if multi else data[0]):
        raise CheckpointError(f"{ckpt}: cannot resume, the training data differs from the saved run's "
                              f"(dataset_sha256); pass --overwrite to start over")
    if saved.get("init_trunk_sha256") != runs[0].meta["init_trunk_sha256"]:
        origin = cfg.init or "its random init"
        raise CheckpointError(f"{ckpt}: cannot resume, the run started from other weights than {origin} gives "
                              f"now (init_trunk_sha256 differs); pass --overwrite to start over")
    for run in runs:
        loaded, _ = load_bundle_task(ckpt, run.meta["task"]) if multi else load_checkpoint(ckpt)
        run.model.load_state_dict(loaded.state_dict())
    state = load_train_state(ckpt)
    check_same_runtime(state.get("runtime"), runtime_kind(device, precision), ckpt)
    optim.load_state_dict(state["optimizer"])
    set_rng_states(state, device)
    for sampler, rng_state in zip(samplers, state["sampler_rng"]):
        sampler.set_state(rng_state)
    dropout_rng().bit_generator.state = state["dropout_rng"]
    extra.load_state(state["extra"])
    return int(state["step"])


def _truncate_log(path: Path, step: int) -> None:
    """Drop records past `step` (logged after the checkpoint a resumed run continues from)."""
    if not path.is_file():
        return
    lines = path.read_text().splitlines()
    keep = [ln for ln in lines if _logged_step(ln) <= step]
    if len(keep) != len(lines):
        with atomic_path(path) as tmp:
            tmp.write_text("".join(ln + "\n" for ln in keep))


def _logged_step(line: str) -> float:
    """The step of a metrics line; a line cut short by a kill counts as past any checkpoint."""
    try:
        return json.loads(line)["step"]
    except (json.JSONDecodeError, KeyError, TypeError):
        return float("inf")
