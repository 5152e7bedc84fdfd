"""The `dtmerge` command: a thin layer over the Python API.

Every failure a user can cause prints one line on stderr (`Error: <file or option>: <problem>`)
and exits non-zero (2 for usage, 1 otherwise); SIGTERM is handled like Ctrl-C, so a stopped
command removes its temporary files and leaves only complete outputs.
"""

from __future__ import annotations

import json
import signal
import sys
from pathlib import Path

import click
import torch
from pydantic import Field, ValidationError

from dtmerge import __version__
from dtmerge.config import build_config, pydantic_options
from dtmerge.errors import DtmergeError
from dtmerge.lm.pretrain import PretrainConfig
from dtmerge.loggers import LOGGERS
from dtmerge.merge.perturb import KINDS as PERTURBATIONS
from dtmerge.runtime import MAX_BATCH, MAX_SEED, PRECISIONS
from dtmerge.train import TrainConfig
from dtmerge.validate import one_line
from dtmerge.zoo.collect import CollectConfig

overwrite_option = click.option("--overwrite", is_flag=True,
                                help="replace existing outputs (only once the new ones are complete)")
resume_option = click.option("--resume", is_flag=True, help="continue the stopped run in the output")
log_option = click.option("--log", "log", multiple=True, type=click.Choice(LOGGERS),
                          help="also log to tensorboard or wandb (offline); metrics.jsonl is always written")
SEED = click.IntRange(0, MAX_SEED)  # every --seed: numpy's global seed takes no larger one
COUNT = click.IntRange(min=1)


class _Group(click.Group):
    """Known user errors print one clear line instead of a traceback."""

    def main(self, args=None, prog_name=None, **extra):
        extra.pop("standalone_mode", None)
        signal.signal(signal.SIGTERM, signal.default_int_handler)  # kill = Ctrl-C: cleanup runs
        try:
            code = super().main(args, prog_name, standalone_mode=False, **extra)
        except click.ClickException as e:
            click.echo(f"Error: {' '.join(e.format_message().split())}", err=True)
            sys.exit(e.exit_code)
        except click.Abort:
            click.echo("Aborted: stopped before completion; outputs are as they were, or complete.", err=True)
            sys.exit(130)
        sys.exit(code if isinstance(code, int) else 0)

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except ValidationError as e:
            raise click.UsageError(one_line(e)) from None
        except (DtmergeError, FileExistsError, FileNotFoundError, ImportError) as e:
            raise click.ClickException(str(e)) from None
        except (MemoryError, torch.OutOfMemoryError):
            raise click.ClickException("out of memory: lower --batch-size or the model size") from None


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.version_option(__version__, prog_name="dtmerge")
def main():
    """Train, merge and evaluate Decision Transformers on offline MuJoCo locomotion data."""


class TrainCommand(TrainConfig):
    """`dtmerge train`: a training run, then an evaluation of its checkpoint."""

    eval_episodes: int = Field(10, ge=0, description="episodes per RTG target after training (0: skip)")
    eval_targets: list[float] | None = Field(None, description="RTG targets (default: the task's two)")


@main.command("train")
@click.option("--config", "config_file", type=click.Path(exists=True, dir_okay=False),
              help="YAML file with any of the options below; flags override it")
