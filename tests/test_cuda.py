"""The CUDA path (`pytest -m cuda`): skipped without a CUDA device, never failing for its absence."""

from __future__ import annotations

import pytest
import torch
from conftest import TINY
from safetensors.torch import load_file

from dtmerge import runtime
from dtmerge.train import TrainConfig, train

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")]


def _cfg(hopper_file, out, steps, **extra):
    return TrainConfig(dataset=str(hopper_file), out=str(out), steps=steps, save_every=2, warmup_steps=2,
                       batch_size=16, device="cuda", precision="auto", model=TINY, **extra)


def test_a_resumed_cuda_run_gives_the_weights_of_an_uninterrupted_one(tmp_path, hopper_file):
    whole = train(_cfg(hopper_file, tmp_path / "a", 6), progress=False)
    train(_cfg(hopper_file, tmp_path / "b", 4), progress=False)
    resumed = train(_cfg(hopper_file, tmp_path / "b", 6), resume=True, progress=False)
    a, b = load_file(whole / "model.safetensors"), load_file(resumed / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_two_deterministic_cuda_runs_agree_bit_for_bit(tmp_path, hopper_file):
    a = load_file(train(_cfg(hopper_file, tmp_path / "a", 4), progress=False) / "model.safetensors")
    b = load_file(train(_cfg(hopper_file, tmp_path / "b", 4), progress=False) / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert torch.are_deterministic_algorithms_enabled()


def test_bf16_autocast_is_used_where_the_gpu_has_it_natively():
    device = torch.device("cuda")
    expected = "bf16" if torch.cuda.get_device_capability(device) >= (8, 0) else "fp32"
    assert runtime.resolve_precision("auto", device) == expected
    x = torch.randn(8, 8, device=device)
    with runtime.autocast(device, "bf16"):
        assert (x @ x).dtype == torch.bfloat16


def test_a_cuda_run_and_a_cpu_run_agree_within_training_noise(tmp_path, hopper_file):
    """fp32 on both: the same data and seed, so the weights differ only by kernel rounding."""
    gpu = load_file(train(_cfg(hopper_file, tmp_path / "g", 4, ).model_copy(update={"precision": "fp32"}),
                          progress=False) / "model.safetensors")
    cpu_cfg = _cfg(hopper_file, tmp_path / "c", 4).model_copy(update={"precision": "fp32", "device": "cpu"})
    cpu = load_file(train(cpu_cfg, progress=False) / "model.safetensors")
    for k in cpu:
        torch.testing.assert_close(gpu[k], cpu[k], rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("estimator", ["exact", "empirical"])
def test_the_fisher_on_cuda_equals_the_cpu_one(tmp_path, task_models, estimator):
    """On CUDA the exact estimator vmaps all 8 windows at once (`window_chunk`); on the CPU one at a time."""
    import shutil

    from dtmerge.merge.fisher import compute_fisher

    for device in ("cpu", "cuda"):
        shutil.copytree(task_models["hopper"], tmp_path / device)
        compute_fisher(tmp_path / device, estimator=estimator, batches=1, batch_size=8, progress=False, device=device)
    cpu, gpu = (load_file(tmp_path / d / "fisher.safetensors") for d in ("cpu", "cuda"))
    for k in cpu:
        torch.testing.assert_close(gpu[k], cpu[k], rtol=1e-4, atol=1e-8)


def test_a_batched_cuda_run_resumes_exactly(tmp_path, hopper_file):
    """fit_many on CUDA: its per-model dropout streams are saved and restored like a single run's."""
    from dtmerge.train.many import train_many

    def cfgs(root, steps):
        return [_cfg(hopper_file, root / f"s{s}", steps, seed=s) for s in (0, 1)]
    whole = train_many(cfgs(tmp_path / "a", 6), progress=False)
    train_many(cfgs(tmp_path / "b", 4), progress=False)
    resumed = train_many(cfgs(tmp_path / "b", 6), resume=True, progress=False)
    for x, y in zip(whole, resumed):
        a, b = load_file(x / "model.safetensors"), load_file(y / "model.safetensors")
        assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("precision, tolerance", [("fp32", 1e-4), ("bf16", 5e-2)])
def test_acting_through_a_cuda_graph_predicts_what_the_cpu_does(hopper, precision, tolerance):
    """On CUDA a policy acts on static shapes through a captured graph; its actions equal the CPU's
    live-window ones within float rounding (fp32, no TF32), or within bf16's (its autocast run
    without the weight cache a graph may not keep). The actions move by ~0.4 a step, so a graph
    replaying stale inputs would fail."""
    import copy
    import warnings

    import numpy as np
    from test_train import act_alike

    from dtmerge.evaluate import DTPolicy
    from dtmerge.model import DecisionTransformer, DTConfig

    torch.manual_seed(0)
    model = DecisionTransformer(DTConfig(state_dim=11, act_dim=3, **TINY))
    runtime.make_deterministic(torch.device("cuda"))
    targets = np.array([3600.0, 1800.0, 900.0])
    cpu = DTPolicy(model, hopper, np.zeros(11), np.ones(11), targets, 1000.0, "cpu", precision)
    gpu = DTPolicy(copy.deepcopy(model).to("cuda"), hopper, np.zeros(11), np.ones(11), targets, 1000.0, "cuda",
                   precision)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        steps = act_alike([cpu, gpu], TINY["context_len"] + 5)
    assert gpu.static and gpu.graph is not None, [str(w.message) for w in caught]
    for a, b in steps:
        np.testing.assert_allclose(a, b, atol=tolerance)
