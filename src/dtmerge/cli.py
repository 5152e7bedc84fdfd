"""The `dtmerge` command: a thin layer over the Python API."""

from __future__ import annotations

import json

import click

from dtmerge import __version__
from dtmerge.config import build_config, pydantic_options
from dtmerge.train import TrainConfig


@click.group(context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.version_option(__version__, prog_name="dtmerge")
def main():
    """Train, merge and evaluate Decision Transformers on offline MuJoCo locomotion data."""


@main.command("train")
@click.option("--config", "config_file", type=click.Path(exists=True, dir_okay=False),
              help="YAML file with any of the options below; flags override it")
@click.option("--resume", is_flag=True, help="continue the run in --out from its last checkpoint")
@click.option("--quiet", is_flag=True, help="no progress bar")
@pydantic_options(TrainConfig, nested=("model",))
def train_cmd(config_file, resume, quiet, **flags):
    """Train one Decision Transformer on one dataset and evaluate it."""
    from dtmerge.train import train

    cfg = build_config(TrainConfig, config_file, flags, nested=("model",))
    ckpt = train(cfg, resume=resume, progress=not quiet)
    click.echo(f"checkpoint: {ckpt}")
    _print_eval_file(ckpt.parent / "eval.json")


@main.command("eval")
@click.argument("checkpoint", type=click.Path(exists=True, file_okay=False))
@click.option("--episodes", default=10, help="episodes per RTG target")
@click.option("--target", "targets", type=float, multiple=True, help="RTG target (repeatable; default: the task's)")
@click.option("--seed", default=0, help="episode i starts from reset seed SEED + i")
@click.option("--device", default="auto", help="auto, cpu, cuda, ...")
@click.option("--precision", default="auto", help="auto, bf16 or fp32")
@click.option("--out", type=click.Path(dir_okay=False), help="write the results as JSON here")
@click.option("--quiet", is_flag=True, help="no progress bar")
def eval_cmd(checkpoint, episodes, targets, seed, device, precision, out, quiet):
    """Evaluate a checkpoint in MuJoCo: all episodes batched, D4RL-normalised (-v5) scores."""
    from dtmerge.evaluate import TABLE_HEADER, evaluate_checkpoint, format_result

    result = evaluate_checkpoint(checkpoint, episodes, list(targets) or None, seed, device, precision, out,
                                 progress=not quiet)
    click.echo(TABLE_HEADER)
    click.echo(format_result(result))


@main.group("data")
def data_group():
    """Inspect and convert offline datasets."""


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
def data_export(dataset, dest, task, fmt, minari_root):
    """Write a dataset in the D4RL HDF5 layout or as a Minari dataset."""
    from pathlib import Path

    from dtmerge.data import load_dataset, write_d4rl, write_minari

    traj, task_ = load_dataset(dataset, task)
    if fmt == "d4rl":
        if Path(dest).resolve() == Path(dataset).resolve():
            raise click.UsageError(f"{dest}: refusing to overwrite the input dataset")
        click.echo(write_d4rl(traj, dest))
    else:
        click.echo(write_minari(traj, dest, task_, minari_root))


def _print_eval_file(path):
    from pathlib import Path

    if Path(path).is_file():
        from dtmerge.evaluate import TABLE_HEADER, format_result

        click.echo(TABLE_HEADER)
        click.echo(format_result(json.loads(Path(path).read_text())))