@resume_option
@overwrite_option
@click.option("--quiet", is_flag=True, help="no progress bar")
@pydantic_options(TrainCommand, nested=("model",))
def train_cmd(config_file, resume, overwrite, quiet, **flags):
    """Train a Decision Transformer on a dataset and evaluate it; several --dataset (one per task)
    train one multi-task DT, saved as a bundle."""
    from dtmerge.atomic import write_json
    from dtmerge.evaluate import evaluate_checkpoint
    from dtmerge.train import train

    cmd = build_config(TrainCommand, config_file, flags, nested=("model",))
    cfg = TrainConfig(**cmd.model_dump(exclude={"eval_episodes", "eval_targets"}))
    ckpt = train(cfg, resume=resume, overwrite=overwrite, progress=not quiet)
    click.echo(f"checkpoint: {ckpt}")
    if cmd.eval_episodes:
        from dtmerge.store.bundle import is_bundle, read_bundle_meta

        tasks = list(read_bundle_meta(ckpt)["tasks"]) if is_bundle(ckpt) else [None]
        results = [evaluate_checkpoint(ckpt, cmd.eval_episodes, cmd.eval_targets, seed=cfg.seed, device=cfg.device,
                                       precision=cfg.precision, progress=not quiet, task=t) for t in tasks]
        write_json(ckpt.parent / "eval.json", results[0] if len(results) == 1 else {"results": results})
        _card_with_scores(ckpt, results)
        if cfg.log:
            from dtmerge.loggers import Loggers

            with Loggers(cfg.log, ckpt.parent, ckpt.parent.name) as loggers:
                loggers.log_scores(results, cfg.steps)
        _print_results(results)


def _card_with_scores(ckpt: Path, results: list[dict]) -> None:
    """The model card of a checkpoint or bundle this command made, now with its scores."""
    from dtmerge.store.bundle import is_bundle, read_bundle_meta
    from dtmerge.store.card import bundle_provenance, checkpoint_provenance, write_card
    from dtmerge.store.checkpoint import read_meta

    if is_bundle(ckpt):
        meta = read_bundle_meta(ckpt)
        write_card(ckpt, meta["tasks"], bundle_provenance(meta), results)
    else:
        meta = read_meta(ckpt)
        write_card(ckpt, {meta["task"]: meta}, checkpoint_provenance(meta), results)


@main.command("eval")
@click.argument("checkpoint", type=click.Path(exists=True, file_okay=False))
@click.option("--episodes", default=10, type=COUNT, help="episodes per RTG target")
@click.option("--target", "targets", type=float, multiple=True, help="RTG target (repeatable; default: the task's)")
@click.option("--seed", default=0, type=SEED, help="episode i starts from reset seed SEED + i")
@click.option("--device", default="auto", help="auto, cpu, cuda, ...")
@click.option("--precision", default="auto", type=click.Choice(PRECISIONS), help="auto: bf16 where native")
@click.option("--task", help="which task of a multi-task bundle")
@click.option("--out", type=click.Path(dir_okay=False), help="write the results as JSON here")
@overwrite_option
@click.option("--quiet", is_flag=True, help="no progress bar")
def eval_cmd(checkpoint, episodes, targets, seed, device, precision, task, out, overwrite, quiet):
    """Evaluate a checkpoint (or one task of a bundle) in MuJoCo: all episodes batched,
    D4RL-normalised (-v5) scores."""
    from dtmerge.evaluate import evaluate_checkpoint

    result = evaluate_checkpoint(checkpoint, episodes, list(targets) or None, seed, device, precision, out,
                                 progress=not quiet, task=task, overwrite=overwrite)
    _print_results([result])


@main.command("demo")
@click.option("--out", default="demo-out", help="output directory (runs, results.json, results.md)")
@click.option("--steps", default=600, type=COUNT, help="DT training steps per task")
@click.option("--finetune-steps", default=1200, type=COUNT,
              help="MFF finetuning steps per task (`experiment run mff-steps --scale demo`: what fewer give)")
@click.option("--transitions", default=50_000, type=COUNT, help="size of each task's medium dataset")
@click.option("--episodes", default=10, type=COUNT, help="evaluation episodes per task and model")
@click.option("--seed", default=0, type=SEED, help="seed for data, training and evaluation")
@resume_option
@overwrite_option
@click.option("--quiet", is_flag=True, help="no progress bars")
def demo_cmd(out, steps, finetune_steps, transitions, episodes, seed, resume, overwrite, quiet):
    """The main job on made-on-the-spot data: zoo datasets, one DT per task, an attention swap,
    a Fisher Merge-Freeze-Finetune bundle, MuJoCo scores."""
    from dtmerge.demo import run_demo

    click.echo(run_demo(out, steps, finetune_steps, transitions, episodes, seed, resume, overwrite,
                        progress=not quiet)["table"])


