"""Many DTs of one architecture trained at once, in one process: `fit_many`.

Their parameters are stacked (`torch.func.stack_module_state`) and one forward serves them all
(`vmap` over `functional_call`), which on a GPU turns N small launch-bound models into one
larger one. Everything else stays each model's own, as if it trained alone: its sampler, its
dropout stream (each model's keep-masks are drawn from its own generator, in the order its own
run would draw them, and handed to the stacked forward), its gradient clipping, its AdamW moments
(AdamW is elementwise, so stacked moments are each model's), its metrics and its checkpoints. A
checkpoint of a batched run is a plain single-model checkpoint, train state included: a batched
run resumes from them, and so would a single one. On a CPU each model matches the same model
trained alone up to float rounding, as batched matrix products sum in another order: within 1e-5
after 12 fp32 steps (tests/test_many.py); further apart in bf16, whose rounding the differences
pass through (not bounded by a test). On CUDA the masks come from a per-model torch generator instead of
the device's own stream, so the numbers differ from single runs there beyond rounding.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import time
from contextlib import ExitStack
from pathlib import Path

import numpy as np
import torch
from torch.func import functional_call, stack_module_state, vmap
from tqdm.auto import tqdm

from dtmerge.atomic import swap, write_json
from dtmerge.data import dataset_files
from dtmerge.errors import DtmergeError
from dtmerge.model.gpt import cpu_keep_mask, supplied_masks
from dtmerge.outputs import claim_outputs, run_directory
from dtmerge.runtime import (
    autocast,
    dropout_rng,
    make_deterministic,
    pick_device,
    resolve_precision,
    runtime_kind,
)
from dtmerge.store.checkpoint import read_meta, trunk_sha256
from dtmerge.train.config import TrainConfig
from dtmerge.train.loop import (
    FiniteWatch,
    TaskRun,
    _restore,
    _save,
    _train_state,
    _truncate_log,
    action_mse,
    adamw,
    checkpoint_meta,
    task_sampler,
)
from dtmerge.train.recipe import extra_terms, single_task_start

PER_MODEL = {"seed", "dataset", "out", "init_seed", "keep_steps", "task", "init"}  # what may differ between them


def train_many(cfgs: list[TrainConfig], resume: bool = False, progress: bool = True) -> list[Path]:
    """Train single-task DTs that differ only in `PER_MODEL` fields together; returns their
    checkpoints (each `<out>/checkpoint`, as `train` would write it)."""
    first = cfgs[0].model_dump(exclude=PER_MODEL)
    for cfg in cfgs[1:]:
        other = cfg.model_dump(exclude=PER_MODEL)
        diff = sorted(k for k in first if first[k] != other[k])
        if diff:
            raise DtmergeError(f"{cfg.out}: trained together, runs may differ only in {sorted(PER_MODEL)}; "
                               f"this one also differs in {diff}")
    for cfg in cfgs:
        if len(cfg.dataset) != 1 or cfg.freeze or cfg.cos_weight or cfg.l2_weight or cfg.lm_weight:
            raise DtmergeError(f"{cfg.out}: runs trained together are single-task DTs without frozen parts or "
                               "Eq. 5 terms")
        claim_outputs([Path(cfg.out)], [*dataset_files(cfg.dataset[0]), *([cfg.init] if cfg.init else [])],
                      False, resume)
    runs = []
    for cfg in cfgs:
        run = single_task_start(cfg)
        run.meta.update(frozen=[], init_trunk_sha256=trunk_sha256(run.model.state_dict()))
        runs.append((run, dropout_rng().bit_generator.state))
    with ExitStack() as stack:
        dirs = [stack.enter_context(run_directory(Path(c.out), False, resume, resumable_from="checkpoint"))
                for c in cfgs]
        fit_many(cfgs, [r for r, _ in runs], dirs, [s for _, s in runs], resume=resume, progress=progress)
    return [Path(c.out) / "checkpoint" for c in cfgs]


def fit_many(cfgs: list[TrainConfig], runs: list[TaskRun], run_dirs: list[Path], dropout_states: list[dict],
             resume: bool = False, progress: bool = True) -> list[Path]:
    """Train `runs[i]` as `fit(cfgs[i], [runs[i]], run_dirs[i], ...)` would, all in one stacked
    model; `dropout_states[i]` is the dropout generator's state run i would start from."""
    cfg = cfgs[0]
    device = pick_device(cfg.device)
    precision = resolve_precision(cfg.precision, device)
    make_deterministic(device, cfg.deterministic)
    models = [r.model.to(device) for r in runs]
    shapes = {tuple((n, tuple(p.shape)) for n, p in m.state_dict().items()) for m in models}
    if len(shapes) != 1:
        raise DtmergeError(f"{run_dirs[0]}: models trained together need one architecture and the same state and "
                           "action sizes")
    extras = [extra_terms(c, m, device) for c, m in zip(cfgs, models)]  # no terms: kept for the train state
    samplers = [task_sampler(c, r, c.seed) for c, r in zip(cfgs, runs)]
    generators = [np.random.Generator(np.random.PCG64(0)) for _ in runs]
    for g, state in zip(generators, dropout_states):
        g.bit_generator.state = state
    if resume:
        _finish_or_drop_pending(run_dirs)
    step, moments = _restore_all(cfgs, runs, run_dirs, samplers, extras, generators, device, precision) \
        if resume else (0, None)
    params, buffers = stack_module_state(models)
    names = list(params)
    optim = adamw([params[n] for n in names], cfg.lr, cfg.weight_decay, device)
    if moments:
        _stack_moments(optim, moments)
    metas = [checkpoint_meta(c, r) for c, r in zip(cfgs, runs)]
    for c, d in zip(cfgs, run_dirs):
        d.mkdir(parents=True, exist_ok=True)
        write_json(d / "config.json", {**c.model_dump(), "runtime": runtime_kind(device, precision),
                                       "batched": len(runs)})
        _truncate_log(d / "metrics.jsonl", step)

    base = copy.deepcopy(models[0]).to("meta").train()
    calls = _dropout_calls(models[0], samplers[0].K, cfg.batch_size, device)

    def forward(p, b, states, actions, rtg, timesteps, mask, keep):
        masks = iter(keep)
        with supplied_masks(lambda shape, prob: next(masks)):
            return functional_call(base, (p, b), (states, actions, rtg, timesteps, mask))

    stacked = vmap(forward)
    bar = tqdm(total=cfg.steps, initial=step, desc=f"train {len(runs)} DTs at once", unit="step",
               disable=not progress)
    t_last, step_last = time.perf_counter(), step
    finite = FiniteWatch(device, run_dirs)
    with ExitStack() as stack:
        logs = [stack.enter_context(open(d / "metrics.jsonl", "a")) for d in run_dirs]
        while step < cfg.steps:
            batches = [s.sample(cfg.batch_size, device) for s in samplers]
            batch = {k: torch.stack([b[k] for b in batches]) for k in batches[0]}
            keep = [torch.stack([_keep_mask(g, shape, p, device) for g in generators]) for shape, p in calls]
            lr = cfg.lr * min((step + 1) / cfg.warmup_steps, 1.0)
            for group in optim.param_groups:
                group["lr"] = lr
            with autocast(device, precision):
                pred = stacked(params, buffers, batch["states"], batch["actions"], batch["returns_to_go"],
                               batch["timesteps"], batch["mask"], keep)
            mses = [action_mse(pred[i], b) for i, b in enumerate(batches)]
            optim.zero_grad(set_to_none=True)
            torch.stack(mses).sum().backward()  # each model's parameters get its own loss's gradient
            norms = _clip_per_model([params[n].grad for n in names], cfg.grad_clip)
            finite.watch(norms, step + 1)
            optim.step()
            step += 1
            bar.update()
            logging = step % cfg.log_every == 0 or step == cfg.steps
            saving = step % cfg.save_every == 0 or step == cfg.steps
            kept = [i for i, c in enumerate(cfgs) if step in c.keep_steps]
            if logging or saving or kept:
                finite.check()  # before anything is logged or saved
            if logging:
                now = time.perf_counter()
                for i, log in enumerate(logs):
                    rec = {"step": step, "loss": mses[i].item(), "mse": mses[i].item(), "lr": lr,
                           "grad_norm": norms[i].item(), "steps_per_s": (step - step_last) / (now - t_last)}
                    log.write(json.dumps(rec) + "\n")
                    log.flush()
                t_last, step_last = now, step
            if saving or kept:
                _unstack(models, params, buffers)
            for i in kept:  # before the checkpoint: a stop between the two repeats this step
                _save(run_dirs[i] / "snapshots" / f"step-{step}", [models[i]], [metas[i]], None, step)
            if saving:  # every model's checkpoint written beside it first, then all swapped in
                moments = optim.state_dict()
                for i in range(len(runs)):
                    _save(run_dirs[i] / PENDING, [models[i]], [metas[i]],
                          _model_train_state(step, moments, i, samplers[i], extras[i], generators[i], device,
                                             precision), step)
                _swap_in_pending(run_dirs, step)
    bar.close()
    return [d / "checkpoint" for d in run_dirs]


