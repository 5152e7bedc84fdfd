"""Merge coefficients searched by rollouts.

The paper merges with alpha 0.5 or 1 and equal model weights. Here every merged unit (each
selected group, or each block's part with `granularity: layer`) gets its own weights over the
models, or, with `space:`, any merge method's hyper-parameters (TIES's density and scale, ...) are
searched, one setting for every merged tensor. Either is chosen by optuna's TPE or by CMA-ES (the
`cmaes` library) to maximise the mean D4RL-normalised score over the tasks. Selection episodes use
reset seeds 0, 1, ...; the best and the reference merge (equal weights, or the method's defaults)
are then reported on held-out episodes from seed 10,000, so the reported score was never
optimised. The first trial is the reference, so the search starts from it. The study is an optuna
journal in the output directory: a stopped search continues from it, and proposes what it would
have unstopped.

Output directory: study.log (the journal), search.json (the config), best/ (the best merge as a
bundle), results.json and results.md (weights, selection and held-out scores), history.png.
"""

from __future__ import annotations

import inspect
import json
import typing
from pathlib import Path
from typing import Literal

import numpy as np
import optuna
import torch
from cmaes import CMA
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from tqdm.auto import tqdm

from dtmerge.atomic import atomic_path, read_json, write_json
from dtmerge.envs import SCORE_LABEL, get_task
from dtmerge.errors import DtmergeError
from dtmerge.evaluate import evaluate
from dtmerge.merge.align import ALIGN_METHODS, apply_permutation, find_permutations
from dtmerge.merge.engine import MergeConfig, MergeError, merged_tensors
from dtmerge.merge.methods import METHODS, method_taking
from dtmerge.model.groups import BLOCK_PARTS
from dtmerge.model.selectors import resolve_mergeable
from dtmerge.outputs import claim_outputs, run_directory
from dtmerge.runtime import pick_device
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
    sampler: Literal["tpe", "cmaes"] = Field("tpe", description="optuna's TPE, or CMA-ES started at the reference")
    method: str = Field("average", description="the merge method; average without space: per-unit model weights")
    space: dict[str, tuple[float, float]] = Field(
        default_factory=dict, description="method parameters searched, each as [low, high] (an int parameter "
                                          "takes whole numbers); one setting for every merged tensor")
    start: dict[str, float] = Field(default_factory=dict, description="the first trial's values of searched "
                                    "parameters (default: the method's own defaults)")
    params: dict = Field(default_factory=dict, description="the method's parameters held fixed")
    base: str | None = Field(None, description="shared starting checkpoint (methods on task vectors)")
    seed: int = 0
    max_steps: int | None = Field(None, gt=0, description="cap on episode length (quick checks only)")
    precision: Literal["auto", "bf16", "fp32"] = Field("auto", description="of the rollouts")
    device: str = Field("auto", description="of the rollouts: auto (a GPU where there is one), cpu, cuda, ...")
    output: str

    @model_validator(mode="after")
    def _one_kind_of_search(self):
        if self.space:
            for name, (low, high) in self.space.items():
                if not low < high:
                    raise ValueError(f"space {name}: low {low} must be below high {high}")
            if self.align or self.granularity != "group":
                raise ValueError("space searches one setting of the method for every merged tensor: align the "
                                 "models first (dtmerge align) and leave granularity at group")
            fixed = set(self.space) & set(self.params) or set(self.start) - set(self.space)
            if fixed:
                raise ValueError(f"{sorted(fixed)}: a parameter is searched (space) or fixed (params), and start "
                                 "names searched ones only")
        elif self.method != "average" or self.params or self.start or self.base:
            raise ValueError(f"method {self.method}: give space, the parameters to search (without it a search "
                             "finds model weights for average)")
        return self

    def reference(self) -> str:
        """What the first trial is and the best is reported beside."""
        return "defaults" if self.space else "equal weights"


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
    """The models in memory (aligned if asked) and the per-task models a trial's parameters give:
    per-unit model weights for average, or one setting of the method's hyper-parameters (`space`)."""

    def __init__(self, cfg: SearchConfig):
        self.cfg = cfg
        loaded = [load_checkpoint(p) for p in cfg.models]
        self.metas = [m for _, m in loaded]
        self.tasks = [m["task"] for m in self.metas]
        if len(set(self.tasks)) != len(self.tasks):
            raise SearchError(f"one model per task, got tasks {self.tasks}")
        self.device = pick_device(cfg.device)
        self.models = [m.eval().to(self.device) for m, _ in loaded]
        if cfg.align:
            for i, path in enumerate(cfg.models[1:], 1):
                perms, _, _ = find_permutations(cfg.models[0], path, cfg.align)  # as `merge` aligns
                self.models[i].load_state_dict(apply_permutation(self.models[i].state_dict(),
                                                                 self.models[i].config, perms))
        self.states = [{k: v.detach().cpu().clone() for k, v in m.state_dict().items()} for m in self.models]
        self.units = merge_units(cfg, self.models[0].config)
        n = len(cfg.models)
        if cfg.space:
            self.distributions, self.reference = method_space(cfg)
            self.merged(self.reference)  # the method takes these models and parameters, before any rollout
        else:
            per_unit = ["alpha"] if n == 2 else [f"w{i}" for i in range(n)]
            names = [f"{unit}/{x}" for unit in self.units for x in per_unit]
            self.distributions = {name: optuna.distributions.FloatDistribution(0.0, 1.0) for name in names}
            self.reference = equal_params(self.units, n)

    def merge_config(self, params: dict) -> MergeConfig:
        cfg = self.cfg
        return MergeConfig(models=cfg.models, select=cfg.select, method=cfg.method, params={**cfg.params, **params},
                           base=cfg.base, output=str(Path(cfg.output) / "best"))

    def weights(self, params: dict) -> dict[str, list[float]] | None:
        return None if self.cfg.space else weights_of(params, self.units, len(self.models))

    def merged(self, params: dict) -> dict[str, torch.Tensor]:
        """The merged tensors a trial's parameters give."""
        if self.cfg.space:
            try:
                return merged_tensors(self.merge_config(params))
            except MergeError as e:
                raise SearchError(f"{self.cfg.output}: {e}") from None
        average = METHODS["average"].fn
        return {n: average([s[n] for s in self.states], weights=w) for unit, w in self.weights(params).items()
                for n in self.units[unit]}

    def evaluate(self, params: dict, episodes: int, seed: int, max_steps: int | None, precision: str) -> dict:
        """Each task's (mean score, mean return) with these parameters, at the task's first RTG target."""
        shared = self.merged(params)
        out = {}
        for model, state, meta in zip(self.models, self.states, self.metas):
            model.load_state_dict({**state, **shared})
            r = evaluate(model, get_task(meta["task"]), meta["state_mean"], meta["state_std"], meta["rtg_targets"][:1],
                         episodes, seed, meta["rtg_scale"], self.device, precision, progress=False,
                         max_steps=max_steps)
            out[meta["task"]] = (r["targets"][0]["score_mean"], r["targets"][0]["return_mean"])
        return out


