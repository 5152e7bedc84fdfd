"""Merge coefficients searched by rollouts.

The paper merges with alpha 0.5 or 1 and equal model weights. Here every merged unit (each
selected group, or each block's part with `granularity: layer`) gets its own weights over the
models, chosen by optuna (TPE or CMA-ES) to maximise the mean D4RL-normalised score over the
tasks. Selection episodes use reset seeds 0, 1, ...; the best and the equal-weight merges are then
reported on held-out episodes from seed 10,000, so the reported score was never optimised. The
first trial is the equal-weight merge (the paper's average), so the search starts from it. The
study is an optuna journal in the output directory: a stopped search continues from it.

Output directory: study.log (the journal), search.json (the config), best/ (the best merge as a
bundle), results.json and results.md (weights, selection and held-out scores), history.png.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

import numpy as np
import optuna
import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from tqdm.auto import tqdm

from dtmerge.atomic import atomic_path, write_json
from dtmerge.envs import SCORE_LABEL, get_task
from dtmerge.errors import DtmergeError
from dtmerge.evaluate import evaluate
from dtmerge.merge.align import ALIGN_METHODS, apply_permutation, find_permutations
from dtmerge.merge.methods import METHODS
from dtmerge.model.groups import BLOCK_PARTS
from dtmerge.model.selectors import resolve_mergeable
from dtmerge.outputs import claim_outputs
from dtmerge.store.bundle import write_bundle
from dtmerge.store.checkpoint import load_checkpoint
from dtmerge.validate import one_line, read_yaml_mapping

HELD_OUT_SEED = 10_000  # reported episodes start here; selection episodes stay below it


class SearchError(DtmergeError):
    """A search that cannot run as configured."""


class SearchConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    models: list[str] = Field(min_length=2, description="checkpoints, one per task; the first is the alignment target")
    select: list[str] = Field(["attn"], min_length=1, description="merged groups; each is one unit with "
                                                                    "granularity group")
    granularity: Literal["group", "layer"] = Field("group", description="one set of model weights per selected "
                                                   "group, or per block part (h.i.attn, h.i.mlp, ...) within them")
    align: Literal[ALIGN_METHODS] | None = Field(None, description="permute every model into the first's basis first")
    trials: int = Field(30, gt=0, description="merges tried (the rollout budget is trials x tasks x episodes)")
    episodes: int = Field(5, gt=0, description="selection episodes per task and trial (reset seeds 0, 1, ...)")
    report_episodes: int = Field(10, gt=0, description="held-out episodes per task for the best and the "
                                                        "equal-weight merge (reset seeds from 10,000)")
    sampler: Literal["tpe", "cmaes"] = "tpe"
    seed: int = 0
    max_steps: int | None = Field(None, gt=0, description="cap on episode length (quick checks only)")
    precision: Literal["auto", "bf16", "fp32"] = Field("auto", description="of the rollouts")
    output: str


def load_search_config(path) -> SearchConfig:
    data = read_yaml_mapping(path, "search config", SearchError)
    try:
        return SearchConfig(**data)
    except ValidationError as e:
        raise SearchError(f"{path}: invalid search config: {one_line(e)}") from None


def merge_units(cfg: SearchConfig, model_config) -> dict[str, list[str]]:
    """The units that get their own weights, each with its tensor names."""
    groups = {item: resolve_mergeable([item], model_config) for item in cfg.select}
    seen: dict[str, str] = {}
    for item, names in groups.items():
        for n in names:
            if n in seen:
                raise SearchError(f"select items {seen[n]!r} and {item!r} both take {n}; make them disjoint")
            seen[n] = item
    if cfg.granularity == "group":
        return {item: names for item, names in groups.items() if names}
    parts = [f"h.{i}.{p}" for i in range(model_config.n_layer) for p in BLOCK_PARTS] + ["ln_f"]
    units = {}
    for part in parts:
        prefix = f"transformer.{part}."
        for item, names in groups.items():
            inside = [n for n in names if n.startswith(prefix)]
            if inside:
                units[f"{item}:{part}" if len(groups) > 1 else part] = inside
    return units


class Merger:
    """The models in memory (aligned if asked) and the per-task models a set of weights gives."""

    def __init__(self, cfg: SearchConfig):
        loaded = [load_checkpoint(p) for p in cfg.models]
        self.metas = [m for _, m in loaded]
        self.tasks = [m["task"] for m in self.metas]
        if len(set(self.tasks)) != len(self.tasks):
            raise SearchError(f"one model per task, got tasks {self.tasks}")
        self.models = [m.eval() for m, _ in loaded]
        if cfg.align:
            for i, path in enumerate(cfg.models[1:], 1):
                perms, _, _ = find_permutations(cfg.models[0], path, cfg.align, seed=cfg.seed)
                self.models[i].load_state_dict(apply_permutation(self.models[i].state_dict(),
                                                                 self.models[i].config, perms))
        self.states = [{k: v.clone() for k, v in m.state_dict().items()} for m in self.models]
        self.units = merge_units(cfg, self.models[0].config)

    def merged(self, weights: dict[str, list[float]]) -> dict[str, torch.Tensor]:
        average = METHODS["average"].fn
        return {n: average([s[n] for s in self.states], weights=w) for unit, w in weights.items()
                for n in self.units[unit]}

    def evaluate(self, weights: dict[str, list[float]], episodes: int, seed: int, max_steps: int | None,
                 precision: str) -> dict:
        """Each task's (mean score, mean return) with these weights, at the task's first RTG target."""
        shared = self.merged(weights)
        out = {}
        for model, state, meta in zip(self.models, self.states, self.metas):
            model.load_state_dict({**state, **shared})
            r = evaluate(model, get_task(meta["task"]), meta["state_mean"], meta["state_std"], meta["rtg_targets"][:1],
                         episodes, seed, meta["rtg_scale"], "cpu", precision, progress=False, max_steps=max_steps)
            out[meta["task"]] = (r["targets"][0]["score_mean"], r["targets"][0]["return_mean"])
        return out


def weights_of(params: dict, units, n_models: int) -> dict[str, list[float]]:
    """Trial parameters to model weights per unit: alpha for two models, else weights normalised to 1."""
    out = {}
    for unit in units:
        if n_models == 2:
            alpha = params[f"{unit}/alpha"]
            out[unit] = [1.0 - alpha, alpha]
        else:
            w = [params[f"{unit}/w{i}"] for i in range(n_models)]
            out[unit] = [x / sum(w) for x in w] if sum(w) > 0 else [1.0 / n_models] * n_models
    return out


def equal_params(units, n_models: int) -> dict:
    if n_models == 2:
        return {f"{unit}/alpha": 0.5 for unit in units}
    return {f"{unit}/w{i}": 1.0 for unit in units for i in range(n_models)}


def run_search(cfg: SearchConfig, resume: bool = False, progress: bool = True) -> dict:
    """Run (or with `resume`, continue) the search; a finished one is only reported again."""
    out = Path(cfg.output)
    claim_outputs([out], cfg.models, resume=resume)
    out.mkdir(parents=True, exist_ok=True)
    saved = out / "search.json"
    if saved.is_file() and json.loads(saved.read_text()) != cfg.model_dump():
        raise SearchError(f"{saved}: this directory holds a search with another config; resume it with the same "
                          f"config, or choose another output")
    write_json(saved, cfg.model_dump())
    merger = Merger(cfg)
    n = len(cfg.models)
    sampler = (optuna.samplers.TPESampler(seed=cfg.seed) if cfg.sampler == "tpe"
               else optuna.samplers.CmaEsSampler(seed=cfg.seed))
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(out / "study.log")))
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(study_name="dtmerge-search", storage=storage, sampler=sampler, direction="maximize",
                                load_if_exists=True)
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    if equal_trial(study, merger.units, n) is None and not study.get_trials(states=(optuna.trial.TrialState.WAITING,)):
        study.enqueue_trial(equal_params(merger.units, n))  # the paper's average comes first

    def objective(trial: optuna.Trial) -> float:
        names = (["alpha"] if n == 2 else [f"w{i}" for i in range(n)])
        params = {f"{unit}/{x}": trial.suggest_float(f"{unit}/{x}", 0.0, 1.0) for unit in merger.units for x in names}
        result = merger.evaluate(weights_of(params, merger.units, n), cfg.episodes, 0, cfg.max_steps, cfg.precision)
        scores = {t: score for t, (score, _) in result.items()}
        trial.set_user_attr("scores", scores)
        return float(np.mean(list(scores.values())))

    remaining = cfg.trials - len(done)
    if remaining > 0:
        with tqdm(total=remaining, desc="search trials", disable=not progress) as bar:
            study.optimize(objective, n_trials=remaining, callbacks=[lambda s, t: bar.update(1)])
    return report(cfg, study, merger, out)


def equal_trial(study: optuna.Study, units, n_models: int):
    """The finished trial of the equal-weight merge, if there is one."""
    equal = equal_params(units, n_models)
    return next((t for t in study.get_trials(states=(optuna.trial.TrialState.COMPLETE,)) if t.params == equal), None)


def report(cfg: SearchConfig, study: optuna.Study, merger: Merger, out: Path) -> dict:
    trials = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    n = len(cfg.models)
    best, equal = study.best_trial, equal_trial(study, merger.units, n)
    held = {}
    for name, trial in (("best", best), ("equal weights", equal)):
        w = weights_of(trial.params, merger.units, n)
        result = merger.evaluate(w, cfg.report_episodes, HELD_OUT_SEED, cfg.max_steps, cfg.precision)
        scores = {t: score for t, (score, _) in result.items()}
        held[name] = {"weights": w, "selection": trial.user_attrs["scores"], "selection_mean": trial.value,
                      "held_out": scores, "held_out_mean": float(np.mean(list(scores.values()))),
                      "held_out_return": {t: ret for t, (_, ret) in result.items()}, "trial": trial.number}
    shared = merger.merged(held["best"]["weights"])
    per_task = {t: (m, {k: v for k, v in s.items() if k not in shared})
                for t, m, s in zip(merger.tasks, merger.metas, merger.states)}
    write_bundle(out / "best", shared, per_task, {"merge": {
        "method": "average", "search": cfg.model_dump(exclude={"output"}), "weights": held["best"]["weights"],
        "models": list(cfg.models), "tasks": merger.tasks, "merged_tensors": len(shared)}})
    summary = {"config": cfg.model_dump(), "trials": len(trials), "rollouts_per_trial": cfg.episodes * n,
               "history": [{"trial": t.number, "value": t.value, "scores": t.user_attrs["scores"]} for t in trials],
               **held}
    write_json(out / "results.json", summary)
    fmt = lambda s: " | ".join(f"{s[t]:.1f}" for t in merger.tasks)  # noqa: E731
    lines = [f"# Merge weights searched by rollouts ({cfg.sampler}, {len(trials)} trials)", "",
             f"{SCORE_LABEL} score per task; selection: {cfg.episodes} episodes per task and trial from reset seed 0; "
             f"held-out: {cfg.report_episodes} episodes from seed {HELD_OUT_SEED}. Units: {', '.join(merger.units)}"
             f"{'; models aligned by ' + cfg.align if cfg.align else ''}.", "",
             "| merge | " + " | ".join(merger.tasks) + " | mean (held-out) | mean (selection) |",
             "| --- |" + " --- |" * (len(merger.tasks) + 2)]
    for name, h in held.items():
        lines.append(f"| {name} (trial {h['trial']}) | {fmt(h['held_out'])} | {h['held_out_mean']:.1f} | "
                     f"{h['selection_mean']:.1f} |")
    lines += ["", "Best weights (per unit, one per model in config order):", ""]
    lines += [f"- {unit}: {', '.join(f'{x:.2f}' for x in w)}" for unit, w in held["best"]["weights"].items()]
    with atomic_path(out / "results.md") as tmp:
        tmp.write_text("\n".join(lines) + "\n")
    _plot_history(summary, out / "history.png")
    return summary


def _plot_history(summary: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    values = [h["value"] for h in summary["history"]]
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=120)
    ax.plot(range(len(values)), values, "o", ms=3, label="trial (selection episodes)")
    ax.plot(range(len(values)), np.maximum.accumulate(values), label="best so far")
    ax.axhline(summary["equal weights"]["selection_mean"], color="k", lw=0.8, ls=":", label="equal weights")
    ax.set_xlabel("trial")
    ax.set_ylabel(f"mean {SCORE_LABEL} over tasks")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    with atomic_path(path, ".png") as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
