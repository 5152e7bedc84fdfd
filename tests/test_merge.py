"""The merge engine, bundles, Fisher files, Merge-Freeze-Finetune and attention perturbation."""

import json
import shutil

import pytest
import torch
from click.testing import CliRunner
from conftest import TINY
from safetensors.torch import load_file

from dtmerge.cli import main
from dtmerge.evaluate import evaluate_checkpoint, load_policy_model
from dtmerge.merge.engine import MergeConfig, MergeError, merge, plan
from dtmerge.merge.fisher import compute_fisher, fisher_terms, write_fisher
from dtmerge.merge.mff import MFFConfig, merge_freeze_finetune
from dtmerge.merge.perturb import perturb_checkpoint
from dtmerge.model import DecisionTransformer, DTConfig
from dtmerge.model.selectors import SelectorError
from dtmerge.store.bundle import load_bundle_task, trunk_accounting
from dtmerge.store.checkpoint import CheckpointError, hand_built_meta, load_checkpoint, save_checkpoint
from dtmerge.train import TrainConfig, train


def _weights(ckpt):
    return load_file(ckpt / "model.safetensors")


def test_average_bundle_shares_the_mean_and_keeps_everything_else(tmp_path, task_models):
    paths = [task_models[t] for t in ("hopper", "walker2d", "halfcheetah")]
    out = merge(MergeConfig(models=[str(p) for p in paths], select=["attn", "h.0.mlp"], output=str(tmp_path / "b")))
    w = [_weights(p) for p in paths]
    meta = json.loads((out / "bundle.json").read_text())
    assert len(meta["shared"]) == 2 * 4 + 4
    for name in meta["shared"]:
        torch.testing.assert_close(load_file(out / "shared.safetensors")[name],
                                   (w[0][name].double() + w[1][name].double() + w[2][name].double()).div(3).float())
    for task, wi in zip(("hopper", "walker2d", "halfcheetah"), w):
        model, tmeta = load_bundle_task(out, task)
        sd = model.state_dict()
        for name, t in wi.items():
            if name not in meta["shared"]:
                assert torch.equal(sd[name], t), name  # unselected tensors are bit-identical
        assert tmeta["state_mean"] == load_checkpoint(task_models[task])[1]["state_mean"]
    result = evaluate_checkpoint(out, episodes=2, targets=[100.0], device="cpu", precision="fp32",
                                 progress=False, task="walker2d")
    assert result["task"] == "walker2d" and len(result["targets"][0]["returns"]) == 2


def test_swap_and_identity_checkpoint_merges_are_exact(tmp_path, task_models):
    h, w = task_models["hopper"], task_models["walker2d"]
    swapped = merge(MergeConfig(models=[str(h), str(w)], method="interpolate", params={"alpha": 1.0},
                                select=["h.1.attn"], format="checkpoint", output=str(tmp_path / "swap")))
    a, b, s = _weights(h), _weights(w), _weights(swapped)
    for name in s:
        assert torch.equal(s[name], b[name] if name.startswith("transformer.h.1.attn.") else a[name]), name
    same = merge(MergeConfig(models=[str(h), str(w)], method="interpolate", params={"alpha": 0.0},
                             select=["trunk"], format="checkpoint", output=str(tmp_path / "same")))
    assert all(torch.equal(_weights(same)[n], a[n]) for n in a)
    assert load_checkpoint(swapped)[1]["task"] == "hopper"


def test_selector_errors_are_clear(tmp_path, task_models):
    models = [str(task_models["hopper"]), str(task_models["walker2d"])]
    with pytest.raises(SelectorError, match="'attention' matches nothing. Groups: h.0, h.0.ln_1"):
        merge(MergeConfig(models=models, select=["attention"], output=str(tmp_path / "x")))
    with pytest.raises(SelectorError, match="per-task tensors are never merged"):
        merge(MergeConfig(models=models, select=["embed"], output=str(tmp_path / "x")))
    text = plan(MergeConfig(models=models, select=["attn", "!h.0.attn"], output=str(tmp_path / "x")))
    assert "  transformer.h.1.attn.c_attn.weight" in text and "transformer.h.0.attn.c_attn.weight" in text
    merged_part = text.split("kept per task")[0]
    assert "h.0.attn" not in merged_part and "embed_state.weight" in text.split("kept per task")[1]
    assert not (tmp_path / "x").exists()