def method_space(cfg: SearchConfig) -> tuple[dict, dict]:
    """optuna distributions of the searched parameters (int ones by the method's type hints) and the
    first trial's values: `start`, else the method's defaults, which must lie in the space."""
    fn = method_taking(cfg.method, cfg.space, SearchError).fn
    hints, defaults = typing.get_type_hints(fn), inspect.signature(fn).parameters
    distributions, start = {}, {}
    for name, (low, high) in cfg.space.items():
        whole = hints[name] is int
        if whole and not (float(low).is_integer() and float(high).is_integer()):
            raise SearchError(f"space {name}: method {cfg.method} takes a whole number; give whole bounds")
        distributions[name] = (optuna.distributions.IntDistribution(int(low), int(high)) if whole
                               else optuna.distributions.FloatDistribution(low, high))
        value = cfg.start.get(name, defaults[name].default)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high or (
                whole and not float(value).is_integer()):
            raise SearchError(f"space {name}: the first trial's value {value!r} (start, else the method's default) "
                              f"must be a {'whole ' if whole else ''}number in [{low}, {high}]")
        start[name] = int(value) if whole else float(value)
    if cfg.sampler == "cmaes" and any(isinstance(d, optuna.distributions.IntDistribution)
                                      for d in distributions.values()):
        raise SearchError("cmaes searches real numbers only; use sampler tpe for whole-number parameters")
    return distributions, start


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
    """Run (or with `resume`, continue) the search; a finished one is only reported again. Every
    proposal depends only on the seed and the finished trials, so a resumed search proposes what an
    uninterrupted one would have."""
    out = Path(cfg.output)
    claim_outputs([out], cfg.models, resume=resume)
    saved = out / "search.json"
    if saved.is_file() and read_json(saved) != cfg.model_dump(mode="json"):
        raise SearchError(f"{saved}: this directory holds a search with another config; resume it with the same "
                          f"config, or choose another output")
    merger = Merger(cfg)  # every model checked before anything is written
    with run_directory(out, overwrite=False, resume=resume, resumable_from="study.log"):
        write_json(saved, cfg.model_dump(mode="json"))
        return _search(cfg, merger, out, progress)


