"""`train(cfg)`: everything a run needs before the loop starts, then `fit`.

Loads the datasets, builds each task's starting model — random, a DT checkpoint, one task of a
bundle, or a GPT-2-shaped language model — and the Eq. 5 terms, applies the output policy (an
existing run is continued only with `resume`, replaced only with `overwrite` and then only once
the new run is complete), and hands it all to the loop.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from dtmerge.data import dataset_files, load_dataset
from dtmerge.errors import DtmergeError
from dtmerge.lm.gpt2 import dt_from_gpt2, resolve_lm_dir
from dtmerge.lm.objectives import ExtraTerms, LMCoTraining, token_centres
from dtmerge.model import DecisionTransformer, DTConfig
from dtmerge.model.selectors import resolve
from dtmerge.outputs import claim_outputs, run_directory
from dtmerge.runtime import derive_seed, pick_device, seed_everything
from dtmerge.store.bundle import is_bundle, load_bundle_task
from dtmerge.store.checkpoint import CheckpointError, load_checkpoint, save_checkpoint, trunk_sha256
from dtmerge.train.config import TrainConfig
from dtmerge.train.loop import TaskRun, fit


def train(cfg: TrainConfig, resume: bool = False, overwrite: bool = False, progress: bool = True) -> Path:
    """Train and checkpoint to `<out>/checkpoint` (a bundle when several datasets are given)."""
    out = Path(cfg.out)
    multi = len(cfg.dataset) > 1
    if multi and (cfg.task or cfg.cos_weight or (cfg.init and not is_language_model(cfg.init))):
        raise DtmergeError("a multi-task run takes no --task, no --cos-weight, and only a language model as --init")
    inputs = [f for d in cfg.dataset for f in dataset_files(d)] + ([cfg.init] if cfg.init else [])
    claim_outputs([out], inputs, overwrite, resume)
    data = [load_dataset(d, cfg.task) for d in cfg.dataset]
    names = [task.name for _, task in data]
    if len(set(names)) != len(names):
        raise DtmergeError(f"a multi-task run needs one dataset per task, got tasks {names}")
    seed_everything(cfg.seed)
    init_seed = start_seed(cfg, names)
    runs = [_start(cfg, spec, traj, task, init_seed) for spec, (traj, task) in zip(cfg.dataset, data)]
    for r in runs[1:]:  # one trunk and timestep embedding for every task
        r.model.transformer, r.model.embed_timestep = runs[0].model.transformer, runs[0].model.embed_timestep
    frozen = set(resolve(cfg.freeze, runs[0].model.parameter_groups(),
                         [n for n, _ in runs[0].model.named_parameters()])) if cfg.freeze else set()
    init_hash = trunk_sha256(runs[0].model.state_dict())  # the shared trunk a resumed run must start from
    for r in runs:
        for name, p in r.model.named_parameters():
            p.requires_grad_(name not in frozen)
        r.meta.update(frozen=sorted(frozen), init_trunk_sha256=init_hash)
    extra = extra_terms(cfg, runs[0].model, pick_device(cfg.device))
    with run_directory(out, overwrite, resume, resumable_from="checkpoint") as run_dir:
        fit(cfg, runs, run_dir, extra, resume=resume, progress=progress)
    return out / "checkpoint"


def save_start(cfg: TrainConfig, path) -> Path:
    """The checkpoint a single-task run of `cfg` starts from (its step 0): the base its trained
    model's task vector is measured from. Its trunk hash is the run's `init_trunk_sha256`."""
    if len(cfg.dataset) != 1:
        raise DtmergeError("a start checkpoint is of a single-task run: give one dataset")
    run = single_task_start(cfg)
    meta = {**run.meta, "state_mean": np.asarray(run.state_mean).tolist(),
            "state_std": np.asarray(run.state_std).tolist(), "rtg_scale": cfg.rtg_scale, "seed": cfg.seed,
            "train_config": cfg.model_dump(), "frozen": [], "step": 0,
            "init_trunk_sha256": trunk_sha256(run.model.state_dict())}
    return save_checkpoint(path, run.model, meta)


def single_task_start(cfg: TrainConfig) -> TaskRun:
    """A single-task run of `cfg` at step 0, as `train` starts it: the global seed set from the
    run seed (its dropout stream starts there), the weights from `start_seed`."""
    traj, task = load_dataset(cfg.dataset[0], cfg.task)
    seed_everything(cfg.seed)
    return _start(cfg, cfg.dataset[0], traj, task, start_seed(cfg, [task.name]))


def start_seed(cfg: TrainConfig, tasks: list[str]) -> int:
    """The seed of a run's starting weights: `init_seed`, or one derived from the run seed, its
    tasks and its role (a single-task or a multi-task DT), so that no two runs share a start unless asked."""
    if cfg.init_seed is not None:
        return cfg.init_seed
    return derive_seed("init", cfg.seed, "multitask-dt" if len(tasks) > 1 else "dt", *tasks)


def _start(cfg: TrainConfig, spec: str, traj, task, init_seed: int) -> TaskRun:
    """A task's starting model and state statistics (an initialised DT keeps the ones it was
    trained with), with what its checkpoint will record about its origin. A random trunk comes
    from `init_seed`, the task's embeddings and head from a seed derived from it and the task."""
    meta = {"task": task.name, "env_id": task.env_id, "dataset": spec, "dataset_attrs": traj.attrs,
            "dataset_sha256": traj.fingerprint(), "rtg_targets": list(task.rtg_targets)}
    task_seed = derive_seed(init_seed, task.name)
    if cfg.init is None:
        model = DecisionTransformer(DTConfig(state_dim=task.obs_dim, act_dim=task.act_dim, **cfg.model.model_dump()))
        model.init_weights(init_seed, task_seed, cfg.embed_init)
        return TaskRun(model, traj, *traj.state_stats(), {**meta, "init": "random", "init_seed": init_seed})
    if is_bundle(cfg.init):  # one task of a multi-task bundle, e.g. to finetune a copy per task
        model, source = load_bundle_task(cfg.init, task.name)
        kind = {"init_kind": "bundle"}
    elif is_language_model(cfg.init):
        model = dt_from_gpt2(cfg.init, task.obs_dim, task.act_dim, cfg.model.context_len,
                             dropout=cfg.model.dropout, share_position_embedding=cfg.share_lm_positions,
                             task_seed=task_seed, embed_init=cfg.embed_init)
        return TaskRun(model, traj, *traj.state_stats(), {**meta, "init": str(cfg.init), "init_kind": "gpt2",
                                                              "init_seed": init_seed})
    else:
        model, source = load_checkpoint(cfg.init)
        kind = {}
        if source["task"] != task.name:
            raise CheckpointError(f"{cfg.init}: init checkpoint is for {source['task']}, the dataset for {task.name}")
    mean, std = (np.asarray(source[k], np.float32) for k in ("state_mean", "state_std"))
    return TaskRun(model, traj, mean, std, {**meta, "init": str(cfg.init), **kind})