@main.command("merge")
@click.argument("config_file", required=False, type=click.Path(exists=True, dir_okay=False))
@click.option("--model", "models", multiple=True, help="checkpoint to merge (repeatable; overrides the YAML)")
@click.option("--target", help="model giving unselected tensors / interpolated from [default: the first]")
@click.option("--select", multiple=True, help="group, glob or name; '!item' excludes (repeatable) [default: attn]")
@click.option("--method", help="interpolate, average, task_arithmetic, fisher, ties, dare [default: average]")
@click.option("--param", "params", multiple=True, help="method parameter KEY=VALUE, e.g. alpha=1 (repeatable)")
@click.option("--base", help="shared starting checkpoint (task_arithmetic, ties, dare)")
@click.option("--format", "fmt", type=click.Choice(["bundle", "checkpoint"]), help="[default: bundle]")
@click.option("--output", help="where the merged bundle or checkpoint goes")
@click.option("--force", is_flag=True, default=None, help="merge against a base the models did not start from")
@click.option("--align", type=click.Choice(["weights", "activations"]),
              help="permute every model into the target's basis first (see `dtmerge align`)")
@click.option("--dry-run", is_flag=True, help="print which tensors are merged and where every other comes from")
@overwrite_option
def merge_cmd(config_file, models, target, select, method, params, base, fmt, output, force, align, dry_run,
              overwrite):
    """Merge task models in weight space, described by a YAML CONFIG_FILE and/or flags."""
    from dtmerge.merge.engine import MergeConfig, load_merge_config, merge, plan

    overrides = {"models": list(models) or None, "target": target, "select": list(select) or None,
                 "method": method, "params": _parse_params(params) or None, "base": base, "format": fmt,
                 "output": output, "force": force, "align": align}
    if config_file:
        cfg = load_merge_config(config_file, overrides)
    else:
        cfg = MergeConfig(**{k: v for k, v in overrides.items() if v is not None})
    if dry_run:
        click.echo(plan(cfg))
        return
    click.echo(merge(cfg, overwrite=overwrite))


@main.command("align")
@click.argument("target", type=click.Path(exists=True, file_okay=False))
@click.argument("source", type=click.Path(exists=True, file_okay=False))
@click.argument("out", type=click.Path())
@click.option("--method", type=click.Choice(["weights", "activations"]), default="weights", show_default=True,
              help="weights: weight matching; activations: correlations of hidden units on each model's own data")
@click.option("--windows", default=2048, type=click.IntRange(min=2), show_default=True,
              help="windows of each model's data (activations)")
@click.option("--seed", default=0, type=SEED, show_default=True,
              help="order of the weight-matching passes; the window sampler")
@overwrite_option
@click.option("--quiet", is_flag=True, help="no progress bar")
def align_cmd(target, source, out, method, windows, seed, overwrite, quiet):
    """Write SOURCE with its hidden units permuted into TARGET's order (re-basin) as a checkpoint at
    OUT: it acts exactly as SOURCE does, but merges unit by unit with TARGET."""
    from dtmerge.merge.align import align_checkpoint

    click.echo(align_checkpoint(target, source, out, method, windows, seed, overwrite, progress=not quiet))


@main.command("search")
@click.argument("config_file", type=click.Path(exists=True, dir_okay=False))
@resume_option
@click.option("--quiet", is_flag=True, help="no progress bar")
def search_cmd(config_file, resume, quiet):
    """Search merge weights per unit by rollouts (optuna), as described by the YAML CONFIG_FILE;
    report the best on held-out episodes."""
    from dtmerge.merge.search import load_search_config, run_search

    summary = run_search(load_search_config(config_file), resume=resume, progress=not quiet)
    click.echo((Path(summary["config"]["output"]) / "results.md").read_text())


