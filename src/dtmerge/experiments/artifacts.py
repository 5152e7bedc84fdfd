"""How each kind of artifact is made: one small function per kind, writing only inside its own
store directory and returning a JSON-able record whose `output` names what it made.

A Fisher is computed on a copy of the checkpoint (the Fisher file lives beside the weights it
belongs to, and a node never writes into another node's directory).
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Callable

from dtmerge.atomic import read_json
from dtmerge.data.d4rl import write_d4rl
from dtmerge.data.make import make_trajectories
from dtmerge.envs import get_task
from dtmerge.evaluate import evaluate_checkpoint
from dtmerge.experiments.store import Node, Store
from dtmerge.lm.pretrain import PretrainConfig, pretrain, stdlib_corpus
from dtmerge.merge.engine import MergeConfig, merge
from dtmerge.merge.fisher import compute_fisher
from dtmerge.merge.mff import MFFConfig, merge_freeze_finetune
from dtmerge.merge.perturb import perturb_checkpoint
from dtmerge.merge.regmean import compute_grams
from dtmerge.merge.search import SearchConfig, run_search
from dtmerge.store.bundle import trunk_accounting
from dtmerge.train import TrainConfig, train
from dtmerge.train.many import train_many
from dtmerge.train.recipe import save_start

MAKERS: dict[str, Callable] = {}
GPU_KINDS = {"dt", "dt-batch", "lm", "mff", "eval", "search"}  # makers that train or roll out: on a GPU if any


def maker(kind: str):
    def deco(fn):
        MAKERS[kind] = fn
        return fn
    return deco


def output(store: Store, node: Node) -> Path:
    """The file or directory a finished node made."""
    return store.path(node) / store.result(node)["output"]


def make(store: Store, node: Node, progress: bool = False) -> dict:
    """Make `node` (its inputs must be done) and record it, under its lock; returns its record."""
    out = store.path(node)
    out.mkdir(parents=True, exist_ok=True)
    with store.lock(node):
        if store.done(node):  # made by another run while this one waited
            return store.result(node)
        inputs = {name: output(store, dep) for name, dep in node.deps.items()}
        start = time.perf_counter()
        result = MAKERS[node.kind](node.spec, inputs, out, progress)
        store.finish(node, result, time.perf_counter() - start)
    return result


@maker("dataset")
def _dataset(spec: dict, inputs: dict, out: Path, progress: bool) -> dict:
    traj = make_trajectories(get_task(spec["task"]), spec["level"], spec["transitions"], spec["seed"], progress)
    write_d4rl(traj, out / "data.hdf5")
    return {"output": "data.hdf5", **{k: traj.attrs[k] for k in ("transitions", "trajectories", "return_mean",
                                                                  "score_mean")}}


@maker("corpus")
def _corpus(spec: dict, inputs: dict, out: Path, progress: bool) -> dict:
    if spec["source"] != "python-stdlib-docstrings":
        raise ValueError(f"unknown corpus source {spec['source']!r}")
    stdlib_corpus(out / "corpus.txt")
    return {"output": "corpus.txt"}


@maker("lm")
def _lm(spec: dict, inputs: dict, out: Path, progress: bool) -> dict:
    """A ChibiT-shaped language model pre-trained on the corpus; resumes when made again."""
    pretrain(PretrainConfig(**spec, corpus=[str(inputs["corpus"])], out=str(out / "run")), resume=True,
             progress=progress)
    return {"output": "run/model"}


@maker("dt")
def _dt(spec: dict, inputs: dict, out: Path, progress: bool) -> dict:
    """A training run; resumes from its own checkpoints when a stopped run is made again."""
    train(_train_config(spec, inputs, out / "run"), resume=True, progress=progress)
    return {"output": "run/checkpoint", "mse": logged_mse(out / "run" / "metrics.jsonl")}


@maker("dt-batch")
def _dt_batch(spec: dict, inputs: dict, out: Path, progress: bool) -> dict:
    """DTs trained at once (dtmerge.train.many), run i in run<i>/; a stopped batch continues."""
    cfgs = [_train_config(run, {"data": inputs[f"data{i}"]}, out / f"run{i}") for i, run in enumerate(spec["runs"])]
    train_many(cfgs, resume=True, progress=progress)
    return {"output": "."}


@maker("batched-dt")
def _batched_dt(spec: dict, inputs: dict, out: Path, progress: bool) -> dict:
    """One model of a batch, laid out as a `dt` artifact (its files hard-linked, not copied)."""
    run = out / "run"
    if run.exists():  # left by a stopped run: link it again
        shutil.rmtree(run)
    shutil.copytree(Path(inputs["batch"]) / f"run{spec['index']}", run, copy_function=os.link)
    return {"output": "run/checkpoint", "mse": logged_mse(run / "metrics.jsonl")}


def _train_config(spec: dict, inputs: dict, run: Path) -> TrainConfig:
    """A DT node's training config: its data inputs in the order given, its init and corpus."""
    datasets = [str(inputs[name]) for name in inputs if name.startswith("data")]
    init = {"init": str(inputs["init"])} if "init" in inputs else {}
    corpus = {"lm_corpus": [str(inputs["corpus"])]} if "corpus" in inputs else {}
    return TrainConfig(**spec, **init, **corpus, dataset=datasets, out=str(run))


