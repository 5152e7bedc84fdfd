"""Permutation alignment: a permuted DT computes exactly what the original did (every kind of
permutation, every task's shapes), and aligning a permuted copy back recovers the original."""

import json
import shutil

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file

from dtmerge.cli import main
from dtmerge.envs import TASKS
from dtmerge.merge.align import (
    activation_matching,
    align_checkpoint,
    apply_permutation,
    identity,
    join_attention,
    permutation_spec,
    random_perms,
    split_attention,
    weight_matching,
)
from dtmerge.merge.engine import MergeConfig, merge
from dtmerge.merge.fisher import compute_fisher, read_fisher_meta
from dtmerge.merge.mff import MFFConfig, merge_freeze_finetune
from dtmerge.model import DecisionTransformer, DTConfig
from dtmerge.store.checkpoint import load_checkpoint, read_meta

SHAPE = {"n_embd": 16, "n_layer": 2, "n_head": 4, "context_len": 5, "dropout": 0.0}


def model_for(task: str, seed: int = 0, **shape) -> DecisionTransformer:
    torch.manual_seed(seed)
    t = TASKS[task]
    model = DecisionTransformer(DTConfig(state_dim=t.obs_dim, act_dim=t.act_dim, **(SHAPE | shape)))
    with torch.no_grad():  # trained-looking weights: biases and LayerNorms away from their init
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return model.eval()