def test_different_architectures_are_refused(tmp_path, task_models, task_files):
    other = train(TrainConfig(dataset=str(task_files["walker2d"]), out=str(tmp_path / "wide"), steps=1,
                              device="cpu", model={**TINY, "n_embd": 64}), progress=False)
    with pytest.raises(MergeError, match="different architecture.*n_embd"):
        merge(MergeConfig(models=[str(task_models["hopper"]), str(other)], output=str(tmp_path / "x")))


def test_task_arithmetic_needs_a_shared_base(tmp_path, task_models, task_files):
    base = task_models["hopper"]
    ft = [train(TrainConfig(dataset=str(task_files["hopper"]), out=str(tmp_path / f"ft{i}"), steps=2,
                            device="cpu", init=str(base), seed=i), progress=False)
          for i in range(2)]
    cfg = dict(models=[str(p) for p in ft], method="task_arithmetic", base=str(base), select=["trunk"],
               format="checkpoint", output=str(tmp_path / "ta"))
    out = merge(MergeConfig(**cfg))
    avg = merge(MergeConfig(**{**cfg, "method": "average", "base": None, "output": str(tmp_path / "avg")}))
    for n, t in _weights(avg).items():
        torch.testing.assert_close(_weights(out)[n], t, rtol=0, atol=1e-6)
    with pytest.raises(MergeError, match="did not start from base"):
        merge(MergeConfig(**{**cfg, "base": str(task_models["walker2d"])}), overwrite=True)


def test_fisher_merge_and_fisher_file_checks(tmp_path, task_models, task_files):
    import shutil

    h, w = tmp_path / "hopper", tmp_path / "walker2d"  # copies: the session's models stay as made
    shutil.copytree(task_models["hopper"], h)
    shutil.copytree(task_models["walker2d"], w)
    for p in (h, w):
        compute_fisher(p, estimator="empirical", batches=1, batch_size=8, progress=False)
    meta = json.loads((h / "fisher.json").read_text())
    assert meta["estimator"] == "empirical" and meta["windows"] == 8 and meta["total"] > 0
    out = merge(MergeConfig(models=[str(h), str(w)], method="fisher", select=["mlp"], output=str(tmp_path / "f")))
    assert json.loads((out / "bundle.json").read_text())["merge"]["method"] == "fisher"
    # a Fisher that does not fit its checkpoint (the weights changed since) is refused
    copy = tmp_path / "changed"
    model, m = load_checkpoint(h)
    save_checkpoint(copy, model, {k: v for k, v in m.items() if k not in ("format", "config", "dtmerge_version")})
    (copy / "fisher.safetensors").write_bytes((h / "fisher.safetensors").read_bytes())
    fj = json.loads((h / "fisher.json").read_text())
    with torch.no_grad():
        model.transformer.h[0].mlp.c_fc.weight.add_(1.0)
    save_checkpoint(copy, model, {k: v for k, v in m.items() if k not in ("format", "config", "dtmerge_version")})
    (copy / "fisher.safetensors").write_bytes((h / "fisher.safetensors").read_bytes())
    (copy / "fisher.json").write_text(json.dumps(fj))
    with pytest.raises(CheckpointError, match="does not fit this checkpoint"):
        merge(MergeConfig(models=[str(copy), str(w)], method="fisher", output=str(tmp_path / "g")))
    with pytest.raises(CheckpointError, match="file not found; compute it first"):
        merge(MergeConfig(models=[str(h), str(task_models["halfcheetah"])], method="fisher",
                          output=str(tmp_path / "g")))


