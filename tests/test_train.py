import json

import numpy as np
import pytest
import torch
from conftest import TINY
from safetensors.torch import load_file, save_file

from dtmerge.evaluate import evaluate, evaluate_checkpoint
from dtmerge.model import DecisionTransformer, DTConfig
from dtmerge.outputs import OutputError
from dtmerge.store.checkpoint import CheckpointError, hand_built_meta, load_checkpoint, save_checkpoint
from dtmerge.train import TrainConfig, train


def _cfg(data, out, **kw):
    base = dict(dataset=str(data), out=str(out), steps=6, warmup_steps=2, batch_size=16, log_every=1,
                save_every=3, precision="fp32", device="cpu", model=TINY)
    return TrainConfig(**{**base, **kw})


def _losses(run):
    return [json.loads(line)["loss"] for line in open(run / "metrics.jsonl")]


def test_training_lowers_the_loss(tmp_path, hopper_file):
    train(_cfg(hopper_file, tmp_path / "run", steps=150, warmup_steps=10, lr=1e-3, batch_size=32), progress=False)
    loss = _losses(tmp_path / "run")
    assert np.mean(loss[-20:]) < 0.5 * np.mean(loss[:5]), (loss[:5], loss[-20:])


def test_resume_ends_with_the_same_weights(tmp_path, hopper_file):
    straight = train(_cfg(hopper_file, tmp_path / "a"), progress=False)
    train(_cfg(hopper_file, tmp_path / "b", steps=3), progress=False)
    with pytest.raises(OutputError, match="b exists; pass --overwrite"):
        train(_cfg(hopper_file, tmp_path / "b"), progress=False)
    resumed = train(_cfg(hopper_file, tmp_path / "b"), resume=True, progress=False)
    a, b = load_file(straight / "model.safetensors"), load_file(resumed / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert _losses(tmp_path / "a") == _losses(tmp_path / "b")
    with pytest.raises(CheckpointError, match="config differs"):
        train(_cfg(hopper_file, tmp_path / "b", lr=5e-4, steps=9), resume=True, progress=False)


def test_the_masked_loss_has_the_indexed_means_gradient_bit_for_bit():
    """action_mse avoids boolean indexing (a host-device sync per step on a GPU) and changes no
    gradient: the same bits as err[mask].mean()'s."""
    from dtmerge.train.loop import action_mse

    g = torch.Generator().manual_seed(0)
    pred = torch.randn(8, 10, 3, generator=g, requires_grad=True)
    batch = {"actions": torch.randn(8, 10, 3, generator=g), "mask": torch.rand(8, 10, generator=g) > 0.3}
    action_mse(pred, batch).backward()
    ours, pred.grad = pred.grad, None
    ((pred - batch["actions"]) ** 2)[batch["mask"]].mean().backward()
    assert torch.equal(ours, pred.grad)


def test_a_diverging_run_names_its_first_bad_step_and_leaves_nothing(tmp_path, hopper_file):
    """Non-finite gradients are caught at the next log or save step (no host-device sync each
    step), named by the first step they appeared at, before anything is logged or saved."""
    from dtmerge.errors import DtmergeError

    with pytest.raises(DtmergeError, match=r"step 2: the loss or its gradient is not finite"):  # checked at 20
        train(_cfg(hopper_file, tmp_path / "run", lr=1e30, warmup_steps=1, log_every=20, save_every=20, steps=40),
              progress=False)
    assert not (tmp_path / "run").exists()  # it failed before its first checkpoint: nothing left


def test_the_finite_watch_names_each_runs_first_bad_step():
    from dtmerge.errors import DtmergeError
    from dtmerge.train.loop import FiniteWatch

    watch = FiniteWatch(torch.device("cpu"), ["a", "b"])
    watch.watch(torch.tensor([1.0, 2.0]), 1)
    watch.check()  # all finite: nothing raised
    watch.watch(torch.tensor([1.0, float("inf")]), 2)
    watch.watch(torch.tensor([float("nan"), float("nan")]), 3)
    with pytest.raises(DtmergeError, match="^b: step 2: "):  # the run that went bad first
        watch.check()
    assert watch.first_bad.tolist() == [3, 2]


def test_same_seed_same_run_other_seed_other_run(tmp_path, hopper_file):
    runs = [train(_cfg(hopper_file, tmp_path / f"r{i}", steps=3, seed=s), progress=False)
            for i, s in enumerate((1, 1, 2))]
    w = [load_file(r / "model.safetensors")["transformer.h.0.attn.c_attn.weight"] for r in runs]
    assert torch.equal(w[0], w[1]) and not torch.equal(w[0], w[2])


def test_checkpoint_round_trip_is_bit_exact(tmp_path):
    torch.manual_seed(0)
    model = DecisionTransformer(DTConfig(state_dim=11, act_dim=3, **TINY))
    save_checkpoint(tmp_path / "ck", model, hand_built_meta("hopper"))
    loaded, meta = load_checkpoint(tmp_path / "ck")
    assert meta["task"] == "hopper" and meta["config"] == model.config.model_dump()
    for (n1, p1), (n2, p2) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert n1 == n2 and torch.equal(p1, p2)
    save_checkpoint(tmp_path / "ck", loaded, hand_built_meta("hopper"))  # replacing in place works
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp leftovers


def test_bad_checkpoints_get_clear_errors(tmp_path):
    model = DecisionTransformer(DTConfig(state_dim=11, act_dim=3, **TINY))
    ck = save_checkpoint(tmp_path / "ck", model, hand_built_meta("hopper"))
    weights = ck / "model.safetensors"
    good = weights.read_bytes()
    weights.write_bytes(good[: len(good) // 2])
    with pytest.raises(CheckpointError, match="model.safetensors: not a readable safetensors file"):
        load_checkpoint(ck)
    tensors = load_file_bytes(good)
    tensors["transformer.h.0.mlp.c_fc.weight"] = torch.zeros(3, 3)
    save_file(tensors, weights)
    with pytest.raises(CheckpointError, match=r"transformer.h.0.mlp.c_fc.weight has shape \(3, 3\)"):
        load_checkpoint(ck)
    tensors.pop("transformer.h.0.mlp.c_fc.weight")
    save_file(tensors, weights)
    with pytest.raises(CheckpointError, match="missing: \\['transformer.h.0.mlp.c_fc.weight'\\]"):
        load_checkpoint(ck)
    (ck / "meta.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="meta.json: not valid JSON"):
        load_checkpoint(ck)
    (ck / "meta.json").unlink()
    with pytest.raises(CheckpointError, match="meta.json: file not found"):
        load_checkpoint(ck)


def load_file_bytes(data: bytes):
    from safetensors.torch import load

    return dict(load(data))


def test_evaluation_is_deterministic_and_counts_exactly_n_episodes(hopper):
    torch.manual_seed(0)
    model = DecisionTransformer(DTConfig(state_dim=11, act_dim=3, **TINY))
    mean, std = np.zeros(11), np.ones(11)
    kw = dict(targets=[3600, 1800], episodes=5, device="cpu", precision="fp32", progress=False)
    a = evaluate(model, hopper, mean, std, seed=7, **kw)
    b = evaluate(model, hopper, mean, std, seed=7, **kw)
    c = evaluate(model, hopper, mean, std, seed=8, **kw)
    assert a["targets"] == b["targets"]
    assert a["targets"][0]["returns"] != c["targets"][0]["returns"]
    for t in a["targets"]:
        assert len(t["returns"]) == 5 and len(t["lengths"]) == 5
        assert t["score_mean"] == pytest.approx(np.mean(hopper.normalized_score(np.array(t["returns"]))))
        assert t["return_stderr"] == pytest.approx(np.std(t["returns"], ddof=1) / np.sqrt(5))


def test_evaluation_matches_one_episode_at_a_time(hopper):
    """Batching must not change results: each episode equals its own unbatched rollout."""
    torch.manual_seed(0)
    model = DecisionTransformer(DTConfig(state_dim=11, act_dim=3, **TINY))
    mean, std = np.zeros(11), np.ones(11)
    kw = dict(targets=[3600], device="cpu", precision="fp32", progress=False)
    batched = evaluate(model, hopper, mean, std, episodes=3, seed=0, **kw)["targets"][0]
    for i in range(3):
        single = evaluate(model, hopper, mean, std, episodes=1, seed=i, **kw)["targets"][0]
        assert single["lengths"][0] == batched["lengths"][i]
        assert single["returns"][0] == pytest.approx(batched["returns"][i], rel=1e-5)


def act_alike(policies, steps: int, seed: int = 0):
    """Feed each policy the same observations and rewards, one episode ending early, and return
    their actions per step (live episodes only, as `run_episodes` asks)."""
    rng, n = np.random.default_rng(seed), policies[0].states.shape[0]
    live, taken = np.ones(n, bool), []
    for t in range(steps):
        live[1] = t < 3
        obs = rng.normal(size=(n, policies[0].states.shape[2])).astype(np.float32)
        taken.append([p.act(obs, live, t) for p in policies])
        reward = rng.normal(size=n)
        for p in policies:
            p.observe(reward, t)
    return taken


def test_acting_on_static_shapes_predicts_what_live_windows_do(hopper):
    """The CUDA way of acting (every episode a full K-step window, the padding masked, finished
    episodes computed and ignored) gives the actions the CPU way (live episodes, unpadded) does,
    through the first K steps, where windows are padded, and after."""
    from dtmerge.evaluate import DTPolicy

    torch.manual_seed(0)
    model = DecisionTransformer(DTConfig(state_dim=11, act_dim=3, **TINY))
    targets = np.array([3600.0, 1800.0, 900.0])
    live_only, static = (DTPolicy(model, hopper, np.zeros(11), np.ones(11), targets, 1000.0, "cpu", "fp32",
                                  static=s) for s in (False, True))
    assert static.graph is None and not live_only.static  # a CPU acts on live windows unless told
    for t, (a, b) in enumerate(act_alike([live_only, static], TINY["context_len"] + 5)):
        assert a.shape == b.shape == (3 if t < 3 else 2, 3)
        np.testing.assert_allclose(a, b, atol=1e-5)


def test_train_command_writes_eval_json(tmp_path, hopper_file):
    from click.testing import CliRunner

    from dtmerge.cli import main

    r = CliRunner().invoke(main, ["train", "--dataset", str(hopper_file), "--out", str(tmp_path / "run"), "--steps",
                                  "2", "--warmup-steps", "1", "--n-embd", "32", "--n-layer", "1", "--eval-episodes",
                                  "2", "--eval-targets", "1000", "--device", "cpu", "--precision", "fp32", "--quiet"])
    assert r.exit_code == 0, r.output
    result = json.loads((tmp_path / "run" / "eval.json").read_text())
    assert result["score"] == "D4RL-normalised (-v5)" and result["targets"][0]["target"] == 1000.0
    again = evaluate_checkpoint(tmp_path / "run" / "checkpoint", episodes=2, targets=[1000.0], precision="fp32",
                                device="cpu", progress=False)
    assert again["targets"] == result["targets"]


def test_multitask_training_updates_every_task_and_saves_a_bundle(tmp_path, task_files):
    from dtmerge.store.bundle import load_bundle_task, trunk_accounting

    names = ["hopper", "walker2d", "halfcheetah"]
    cfg = _cfg(task_files["hopper"], tmp_path / "multi", steps=4, save_every=2)
    cfg = cfg.model_copy(update={"dataset": [str(task_files[n]) for n in names]})
    ckpt = train(cfg, progress=False)
    assert (ckpt / "bundle.json").is_file()
    models = {n: load_bundle_task(ckpt, n)[0] for n in names}
    first = [json.loads(line) for line in open(tmp_path / "multi" / "metrics.jsonl")][0]
    assert {"mse_hopper", "mse_walker2d", "mse_halfcheetah"} <= first.keys()
    trunk = {k: v for k, v in models["hopper"].state_dict().items() if k.startswith("transformer.")}
    for n in names[1:]:
        assert all(torch.equal(t, models[n].state_dict()[k]) for k, t in trunk.items())
    assert trunk_accounting(ckpt)["relative_to_single_model_percent"] == 100.0
    # resume: 2 + 2 steps gives the weights of 4 straight steps
    half = train(cfg.model_copy(update={"out": str(tmp_path / "half"), "steps": 2}), progress=False)
    resumed = train(cfg.model_copy(update={"out": str(tmp_path / "half")}), resume=True, progress=False)
    for n in names:
        a, b = load_bundle_task(ckpt, n)[0].state_dict(), load_bundle_task(resumed, n)[0].state_dict()
        assert all(torch.equal(a[k], b[k]) for k in a)
    assert half == resumed
    with pytest.raises(ValueError, match="one dataset per task"):
        train(cfg.model_copy(update={"out": str(tmp_path / "dup"),
                                     "dataset": [str(task_files["hopper"])] * 2}), progress=False)


def test_multitask_heads_move_from_their_init(tmp_path, task_files):
    """Each task's head changes during multi-task training (not just the last task's)."""
    from dtmerge.store.bundle import load_bundle_task

    names = ["hopper", "walker2d"]
    base = _cfg(task_files["hopper"], tmp_path / "a", steps=1, save_every=1)
    one = train(base.model_copy(update={"dataset": [str(task_files[n]) for n in names]}), progress=False)
    three = train(base.model_copy(update={"dataset": [str(task_files[n]) for n in names],
                                          "out": str(tmp_path / "b"), "steps": 3}), progress=False)
    for n in names:
        h1 = load_bundle_task(one, n)[0].predict_action[0].weight
        h3 = load_bundle_task(three, n)[0].predict_action[0].weight
        assert not torch.equal(h1, h3), n


def test_a_moved_run_resumes_but_other_data_is_refused(tmp_path, hopper_file, task_files):
    import shutil

    train(_cfg(hopper_file, tmp_path / "a", steps=3), progress=False)
    shutil.copy(hopper_file, tmp_path / "copy.hdf5")
    shutil.move(tmp_path / "a", tmp_path / "moved")  # the run and its data both live elsewhere now
    resumed = train(_cfg(tmp_path / "copy.hdf5", tmp_path / "moved"), resume=True, progress=False)
    straight = train(_cfg(hopper_file, tmp_path / "straight"), progress=False)
    a, b = load_file(straight / "model.safetensors"), load_file(resumed / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    other = tmp_path / "other.hdf5"
    from dtmerge.data import read_d4rl, write_d4rl

    traj = read_d4rl(hopper_file)
    traj.rewards = traj.rewards * 2
    write_d4rl(traj, other)
    with pytest.raises(CheckpointError, match="training data differs"):
        train(_cfg(other, tmp_path / "moved", steps=9), resume=True, progress=False)


def _start(task_files, tmp_path, task, name, **kw):
    """A run's starting weights (0 steps are not allowed: 1 step at lr ~0 leaves them as drawn)."""
    ckpt = train(_cfg(task_files[task], tmp_path / name, steps=1, lr=1e-30, **kw), progress=False)
    return load_file(ckpt / "model.safetensors"), json.loads((ckpt / "meta.json").read_text())


def test_each_task_starts_from_its_own_weights_unless_given_one_init_seed(tmp_path, task_files):
    """HalfCheetah and Walker2d share their shapes (17/6): before init seeds, one run seed gave both
    bit-identical starts. Now the start depends on (seed, task, role); --init-seed shares a trunk."""
    cheetah, meta = _start(task_files, tmp_path, "halfcheetah", "c")
    walker, _ = _start(task_files, tmp_path, "walker2d", "w")
    again, meta_again = _start(task_files, tmp_path, "halfcheetah", "c2")
    trunk = [k for k in cheetah if k.startswith("transformer.") and cheetah[k].dim() == 2]  # drawn at random
    assert not any(torch.equal(cheetah[k], walker[k]) for k in trunk)
    assert all(torch.equal(cheetah[k], again[k]) for k in cheetah)  # same seed and task: same start
    assert meta["init_seed"] == meta_again["init_seed"]
    shared = {t: _start(task_files, tmp_path, t, f"s-{t}", init_seed=7)[0] for t in ("hopper", "walker2d")}
    assert all(torch.equal(shared["hopper"][k], shared["walker2d"][k]) for k in trunk)  # one trunk across shapes
    assert not torch.equal(shared["walker2d"]["embed_timestep.weight"], walker["embed_timestep.weight"])


def test_embeddings_start_as_gpt2s_or_as_the_original_codes(tmp_path, task_files):
    gpt2, meta = _start(task_files, tmp_path, "hopper", "g")
    original, _ = _start(task_files, tmp_path, "hopper", "o", embed_init="original")
    assert meta["train_config"]["embed_init"] == "gpt2"
    assert abs(gpt2["embed_timestep.weight"].std().item() - 0.02) < 0.002  # N(0, 0.02)
    assert abs(original["embed_timestep.weight"].std().item() - 1.0) < 0.05  # nn.Embedding's N(0, 1)
    assert gpt2["embed_state.bias"].abs().max() < 1e-20 < original["embed_state.bias"].abs().max()  # 0 (one tiny step)
    trunk = [k for k in gpt2 if k.startswith("transformer.")]
    assert all(torch.allclose(gpt2[k], original[k], rtol=0, atol=1e-20) for k in trunk)  # nor on embed_init


def test_kept_steps_hold_the_weights_of_a_shorter_run(tmp_path, hopper_file):
    """The schedule does not depend on the run's length, so the weights kept at step 3 of a 6-step
    run are a 3-step run's: a learning curve reads them instead of training again."""
    long = train(_cfg(hopper_file, tmp_path / "long", keep_steps=[3]), progress=False)
    short = train(_cfg(hopper_file, tmp_path / "short", steps=3), progress=False)
    kept = load_file(long.parent / "snapshots" / "step-3" / "model.safetensors")
    a = load_file(short / "model.safetensors")
    assert all(torch.equal(kept[k], a[k]) for k in a)
    assert json.loads((long.parent / "snapshots" / "step-3" / "meta.json").read_text())["step"] == 3
    assert not (long.parent / "snapshots" / "step-3" / "train_state.json").exists()
