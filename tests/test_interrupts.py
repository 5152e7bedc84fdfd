"""Stopped runs: kill -9 and SIGTERM leave the previous complete output or nothing, never a
partial file that a later run trusts, and a killed training run resumes to the same weights."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import TINY
from safetensors.torch import load_file, save_file

from dtmerge.store.checkpoint import load_checkpoint
from dtmerge.train import TrainConfig, train

CLI = [sys.executable, "-c", "from dtmerge.cli import main; main()"]
STEPS, SAVE_EVERY = 1500, 50


def _train_args(data, out):
    return ["train", "--dataset", str(data), "--out", str(out), "--steps", str(STEPS), "--save-every",
            str(SAVE_EVERY), "--warmup-steps", "10", "--batch-size", "8", "--n-embd", "32", "--n-layer", "2",
            "--n-head", "2", "--context-len", "10", "--log-every", "10", "--eval-episodes", "0", "--device", "cpu",
            "--precision", "fp32", "--quiet"]


def _start(args, home):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "DTMERGE_HOME": str(home)}
    return subprocess.Popen(CLI + args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for_checkpoint(proc, ckpt: Path, timeout=120.0) -> int:
    """Wait until the run has saved a checkpoint; returns its step."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            return json.loads((ckpt / "meta.json").read_text())["step"]
        except (FileNotFoundError, json.JSONDecodeError, KeyError):
            assert proc.poll() is None, proc.communicate()
            time.sleep(0.01)
    raise AssertionError("no checkpoint appeared")


def _leftovers(root: Path) -> list[str]:
    return [str(p) for p in root.rglob("*") if ".tmp" in p.name or ".old-" in p.name or p.name.endswith(".swap")]


def test_kill_9_then_resume_gives_the_weights_of_an_uninterrupted_run(tmp_path, hopper_file):
    proc = _start(_train_args(hopper_file, tmp_path / "killed"), tmp_path / "home")
    saved = _wait_for_checkpoint(proc, tmp_path / "killed" / "checkpoint")
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = load_checkpoint(tmp_path / "killed" / "checkpoint")[1]["step"]
    assert SAVE_EVERY <= saved <= killed_at < STEPS  # it was stopped mid-run, after a checkpoint

    torch.set_num_threads(1)
    cfg = dict(dataset=[str(hopper_file)], steps=STEPS, save_every=SAVE_EVERY, warmup_steps=10, batch_size=8,
               log_every=10, device="cpu", precision="fp32",
               model={"n_embd": 32, "n_layer": 2, "n_head": 2, "context_len": 10})
    resumed = train(TrainConfig(out=str(tmp_path / "killed"), **cfg), resume=True, progress=False)
    straight = train(TrainConfig(out=str(tmp_path / "straight"), **cfg), progress=False)
    a, b = load_file(straight / "model.safetensors"), load_file(resumed / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    steps = [json.loads(ln)["step"] for ln in (tmp_path / "killed" / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(10, STEPS + 1, 10))  # records past the checkpoint were dropped, not duplicated


def test_sigterm_during_training_leaves_a_complete_checkpoint_and_no_temporary_files(tmp_path, hopper_file):
    proc = _start(_train_args(hopper_file, tmp_path / "run"), tmp_path / "home")
    _wait_for_checkpoint(proc, tmp_path / "run" / "checkpoint")
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert [ln for ln in err.splitlines() if ln.strip()] == [
        "Aborted: stopped before completion; outputs are as they were, or complete."]
    assert _leftovers(tmp_path) == []
    model, meta = load_checkpoint(tmp_path / "run" / "checkpoint")  # complete and valid
    assert 0 < meta["step"] < STEPS


def test_sigterm_while_making_a_dataset_leaves_nothing(tmp_path):
    home = tmp_path / "home"
    proc = _start(["data", "make", "hopper-medium-300000", "--quiet"], home)
    time.sleep(6)  # past start-up, inside the rollout
    assert proc.poll() is None
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=60)
    assert proc.returncode == 130
    datasets = home / "datasets"
    assert not datasets.exists() or list(datasets.iterdir()) == []


def test_a_damaged_cached_dataset_is_made_again(tmp_path, monkeypatch, capsys):
    from dtmerge.data.make import make_dataset

    monkeypatch.setenv("DTMERGE_HOME", str(tmp_path))
    path = make_dataset("hopper-medium-300", progress=False)
    good = path.read_bytes()
    assert make_dataset("hopper-medium-300", progress=False) == path  # verified, reused
    path.write_bytes(good[:-10] + b"0123456789")  # same size, other content
    make_dataset("hopper-medium-300", progress=False)
    assert "(content differs from the recorded SHA-256); making it again" in capsys.readouterr().err
    assert path.read_bytes() == good  # made again, identically (seeded)
    path.with_name(path.name + ".json").unlink()  # a file without its record is not trusted either
    make_dataset("hopper-medium-300", progress=False)
    assert "no valid size/hash record" in capsys.readouterr().err


def test_a_killed_experiment_run_resumes_without_remaking_anything(tmp_path):
    """SIGTERM an experiment run with two workers midway; --resume reuses every finished artifact
    and ends with the numbers of an uninterrupted run."""
    args = ["experiment", "run", "incremental", "--scale", "smoke", "--workers", "2", "--quiet"]
    store = tmp_path / "store"
    proc = _start(args + ["--out", str(tmp_path / "killed"), "--store", str(store)], tmp_path / "home")
    deadline = time.monotonic() + 240
    while len(list(store.glob("*/*/artifact.json"))) < 12:
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    finished = {str(p): p.stat().st_mtime_ns for p in store.glob("*/*/artifact.json")}
    assert _leftovers(tmp_path) == []
    resumed = _start(args + ["--out", str(tmp_path / "killed"), "--store", str(store), "--resume"], tmp_path / "home")
    out, err = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, err
    assert f"{len(finished)} cached" in out
    assert all(Path(p).stat().st_mtime_ns == t for p, t in finished.items())  # nothing made twice
    straight = _start(args + ["--out", str(tmp_path / "straight"), "--store", str(tmp_path / "store2")],
                      tmp_path / "home")
    assert straight.wait(timeout=600) == 0
    a, b = ((tmp_path / d / "incremental" / "results.json").read_text() for d in ("killed", "straight"))
    assert json.loads(a)["curves"] == json.loads(b)["curves"]


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_a_fisher_stopped_between_its_two_files_leaves_the_old_pair(tmp_path, task_models, monkeypatch):
    from dtmerge.merge import fisher as fisher_module
    ckpt = tmp_path / "ckpt"
    shutil.copytree(task_models["hopper"], ckpt)
    fisher_module.compute_fisher(ckpt, batches=1, batch_size=4, progress=False)
    before = _files(ckpt)

    def stopped(*args):  # the tensors are written; the process stops before fisher.json
        raise KeyboardInterrupt

    monkeypatch.setattr(fisher_module, "write_json", stopped)
    with pytest.raises(KeyboardInterrupt):
        fisher_module.compute_fisher(ckpt, batches=1, batch_size=4, seed=1, progress=False, overwrite=True)
    assert _files(ckpt) == before and not _leftovers(tmp_path)
    assert fisher_module.read_fisher_meta(ckpt)["seed"] == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]  # no lock file or copy left behind