def test_fisher_estimators_match_per_window_loops():
    torch.manual_seed(0)
    model = DecisionTransformer(DTConfig(state_dim=3, act_dim=2, n_embd=8, n_layer=1, n_head=1, context_len=3)).eval()
    B = 4
    g = torch.Generator().manual_seed(1)
    batch = {"states": torch.randn(B, 3, 3, generator=g), "actions": torch.rand(B, 3, 2, generator=g) * 2 - 1,
             "returns_to_go": torch.randn(B, 3, 1, generator=g), "timesteps": torch.randint(0, 9, (B, 3), generator=g),
             "mask": torch.tensor([[1, 1, 1], [0, 1, 1], [0, 0, 1], [1, 1, 1]], dtype=torch.bool)}
    names = [n for n, _ in model.named_parameters() if n.startswith("transformer.")]
    params = dict(model.named_parameters())
    keys = ("states", "actions", "returns_to_go", "timesteps", "mask")
    exact = {n: torch.zeros_like(params[n]) for n in names}
    empirical = {n: torch.zeros_like(params[n]) for n in names}
    for i in range(B):
        x = [batch[k][i:i + 1] for k in keys]
        m = batch["mask"][i]
        pred = model(*x)[0]
        for t in range(3):
            for k in range(2):
                if m[t]:
                    gr = torch.autograd.grad(pred[t, k], [params[n] for n in names], retain_graph=True)
                    for n, v in zip(names, gr):
                        exact[n] += v ** 2
        loss = 0.5 * (((pred - batch["actions"][i]) ** 2) * m[:, None]).sum()
        for n, v in zip(names, torch.autograd.grad(loss, [params[n] for n in names])):
            empirical[n] += v ** 2
    for est, expected, chunk in (("exact", exact, 1), ("exact", exact, 3), ("empirical", empirical, 1)):
        got = fisher_terms(model, batch, est, names, window_chunk=chunk)  # 3: a GPU's vmap over windows
        for n in names:
            torch.testing.assert_close(got[n], expected[n], rtol=1e-4, atol=1e-7)


def test_the_exact_fisher_vectorises_windows_only_on_a_gpu_and_within_its_memory_budget():
    from dtmerge.merge import fisher as fisher_module

    model = DecisionTransformer(DTConfig(state_dim=3, act_dim=2, n_embd=8, n_layer=1, n_head=1, context_len=3))
    names = [n for n, _ in model.named_parameters() if n.startswith("transformer.")]
    per_window = 4 * 3 * 2 * sum(p.numel() for n, p in model.named_parameters() if n in names)
    assert fisher_module.window_chunk(torch.device("cpu"), model, names) == 1
    assert fisher_module.window_chunk(torch.device("cuda"), model, names) == fisher_module.GPU_CHUNK_BYTES // per_window


def test_mff_keeps_merged_tensors_bit_identical_and_trains_the_rest(tmp_path, task_models):
    paths = [str(task_models[t]) for t in ("hopper", "walker2d", "halfcheetah")]
    cfg = MFFConfig(merge=MergeConfig(models=paths, select=["attn", "mlp"], output=str(tmp_path / "merged")),
                    output=str(tmp_path / "mff"), finetune={"steps": 3, "batch_size": 8, "warmup_steps": 1,
                                                            "device": "cpu", "precision": "fp32"})
    out = merge_freeze_finetune(cfg, progress=False)
    merged_shared = load_file(tmp_path / "merged" / "shared.safetensors")
    final_shared = load_file(out / "shared.safetensors")
    assert merged_shared.keys() == final_shared.keys()
    assert all(torch.equal(merged_shared[n], final_shared[n]) for n in merged_shared)
    for task in ("hopper", "walker2d", "halfcheetah"):
        before, _ = load_bundle_task(tmp_path / "merged", task)
        after, _ = load_bundle_task(out, task)
        assert not torch.equal(before.embed_state.weight, after.embed_state.weight)  # unmerged parts trained
        assert not torch.equal(before.transformer.h[0].ln_1.weight, after.transformer.h[0].ln_1.weight)
    acc = trunk_accounting(out)
    assert acc["tasks"] == ["hopper", "walker2d", "halfcheetah"]
    ln = 2 * (2 * 2 * 32) + 2 * 32  # per task: 2 blocks x 2 LNs x (w+b) x 32 + ln_f
    assert acc["bundle_transformer_params"] == acc["shared_transformer_params"] + 3 * ln


@pytest.mark.parametrize("select,percent", [(["attn"], 166.70), (["attn", "mlp"], 100.30), ([], 200.0)])
def test_bundle_accounting_matches_table_ii(tmp_path, select, percent):
    """Two 3-layer 128-dim models: the paper reports 166.82% and 100.26% (it counts slightly differently)."""
    ckpts = []
    for i, (s, a) in enumerate(((11, 3), (17, 6))):
        torch.manual_seed(i)
        m = DecisionTransformer(DTConfig(state_dim=s, act_dim=a))
        ckpts.append(str(save_checkpoint(tmp_path / f"m{i}", m, hand_built_meta(["hopper", "halfcheetah"][i]))))
    if not select:  # nothing shared: select one tensor, swap with alpha 0 is not sharing; emulate with 0 shared
        out = merge(MergeConfig(models=ckpts, select=["h.0.ln_1"], output=str(tmp_path / "b")))
        acc = trunk_accounting(out)
        assert acc["relative_to_single_model_percent"] == pytest.approx(200.0 - 100 * 256 / 595072, abs=0.01)
        return
    acc = trunk_accounting(merge(MergeConfig(models=ckpts, select=select, output=str(tmp_path / "b"))))
    assert acc["single_model_transformer_params"] == 595_072
    assert acc["relative_to_single_model_percent"] == pytest.approx(percent, abs=0.01)