def window_statistic_options(fn):
    """The options of a statistic recorded beside a checkpoint from windows of its data."""
    for option in reversed([
            click.argument("checkpoint", type=click.Path(exists=True, file_okay=False)),
            click.option("--dataset", help="data to record it on [default: the checkpoint's training data]"),
            click.option("--batches", default=4, type=COUNT, help="batches of windows"),
            click.option("--batch-size", default=64, type=click.IntRange(1, MAX_BATCH), help="windows per batch"),
            click.option("--seed", default=0, type=SEED, help="seed for the window sampler"),
            click.option("--device", default="cpu", help="cpu, cuda, cuda:1, ... (fp32 either way)"),
            overwrite_option, click.option("--quiet", is_flag=True, help="no progress bar")]):
        fn = option(fn)
    return fn


@main.command("fisher")
@window_statistic_options
@click.option("--estimator", type=click.Choice(["exact", "empirical", "batch"]), default="exact",
              help="exact: Gaussian action-mean Fisher; empirical: squared per-window gradients; "
                   "batch: the original code's squared batch gradients")
def fisher_cmd(checkpoint, dataset, estimator, batches, batch_size, seed, device, overwrite, quiet):
    """Compute a checkpoint's diagonal Fisher once and store it beside its weights."""
    from dtmerge.merge.fisher import compute_fisher

    click.echo(compute_fisher(checkpoint, dataset, estimator, batches, batch_size, seed, progress=not quiet,
                              overwrite=overwrite, device=device))


@main.command("regmean")
@window_statistic_options
def regmean_cmd(checkpoint, dataset, batches, batch_size, seed, device, overwrite, quiet):
    """Record the Gram matrices of the trunk's linear-layer inputs on the checkpoint's data, beside
    it (regmean.safetensors + regmean.json), for `method: regmean` merges."""
    from dtmerge.merge.regmean import compute_grams

    click.echo(compute_grams(checkpoint, dataset, batches, batch_size, seed, progress=not quiet, overwrite=overwrite,
                             device=device))


@main.command("mff")
@click.argument("config_file", type=click.Path(exists=True, dir_okay=False))
@resume_option
@overwrite_option
@log_option
@click.option("--quiet", is_flag=True, help="no progress bars")
def mff_cmd(config_file, resume, overwrite, log, quiet):
    """Merge-Freeze-Finetune from a YAML file (merge: ..., output, datasets, finetune: ...)."""
    from dtmerge.merge.mff import MFFConfig, merge_freeze_finetune

    cfg = _with_finetune_log(build_config(MFFConfig, config_file, {}), log)
    click.echo(merge_freeze_finetune(cfg, resume, overwrite, progress=not quiet))


def _with_finetune_log(cfg, log):
    """A pipeline config whose finetuning runs also log to `log` (the loggers a flag asked for)."""
    return cfg.model_copy(update={"finetune": {**cfg.finetune, "log": list(log)}}) if log else cfg


@main.command("finetune-merge")
@click.argument("config_file", type=click.Path(exists=True, dir_okay=False))
@resume_option
@overwrite_option
@log_option
@click.option("--quiet", is_flag=True, help="no progress bars")
def finetune_merge_cmd(config_file, resume, overwrite, log, quiet):
    """Finetune a copy of a multi-task bundle per task, then merge the copies (Table V); YAML with
    multitask, datasets, output, method (average|fisher), select, finetune, fisher."""
    from dtmerge.merge.pipeline import FinetuneMergeConfig, finetune_then_merge

    cfg = _with_finetune_log(build_config(FinetuneMergeConfig, config_file, {}), log)
    bundle = finetune_then_merge(cfg, resume, overwrite, progress=not quiet)
    click.echo(bundle)
    evals = Path(bundle).with_name(Path(bundle).name + ".runs") / "eval.json"
    if evals.is_file():
        _print_results(json.loads(evals.read_text())["results"])


@main.command("perturb")
@click.argument("checkpoint", type=click.Path(exists=True, file_okay=False))
@click.argument("output", type=click.Path(file_okay=False))
@click.option("--kind", type=click.Choice(list(PERTURBATIONS)), required=True,
              help="random: fixed random weights; identity: weights 1, biases 0 (the paper's; the same map as "
                   "remove); identity-map: value and output projections the identity; remove: residual only")
