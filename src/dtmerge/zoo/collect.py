"""Train a behaviour agent with stable-baselines3 PPO and export expert and medium actors.

PPO with 1 env and the RL-zoo's tuned MuJoCo hyperparameters (normalised observations, 256x256
ReLU nets) learns these tasks within a few million steps at ~1k env steps/s on one CPU core;
SAC, which D4RL used, ran at ~100 env steps/s on the same 2-core machines (docs/design.md).

Every `eval_every` steps the current policy is exported as a snapshot actor and evaluated
(deterministic, `eval_episodes` episodes), and a resumable state (policy, optimizer, observation
statistics — safetensors + JSON, no pickle) is written. `export` then picks the expert (best
snapshot) and the medium actor (snapshot closest to 1/3 of the expert's return, within 25-50%)
and measures both again on fresh seeds, so the reported numbers are not the ones they were
selected on.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field
from tqdm.auto import tqdm

from dtmerge.atomic import atomic_dir, read_json, write_json
from dtmerge.envs import get_task
from dtmerge.evaluate import episode_stats, run_episodes
from dtmerge.outputs import claim_outputs, run_directory
from dtmerge.store.checkpoint import load_train_state, write_train_state
from dtmerge.zoo.actor import Actor

# Two PPO presets. "rl-zoo": rl-baselines3-zoo's tuned settings for each -v3 env (hyperparams/ppo.yml),
# 256x256 ReLU nets, log-std init -2. "ppo-paper": the PPO paper's MuJoCo settings (64x64 tanh), the
# same for every task. Hopper and Walker2d default to ppo-paper: on the -v5 envs here the zoo's
# Hopper settings (gamma 0.999) stayed in the "stand still for the alive bonus" optimum (return
# ~1000) for 750k steps and its Walker2d settings peaked at ~860 in 600k steps, while ppo-paper
# passed 3000 (Hopper) and 5000 (Walker2d) within 500k steps. HalfCheetah keeps rl-zoo's settings.
ZOO_POLICY = dict(hidden=[256, 256], activation="relu", log_std_init=-2.0, ortho_init=False)
PPO_PAPER = dict(n_steps=2048, batch_size=64, n_epochs=10, gamma=0.99, gae_lambda=0.95, learning_rate=3e-4,
                 clip_range=0.2, ent_coef=0.0, vf_coef=0.5, max_grad_norm=0.5,
                 policy=dict(hidden=[64, 64], activation="tanh", log_std_init=0.0, ortho_init=True))
RL_ZOO = {
    "hopper": dict(n_steps=512, batch_size=32, n_epochs=5, gamma=0.999, gae_lambda=0.99, learning_rate=9.80828e-5,
                   clip_range=0.2, ent_coef=0.00229519, vf_coef=0.835671, max_grad_norm=0.7, policy=ZOO_POLICY),
    "walker2d": dict(n_steps=512, batch_size=32, n_epochs=20, gamma=0.99, gae_lambda=0.95, learning_rate=5.05041e-5,
                     clip_range=0.1, ent_coef=0.000585045, vf_coef=0.871923, max_grad_norm=1.0, policy=ZOO_POLICY),
    "halfcheetah": dict(n_steps=512, batch_size=64, n_epochs=20, gamma=0.98, gae_lambda=0.92,
                        learning_rate=2.0633e-5, clip_range=0.1, ent_coef=0.000401762, vf_coef=0.58096,
                        max_grad_norm=0.8, policy=ZOO_POLICY),
}
DEFAULT_PRESET = {"hopper": "ppo-paper", "walker2d": "ppo-paper", "halfcheetah": "rl-zoo"}


def preset(task: str, name: str = "auto") -> dict:
    name = DEFAULT_PRESET[task] if name == "auto" else name
    if name not in ("ppo-paper", "rl-zoo"):
        raise ValueError(f"unknown preset {name!r}: auto, ppo-paper or rl-zoo")
    return {"name": name, **(PPO_PAPER if name == "ppo-paper" else RL_ZOO[task])}
ACTIVATION_FNS = {"relu": torch.nn.ReLU, "tanh": torch.nn.Tanh}


class CollectConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    task: str = Field(description="halfcheetah, hopper or walker2d")
    out: str = Field("runs/collect", description="run directory (snapshots/, state/, log.jsonl)")
    steps: int = Field(2_000_000, gt=0, description="environment steps in total")
    eval_every: int = Field(50_000, gt=0, description="steps between snapshots")
    eval_episodes: int = Field(10, gt=0, description="deterministic episodes per snapshot")
    seed: int = Field(0, description="seed for the agent and its environments")
    threads: int = Field(1, gt=0, description="torch threads (one core per run)")
    preset: str = Field("auto", description="PPO settings: rl-zoo (tuned per task), ppo-paper, or auto "
                                            "(rl-zoo for halfcheetah, ppo-paper otherwise)")


def build_agent(task, preset_name: str = "auto", seed: int = 0):
    """A stable-baselines3 PPO agent with observation normalisation, as the preset says."""
    try:
        from stable_baselines3 import PPO
        from stable_baselines3.common.env_util import make_vec_env
        from stable_baselines3.common.vec_env import VecNormalize
    except ImportError:
        raise ImportError("dtmerge data collect needs stable-baselines3: pip install 'dtmerge[collect]'") from None
    chosen = preset(task.name, preset_name)
    hp = {k: v for k, v in chosen.items() if k not in ("policy", "name")}
    pol = chosen["policy"]
    venv = VecNormalize(make_vec_env(task.env_id, n_envs=1, seed=seed), gamma=hp["gamma"])
    model = PPO("MlpPolicy", venv, seed=seed, device="cpu", verbose=0,
                policy_kwargs=dict(log_std_init=pol["log_std_init"], ortho_init=pol["ortho_init"],
                                   activation_fn=ACTIVATION_FNS[pol["activation"]],
                                   net_arch=dict(pi=pol["hidden"], vf=pol["hidden"])), **hp)
    return model, venv, chosen


def collect(cfg: CollectConfig, resume: bool = False, overwrite: bool = False, progress: bool = True) -> Path:
    """Train the behaviour agent in `cfg.out` (snapshots, log.jsonl, a resumable state)."""
    out = Path(cfg.out)
    claim_outputs([out], [], overwrite, resume)
    with run_directory(out, overwrite, resume, resumable_from="state") as run_dir:
        _collect(cfg, run_dir, resume, progress)
    return out


def _collect(cfg: CollectConfig, out: Path, resume: bool, progress: bool) -> None:
    task = get_task(cfg.task)
    state_dir = out / "state"
    torch.set_num_threads(cfg.threads)
    model, venv, chosen = build_agent(task, cfg.preset, cfg.seed)
    hp = {k: v for k, v in chosen.items() if k not in ("policy", "name")}
    pol = chosen["policy"]
    if resume and state_dir.exists():
        _restore(state_dir, model, venv)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "config.json", {**cfg.model_dump(), "algo": "PPO", "preset": chosen["name"],
                                     "hyperparams": hp, "policy": pol})
    bar = tqdm(total=cfg.steps, initial=model.num_timesteps, desc=f"collect {task.name}", unit="step",
               disable=not progress)
    while model.num_timesteps < cfg.steps:
        before = model.num_timesteps
        model.learn(min(cfg.eval_every, cfg.steps - before), reset_num_timesteps=False)
        step = model.num_timesteps
        actor = _export_actor(model, venv, task, pol["activation"],
                              {"algo": "PPO", "preset": chosen["name"], "train_steps": step, "seed": cfg.seed})
        stats = evaluate_actor(actor, task, cfg.eval_episodes, seed=10_000 + step, progress=False)
        actor.meta["snapshot_eval"] = _summary(stats)
        actor.save(out / "snapshots" / f"step_{step:09d}")
        with open(out / "log.jsonl", "a") as log:
            log.write(json.dumps({"step": step, **_summary(stats)}) + "\n")
        _save_state(state_dir, model, venv)
        bar.update(step - before)
        bar.set_postfix(ret=f"{stats['return_mean']:.0f}")
    bar.close()


def evaluate_actor(actor: Actor, task, episodes: int, seed: int, stochastic: bool = False,
                   progress: bool = True) -> dict:
    rng = np.random.default_rng(seed) if stochastic else None

    class Policy:
        def act(self, obs, live, t):
            return actor.act(obs[live], rng)

        def observe(self, reward, t):
            pass

    run = run_episodes(task, [seed + i for i in range(episodes)], Policy(), progress, desc=f"actor {task.name}")
    return episode_stats(task, run["returns"], run["lengths"])


def export(run_dir, dest, episodes: int = 20, seed: int = 1_000_000, progress: bool = True,
           overwrite: bool = False) -> dict:
    """Choose expert and medium snapshots of a collect run and write them to `dest`, re-measured."""
    run_dir, dest = Path(run_dir), Path(dest)
    log = [json.loads(line) for line in open(run_dir / "log.jsonl")]
    run_cfg = read_json(run_dir / "config.json")
    task = get_task(run_cfg["task"])
    stems = [dest / f"{task.name}-{level}" for level in ("expert", "medium")]
    claim_outputs([s.with_suffix(ext) for s in stems for ext in (".json", ".safetensors")], [run_dir], overwrite)
    best = max(log, key=lambda r: r["return_mean"])
    target = best["return_mean"] / 3
    in_range = [r for r in log if 0.25 * best["return_mean"] <= r["return_mean"] <= 0.5 * best["return_mean"]]
    medium = min(in_range or log, key=lambda r: abs(r["return_mean"] - target))
    chosen = {}
    for level, rec in (("expert", best), ("medium", medium)):
        actor = Actor.load(run_dir / "snapshots" / f"step_{rec['step']:09d}")
        measured = {mode: _summary(evaluate_actor(actor, task, episodes, seed, mode == "stochastic", progress))
                    for mode in ("deterministic", "stochastic")}
        actor.meta.setdefault("preset", run_cfg.get("preset"))
        actor.meta.update({"task": task.name, "env_id": task.env_id, "level": level, "measured": measured,
                           "measured_episodes": episodes, "measured_seed": seed,
                           "selection": {"snapshot_step": rec["step"], "snapshot_return": rec["return_mean"],
                                         "expert_return": best["return_mean"],
                                         "medium_in_25_50_range": bool(in_range) if level == "medium" else None}})
        actor.save(dest / f"{task.name}-{level}")
        chosen[level] = actor.meta
    _update_manifest(dest, task.name, chosen)
    return chosen


def _summary(stats: dict) -> dict:
    r = np.asarray(stats["returns"])
    return {"return_mean": stats["return_mean"], "return_std": float(r.std()), "score_mean": stats["score_mean"],
            "length_mean": stats["length_mean"], "episodes": len(r)}


def _export_actor(model, venv, task, activation: str, meta) -> Actor:
    sd = {k: v.detach().cpu().numpy() for k, v in model.policy.state_dict().items()}
    n_hidden = len([k for k in sd if k.startswith("mlp_extractor.policy_net.") and k.endswith(".weight")])
    layers = [(sd[f"mlp_extractor.policy_net.{i}.weight"], sd[f"mlp_extractor.policy_net.{i}.bias"])
              for i in range(0, 2 * n_hidden, 2)] + [(sd["action_net.weight"], sd["action_net.bias"])]
    rms = venv.obs_rms
    return Actor([w for w, _ in layers], [b for _, b in layers], sd["log_std"],
                 rms.mean.astype(np.float32), np.sqrt(rms.var + venv.epsilon).astype(np.float32),
                 float(venv.clip_obs), activation, {"task": task.name, "env_id": task.env_id, **meta})


def _save_state(state_dir: Path, model, venv) -> None:
    state = {"policy": model.policy.state_dict(), "optimizer": model.policy.optimizer.state_dict(),
             "num_timesteps": model.num_timesteps, "n_updates": model._n_updates,
             "obs_rms": {k: torch.as_tensor(getattr(venv.obs_rms, k)) for k in ("mean", "var")},
             "obs_count": float(venv.obs_rms.count), "ret_var": float(venv.ret_rms.var),
             "ret_mean": float(venv.ret_rms.mean), "ret_count": float(venv.ret_rms.count)}
    with atomic_dir(state_dir) as tmp:
        write_train_state(tmp, state)


def _restore(state_dir: Path, model, venv) -> None:
    """Continue from a saved state; environments start fresh episodes (MuJoCo state is not saved)."""
    s = load_train_state(state_dir)
    model.policy.load_state_dict(s["policy"])
    model.policy.optimizer.load_state_dict(s["optimizer"])
    model.num_timesteps, model._n_updates = int(s["num_timesteps"]), int(s["n_updates"])
    venv.obs_rms.mean, venv.obs_rms.var = s["obs_rms"]["mean"].numpy(), s["obs_rms"]["var"].numpy()
    venv.obs_rms.count = s["obs_count"]
    venv.ret_rms.mean, venv.ret_rms.var, venv.ret_rms.count = s["ret_mean"], s["ret_var"], s["ret_count"]


def _update_manifest(dest: Path, task: str, chosen: dict) -> None:
    path = dest / "manifest.json"
    manifest = read_json(path) if path.is_file() else {"policies": {}}
    for level, meta in chosen.items():
        m = meta["measured"]
        manifest["policies"][f"{task}-{level}"] = {
            "algo": meta["algo"], "preset": meta.get("preset"), "train_steps": meta["train_steps"],
            "seed": meta["seed"],
            "deterministic": m["deterministic"], "stochastic": m["stochastic"]}
    write_json(path, manifest)