def test_bundle_round_trip_is_exact_and_bad_task_is_clear(tmp_path, task_models):
    out = merge(MergeConfig(models=[str(task_models["hopper"]), str(task_models["walker2d"])],
                            output=str(tmp_path / "b")))
    m1, _ = load_policy_model(out, "hopper")
    m2, _ = load_policy_model(out, "hopper")
    assert all(torch.equal(a, b) for a, b in zip(m1.state_dict().values(), m2.state_dict().values()))
    with pytest.raises(CheckpointError, match="no task 'halfcheetah' in this bundle"):
        load_policy_model(out, "halfcheetah")


def test_perturbations(tmp_path, task_models):
    src = task_models["hopper"]
    model, _ = load_checkpoint(src)
    removed, _ = load_checkpoint(perturb_checkpoint(src, tmp_path / "rm", "remove"))
    ident, _ = load_checkpoint(perturb_checkpoint(src, tmp_path / "id", "identity", select=["h.1.attn"]))
    r1, _ = load_checkpoint(perturb_checkpoint(src, tmp_path / "r1", "random", seed=5))
    r2, _ = load_checkpoint(perturb_checkpoint(src, tmp_path / "r2", "random", seed=5))
    w1 = ident.transformer.h[1].attn.c_attn.weight
    assert torch.equal(w1, torch.ones_like(w1))
    h0 = model.transformer.h[0].attn.c_attn.weight
    assert torch.equal(ident.transformer.h[0].attn.c_attn.weight, h0)
    assert all(torch.equal(a, b) for a, b in zip(r1.state_dict().values(), r2.state_dict().values()))
    # "remove" = residual only: same outputs as a model whose attention sublayers return zero
    for block in model.transformer.h:
        block.attn.forward = lambda x, attn_mask=None, keep=None: torch.zeros_like(x if keep is None else x[:, keep])
    x = (torch.randn(2, 10, 11), torch.randn(2, 10, 3), torch.randn(2, 10, 1), torch.randint(0, 100, (2, 10)))
    torch.testing.assert_close(removed.eval()(*x), model.eval()(*x))
    with pytest.raises(ValueError, match="attention tensors only"):
        perturb_checkpoint(src, tmp_path / "bad", "remove", select=["mlp"])


def test_all_ones_attention_is_removed_attention_and_identity_map_is_the_identity(tmp_path, task_models):
    """The paper's "identity" (all ones) adds one value to every dimension, which every later
    LayerNorm subtracts: the same actions as removing attention. identity-map passes the
    attention-weighted LayerNorm'd inputs through unchanged."""
    src = task_models["hopper"]
    model, _ = load_checkpoint(src)
    ones, _ = load_checkpoint(perturb_checkpoint(src, tmp_path / "ones", "identity"))
    removed, _ = load_checkpoint(perturb_checkpoint(src, tmp_path / "rm", "remove"))
    ident, _ = load_checkpoint(perturb_checkpoint(src, tmp_path / "map", "identity-map"))
    x = (torch.randn(2, 10, 11), torch.randn(2, 10, 3), torch.randn(2, 10, 1), torch.randint(0, 100, (2, 10)))
    torch.testing.assert_close(ones.eval()(*x), removed.eval()(*x), atol=1e-5, rtol=1e-4)
    assert not torch.allclose(ident.eval()(*x), removed(*x), atol=1e-3)
    attn = ident.transformer.h[0].attn.eval()
    h = torch.randn(1, 4, attn.c_proj.weight.shape[0])
    torch.testing.assert_close(attn(h)[:, 0], h[:, 0])  # the first token attends only to itself
    q, k = model.transformer.h[0].attn.c_attn.weight.split(h.shape[-1], dim=1)[:2]
    qi, ki = attn.c_attn.weight.split(h.shape[-1], dim=1)[:2]
    assert torch.equal(q, qi) and torch.equal(k, ki)  # queries and keys as trained


