import json

import numpy as np
import pytest

from dtmerge.data import load_dataset, read_d4rl, read_minari, write_minari
from dtmerge.data.make import make_dataset, make_trajectories, parse_id
from dtmerge.envs import TASKS, get_task
from dtmerge.zoo import Actor, ActorError, load_zoo_actor, zoo_manifest


def test_all_six_actors_ship_and_act_within_bounds():
    manifest = zoo_manifest()["policies"]
    assert sorted(manifest) == sorted(f"{t}-{lvl}" for t in TASKS for lvl in ("medium", "expert"))
    rng = np.random.default_rng(0)
    for name, task in TASKS.items():
        for level in ("medium", "expert"):
            actor = load_zoo_actor(name, level)
            assert (actor.obs_dim, actor.act_dim) == (task.obs_dim, task.act_dim)
            obs = rng.normal(0, 5, (64, task.obs_dim))
            for a in (actor.act(obs), actor.act(obs, rng)):
                assert a.shape == (64, task.act_dim) and np.all(np.abs(a) <= 1.0)
        expert = manifest[f"{name}-expert"]["deterministic"]
        medium = manifest[f"{name}-medium"]["deterministic"]
        assert expert["episodes"] >= 20 and medium["return_mean"] < expert["return_mean"]


def _tiny_actor(tmp_path, task):
    rng = np.random.default_rng(0)
    f32 = np.float32
    actor = Actor([rng.normal(size=(8, task.obs_dim)).astype(f32), rng.normal(size=(task.act_dim, 8)).astype(f32)],
                  [np.zeros(8, f32), np.zeros(task.act_dim, f32)], np.full(task.act_dim, -1.0, f32),
                  np.zeros(task.obs_dim, f32), np.ones(task.obs_dim, f32), 10.0, "relu", {"task": task.name})
    return actor.save(tmp_path / "actor")


def test_actor_round_trip(tmp_path, hopper):
    stem = _tiny_actor(tmp_path, hopper)
    a = Actor.load(stem)
    obs = np.ones((3, 11), np.float32)
    assert np.array_equal(a.act(obs), Actor.load(stem).act(obs))


def test_corrupt_or_truncated_actor_files_get_clear_errors(tmp_path, hopper):
    stem = _tiny_actor(tmp_path, hopper)
    weights = stem.with_suffix(".safetensors")
    good = weights.read_bytes()
    weights.write_bytes(good[:-40])
    with pytest.raises(ActorError, match="actor.safetensors: not a readable safetensors file"):
        Actor.load(stem)
    weights.write_bytes(good)
    meta = json.loads(stem.with_suffix(".json").read_text())
    stem.with_suffix(".json").write_text(json.dumps({**meta, "layers": 3}))
    with pytest.raises(ActorError, match=r"missing tensors \['layers.2.weight'"):
        Actor.load(stem)
    stem.with_suffix(".json").write_text(json.dumps({**meta, "task": "walker2d"}))
    with pytest.raises(ActorError, match="dims 11/3 do not fit walker2d"):
        Actor.load(stem)
    stem.with_suffix(".json").write_text('{"format": "dtmerge.actor/1", "layers"')
    with pytest.raises(ActorError, match="actor.json: not valid JSON"):
        Actor.load(stem)
    stem.with_suffix(".json").write_text(json.dumps(meta))
    weights.unlink()
    with pytest.raises(ActorError, match="actor.safetensors: file not found"):
        Actor.load(stem)


def test_dataset_ids_parse():
    assert parse_id("hopper-medium")[1:] == ("medium", 1_000_000, 0)
    assert parse_id("walker2d-medium-expert")[1:] == ("medium-expert", 2_000_000, 0)
    assert parse_id("halfcheetah-expert-5000-seed3")[1:] == ("expert", 5000, 3)
    assert parse_id("hopper-medium-v2") is None and parse_id("ant-medium") is None