def is_language_model(path) -> bool:
    """Neither a DT checkpoint nor a bundle: a Hugging Face GPT-2 directory or hub id."""
    return not (Path(path) / "meta.json").is_file() and not is_bundle(path)


def extra_terms(cfg: TrainConfig, model, device) -> ExtraTerms:
    """The Eq. 5 terms the config asks for (L_cos and L_LM need a language-model init)."""
    lm_init = cfg.init is not None and is_language_model(cfg.init)
    if (cfg.cos_weight or cfg.lm_weight) and not lm_init:
        raise DtmergeError("cos_weight (L_cos) and lm_weight (L_LM) need a language-model init: pass --init "
                           "with a GPT-2 or ChibiT model")
    centres = lm = None
    if cfg.cos_weight or cfg.lm_weight:
        lm_dir = resolve_lm_dir(cfg.init)
        if cfg.cos_weight:
            centres = token_centres(lm_dir, cfg.cos_clusters, cfg.seed)
        if cfg.lm_weight:
            if not cfg.lm_corpus or not cfg.share_lm_positions:
                raise DtmergeError("lm_weight (L_LM) needs --lm-corpus and the LM's positions as timestep embedding")
            rows = model.config.max_ep_len
            if cfg.lm_seq_len > rows:  # an L_LM block's positions index the timestep embedding
                raise DtmergeError(f"lm_seq_len {cfg.lm_seq_len} exceeds the {rows} rows of the timestep embedding "
                                   f"that positions its tokens; use --lm-seq-len {rows} or less")
            lm = LMCoTraining(lm_dir, cfg.lm_corpus, cfg.lm_seq_len, cfg.lm_batch_size, cfg.seed, device)
    return ExtraTerms(model, cfg.cos_weight, cfg.cos_until, centres, cfg.l2_weight, cfg.l2_norm, cfg.lm_weight, lm,
                      device)