@click.option("--select", multiple=True, default=("attn",), help="attention group(s) to perturb, e.g. h.1.attn")
@click.option("--seed", default=0, type=SEED, help="seed of the random weights")
@overwrite_option
def perturb_cmd(checkpoint, output, kind, select, seed, overwrite):
    """Write a copy of CHECKPOINT with its attention perturbed (the paper's Table I)."""
    from dtmerge.merge.perturb import perturb_checkpoint

    click.echo(perturb_checkpoint(checkpoint, output, kind, select, seed, overwrite))


@main.command("info")
@click.argument("path", type=click.Path(exists=True, file_okay=False))
def info_cmd(path):
    """Print a checkpoint's or bundle's metadata and the paper's transformer-parameter accounting
    (its weights checked first, as loading it would)."""
    from dtmerge.model import DTConfig
    from dtmerge.store.bundle import is_bundle, load_bundle_task, read_bundle_meta, trunk_accounting
    from dtmerge.store.checkpoint import check_weights, read_meta

    if is_bundle(path):
        meta = read_bundle_meta(path)
        for task in meta["tasks"]:
            load_bundle_task(path, task)
        out = {"bundle": path, "tasks": list(meta["tasks"]), "shared_tensors": len(meta["shared"]),
               "accounting": trunk_accounting(path), "merge": meta.get("merge"), "mff": meta.get("mff")}
    else:
        meta = read_meta(path)
        check_weights(Path(path) / "model.safetensors", DTConfig(**meta["config"]))
        out = {k: meta[k] for k in ("task", "dataset", "step", "seed", "config", "init") if k in meta}
    click.echo(json.dumps(out, indent=2))


@main.command("plot")
@click.argument("logs", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False))
@click.option("--x", "x", default="step", help="field for the x axis")
@click.option("--y", "y", default="loss", help="field for the y axis (loss in metrics.jsonl, return_mean in log.jsonl)")
@click.option("--title", default="", help="plot title")
@click.option("--logy", is_flag=True, help="logarithmic y axis")
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="PNG file to write")
@overwrite_option
def plot_cmd(logs, x, y, title, logy, out, overwrite):
    """Plot JSONL curves (training metrics.jsonl, collect log.jsonl) into one PNG, a line per file."""
    from dtmerge.plots import plot_curves

    runs = {str(Path(p).parent.name if Path(p).parent.name not in ("", ".") else p): Path(p) for p in logs}
    click.echo(plot_curves(runs, out, x, y, y, title, logy, overwrite))


@main.group("import")
def import_group():
    """Models from other formats, as dtmerge checkpoints."""


@import_group.command("hf")
@click.argument("source")
@click.argument("out", type=click.Path(file_okay=False))
@click.option("--dataset", help="data whose state statistics (and task) the model was trained with")
@click.option("--task", help="halfcheetah, hopper or walker2d [default: from the dataset or dtmerge.json]")
@click.option("--state-mean", type=click.Path(exists=True, dir_okay=False), help="file of numbers (with --state-std)")
@click.option("--state-std", type=click.Path(exists=True, dir_okay=False), help="file of numbers (with --state-mean)")
@click.option("--rtg-scale", type=click.FloatRange(min=0, min_open=True),
              help="returns-to-go are divided by this [default: dtmerge.json's, else 1000]")
@click.option("--context-len", type=click.IntRange(1, 1000), help="K [default: dtmerge.json's, else 20]")
@click.option("--allow-bin", is_flag=True, help="read a pytorch_model.bin (torch.load(weights_only=True))")
@overwrite_option
def import_hf_cmd(source, out, dataset, task, state_mean, state_std, rtg_scale, context_len, allow_bin, overwrite):
    """A transformers DecisionTransformerModel (a directory with config.json and model.safetensors,
    or a Hub id where the network allows) as a dtmerge checkpoint at OUT."""
    from dtmerge.store.hf import import_hf

    click.echo(import_hf(source, out, dataset, task, state_mean, state_std, rtg_scale, context_len, allow_bin,
                         overwrite))