def logged_mse(metrics: Path) -> list[list[float]]:
    """[step, action MSE] of every metrics line: the training loss curve a report draws."""
    return [[rec["step"], rec["mse"]] for rec in map(json.loads, metrics.read_text().splitlines())]


@maker("snapshot")
def _snapshot(spec: dict, inputs: dict, out: Path, progress: bool) -> dict:
    """A copy of the weights a DT run kept at `spec["step"]` (its `keep_steps`)."""
    kept = Path(inputs["model"]).parent / "snapshots" / f"step-{spec['step']}"
    if not kept.is_dir():
        raise FileNotFoundError(f"{kept}: the run kept no weights at step {spec['step']} (keep_steps)")
    if (out / "checkpoint").exists():
        shutil.rmtree(out / "checkpoint")
    shutil.copytree(kept, out / "checkpoint")
    return {"output": "checkpoint"}


def _model_copy(inputs: dict, out: Path) -> Path:
    """A fresh copy of the input model (weights and metadata) to store statistics beside."""
    ckpt = out / "checkpoint"
    if ckpt.exists():  # a copy left by a stopped run: start it again
        shutil.rmtree(ckpt)
    shutil.copytree(inputs["model"], ckpt, ignore=shutil.ignore_patterns("train_state.*", "fisher.*", "regmean.*"))
    return ckpt


@maker("fisher")
def _fisher(spec: dict, inputs: dict, out: Path, progress: bool) -> dict:
    compute_fisher(_model_copy(inputs, out), progress=progress, **spec)
    return {"output": "checkpoint"}


@maker("start")
def _start_weights(spec: dict, inputs: dict, out: Path, progress: bool) -> dict:
    """The weights a DT of this spec and these inputs starts from: the base of its task vector."""
    save_start(_train_config(spec, inputs, out / "unused"), out / "checkpoint")
    return {"output": "checkpoint"}


@maker("grams")
def _grams(spec: dict, inputs: dict, out: Path, progress: bool) -> dict:
    """A copy of a DT with its RegMean input Grams beside it."""
    compute_grams(_model_copy(inputs, out), progress=progress, **spec)
    return {"output": "checkpoint"}


@maker("merge")
def _merge(spec: dict, inputs: dict, out: Path, progress: bool) -> dict:
    models = [str(inputs[f"model{i}"]) for i in range(sum(n.startswith("model") for n in inputs))]
    base = {"base": str(inputs["base"])} if "base" in inputs else {}
    merged = merge(MergeConfig(**spec, **base, models=models, output=str(out / "merged")), overwrite=True)
    return {"output": "merged", **({"accounting": trunk_accounting(merged)} if spec.get("format") == "bundle" else {})}