PENDING = "checkpoint.pending"  # a model's next checkpoint, until every model of the batch has one


def _swap_in_pending(run_dirs: list[Path], step: int) -> None:
    """Make every model's pending checkpoint of `step` its checkpoint (each swap atomic; a stop
    between two is finished by `_finish_or_drop_pending`). A pending one of another step is the old
    checkpoint a stop left there after its swap: it goes."""
    for d in run_dirs:
        pending, ckpt = d / PENDING, d / "checkpoint"
        if not pending.exists():
            continue
        if read_meta(pending)["step"] != step:
            shutil.rmtree(pending)
        elif ckpt.exists():
            swap(pending, ckpt)  # pending now holds the old checkpoint
            shutil.rmtree(pending)
        else:
            os.replace(pending, ckpt)


def _finish_or_drop_pending(run_dirs: list[Path]) -> None:
    """After a stop while saving: if every model has its checkpoint of the newest step, pending or
    swapped in, finish the swaps; otherwise drop the pending ones, so that every model resumes from
    the step they all hold."""
    pending = {d: read_meta(d / PENDING)["step"] for d in run_dirs if (d / PENDING).exists()}
    if not pending:
        return
    newest = max(pending.values())
    saved = {d: read_meta(d / "checkpoint")["step"] if (d / "checkpoint").exists() else 0 for d in run_dirs}
    if all(pending.get(d) == newest or saved[d] == newest for d in run_dirs):
        _swap_in_pending(run_dirs, newest)
    else:
        for d in pending:
            shutil.rmtree(d / PENDING)


