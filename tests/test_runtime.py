"""Device, precision, determinism and worker placement: what a GPU run depends on, checked on CPU
(with CUDA's answers stood in for) so that it cannot regress unnoticed here."""

from __future__ import annotations

import multiprocessing

import pytest
import torch
from conftest import TINY

from dtmerge import runtime
from dtmerge.errors import DtmergeError
from dtmerge.experiments import runner
from dtmerge.store.checkpoint import load_train_state
from dtmerge.train import TrainConfig, train


def test_emulated_bf16_on_a_pre_ampere_gpu_is_not_native(monkeypatch):
    cuda = torch.device("cuda")
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)  # says yes on a T4 too
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a: (7, 5))
    assert runtime.resolve_precision("auto", cuda) == "fp32"
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a: (8, 0))
    assert runtime.resolve_precision("auto", cuda) == "bf16"


def test_a_run_records_its_runtime_and_refuses_to_resume_on_another(tmp_path, hopper_file, monkeypatch):
    cfg = TrainConfig(dataset=str(hopper_file), out=str(tmp_path / "run"), steps=2, save_every=1, warmup_steps=1,
                      batch_size=4, device="cpu", precision="auto", model=TINY)
    monkeypatch.setattr(runtime, "bf16_supported", lambda device: False)  # a machine without native bf16
    ckpt = train(cfg, progress=False)
    assert load_train_state(ckpt)["runtime"] == {"device": "cpu", "precision": "fp32"}
    monkeypatch.setattr(runtime, "bf16_supported", lambda device: True)  # resumed on one with it
    with pytest.raises(DtmergeError, match="cannot resume on cpu/bf16: the run was trained on cpu/fp32"):
        train(cfg.model_copy(update={"steps": 4}), resume=True, progress=False)
    train(cfg.model_copy(update={"steps": 4, "precision": "fp32"}), resume=True, progress=False)  # restated: resumes


def test_a_field_added_after_a_run_was_saved_reads_as_its_default(tmp_path, hopper_file):
    import json

    cfg = TrainConfig(dataset=str(hopper_file), out=str(tmp_path / "run"), steps=2, save_every=1, warmup_steps=1,
                      batch_size=4, device="cpu", precision="fp32", model=TINY)
    ckpt = train(cfg, progress=False)
    meta = json.loads((ckpt / "meta.json").read_text())
    del meta["train_config"]["deterministic"]  # as a run saved before the field existed
    (ckpt / "meta.json").write_text(json.dumps(meta))
    train(cfg.model_copy(update={"steps": 3}), resume=True, progress=False)


def test_rng_states_hold_cuda_only_on_cuda():
    assert set(runtime.rng_states(torch.device("cpu"))) == {"torch_rng"}


def test_workers_default_to_one_per_gpu_and_get_them_round_robin(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5")
    assert runner.visible_gpus() == ["3", "5"] and runner.default_workers() == 2
    counter = multiprocessing.get_context("spawn").Value("i", 0)
    seen = []
    for _ in range(3):
        runner._start_worker(counter, ["3", "5"])
        seen.append(runner.os.environ["CUDA_VISIBLE_DEVICES"])
    assert seen == ["3", "5", "3"]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert runner.visible_gpus() == [] and runner.default_workers() == (runner.os.cpu_count() or 1)


def test_ray_tasks_that_train_declare_the_gpus_local_workers_use():
    assert runner.ray_gpus_per_artifact(cluster_gpus=0, workers=2, asked=None) == 0.0  # Ray would hide none
    assert runner.ray_gpus_per_artifact(cluster_gpus=1, workers=4, asked=None) == 0.25
    assert runner.ray_gpus_per_artifact(cluster_gpus=8, workers=2, asked=None) == 1.0
    assert runner.ray_gpus_per_artifact(cluster_gpus=1, workers=4, asked=0.5) == 0.5
    assert {"dt", "mff", "lm", "eval"} <= runner.GPU_KINDS and "dataset" not in runner.GPU_KINDS


def test_an_unknown_or_absent_device_is_one_clear_error():
    for name, problem in (("toaster", "not a device name"), ("cuda:99", r"has 0 CUDA device\(s\)"),
                          ("meta", "cpu or cuda")):
        with pytest.raises(DtmergeError, match=problem):
            runtime.pick_device(name)