@pytest.mark.parametrize("level", ["medium", "medium-expert", "random"])
def test_made_datasets_are_repeatable_and_record_true_returns(level, hopper):
    a = make_trajectories(hopper, level, 2000, seed=1, progress=False)
    b = make_trajectories(hopper, level, 2000, seed=1, progress=False)
    c = make_trajectories(hopper, level, 2000, seed=2, progress=False)
    assert len(a) == 2000
    np.testing.assert_array_equal(a.actions, b.actions)
    assert not np.array_equal(a.actions, c.actions)
    per_traj = [a.rewards[s:s + n].astype(np.float64).sum() for s, n in zip(a.starts, a.lengths)]
    assert a.attrs["return_mean"] == pytest.approx(np.mean(per_traj))
    assert a.attrs["score_mean"] == pytest.approx(np.mean(hopper.normalized_score(np.array(per_traj))))


def test_made_dataset_is_cached_and_readable_by_both_readers(tmp_path, monkeypatch):
    monkeypatch.setenv("DTMERGE_HOME", str(tmp_path / "home"))
    path = make_dataset("walker2d-medium-3000", progress=False)
    assert path == tmp_path / "home" / "datasets" / "walker2d-medium-3000.hdf5"
    mtime = path.stat().st_mtime_ns
    assert make_dataset("walker2d-medium-3000", progress=False).stat().st_mtime_ns == mtime  # cached
    traj = read_d4rl(path)
    assert traj.attrs["policy"] == "dtmerge zoo walker2d-medium" and traj.attrs["seed"] == 0
    same, task = load_dataset("walker2d-medium-3000")  # the id resolves to the cached file
    np.testing.assert_array_equal(same.observations, traj.observations)
    pytest.importorskip("minari")
    dest = write_minari(traj, "dtmerge/walker2d/medium-v0", get_task("walker2d"), tmp_path / "minari")
    back = read_minari(dest)
    np.testing.assert_array_equal(back.actions, traj.actions)
    np.testing.assert_array_equal(back.rewards, traj.rewards)


@pytest.mark.parametrize("preset", ["ppo-paper", "rl-zoo"])
def test_exported_actor_acts_like_stable_baselines3(preset):
    pytest.importorskip("stable_baselines3")
    from dtmerge.zoo.collect import _export_actor, build_agent

    task = get_task("walker2d")
    model, venv, chosen = build_agent(task, preset, seed=0)
    model.learn(256)  # moves the weights and the observation statistics away from their init
    actor = _export_actor(model, venv, task, chosen["policy"]["activation"], {})
    obs = np.random.default_rng(0).normal(0, 3, (64, task.obs_dim)).astype(np.float32)
    expected, _ = model.predict(venv.normalize_obs(obs), deterministic=True)
    np.testing.assert_allclose(actor.act(obs), expected, atol=1e-5)


def test_collect_resumes_and_exports_expert_and_medium(tmp_path):
    pytest.importorskip("stable_baselines3")
    from dtmerge.outputs import OutputError
    from dtmerge.zoo.collect import CollectConfig, collect, export

    kw = dict(task="hopper", out=str(tmp_path / "run"), eval_every=512, eval_episodes=2, preset="rl-zoo")
    run = collect(CollectConfig(steps=1024, **kw), progress=False)
    with pytest.raises(OutputError, match="run exists; pass --overwrite"):
        collect(CollectConfig(steps=1536, **kw), progress=False)
    collect(CollectConfig(steps=1536, **kw), resume=True, progress=False)
    log = [json.loads(line) for line in open(run / "log.jsonl")]
    assert [r["step"] for r in log] == [512, 1024, 1536]
    chosen = export(run, tmp_path / "export", episodes=2, progress=False)
    best = max(log, key=lambda r: r["return_mean"])
    assert chosen["expert"]["selection"]["snapshot_step"] == best["step"]
    assert chosen["expert"]["measured"]["deterministic"]["episodes"] == 2
    manifest = json.loads((tmp_path / "export" / "manifest.json").read_text())["policies"]
    assert manifest.keys() == {"hopper-expert", "hopper-medium"}
    assert Actor.load(tmp_path / "export" / "hopper-medium").meta["level"] == "medium"