def _dropout_calls(model, K: int, batch_size: int, device) -> list[tuple[tuple, float]]:
    """The (shape, p) of every dropout in one training forward, in call order (from a dry forward on
    zeros of the batch's shape: no generator is drawn from)."""
    calls = []

    def record(shape, p):
        calls.append((tuple(shape), p))
        return torch.ones(shape, dtype=torch.bool, device=device)
    cfg = model.config
    zeros = (torch.zeros(batch_size, K, cfg.state_dim, device=device), torch.zeros(batch_size, K, cfg.act_dim,
                                                                                   device=device),
             torch.zeros(batch_size, K, 1, device=device), torch.zeros(batch_size, K, dtype=torch.long, device=device),
             torch.ones(batch_size, K, dtype=torch.bool, device=device))
    probe = copy.deepcopy(model).train()
    with torch.no_grad(), supplied_masks(record):
        probe(*zeros)
    return calls


def _keep_mask(generator: np.random.Generator, shape, p: float, device) -> torch.Tensor:
    """A model's next keep-mask from its dropout stream: on a CPU the one its own run would draw; on
    CUDA from a torch generator seeded from that stream (the device's own cannot be split per model)."""
    if device.type != "cuda":
        return cpu_keep_mask(generator, shape, p)
    g = torch.Generator(device).manual_seed(int(generator.integers(0, 2**63)))
    return torch.rand(shape, generator=g, device=device) >= p


def _clip_per_model(grads: list[torch.Tensor], max_norm: float) -> torch.Tensor:
    """`clip_grad_norm_` for each model's slice of the stacked gradients; returns their norms."""
    norms = torch.stack([torch.linalg.vector_norm(g.reshape(g.shape[0], -1), dim=1) for g in grads])
    total = torch.linalg.vector_norm(norms, dim=0)
    coef = (max_norm / (total + 1e-6)).clamp(max=1.0)
    for g in grads:
        g.mul_(coef.view(-1, *[1] * (g.dim() - 1)).to(g.dtype))
    return total


def _unstack(models, params: dict, buffers: dict) -> None:
    """Copy each model's slice of the stacked weights back into its module (to save it)."""
    with torch.no_grad():
        for i, m in enumerate(models):
            m.load_state_dict({**{n: p[i] for n, p in params.items()}, **{n: b[i] for n, b in buffers.items()}})


def _model_train_state(step, full: dict, index, sampler, extra, generator, device, precision) -> dict:
    """Model `index`'s train state exactly as a single run saves it: its slice of the stacked AdamW
    state `full` under a single model's parameter numbering, its sampler and dropout streams."""
    solo = torch.optim.AdamW([torch.empty(0)])
    state = _train_state(step, solo, [sampler], extra, device, precision)
    state["optimizer"] = {"param_groups": full["param_groups"],
                          "state": {j: {k: (v[index].clone() if torch.is_tensor(v) and v.dim() else v)
                                        for k, v in s.items()} for j, s in full["state"].items()}}
    state["dropout_rng"] = generator.bit_generator.state
    return state


def _restore_all(cfgs, runs, run_dirs, samplers, extras, generators, device, precision) -> tuple[int, list | None]:
    """Each model's weights and streams from its own checkpoint, as a single run resumes (every
    model must have stopped at the same step); returns the step and each model's AdamW state."""
    steps, moments = set(), []
    for i, (c, r, d) in enumerate(zip(cfgs, runs, run_dirs)):
        ckpt = d / "checkpoint"
        if not ckpt.exists():
            steps.add(0)
            continue
        solo = torch.optim.AdamW(list(r.model.parameters()), lr=c.lr, weight_decay=c.weight_decay)
        steps.add(_restore(ckpt, c, [r], solo, [samplers[i]], extras[i], device, precision))
        generators[i].bit_generator.state = dropout_rng().bit_generator.state
        moments.append(solo.state_dict())
    if len(steps) != 1:
        raise DtmergeError(f"{run_dirs[0]}: runs trained together stopped at different steps {sorted(steps)}; resume "
                           "them one by one (dtmerge train --resume)")
    return steps.pop(), moments or None


def _stack_moments(optim, moments: list[dict]) -> None:
    """Every model's AdamW moments, stacked into the stacked optimizer."""
    merged = {"param_groups": optim.state_dict()["param_groups"], "state": {}}
    for j, first in moments[0]["state"].items():
        merged["state"][j] = {k: torch.stack([m["state"][j][k] for m in moments]) if torch.is_tensor(v) and v.dim()
                              else v for k, v in first.items()}
    optim.load_state_dict(merged)
