import h5py
import numpy as np
import pytest
import torch

from dtmerge.data import DatasetError, Trajectories, WindowSampler, load_dataset, read_d4rl, read_minari, write_d4rl
from dtmerge.data.rollout import random_policy, rollout
from dtmerge.data.sampler import ACTION_PAD


def test_d4rl_round_trip(hopper_traj, hopper_file):
    back = read_d4rl(hopper_file)
    for key in ("observations", "actions", "rewards", "terminals", "starts", "lengths", "next_observations"):
        np.testing.assert_array_equal(getattr(back, key), getattr(hopper_traj, key))
    assert back.attrs["task"] == "hopper"
    with h5py.File(hopper_file) as f:  # the plain D4RL keys, as d4rl.get_dataset expects them
        assert set(f) >= {"observations", "actions", "rewards", "terminals", "timeouts"}
        ends = f["terminals"][()] | f["timeouts"][()]
    assert ends.sum() == hopper_traj.num_trajectories and ends[-1]


def test_trajectories_end_at_terminal_or_timeout():
    obs = np.zeros((7, 2))
    term = np.array([0, 1, 0, 0, 0, 0, 0], bool)
    tout = np.array([0, 0, 0, 1, 0, 0, 0], bool)
    t = Trajectories.from_flat("x", obs, np.zeros((7, 1)), np.arange(7.0), term, tout)
    assert t.starts.tolist() == [0, 2, 4] and t.lengths.tolist() == [2, 2, 3]  # trailing partial kept
    assert t.timeouts.tolist() == [0, 0, 0, 1, 0, 0, 1]
    np.testing.assert_allclose(t.returns(), [1, 5, 15])


def test_returns_to_go_match_a_loop(hopper_traj):
    rtg = hopper_traj.returns_to_go()
    r = hopper_traj.rewards.astype(np.float64)
    for s, n in zip(hopper_traj.starts[:20], hopper_traj.lengths[:20]):
        expect = [r[i:s + n].sum() for i in range(s, s + n)]
        np.testing.assert_allclose(rtg[s:s + n], expect, rtol=1e-10)


def test_minari_written_by_minari_reads_back(tmp_path, hopper_traj, hopper):
    minari = pytest.importorskip("minari")
    from dtmerge.data import write_minari

    dest = write_minari(hopper_traj, "dtmerge/hopper/test-v0", hopper, root=tmp_path)
    back = read_minari(dest)
    np.testing.assert_array_equal(back.observations, hopper_traj.observations)
    np.testing.assert_array_equal(back.next_observations, hopper_traj.next_observations)
    np.testing.assert_array_equal(back.lengths, hopper_traj.lengths)
    np.testing.assert_array_equal(back.terminals, hopper_traj.terminals)
    ds = minari.MinariDataset(dest / "data")  # minari itself reads what we wrote
    assert ds.total_steps == len(hopper_traj) and ds.total_episodes == hopper_traj.num_trajectories
    # resolved by id under MINARI_DATASETS_PATH, task taken from the env spec
    import os

    os.environ["MINARI_DATASETS_PATH"] = str(tmp_path)
    try:
        traj, task = load_dataset("dtmerge/hopper/test-v0")
    finally:
        del os.environ["MINARI_DATASETS_PATH"]
    assert task.name == "hopper" and len(traj) == len(hopper_traj)


def test_rollout_is_repeatable_by_seed(hopper):
    a = rollout(hopper, random_policy(hopper, 3), 500, seed=3, num_envs=4, progress=False)
    b = rollout(hopper, random_policy(hopper, 3), 500, seed=3, num_envs=4, progress=False)
    c = rollout(hopper, random_policy(hopper, 4), 500, seed=4, num_envs=4, progress=False)
    assert len(a) == 500
    np.testing.assert_array_equal(a.observations, b.observations)
    assert not np.array_equal(a.observations, c.observations)