def _search(cfg: SearchConfig, merger: "Merger", out: Path, progress: bool) -> dict:
    distributions = merger.distributions
    names = list(distributions)
    log = out / "study.log"
    study = open_study(log)

    def record(params: dict, trial: optuna.Trial | None = None) -> None:
        result = merger.evaluate(params, cfg.episodes, 0, cfg.max_steps, cfg.precision)
        scores = {t: score for t, (score, _) in result.items()}
        value = float(np.mean(list(scores.values())))
        if trial is None:  # a proposal made here, not by the sampler
            study.add_trial(optuna.trial.create_trial(params=params, distributions=distributions, value=value,
                                                      user_attrs={"scores": scores}))
        else:
            trial.set_user_attr("scores", scores)
            study.tell(trial, value)

    finished = completed_trials(study, names, log)
    with tqdm(total=cfg.trials, initial=min(len(finished), cfg.trials), desc="search trials",
              disable=not progress) as bar:
        while len(finished) < cfg.trials:
            if not finished:
                record(merger.reference)  # the paper's average, or the method's defaults, comes first
            elif cfg.sampler == "cmaes":
                record(cma_proposal(cfg.seed, finished[1:], distributions, merger.reference, log))
            else:  # TPE seeded by the trial's index: its proposal depends on nothing a stop could lose
                study.sampler = optuna.samplers.TPESampler(seed=cfg.seed + len(finished))
                trial = study.ask(distributions)
                record(trial.params, trial)
            finished = completed_trials(study, names, log)
            bar.update(1)
    return report(cfg, study, merger, out)


def open_study(log: Path) -> optuna.Study:
    """The optuna journal in `log`, made if absent. Only JSON is read from it: no sampler here keeps
    state in the study (optuna's own CMA-ES sampler stores its optimiser pickled there)."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    lines = log.read_bytes().split(b"\n")[:-1] if log.is_file() else []  # an unfinished last line optuna skips
    for number, line in enumerate(lines, 1):
        try:
            entry = json.loads(line)
        except ValueError:
            entry = None
        if not isinstance(entry, dict) or not isinstance(entry.get("op_code"), int):
            raise SearchError(f"{log}: line {number} is not an optuna journal entry")
    try:
        storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(log)))
        return optuna.create_study(study_name="dtmerge-search", storage=storage, direction="maximize",
                                   load_if_exists=True)
    except Exception as e:  # optuna raises many kinds on a damaged journal
        raise SearchError(f"{log}: not a readable optuna journal of a dtmerge search "
                          f"({type(e).__name__}: {e})") from None


def completed_trials(study: optuna.Study, names: list[str], log: Path) -> list[optuna.trial.FrozenTrial]:
    """The finished trials in order, each checked to be a trial of this search."""
    trials = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    for t in trials:
        if sorted(t.params) != sorted(names) or not np.isfinite(t.value) or not isinstance(t.user_attrs.get("scores"),
                                                                                             dict):
            raise SearchError(f"{log}: trial {t.number} is not a trial of this search (parameters "
                              f"{sorted(t.params)[:3]}...)")
    return trials


def cma_proposal(seed: int, finished: list[optuna.trial.FrozenTrial], distributions: dict, start: dict,
                 log: Path) -> dict:
    """The next CMA-ES point (the cmaes library, started at the reference with sigma 1/6 of each
    range, as optuna does), found by replaying the seeded optimiser through the finished trials. It
    works in the unit cube; each parameter is its range's low + x * (high - low)."""
    names = list(distributions)
    low = np.array([distributions[k].low for k in names], float)
    span = np.array([distributions[k].high for k in names], float) - low
    cma = CMA(mean=(np.array([start[k] for k in names], float) - low) / span, sigma=1 / 6,
              bounds=np.array([[0.0, 1.0]] * len(names)), seed=seed)
    high = low + span

    def scaled(unit):  # clipped: low + 1.0 * span may pass high by a rounding step
        return np.clip(low + unit * span, low, high)
    generation = []
    for trial in finished:
        unit = cma.ask()
        if not np.allclose([trial.params[k] for k in names], scaled(unit), rtol=1e-9, atol=1e-9):
            raise SearchError(f"{log}: trial {trial.number} is not the point CMA-ES proposes with seed {seed}; "
                              "the study was made by another search")
        generation.append((unit, -trial.value))  # cmaes minimises, in the unit cube it proposes in
        if len(generation) == cma.population_size:
            cma.tell(generation)
            generation = []
    return dict(zip(names, map(float, scaled(cma.ask()))))