@main.group("export")
def export_group():
    """dtmerge checkpoints in other formats."""


@export_group.command("hf")
@click.argument("checkpoint", type=click.Path(exists=True, file_okay=False))
@click.argument("out", type=click.Path(file_okay=False))
@overwrite_option
def export_hf_cmd(checkpoint, out, overwrite):
    """CHECKPOINT as a directory DecisionTransformerModel.from_pretrained loads, with dtmerge.json
    holding the state normalisation the format has no place for."""
    from dtmerge.store.hf import export_hf

    click.echo(export_hf(checkpoint, out, overwrite))


@main.group("lm")
def lm_group():
    """Language models for DT initialisation (ChibiT-style pre-training)."""


@lm_group.command("pretrain")
@resume_option
@overwrite_option
@click.option("--quiet", is_flag=True, help="no progress bar")
@pydantic_options(PretrainConfig)
def lm_pretrain(resume, overwrite, quiet, **flags):
    """Pre-train a small GPT-2 (ChibiT's shape by default) on local text files; the model is saved
    in Hugging Face format under OUT/model, ready for `dtmerge train --init OUT/model`."""
    from dtmerge.lm.pretrain import pretrain

    cfg = build_config(PretrainConfig, None, flags)
    click.echo(pretrain(cfg, resume=resume, overwrite=overwrite, progress=not quiet))


def _parse_params(items):
    from dtmerge.validate import parse_yaml

    out = {}
    for item in items:
        if "=" not in item:
            raise click.UsageError(f"--param {item!r}: expected KEY=VALUE")
        key, value = item.split("=", 1)
        out[key] = parse_yaml(value, f"--param {key}")
    return out


@main.group("experiment")
def experiment_group():
    """The paper's experiments: artifacts cached in one store, resumable, reported as JSON, Markdown and PNG."""


@experiment_group.command("list")
def experiment_list():
    """List the experiments."""
    from dtmerge.experiments import EXPERIMENTS

    for name, module in EXPERIMENTS.items():
        click.echo(f"{name:18s} {module.TITLE}")


@experiment_group.command("run")
@click.argument("names", nargs=-1, required=True)
@click.option("--scale", default="mini", type=click.Choice(["smoke", "mini", "paper", "demo"]),
              help="how big (demo: the models `dtmerge demo` trains)")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="report directory")
@click.option("--seeds", type=click.IntRange(min=1), help="seeds per model [default: the scale's]")
@click.option("--workers", type=click.IntRange(min=1), show_default="one per GPU, else one per core",
              help="artifacts made at once, each with cores // workers threads (one per core measured 1.27x "
                   "faster than one with every core: benchmarks/executor_speed.py)")
@click.option("--executor", default="local", type=click.Choice(["local", "ray"]),
              help="local: this machine's processes; ray: Ray tasks (RAY_ADDRESS's cluster, else a local one)")
@click.option("--gpus-per-artifact", type=click.FloatRange(min=0), show_default="the cluster's GPUs / workers",
              help="GPUs each Ray task that trains or rolls out declares (ray executor; e.g. 0.25 packs four per GPU)")
@click.option("--store", type=click.Path(file_okay=False), help="artifact store [default: $DTMERGE_HOME/store]")
@click.option("--batch-dts", type=click.IntRange(min=0), show_default="8 on a GPU, else 0",
              help="train up to N DTs of a task that differ only in seed at once, in one stacked model "
                   "(dtmerge.train.many); their numbers differ from single runs in the last bits, so they are "
                   "stored under keys of their own; 0: one at a time")
@resume_option
@overwrite_option
@log_option
@click.option("--quiet", is_flag=True, help="no progress bar")
@click.option("--dry-run", is_flag=True, help="print the plan (what is cached, what is to make, how long it should "
              "take) and stop: nothing is made or written")