@maker("mff")
def _mff(spec: dict, inputs: dict, out: Path, progress: bool) -> dict:
    """Merge-Freeze-Finetune into a bundle; a stopped run continues its finetuning. The merge measures
    task vectors from a `base` input, and takes the parameters a `search` input chose."""
    models = [str(inputs[f"model{i}"]) for i in range(sum(n.startswith("model") for n in inputs))]
    merge_spec = {**spec["merge"], **({"base": str(inputs["base"])} if "base" in inputs else {})}
    if "search" in inputs:
        chosen = read_json(Path(inputs["search"]) / "results.json")["best"]["params"]
        merge_spec["params"] = {**merge_spec.get("params", {}), **chosen}
    cfg = MFFConfig(merge=MergeConfig(**merge_spec, models=models, output=str(out / "merged")),
                    output=str(out / "bundle"), finetune=spec["finetune"])
    bundle = merge_freeze_finetune(cfg, resume=(out / "bundle.runs").exists(), progress=progress)
    return {"output": "bundle", "accounting": trunk_accounting(bundle)}


@maker("search")
def _search(spec: dict, inputs: dict, out: Path, progress: bool) -> dict:
    """Merge weights (or a method's parameters) searched by rollouts; a stopped study continues."""
    models = [str(inputs[f"model{i}"]) for i in range(sum(n.startswith("model") for n in inputs))]
    base = {"base": str(inputs["base"])} if "base" in inputs else {}
    summary = run_search(SearchConfig(**spec, **base, models=models, output=str(out / "search")),
                         resume=(out / "search").exists(), progress=progress)
    reference = summary["reference"]
    return {"output": "search", "best": summary["best"], reference: summary[reference],
            "accounting": trunk_accounting(out / "search" / "best")}


@maker("perturb")
def _perturb(spec: dict, inputs: dict, out: Path, progress: bool) -> dict:
    perturb_checkpoint(inputs["model"], out / "perturbed", overwrite=True, **spec)
    return {"output": "perturbed"}


@maker("eval")
def _eval(spec: dict, inputs: dict, out: Path, progress: bool) -> dict:
    result = evaluate_checkpoint(inputs["model"], progress=progress, **spec)
    result.pop("checkpoint", None)  # a path inside the store, not part of the result
    return {"output": ".", **result}


# Seconds each kind takes, for the plan's estimate; `dt` uses the measured rate of finished runs.
def estimate(node: Node, seconds_per_step: float) -> float:
    spec = node.spec
    if node.kind == "dt":
        model = spec.get("model", {})
        width = (model.get("n_embd", 128) / 128) ** 2 * model.get("n_layer", 3) / 3
        tasks = sum(name.startswith("data") for name in node.deps)  # a multi-task DT takes a batch per task
        return spec["steps"] * seconds_per_step * width * spec.get("batch_size", 64) / 64 * max(tasks, 1)
    if node.kind == "dt-batch":  # as long as its models one after another (a GPU may do better)
        return sum(estimate(Node("dt", run, {"data": node.deps[f"data{i}"]}), seconds_per_step)
                   for i, run in enumerate(spec["runs"]))
    if node.kind == "dataset":
        return spec["transitions"] / 8000 + 2
    if node.kind == "eval":
        steps = spec.get("max_steps") or 1000
        return 2 + spec.get("episodes", 10) * len(spec.get("targets") or [0]) * steps * 4e-4
    if node.kind == "lm":
        return spec["steps"] * 6 * seconds_per_step  # a ChibiT step (16 x 256 tokens) costs ~6 DT steps (measured)
    if node.kind == "mff":
        return sum(n.startswith("model") for n in node.deps) * spec["finetune"]["steps"] * seconds_per_step
    if node.kind == "search":  # every trial rolls out every task; then the held-out report of two merges
        steps = spec.get("max_steps") or 1000
        per_episode = sum(n.startswith("model") for n in node.deps) * steps * 4e-4
        return spec["trials"] * (2 + spec["episodes"] * per_episode) + 2 * spec["report_episodes"] * per_episode
    if node.kind == "fisher":
        return 2 + spec.get("batches", 4) * spec.get("batch_size", 64) * 0.08
    if node.kind == "grams":
        return 2 + spec.get("batches", 4) * spec.get("batch_size", 64) * 0.002
    return 1.0