def reference_trial(study: optuna.Study, reference: dict):
    """The finished trial of the reference merge (equal weights, or the method's defaults)."""
    return next((t for t in study.get_trials(states=(optuna.trial.TrialState.COMPLETE,)) if t.params == reference),
                None)


def report(cfg: SearchConfig, study: optuna.Study, merger: Merger, out: Path) -> dict:
    trials = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    n, reference = len(cfg.models), cfg.reference()
    held = {}
    for name, trial in (("best", study.best_trial), (reference, reference_trial(study, merger.reference))):
        result = merger.evaluate(trial.params, cfg.report_episodes, HELD_OUT_SEED, cfg.max_steps, cfg.precision)
        scores = {t: score for t, (score, _) in result.items()}
        chosen = {"weights": merger.weights(trial.params)} if not cfg.space else {"params": dict(trial.params)}
        held[name] = {**chosen, "selection": trial.user_attrs["scores"], "selection_mean": trial.value,
                      "held_out": scores, "held_out_mean": float(np.mean(list(scores.values()))),
                      "held_out_return": {t: ret for t, (_, ret) in result.items()}, "trial": trial.number}
    best = held["best"]
    shared = merger.merged(study.best_trial.params)
    per_task = {t: (m, {k: v for k, v in s.items() if k not in shared})
                for t, m, s in zip(merger.tasks, merger.metas, merger.states)}
    write_bundle(out / "best", shared, per_task, {"merge": {
        "method": cfg.method, "search": cfg.model_dump(mode="json", exclude={"output"}),
        **({"params": {**cfg.params, **best["params"]}} if cfg.space else {"weights": best["weights"]}),
        "models": list(cfg.models), "tasks": merger.tasks, "merged_tensors": len(shared)}})
    summary = {"config": cfg.model_dump(mode="json"), "trials": len(trials), "rollouts_per_trial": cfg.episodes * n,
               "reference": reference,
               "history": [{"trial": t.number, "value": t.value, "scores": t.user_attrs["scores"]} for t in trials],
               **held}
    write_json(out / "results.json", summary)
    fmt = lambda s: " | ".join(f"{s[t]:.1f}" for t in merger.tasks)  # noqa: E731
    searched = (f"method {cfg.method}'s {', '.join(cfg.space)}" if cfg.space else
                f"model weights per unit ({', '.join(merger.units)})")
    lines = [f"# Merge {'parameters' if cfg.space else 'weights'} searched by rollouts ({cfg.sampler}, "
             f"{len(trials)} trials)", "",
             f"{SCORE_LABEL} score per task; searched: {searched}; selection: {cfg.episodes} episodes per task and "
             f"trial from reset seed 0; held-out: {cfg.report_episodes} episodes from seed {HELD_OUT_SEED}"
             f"{'; models aligned by ' + cfg.align if cfg.align else ''}.", "",
             "| merge | " + " | ".join(merger.tasks) + " | mean (held-out) | mean (selection) |",
             "| --- |" + " --- |" * (len(merger.tasks) + 2)]
    for name, h in held.items():
        lines.append(f"| {name} (trial {h['trial']}) | {fmt(h['held_out'])} | {h['held_out_mean']:.1f} | "
                     f"{h['selection_mean']:.1f} |")
    if cfg.space:
        lines += ["", "Best parameters:", ""] + [f"- {k}: {v:.4g}" for k, v in best["params"].items()]
    else:
        lines += ["", "Best weights (per unit, one per model in config order):", ""]
        lines += [f"- {unit}: {', '.join(f'{x:.2f}' for x in w)}" for unit, w in best["weights"].items()]
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
    reference = summary["reference"]
    ax.axhline(summary[reference]["selection_mean"], color="k", lw=0.8, ls=":", label=reference)
    ax.set_xlabel("trial")
    ax.set_ylabel(f"mean {SCORE_LABEL} over tasks")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    with atomic_path(path, ".png") as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