def experiment_run(names, scale, out, seeds, workers, executor, gpus_per_artifact, store, batch_dts, resume,
                   overwrite, log, quiet, dry_run):
    """Run experiments NAMES (see `dtmerge experiment list`), then report them under --out; with
    --log, every artifact's training metrics and scores also go to the loggers (under --out)."""
    from dtmerge.experiments.suite import run_suite

    run_suite(list(names), scale, out, seeds, workers, store, resume, overwrite, progress=not quiet, echo=click.echo,
              executor=executor, gpus_per_artifact=gpus_per_artifact, log=log, batch_dts=batch_dts, dry_run=dry_run)


@experiment_group.command("report")
@click.argument("out", type=click.Path(exists=True, file_okay=False))
def experiment_report(out):
    """Write the reports of the run in OUT again from the store."""
    from dtmerge.experiments.suite import report

    report(out, echo=click.echo)


@main.group("data")
def data_group():
    """Make, inspect and convert offline datasets; train and export behaviour policies."""


@data_group.command("info")
@click.argument("dataset")
@click.option("--task", help="halfcheetah, hopper or walker2d (default: from the dataset)")
def data_info(dataset, task):
    """Print sizes and return statistics of a D4RL file or Minari dataset as JSON."""
    from dtmerge.data import load_dataset

    traj, task_ = load_dataset(dataset, task)
    click.echo(json.dumps(traj.summary(task_), indent=2))


@data_group.command("export")
@click.argument("dataset")
@click.argument("dest")
@click.option("--task", help="halfcheetah, hopper or walker2d (default: from the dataset)")
@click.option("--format", "fmt", type=click.Choice(["d4rl", "minari"]), default="d4rl",
              help="d4rl: DEST is an .hdf5 file; minari: DEST is a dataset id under --minari-root")
@click.option("--minari-root", type=click.Path(file_okay=False), help="default: MINARI_DATASETS_PATH")
@overwrite_option
def data_export(dataset, dest, task, fmt, minari_root, overwrite):
    """Write a dataset in the D4RL HDF5 layout or as a Minari dataset."""
    from dtmerge.data import dataset_files, load_dataset, write_d4rl, write_minari
    from dtmerge.outputs import claim_outputs

    if fmt == "d4rl":
        claim_outputs([dest], dataset_files(dataset), overwrite)
    traj, task_ = load_dataset(dataset, task)
    if fmt == "d4rl":
        click.echo(write_d4rl(traj, dest))
    else:
        click.echo(write_minari(traj, dest, task_, minari_root, overwrite))


@data_group.command("make")
@click.argument("dataset_id")
@click.option("--transitions", type=click.IntRange(min=1), help="size [default: 1M; 2M for medium-expert]")
@click.option("--seed", default=0, type=SEED, help="seed for environments and action sampling")
@click.option("--minari-id", help="also export as this Minari dataset id (needs dtmerge[minari])")
@click.option("--minari-root", "minari_root_opt", type=click.Path(file_okay=False),
              help="default: MINARI_DATASETS_PATH")
@click.option("--overwrite", is_flag=True, help="make the dataset again even if a verified copy is cached "
                                                "(and replace the Minari export)")
@click.option("--quiet", is_flag=True, help="no progress bar")
def data_make(dataset_id, transitions, seed, minari_id, minari_root_opt, overwrite, quiet):
    """Make DATASET_ID (e.g. hopper-medium, walker2d-medium-expert) from the shipped policies.

    Writes the D4RL HDF5 layout under $DTMERGE_HOME/datasets (default ~/.cache/dtmerge) and prints
    its path; a cached copy whose recorded size and hash still match is reused. Levels: random,
    medium, expert, medium-expert.
    """
    from dtmerge.data import load_dataset, write_minari
    from dtmerge.data.make import make_dataset, parse_id
    from dtmerge.data.minari import check_minari_id

    parsed = parse_id(dataset_id)
    if parsed is None:
        raise click.UsageError(f"{dataset_id!r} is not TASK-LEVEL (tasks: halfcheetah, hopper, walker2d; "
                               "levels: random, medium, expert, medium-expert)")
    if seed and parsed[3]:
        raise click.UsageError("give the seed either in the id or with --seed, not both")
    if minari_id:  # refused now, before the dataset is made, if the export could not be written
        from dtmerge.data.minari import minari_root
        from dtmerge.outputs import claim_outputs

        claim_outputs([Path(minari_root_opt or minari_root()) / check_minari_id(minari_id)],
                      [], overwrite)
    path = make_dataset(task=parsed[0].name, level=parsed[1], transitions=transitions or parsed[2],
                        seed=seed or parsed[3], overwrite=overwrite, progress=not quiet)
    click.echo(path)
    traj, task = load_dataset(path)
    click.echo(json.dumps({k: traj.attrs[k] for k in ("transitions", "trajectories", "return_mean", "score_mean")}))
    if minari_id:
        click.echo(write_minari(traj, minari_id, task, minari_root_opt, overwrite))