def test_a_second_writer_of_one_output_is_refused(tmp_path, task_models, hopper_file):
    from dtmerge.merge.fisher import compute_fisher
    from dtmerge.outputs import OutputError, writer_lock
    ckpt = tmp_path / "ckpt"
    shutil.copytree(task_models["hopper"], ckpt)
    with writer_lock(ckpt):  # as a running `fisher` holds it
        with pytest.raises(OutputError, match="being written by another process"):
            compute_fisher(ckpt, batches=1, batch_size=4, progress=False)
    assert not (ckpt / "fisher.json").exists()
    out = tmp_path / "run"
    cfg = TrainConfig(dataset=str(hopper_file), out=str(out), steps=2, warmup_steps=1, batch_size=4, device="cpu",
                      precision="fp32", model=TINY)
    with writer_lock(out):  # as a running `train --out run` holds it
        with pytest.raises(OutputError, match="being written by another process"):
            train(cfg, progress=False)
    assert not out.exists()
    train(cfg, progress=False)  # once released, the same command runs
    assert (out / "checkpoint" / "model.safetensors").is_file() and not (tmp_path / ".run.lock").exists()


def test_an_output_made_after_the_claim_is_refused(tmp_path):
    from dtmerge.outputs import OutputError, claim_outputs, run_directory
    out = tmp_path / "run"
    claim_outputs([out])
    out.mkdir()  # another command started the same run meanwhile
    with pytest.raises(OutputError, match="made by another process"):
        with run_directory(out, overwrite=False):
            pass
    with run_directory(out, overwrite=False, resume=True) as d:
        assert d == out


def test_a_held_lock_file_left_by_a_killed_run_is_taken_over(tmp_path):
    from dtmerge.outputs import writer_lock
    (tmp_path / ".run.lock").write_text("")  # kill -9 leaves the file, not the lock
    with writer_lock(tmp_path / "run"):
        pass
    assert not (tmp_path / ".run.lock").exists()


def test_align_overwrite_with_a_bad_source_fisher_keeps_the_old_output(tmp_path, task_models):
    from click.testing import CliRunner

    from dtmerge.cli import main
    from dtmerge.merge.fisher import compute_fisher
    source, out = tmp_path / "walker2d", tmp_path / "aligned"
    shutil.copytree(task_models["walker2d"], source)
    compute_fisher(source, batches=1, batch_size=4, progress=False)
    args = ["align", str(task_models["hopper"]), str(source), str(out), "--quiet"]
    assert CliRunner().invoke(main, args).exit_code == 0
    before = _files(out)
    tensors = load_file(source / "fisher.safetensors")
    save_file({k: -v for k, v in tensors.items()}, source / "fisher.safetensors")  # damaged after the first align
    r = CliRunner().invoke(main, args + ["--overwrite"])
    assert r.exit_code != 0 and "fisher" in r.output
    assert _files(out) == before and not _leftovers(tmp_path)


def test_a_fisher_of_weights_replaced_meanwhile_is_refused(tmp_path, task_models, monkeypatch):
    """A training run that saves while `fisher` computes: the Fisher of the old weights is not put
    beside the new ones."""
    from dtmerge.merge import fisher as fisher_module
    ckpt = tmp_path / "ckpt"
    shutil.copytree(task_models["hopper"], ckpt)
    real = fisher_module.fisher_terms

    def and_meanwhile(*args, **kwargs):
        t = load_file(ckpt / "model.safetensors")
        save_file({k: v + 1e-3 for k, v in t.items()}, ckpt / "model.safetensors")  # as a concurrent save would
        return real(*args, **kwargs)

    monkeypatch.setattr(fisher_module, "fisher_terms", and_meanwhile)
    with pytest.raises(ValueError, match="changed while this command ran"):
        fisher_module.compute_fisher(ckpt, batches=1, batch_size=4, progress=False)
    assert not (ckpt / "fisher.json").exists() and sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]