def test_window_sampler_pads_on_the_left_at_trajectory_ends(hopper_traj):
    mean, std = hopper_traj.state_stats()
    K = 20
    s = WindowSampler(hopper_traj, K, mean, std, rtg_scale=1000.0, seed=0)
    rows, mask = s.indices(4096)
    # every window lies inside one trajectory, real steps are contiguous and right-aligned
    traj_of_row = np.repeat(np.arange(hopper_traj.num_trajectories), hopper_traj.lengths)
    for r, m in zip(rows, mask):
        real = r[m]
        assert m[-1] and (np.diff(m.astype(int)) >= 0).all()
        assert (np.diff(real) == 1).all() and len(set(traj_of_row[real])) == 1
    assert (~mask).any(), "short trajectories must produce padded windows"
    batch = s.sample(256)
    m = batch["mask"].numpy()
    assert (batch["actions"].numpy()[~m] == ACTION_PAD).all()
    assert (batch["states"].numpy()[~m] == 0).all() and (batch["timesteps"].numpy()[~m] == 0).all()
    # real slots carry the normalised data and RTG / scale of their row
    rows, mask = WindowSampler(hopper_traj, K, mean, std, seed=1).indices(256)
    b = WindowSampler(hopper_traj, K, mean, std, seed=1).sample(256)
    np.testing.assert_allclose(b["states"].numpy()[mask], ((hopper_traj.observations - mean) / std)[rows[mask]],
                               rtol=1e-6)
    np.testing.assert_allclose(b["returns_to_go"].numpy()[mask][:, 0],
                               hopper_traj.returns_to_go()[rows[mask]] / 1000.0, rtol=1e-5)
    np.testing.assert_array_equal(b["timesteps"].numpy()[mask], hopper_traj.timesteps()[rows[mask]])


def test_the_device_gather_makes_the_numpy_batch_exactly(hopper_traj):
    """Off the CPU a batch is gathered from arrays kept on the device; the numbers are the same
    bits, dtypes and shapes as numpy's (checked on the CPU, the path's own code)."""
    mean, std = hopper_traj.state_stats()
    sampler = WindowSampler(hopper_traj, 20, mean, std, seed=3)
    rows, mask = sampler.indices(64)
    here, there = sampler.gather(rows, mask), sampler.gather_on_device(rows, mask, torch.device("cpu"))
    assert set(here) == set(there)
    for k in here:
        assert here[k].dtype == there[k].dtype and torch.equal(here[k], there[k]), k


def test_window_sampler_weights_trajectories_by_length():
    lengths = np.array([10, 90])
    n = lengths.sum()
    t = Trajectories.from_flat("x", np.zeros((n, 1)), np.zeros((n, 1)), np.zeros(n), np.zeros(n, bool),
                               np.isin(np.arange(n), lengths.cumsum() - 1))
    rows, mask = WindowSampler(t, 5, np.zeros(1), np.ones(1), seed=0).indices(20000)
    share = (rows[:, -1] >= 10).mean()
    assert abs(share - 0.9) < 0.01


def _write_h5(path, **arrays):
    with h5py.File(path, "w") as f:
        for k, v in arrays.items():
            f.create_dataset(k, data=v)
    return path


def _good_arrays(n=50, obs_dim=11, act_dim=3):
    return dict(observations=np.zeros((n, obs_dim), np.float32), actions=np.zeros((n, act_dim), np.float32),
                rewards=np.zeros(n, np.float32), terminals=np.zeros(n, bool), timeouts=np.zeros(n, bool))


