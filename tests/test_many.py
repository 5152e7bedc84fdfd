"""fit_many: DTs trained at once in one stacked model match the same DTs trained alone, and a
batched run resumes exactly."""

from pathlib import Path

import pytest
import torch
from conftest import TINY
from safetensors.torch import load_file

from dtmerge.errors import DtmergeError
from dtmerge.train import TrainConfig, train
from dtmerge.train.many import train_many

TOLERANCE = 1e-5  # float rounding: the stacked forward's batched products sum in another order


def _configs(root: Path, task_files, steps=12, **extra) -> list[TrainConfig]:
    runs = [("walker2d", 0), ("halfcheetah", 1), ("walker2d", 2)]  # same state and action sizes
    return [TrainConfig(dataset=str(task_files[t]), out=str(root / f"{t}-{s}"), steps=steps, warmup_steps=3,
                        batch_size=8, device="cpu", precision="fp32", seed=s, model=TINY, save_every=6, log_every=3,
                        **extra) for t, s in runs]


def _weights(ckpt) -> dict[str, torch.Tensor]:
    return load_file(Path(ckpt) / "model.safetensors")


def test_each_model_of_a_batched_run_matches_its_run_alone(tmp_path, task_files):
    cfgs = _configs(tmp_path / "many", task_files, keep_steps=[3])
    batched = train_many(cfgs, progress=False)
    for cfg, ckpt in zip(cfgs, batched):
        alone = train(cfg.model_copy(update={"out": str(tmp_path / "alone" / Path(cfg.out).name)}), progress=False)
        got, want = _weights(ckpt), _weights(alone)
        assert got.keys() == want.keys()
        worst = max((got[k] - want[k]).abs().max().item() for k in want)
        moved = max((want[k] - _weights(Path(cfg.out) / "snapshots" / "step-3")[k]).abs().max().item() for k in want)
        assert worst < TOLERANCE < moved  # equal up to rounding, and training moved them far more than that
    assert _weights(batched[0]).keys() and not torch.equal(_weights(batched[0])["embed_state.weight"],
                                                            _weights(batched[2])["embed_state.weight"])


def test_a_batched_run_resumes_exactly_and_its_checkpoints_are_single_runs(tmp_path, task_files):
    whole = train_many(_configs(tmp_path / "whole", task_files), progress=False)
    train_many(_configs(tmp_path / "stopped", task_files, steps=6), progress=False)
    resumed = train_many(_configs(tmp_path / "stopped", task_files), resume=True, progress=False)
    for a, b in zip(whole, resumed):
        assert all(torch.equal(x, _weights(b)[k]) for k, x in _weights(a).items())
    alone = _configs(tmp_path / "stopped", task_files)[1]  # a batched checkpoint resumes as a single run too
    train_many([alone.model_copy(update={"steps": 6, "out": str(tmp_path / "single")})], progress=False)
    single = train(alone.model_copy(update={"out": str(tmp_path / "single")}), resume=True, progress=False)
    assert max((x - _weights(single)[k]).abs().max().item() for k, x in _weights(whole[1]).items()) < TOLERANCE


def test_runs_that_cannot_train_together_are_refused(tmp_path, task_files):
    cfgs = _configs(tmp_path, task_files)
    with pytest.raises(DtmergeError, match=r"also differs in \['lr'\]"):
        train_many([cfgs[0], cfgs[1].model_copy(update={"lr": 3e-4})], progress=False)
    hopper = cfgs[0].model_copy(update={"dataset": [str(task_files["hopper"])], "out": str(tmp_path / "h")})
    with pytest.raises(DtmergeError, match="one architecture"):
        train_many([cfgs[0], hopper], progress=False)


@pytest.mark.parametrize("stop_in", ["writing", "swapping"])
def test_a_batch_stopped_while_saving_resumes_from_a_step_every_model_holds(tmp_path, task_files, monkeypatch,
                                                                            stop_in):
    """Checkpoints of a batch are written beside the old ones, then swapped in: a stop while writing
    resumes every model from the previous step, a stop while swapping finishes the swaps."""
    from dtmerge.train import many

    whole = train_many(_configs(tmp_path / "whole", task_files), progress=False)
    real_save, real_swap, calls = many._save, many.swap, []

    def save(path, *args):
        if path.name == many.PENDING and args[-1] == 12:
            calls.append(path)
            if stop_in == "writing" and len(calls) == 2:
                raise KeyboardInterrupt
        return real_save(path, *args)

    def swap(a, b):
        if stop_in == "swapping" and calls and len(calls) == 3 and not getattr(swap, "done", False):
            swap.done = True
            real_swap(a, b)
            raise KeyboardInterrupt  # after the first model's swap
        return real_swap(a, b)
    monkeypatch.setattr(many, "_save", save)
    monkeypatch.setattr(many, "swap", swap)
    with pytest.raises(KeyboardInterrupt):
        train_many(_configs(tmp_path / "stopped", task_files), progress=False)
    monkeypatch.setattr(many, "_save", real_save)
    monkeypatch.setattr(many, "swap", real_swap)
    resumed = train_many(_configs(tmp_path / "stopped", task_files), resume=True, progress=False)
    for a, b in zip(whole, resumed):
        assert all(torch.equal(x, _weights(b)[k]) for k, x in _weights(a).items())
        assert not (b.parent / many.PENDING).exists()
