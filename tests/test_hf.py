"""transformers' DecisionTransformerModel in and out: the same actions for the same inputs, offline,
with models `transformers` builds itself."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file, save_file

from dtmerge.cli import main
from dtmerge.store.checkpoint import load_checkpoint, read_meta

transformers = pytest.importorskip("transformers")
from transformers import DecisionTransformerConfig, DecisionTransformerModel  # noqa: E402

K = 5


def _inputs(state_dim=11, act_dim=3, batch=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    states = torch.randn(batch, K, state_dim, generator=g)
    actions = torch.randn(batch, K, act_dim, generator=g).clamp(-1, 1)
    rtg = torch.rand(batch, K, 1, generator=g) * 3
    timesteps = torch.randint(0, 900, (batch, K), generator=g)
    mask = torch.ones(batch, K, dtype=torch.long)
    mask[0, :2] = 0  # left padding, as acting early in an episode has
    return states, actions, rtg, timesteps, mask


def _hf_actions(model, states, actions, rtg, timesteps, mask):
    with torch.no_grad():
        return model(states=states, actions=actions, returns_to_go=rtg, timesteps=timesteps,
                     attention_mask=mask, return_dict=True).action_preds


def _ours(model, states, actions, rtg, timesteps, mask):
    with torch.no_grad():
        return model.eval()(states, actions, rtg, timesteps, mask.bool())


@pytest.fixture()
def hf_dir(tmp_path):
    """A tiny Hopper-shaped HF DT with every tensor random, position 0's embedding included."""
    torch.manual_seed(0)
    cfg = DecisionTransformerConfig(state_dim=11, act_dim=3, hidden_size=32, n_layer=2, n_head=2, max_ep_len=1000,
                                    n_positions=64, activation_function="relu")
    model = DecisionTransformerModel(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    model.save_pretrained(tmp_path / "hf")
    return tmp_path / "hf", model


def test_import_gives_the_actions_the_hf_model_gives(tmp_path, hf_dir, hopper_file):
    path, hf = hf_dir
    r = CliRunner().invoke(main, ["import", "hf", str(path), str(tmp_path / "ckpt"), "--dataset", str(hopper_file),
                                  "--context-len", str(K)])
    assert r.exit_code == 0, r.output
    ours, meta = load_checkpoint(tmp_path / "ckpt")
    x = _inputs()
    real = x[-1].bool()
    torch.testing.assert_close(_ours(ours, *x)[real], _hf_actions(hf, *x)[real], rtol=1e-5, atol=1e-6)
    assert meta["task"] == "hopper" and meta["imported"]["dropped"] and meta["init"].startswith("hf:")


def test_export_is_loaded_by_from_pretrained_and_acts_the_same(tmp_path, task_models):
    r = CliRunner().invoke(main, ["export", "hf", str(task_models["hopper"]), str(tmp_path / "hf")])
    assert r.exit_code == 0, r.output
    hf = DecisionTransformerModel.from_pretrained(tmp_path / "hf").eval()
    ours, meta = load_checkpoint(task_models["hopper"])
    x = _inputs()
    real = x[-1].bool()
    torch.testing.assert_close(_hf_actions(hf, *x)[real], _ours(ours, *x)[real], rtol=1e-5, atol=1e-6)
    sidecar = json.loads((tmp_path / "hf" / "dtmerge.json").read_text())
    assert sidecar["state_mean"] == meta["state_mean"]
    # and back, with the normalisation from dtmerge.json: the same weights
    back = CliRunner().invoke(main, ["import", "hf", str(tmp_path / "hf"), str(tmp_path / "back")])
    assert back.exit_code == 0, back.output
    a, b = load_file(task_models["hopper"] / "model.safetensors"), load_file(tmp_path / "back" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert read_meta(tmp_path / "back")["state_std"] == meta["state_std"]


def _damaged(tmp_path, hf_dir, change):
    path, _ = hf_dir
    bad = tmp_path / "bad"
    shutil.copytree(path, bad)
    change(bad)
    return CliRunner().invoke(main, ["import", "hf", str(bad), str(tmp_path / "out"), "--task", "hopper",
                                     "--state-mean", str(_numbers(tmp_path, 0.0)), "--state-std",
                                     str(_numbers(tmp_path, 1.0))])


def _numbers(tmp_path, value):
    f = tmp_path / f"n{value}.txt"
    f.write_text(" ".join([str(value)] * 11))
    return f


def _edit_config(path, **changes):
    cfg = json.loads((path / "config.json").read_text())
    cfg.update(changes)
    (path / "config.json").write_text(json.dumps(cfg))


def _pickle_only(path):
    torch.save(load_file(path / "model.safetensors"), path / "pytorch_model.bin")
    (path / "model.safetensors").unlink()


@pytest.mark.parametrize("change,expect", [
    (lambda p: _edit_config(p, action_tanh=False), "action_tanh: False cannot map"),
    (lambda p: _edit_config(p, scale_attn_weights=False), "scale_attn_weights: False cannot map"),
    (lambda p: _edit_config(p, activation_function="swish"), "activation_function 'swish' cannot map"),
    (lambda p: _edit_config(p, model_type="gpt2"), "model_type is 'gpt2'"),
    (lambda p: save_file({k: v for k, v in load_file(p / "model.safetensors").items() if "c_fc" not in k},
                         p / "model.safetensors"), "no tensor encoder.h.0.mlp.c_fc.weight"),
    (_pickle_only, "pass --allow-bin"),
])
def test_what_cannot_map_is_refused_in_one_line(tmp_path, hf_dir, change, expect):
    r = _damaged(tmp_path, hf_dir, change)
    assert r.exit_code != 0 and expect in r.output, r.output
    assert "Traceback" not in r.output and not (tmp_path / "out").exists()


def test_a_pickled_model_is_read_only_as_plain_tensors_when_asked(tmp_path, hf_dir):
    path, hf = hf_dir
    _pickle_only(path)
    r = CliRunner().invoke(main, ["import", "hf", str(path), str(tmp_path / "ckpt"), "--task", "hopper",
                                  "--state-mean", str(_numbers(tmp_path, 0.0)), "--state-std",
                                  str(_numbers(tmp_path, 1.0)), "--allow-bin", "--context-len", str(K)])
    assert r.exit_code == 0, r.output
    x = _inputs()
    real = x[-1].bool()
    torch.testing.assert_close(_ours(load_checkpoint(tmp_path / "ckpt")[0], *x)[real], _hf_actions(hf, *x)[real],
                               rtol=1e-5, atol=1e-6)

    class Payload:  # a pickle that would run code on load
        def __reduce__(self):
            return (print, ("code ran",))

    torch.save({"x": Payload()}, path / "pytorch_model.bin")
    r = CliRunner().invoke(main, ["import", "hf", str(path), str(tmp_path / "evil"), "--task", "hopper",
                                  "--allow-bin"])
    assert r.exit_code != 0 and "not a plain state dict" in r.output and "code ran" not in r.output


def test_two_imported_models_merge(tmp_path, hopper_file, task_files):
    """Hub-style models of two tasks, imported, then merged and evaluated as one bundle."""
    paths = {}
    for task, (state_dim, act_dim) in {"hopper": (11, 3), "walker2d": (17, 6)}.items():
        torch.manual_seed(len(paths))
        cfg = DecisionTransformerConfig(state_dim=state_dim, act_dim=act_dim, hidden_size=32, n_layer=2, n_head=2,
                                        max_ep_len=1000, n_positions=64)
        DecisionTransformerModel(cfg).save_pretrained(tmp_path / f"hf-{task}")
        paths[task] = tmp_path / task
        r = CliRunner().invoke(main, ["import", "hf", str(tmp_path / f"hf-{task}"), str(paths[task]),
                                      "--dataset", str(task_files[task])])
        assert r.exit_code == 0, r.output
    r = CliRunner().invoke(main, ["merge", "--model", str(paths["hopper"]), "--model", str(paths["walker2d"]),
                                  "--select", "attn", "--select", "mlp", "--output", str(tmp_path / "merged")])
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(main, ["eval", str(tmp_path / "merged"), "--task", "walker2d", "--episodes", "1",
                                  "--quiet"])
    assert r.exit_code == 0 and "| walker2d |" in r.output, r.output