@data_group.command("collect")
@click.argument("task")
@resume_option
@overwrite_option
@click.option("--export-dir", type=click.Path(file_okay=False),
              help="where the expert/medium actors go [default: OUT/export]")
@click.option("--export-episodes", default=20, help="episodes to measure each exported actor on (fresh seeds)")
@click.option("--quiet", is_flag=True, help="no progress bar")
@pydantic_options(CollectConfig, skip=("task",))
def data_collect(task, resume, overwrite, export_dir, export_episodes, quiet, **flags):
    """Train a PPO behaviour agent for TASK (needs dtmerge[collect]) and export expert and medium actors."""
    from dtmerge.zoo.collect import collect, export

    cfg = build_config(CollectConfig, None, {**flags, "task": task})
    out = collect(cfg, resume=resume, overwrite=overwrite, progress=not quiet)
    chosen = export(out, export_dir or out / "export", export_episodes, progress=not quiet,
                    overwrite=overwrite or resume)
    for level, meta in chosen.items():
        m = meta["measured"]["deterministic"]
        click.echo(f"{cfg.task}-{level}: step {meta['train_steps']}, return {m['return_mean']:.1f} "
                   f"± {m['return_std']:.1f}, D4RL-normalised (-v5) {m['score_mean']:.1f}")


@data_group.command("zoo")
def data_zoo():
    """Print the shipped behaviour policies and what they were measured to reach, as Markdown."""
    from dtmerge.zoo import zoo_manifest

    click.echo("| policy | algorithm | env steps | return, deterministic (mean ± std) | D4RL-normalised (-v5), "
               "deterministic | return, stochastic (as in the datasets) | D4RL-normalised (-v5), stochastic |")
    click.echo("| --- | --- | --- | --- | --- | --- | --- |")
    for name, p in sorted(zoo_manifest()["policies"].items()):
        d, s = p["deterministic"], p["stochastic"]
        click.echo(f"| {name} | {p['algo']} ({p.get('preset', '')}) | {p['train_steps']:,} | "
                   f"{d['return_mean']:.0f} ± {d['return_std']:.0f} | {d['score_mean']:.1f} | "
                   f"{s['return_mean']:.0f} ± {s['return_std']:.0f} | {s['score_mean']:.1f} |")


@data_group.command("zoo-export")
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False))
@click.argument("dest", type=click.Path(file_okay=False))
@click.option("--episodes", default=20, help="episodes to measure each exported actor on (fresh seeds)")
@overwrite_option
def data_zoo_export(run_dir, dest, episodes, overwrite):
    """Pick expert and medium snapshots of a collect run and export them to DEST."""
    from dtmerge.zoo.collect import export

    for level, meta in export(run_dir, dest, episodes, overwrite=overwrite).items():
        m = meta["measured"]["deterministic"]
        click.echo(f"{meta['task']}-{level}: step {meta['train_steps']}, return {m['return_mean']:.1f}, "
                   f"D4RL-normalised (-v5) {m['score_mean']:.1f}")


def _print_results(results: list[dict]) -> None:
    from dtmerge.evaluate import TABLE_HEADER, format_result

    click.echo(TABLE_HEADER)
    for result in results:
        click.echo(format_result(result))
