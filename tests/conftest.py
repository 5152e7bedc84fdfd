"""Small real data made on the spot: short MuJoCo rollouts written as D4RL HDF5 and as Minari."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from dtmerge.data import write_d4rl
from dtmerge.data.rollout import rollout
from dtmerge.envs import get_task

torch.set_num_threads(1)


@pytest.fixture(autouse=True, scope="session")
def dtmerge_home(tmp_path_factory):
    """Caches (made datasets, k-means centres) go to a session directory, never the user's."""
    home = tmp_path_factory.mktemp("dtmerge-home")
    old = os.environ.get("DTMERGE_HOME")
    os.environ["DTMERGE_HOME"] = str(home)
    yield home
    if old is None:
        os.environ.pop("DTMERGE_HOME", None)
    else:
        os.environ["DTMERGE_HOME"] = old


def linear_policy(task, seed=0, noise=0.1):
    """A fixed noisy linear policy: learnable from data, unlike uniform random actions."""
    rng = np.random.default_rng(seed)
    w = rng.normal(0, 1.0 / np.sqrt(task.obs_dim), (task.obs_dim, task.act_dim))
    return lambda obs: (np.tanh(obs @ w) + noise * rng.normal(size=(len(obs), task.act_dim))).astype(np.float32)


@pytest.fixture(scope="session")
def hopper():
    return get_task("hopper")


@pytest.fixture(scope="session")
def hopper_traj(hopper):
    return rollout(hopper, linear_policy(hopper), 3000, seed=0, num_envs=8, progress=False)


@pytest.fixture(scope="session")
def hopper_file(tmp_path_factory, hopper_traj):
    return write_d4rl(hopper_traj, tmp_path_factory.mktemp("data") / "hopper-linear.hdf5")


TINY = {"n_embd": 32, "n_layer": 2, "n_head": 2, "context_len": 10}


@pytest.fixture(scope="session")
def task_files(tmp_path_factory, hopper_file):
    """D4RL files for all three tasks (hopper's is the 3000-step one above)."""
    out = {"hopper": hopper_file}
    root = tmp_path_factory.mktemp("tasks")
    for name in ("walker2d", "halfcheetah"):
        task = get_task(name)
        out[name] = write_d4rl(rollout(task, linear_policy(task), 2000, seed=0, num_envs=4, progress=False),
                               root / f"{name}-linear.hdf5")
    return out


@pytest.fixture(scope="session")
def task_models(tmp_path_factory, task_files):
    """One tiny trained checkpoint per task."""
    from dtmerge.train import TrainConfig, train

    root = tmp_path_factory.mktemp("models")
    return {name: train(TrainConfig(dataset=str(path), out=str(root / name), steps=4, warmup_steps=2,
                                    batch_size=8, device="cpu", precision="fp32",
                                    seed=i, model=TINY), progress=False)
            for i, (name, path) in enumerate(task_files.items())}


def pytest_terminal_summary(terminalreporter):
    """Say how many hostile inputs were refused cleanly (tests/test_bad_inputs.py)."""
    passed = [r for r in terminalreporter.stats.get("passed", []) if "test_hostile_input[" in r.nodeid]
    if passed:
        terminalreporter.write_line(f"hostile inputs refused cleanly: {len(passed)}")