def windows(model: DecisionTransformer, n: int = 64, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    c, K = model.config, model.config.context_len
    mask = torch.ones(n, K, dtype=torch.bool)
    mask[: n // 4, :2] = False  # some padded windows
    return {"states": torch.randn(n, K, c.state_dim, generator=g), "actions": torch.randn(n, K, c.act_dim, generator=g),
            "returns_to_go": torch.randn(n, K, 1, generator=g), "mask": mask,
            "timesteps": torch.randint(0, c.max_ep_len, (n, K), generator=g)}


def act(model, batch):
    with torch.no_grad():
        return model(batch["states"], batch["actions"], batch["returns_to_go"], batch["timesteps"], batch["mask"])


def permuted_copy(model: DecisionTransformer, perms) -> DecisionTransformer:
    copy = DecisionTransformer(model.config).eval()
    copy.load_state_dict(apply_permutation(model.state_dict(), model.config, perms))
    return copy


def test_the_spec_covers_every_tensor():
    model = model_for("hopper")
    assert set(permutation_spec(model.config)) == set(split_attention(model.state_dict(), 2))


@pytest.mark.parametrize("task", list(TASKS))
@pytest.mark.parametrize("kind", ["res", "mlp", "heads", "qk", "vo", "all"])
def test_a_permuted_model_computes_the_same_actions(task, kind):
    model = model_for(task)
    perms = identity(model.config)
    for name, p in random_perms(model.config, seed=1).items():
        if kind == "all" or name.split(".")[0] == kind:
            perms[name] = p
    copy = permuted_copy(model, perms)
    batch = windows(model)
    moved = [k for k, v in copy.state_dict().items() if not torch.equal(v, model.state_dict()[k])]
    assert moved  # the weights really moved ...
    torch.testing.assert_close(act(copy, batch), act(model, batch), rtol=1e-5, atol=1e-6)  # ... the function did not


def test_a_wrong_permutation_changes_the_actions():
    """The exactness test can fail: permuting q's dimensions without k's changes what the model does."""
    model = model_for("hopper")
    state = split_attention(model.state_dict(), 2)
    state["transformer.h.0.attn.q.weight"] = state["transformer.h.0.attn.q.weight"][:, torch.randperm(16)]
    copy = DecisionTransformer(model.config).eval()
    copy.load_state_dict(join_attention(state, 2))
    batch = windows(model)
    assert not torch.allclose(act(copy, batch), act(model, batch), atol=1e-4)


@pytest.mark.parametrize("method", ["weights", "activations"])
@pytest.mark.parametrize("n_head", [1, 4])
def test_aligning_a_permuted_copy_recovers_the_original(method, n_head):
    model = model_for("walker2d", n_head=n_head)
    scrambled = permuted_copy(model, random_perms(model.config, seed=7))
    if method == "weights":
        perms = weight_matching(model.state_dict(), scrambled.state_dict(), model.config, seed=0)
    else:
        batches = [(b, b) for b in (windows(model, n=128, seed=s) for s in range(2))]
        perms = activation_matching(model, scrambled, batches)
    aligned = apply_permutation(scrambled.state_dict(), model.config, perms)
    for name, t in model.state_dict().items():
        assert torch.equal(aligned[name], t), name


def test_weight_matching_improves_the_match_of_two_different_models():
    a, b = model_for("hopper", seed=0), model_for("hopper", seed=1)
    perms = weight_matching(a.state_dict(), b.state_dict(), a.config, seed=0)
    aligned = apply_permutation(b.state_dict(), a.config, perms)
    trunk = [k for k in a.state_dict() if k.startswith("transformer.")]

    def dist(s):
        return sum(float((a.state_dict()[k] - s[k]).pow(2).sum()) for k in trunk)
    assert dist(aligned) < dist(b.state_dict())
    assert not all(np.array_equal(p, q) for p, q in zip(perms.values(), identity(a.config).values()))


def _same_actions(path_a, path_b):
    (a, _), (b, _) = load_checkpoint(path_a), load_checkpoint(path_b)
    batch = windows(a.eval())
    torch.testing.assert_close(act(b.eval(), batch), act(a, batch), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("method", ["weights", "activations"])
def test_align_command_writes_a_checkpoint_that_acts_as_the_source(tmp_path, task_models, method):
    source = tmp_path / "walker2d"
    shutil.copytree(task_models["walker2d"], source)
    compute_fisher(source, batches=1, batch_size=4, progress=False, overwrite=True)
    out = tmp_path / "aligned"
    r = CliRunner().invoke(main, ["align", str(task_models["hopper"]), str(source), str(out), "--method", method,
                                  "--windows", "64"])
    assert r.exit_code == 0, r.output
    _same_actions(source, out)
    meta = read_meta(out)
    assert meta["alignment"]["method"] == method and meta["task"] == "walker2d"
    fisher, aligned_fisher = load_file(source / "fisher.safetensors"), load_file(out / "fisher.safetensors")
    assert read_fisher_meta(out)["total"] == pytest.approx(read_fisher_meta(source)["total"])
    assert any(not torch.equal(fisher[k], aligned_fisher[k]) for k in fisher)  # permuted along with the weights
    again = CliRunner().invoke(main, ["align", str(task_models["hopper"]), str(source), str(source)])
    assert again.exit_code != 0 and "input" in again.output  # never over one of its own inputs


def test_merge_with_align_merges_the_aligned_models(tmp_path, task_models):
    hopper, walker = task_models["hopper"], task_models["walker2d"]
    aligned = align_checkpoint(hopper, walker, tmp_path / "aligned")
    cfg = dict(select=["attn", "mlp"], method="average")
    merged = merge(MergeConfig(models=[str(hopper), str(walker)], align="weights", output=str(tmp_path / "m"), **cfg))
    by_hand = merge(MergeConfig(models=[str(hopper), str(aligned)], output=str(tmp_path / "h"), **cfg))
    shared, expected = load_file(merged / "shared.safetensors"), load_file(by_hand / "shared.safetensors")
    assert shared.keys() == expected.keys() and all(torch.equal(shared[k], expected[k]) for k in shared)
    plain = merge(MergeConfig(models=[str(hopper), str(walker)], output=str(tmp_path / "p"), **cfg))
    assert any(not torch.equal(shared[k], load_file(plain / "shared.safetensors")[k]) for k in shared)
    provenance = json.loads((merged / "bundle.json").read_text())
    assert provenance["merge"]["models"] == [str(hopper), str(walker)] and provenance["merge"]["align"] == "weights"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["aligned", "h", "m", "p"]  # no aligned copies left


def test_mff_aligns_before_merging(tmp_path, task_models):
    paths = [str(task_models[t]) for t in ("hopper", "walker2d", "halfcheetah")]
    cfg = MFFConfig(merge=MergeConfig(models=paths, select=["attn", "mlp"], align="activations",
                                      output=str(tmp_path / "merged")),
                    output=str(tmp_path / "mff"), finetune={"steps": 2, "batch_size": 8, "warmup_steps": 1,
                                                            "device": "cpu", "precision": "fp32"})
    out = merge_freeze_finetune(cfg, progress=False)
    plain = merge(MergeConfig(models=paths, select=["attn", "mlp"], output=str(tmp_path / "plain")))
    aligned, unaligned = load_file(out / "shared.safetensors"), load_file(plain / "shared.safetensors")
    assert any(not torch.equal(aligned[k], unaligned[k]) for k in aligned)
    assert json.loads((tmp_path / "merged" / "bundle.json").read_text())["merge"]["align"] == "activations"