@pytest.mark.parametrize("change,message", [
    (lambda a: a.pop("timeouts"), "missing D4RL key(s) timeouts"),
    (lambda a: a.update(rewards=np.zeros(49, np.float32)), "'rewards' has 49 rows but 'observations' has 50"),
    (lambda a: a["observations"].__setitem__((7, 2), np.nan), "'observations' contains NaN or inf (first at row 7)"),
    (lambda a: a["rewards"].__setitem__(3, np.inf), "'rewards' contains NaN or inf (first at row 3)"),
    (lambda a: a.update({k: v[:0] for k, v in a.items()}), "the dataset is empty"),
    (lambda a: a.update(observations=np.zeros((50, 17), np.float32)), "observations have 17 columns but hopper"),
    (lambda a: a.update(actions=np.zeros((50, 6), np.float32)), "actions have 6 columns but hopper"),
])
def test_bad_d4rl_files_get_clear_errors(tmp_path, change, message):
    arrays = _good_arrays()
    change(arrays)
    path = _write_h5(tmp_path / "bad.hdf5", **arrays)
    with pytest.raises(DatasetError) as e:
        load_dataset(path, "hopper")
    assert str(path) in str(e.value) and message in str(e.value)


def test_not_hdf5_and_missing_files(tmp_path):
    junk = tmp_path / "junk.hdf5"
    junk.write_bytes(b"not an hdf5 file")
    with pytest.raises(DatasetError, match="junk.hdf5: not a readable HDF5 file"):
        read_d4rl(junk)
    with pytest.raises(DatasetError, match="nope.hdf5: file not found"):
        load_dataset(tmp_path / "nope.hdf5", "hopper")
    with pytest.raises(DatasetError, match="not found: expected a D4RL"):
        load_dataset(tmp_path / "nothing-here", "hopper")


def test_task_must_be_known_or_inferable(tmp_path):
    path = _write_h5(tmp_path / "mystery.hdf5", **_good_arrays())
    with pytest.raises(DatasetError, match="cannot tell which task"):
        load_dataset(path)
    named = _write_h5(tmp_path / "hopper-medium-v2.hdf5", **_good_arrays())
    assert load_dataset(named)[1].name == "hopper"


def test_minari_export_to_a_relative_root(tmp_path, hopper_file, monkeypatch):
    pytest.importorskip("minari")
    from click.testing import CliRunner

    from dtmerge.cli import main

    monkeypatch.chdir(tmp_path)
    r = CliRunner().invoke(main, ["data", "export", str(hopper_file), "dtmerge/hopper/rel-v0", "--format", "minari",
                                  "--minari-root", "datasets"])
    assert r.exit_code == 0, r.output
    assert read_minari(tmp_path / "datasets" / "dtmerge/hopper/rel-v0").num_trajectories > 0


def test_bad_minari_episode(tmp_path):
    data = tmp_path / "ds" / "data"
    data.mkdir(parents=True)
    (data / "metadata.json").write_text('{"data_format": "hdf5", "dataset_id": "ds"}')
    with h5py.File(data / "main_data.hdf5", "w") as f:
        g = f.create_group("episode_0")
        g["observations"] = np.zeros((5, 11))  # should be N+1 = 6
        g["actions"] = np.zeros((5, 3))
        for k in ("rewards", "terminations", "truncations"):
            g[k] = np.zeros(5)
    with pytest.raises(DatasetError, match="episode_0 has 5 observations for 5 actions"):
        read_minari(tmp_path / "ds")


def test_write_d4rl_is_atomic_on_failure(tmp_path, hopper_traj):
    bad = Trajectories(**{**hopper_traj.__dict__, "attrs": {"x": object()}})  # not JSON-serialisable
    with pytest.raises(TypeError):
        write_d4rl(bad, tmp_path / "out.hdf5")
    assert list(tmp_path.iterdir()) == []


def test_atomic_dir_replaces_a_directory_or_a_file_in_one_swap(tmp_path):
    from dtmerge.atomic import atomic_dir

    for old in ("dir", "file"):
        target = tmp_path / old
        if old == "dir":
            target.mkdir()
            (target / "old.txt").write_text("old")
        else:
            target.write_text("old")
        with atomic_dir(target) as tmp:
            (tmp / "new.txt").write_text("new")
            assert target.exists()  # the old version stays in place until the new one is complete
        assert sorted(p.name for p in target.iterdir()) == ["new.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dir", "file"]  # no temporary leftovers