def test_merge_cli_yaml_dry_run_and_info(tmp_path, task_models):
    cfg = tmp_path / "merge.yaml"
    cfg.write_text(f"models: [{task_models['hopper']}, {task_models['walker2d']}]\n"
                   f"select: [attn]\nmethod: interpolate\nparams: {{alpha: 0.5}}\noutput: {tmp_path / 'out'}\n")
    r = CliRunner().invoke(main, ["merge", str(cfg), "--dry-run"])
    assert r.exit_code == 0 and "merged (8 tensors)" in r.output and not (tmp_path / "out").exists()
    r = CliRunner().invoke(main, ["merge", str(cfg), "--param", "alpha=1"])
    assert r.exit_code == 0, r.output
    assert json.loads((tmp_path / "out" / "bundle.json").read_text())["merge"]["params"] == {"alpha": 1}
    r = CliRunner().invoke(main, ["info", str(tmp_path / "out")])
    acc = json.loads(r.output)["accounting"]
    assert acc["relative_to_single_model_percent"] < 200
    r = CliRunner().invoke(main, ["merge", str(cfg), "--param", "beta=1"])
    assert r.exit_code != 0


def test_finetune_then_merge_from_a_multitask_bundle(tmp_path, task_files):
    from dtmerge.merge.pipeline import FinetuneMergeConfig, finetune_then_merge

    names = ["hopper", "walker2d"]
    multi = train(TrainConfig(dataset=[str(task_files[n]) for n in names], out=str(tmp_path / "multi"), steps=2,
                              warmup_steps=1, batch_size=8, device="cpu", precision="fp32",
                              model=TINY), progress=False)
    out = finetune_then_merge(FinetuneMergeConfig(
        multitask=str(multi), datasets={n: str(task_files[n]) for n in names}, output=str(tmp_path / "merged"),
        finetune={"steps": 3, "warmup_steps": 1, "batch_size": 8, "device": "cpu", "precision": "fp32"},
        fisher={"estimator": "empirical", "batches": 1, "batch_size": 4}, eval_episodes=2), progress=False)
    results = json.loads((tmp_path / "merged.runs" / "eval.json").read_text())["results"]
    assert [r["task"] for r in results] == names and all(len(r["targets"][0]["returns"]) == 2 for r in results)
    start = {n: load_bundle_task(multi, n)[0].state_dict() for n in names}
    tuned = {n: load_checkpoint(tmp_path / "merged.runs" / n / "checkpoint")[0].state_dict() for n in names}
    merged = {n: load_bundle_task(out, n)[0].state_dict() for n in names}
    for n in names:
        assert torch.equal(tuned[n]["transformer.ln_f.weight"], start[n]["transformer.ln_f.weight"])  # frozen
        assert torch.equal(tuned[n]["embed_timestep.weight"], start[n]["embed_timestep.weight"])
        assert not torch.equal(tuned[n]["transformer.h.0.mlp.c_fc.weight"],
                               start[n]["transformer.h.0.mlp.c_fc.weight"])
        assert torch.equal(merged[n]["embed_state.weight"], tuned[n]["embed_state.weight"])  # own parts kept
    fc = "transformer.h.0.mlp.c_fc.weight"
    w = merged["hopper"][fc]
    assert torch.equal(w, merged["walker2d"][fc])  # one shared trunk
    lo = torch.minimum(tuned["hopper"][fc], tuned["walker2d"][fc])
    hi = torch.maximum(tuned["hopper"][fc], tuned["walker2d"][fc])
    assert bool(((w >= lo - 1e-7) & (w <= hi + 1e-7)).all())  # a Fisher-weighted mean lies between the two
    meta = load_checkpoint(tmp_path / "merged.runs" / "hopper" / "checkpoint")[1]
    assert meta["init_kind"] == "bundle" and meta["state_mean"] == load_bundle_task(multi, "hopper")[1]["state_mean"]


@pytest.mark.parametrize("normalize", ["total", "selected", "none"])
def test_fisher_normalisers_match_hand_computation(tmp_path, task_models, normalize):
    """total: each model's Fisher over every block (transformer.h.*, the paper's code; ln_f left out);
    selected: over the merged tensors only; none: raw."""
    paths = [task_models["hopper"], task_models["walker2d"]]
    values = [{"mlp": 1.0, "blocks": 3.0, "ln_f": 100.0}, {"mlp": 2.0, "blocks": 1.0, "ln_f": 50.0}]
    for path, v in zip(paths, values):
        shutil.copytree(path, tmp_path / path.parent.name)
    paths = [tmp_path / p.parent.name for p in paths]
    weights = [_weights(p) for p in paths]
    trunk = [n for n in weights[0] if n.startswith("transformer.")]
    mlp = [n for n in trunk if n.startswith("transformer.h.0.mlp.")]
    for path, v in zip(paths, values):
        fisher = {n: torch.full_like(weights[0][n], v["mlp"] if n in mlp else v["ln_f"] if "ln_f" in n else v["blocks"])
                  for n in trunk}
        write_fisher(path, fisher, {"estimator": "exact", "dataset": "(hand-made)", "task": load_checkpoint(path)[1]
                                    ["task"], "batches": 1, "batch_size": 1, "seed": 0, "windows": 1,
                                    "action_tokens": 1, "normalised_by": "windows"})
    n_mlp = sum(weights[0][n].numel() for n in mlp)
    n_blocks = sum(weights[0][n].numel() for n in trunk if n.startswith("transformer.h.")) - n_mlp
    divisor = {"total": [v["mlp"] * n_mlp + v["blocks"] * n_blocks for v in values],
               "selected": [v["mlp"] * n_mlp for v in values], "none": [1.0, 1.0]}[normalize]
    floor = 1e-12
    w = [v["mlp"] / d + floor for v, d in zip(values, divisor)]
    out = merge(MergeConfig(models=[str(p) for p in paths], method="fisher", select=["h.0.mlp"],
                            fisher_normalize=normalize, output=str(tmp_path / "f")))
    shared = load_file(out / "shared.safetensors")
    for n in mlp:
        expected = (w[0] * weights[0][n].double() + w[1] * weights[1][n].double()) / (w[0] + w[1])
        torch.testing.assert_close(shared[n], expected.float(), rtol=0, atol=1e-7)
    assert json.loads((paths[0] / "fisher.json").read_text())["total"] == pytest.approx(1 * n_mlp + 3 * n_blocks)


def test_regmean_grams_match_a_hand_loop_and_merge(tmp_path, task_models):
    import shutil

    from click.testing import CliRunner
    from safetensors.torch import load_file

    from dtmerge.cli import main
    from dtmerge.data import WindowSampler, load_dataset
    from dtmerge.merge.regmean import compute_grams, layer_grams
    from dtmerge.store.checkpoint import load_checkpoint

    models = {}
    for task in ("hopper", "walker2d"):
        models[task] = tmp_path / task
        shutil.copytree(task_models[task], models[task])
    model, meta = load_checkpoint(models["hopper"])
    traj, _ = load_dataset(meta["dataset"], "hopper")
    batch = WindowSampler(traj, model.config.context_len, meta["state_mean"], meta["state_std"], meta["rtg_scale"],
                          model.config.max_ep_len, seed=0).sample(8)
    grams, tokens = layer_grams(model.eval(), [batch])
    key_mask = batch["mask"].repeat_interleave(3, dim=1)
    with torch.no_grad():  # block 0's c_attn sees ln_1 of the embedded tokens
        x = model.transformer.h[0].ln_1(model.tokens(batch["states"], batch["actions"], batch["returns_to_go"],
                                                     batch["timesteps"]))[key_mask].double()
    torch.testing.assert_close(grams["transformer.h.0.attn.c_attn.weight"], x.T @ x)
    assert tokens == int(key_mask.sum()) and len(grams) == 4 * model.config.n_layer

    r = CliRunner().invoke(main, ["merge", "--model", str(models["hopper"]), "--model", str(models["walker2d"]),
                                  "--method", "regmean", "--output", str(tmp_path / "m")])
    assert r.exit_code != 0 and "compute it first with `dtmerge regmean" in r.output
    for path in models.values():
        compute_grams(path, batches=1, batch_size=8, progress=False)
    r = CliRunner().invoke(main, ["merge", "--model", str(models["hopper"]), "--model", str(models["walker2d"]),
                                  "--method", "regmean", "--select", "attn", "--select", "mlp",
                                  "--output", str(tmp_path / "m")])
    assert r.exit_code == 0, r.output
    shared = load_file(tmp_path / "m" / "shared.safetensors")
    a, b = load_file(models["hopper"] / "model.safetensors"), load_file(models["walker2d"] / "model.safetensors")
    name = "transformer.h.0.mlp.c_fc.weight"
    assert not torch.allclose(shared[name], (a[name] + b[name]) / 2)  # weighted by the data, not averaged
    bias = "transformer.h.0.mlp.c_fc.bias"
    torch.testing.assert_close(shared[bias], (a[bias] + b[bias]) / 2)
