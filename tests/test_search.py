"""dtmerge search at smoke size: optuna over merge weights, held-out report, and a stopped study resumed."""

import json
from pathlib import Path

import pytest
import torch
import yaml
from click.testing import CliRunner
from conftest import TINY
from pydantic import ValidationError
from safetensors.torch import load_file

from dtmerge.cli import main
from dtmerge.merge import search
from dtmerge.merge.engine import MergeConfig, load_merge_config, merge
from dtmerge.merge.mff import MFFConfig
from dtmerge.merge.search import SearchConfig, load_search_config, merge_units, run_search
from dtmerge.model import DTConfig
from dtmerge.validate import read_yaml_mapping


def _config(tmp_path, task_models, **extra) -> dict:
    return {"models": [str(task_models["hopper"]), str(task_models["walker2d"]), str(task_models["halfcheetah"])],
            "select": ["attn", "mlp"], "trials": 4, "episodes": 1, "report_episodes": 2, "max_steps": 15,
            "output": str(tmp_path / "search"), **extra}


def test_search_runs_reports_and_starts_from_the_equal_weight_merge(tmp_path, task_models):
    file = tmp_path / "search.yaml"
    file.write_text(yaml.safe_dump(_config(tmp_path, task_models)))
    r = CliRunner().invoke(main, ["search", str(file), "--quiet"])
    assert r.exit_code == 0, r.output
    out = tmp_path / "search"
    results = json.loads((out / "results.json").read_text())
    assert results["trials"] == 4 and len(results["history"]) == 4
    assert results["equal weights"]["trial"] == 0
    assert results["equal weights"]["weights"]["attn"] == pytest.approx([1 / 3] * 3)
    assert results["best"]["selection_mean"] == max(h["value"] for h in results["history"])
    assert set(results["best"]["held_out"]) == {"hopper", "walker2d", "halfcheetah"}
    assert (out / "history.png").stat().st_size > 0 and (out / "best" / "bundle.json").is_file()
    assert "held-out" in r.output
    again = CliRunner().invoke(main, ["search", str(file), "--quiet"])
    assert again.exit_code != 0 and "exists" in again.output  # never over a finished search without --resume


def _stop_at_rollout(cfg: SearchConfig, call: int, monkeypatch) -> None:
    """Run the search `cfg` with a Ctrl-C at its `call`-th round of rollouts (a stop mid-study)."""
    real, calls = search.Merger.evaluate, []

    def stop(self, *args):
        calls.append(1)
        if len(calls) == call:
            raise KeyboardInterrupt
        return real(self, *args)
    monkeypatch.setattr(search.Merger, "evaluate", stop)
    with pytest.raises(KeyboardInterrupt):
        run_search(cfg, progress=False)
    monkeypatch.setattr(search.Merger, "evaluate", real)


@pytest.mark.parametrize("sampler", ["tpe", "cmaes"])
def test_a_stopped_search_resumes_as_if_never_stopped(tmp_path, task_models, monkeypatch, sampler):
    whole = run_search(SearchConfig(**_config(tmp_path / "whole", task_models, sampler=sampler, trials=8)),
                       progress=False)
    cfg = SearchConfig(**_config(tmp_path, task_models, sampler=sampler, trials=8))
    _stop_at_rollout(cfg, 6, monkeypatch)
    assert json.loads((tmp_path / "search" / "search.json").read_text()) == cfg.model_dump()
    resumed = run_search(cfg, resume=True, progress=False)
    def numbers_dropped(summary):  # a stopped trial keeps its number, so later ones are numbered one higher
        return ([{**h, "trial": None} for h in summary["history"]], {**summary["best"], "trial": None})
    assert numbers_dropped(resumed) == numbers_dropped(whole)
    assert len({h["value"] for h in resumed["history"]}) > 1  # the trials differ: a real search, not one point
    changed = SearchConfig(**{**cfg.model_dump(), "trials": 9, "episodes": 2})
    with pytest.raises(search.SearchError, match="another config"):
        run_search(changed, resume=True, progress=False)


def test_a_study_of_another_search_is_refused(tmp_path, task_models):
    run_search(SearchConfig(**_config(tmp_path, task_models, sampler="cmaes", trials=3)), progress=False)
    other = SearchConfig(**_config(tmp_path, task_models, sampler="cmaes", trials=5, seed=1))
    (tmp_path / "search" / "search.json").write_text(json.dumps(other.model_dump()))
    with pytest.raises(search.SearchError, match="not the point CMA-ES proposes with seed 1"):
        run_search(other, resume=True, progress=False)


def test_an_aligned_searchs_equal_weight_merge_is_merge_with_align(tmp_path, task_models):
    """`align:` means one alignment in search and merge configs, whatever the search's seed."""
    cfg = SearchConfig(**_config(tmp_path, task_models, align="weights", trials=1, seed=1))
    run_search(cfg, progress=False)
    merged = merge(MergeConfig(models=cfg.models, select=cfg.select, align="weights", output=str(tmp_path / "m")))
    searched, expected = load_file(tmp_path / "search" / "best" / "shared.safetensors"), \
        load_file(merged / "shared.safetensors")
    assert searched.keys() == expected.keys()
    assert all(torch.allclose(searched[k], expected[k], rtol=1e-6, atol=1e-7) for k in searched)


def test_a_journal_optuna_cannot_replay_is_refused(tmp_path):
    log = tmp_path / "study.log"
    log.write_text('{"op_code": 0, "worker_id": "w", "study_name": "dtmerge-search", "directions": [1]}\n'
                   '{"op_code": 4, "worker_id": "w", "study_id": 0, "datetime_start": "2026", "params": {"a": 5}}\n')
    with pytest.raises(search.SearchError, match="study.log: not a readable optuna journal"):
        search.open_study(log)


def test_units_per_group_and_per_layer():
    cfg = DTConfig(state_dim=3, act_dim=2, n_embd=8, n_layer=2)
    group = merge_units(SearchConfig(models=["a", "b"], select=["attn", "mlp"], output="x"), cfg)
    assert list(group) == ["attn", "mlp"] and len(group["attn"]) == 8
    layer = merge_units(SearchConfig(models=["a", "b"], select=["attn"], granularity="layer", output="x"), cfg)
    assert list(layer) == ["h.0.attn", "h.1.attn"]
    with pytest.raises(search.SearchError, match="disjoint"):
        merge_units(SearchConfig(models=["a", "b"], select=["attn", "h.0"], output="x"), cfg)


def test_every_shipped_config_is_valid():
    """configs/*.yaml parse as the configs they are for (paths in them need not exist)."""
    root = Path(__file__).resolve().parent.parent / "configs"
    assert load_search_config(root / "search.yaml").align == "weights"
    assert load_merge_config(root / "merge-attention-swap.yaml").select
    assert MFFConfig(**read_yaml_mapping(root / "mff-fisher.yaml")).merge.method == "fisher"


@pytest.fixture(scope="module")
def shared_start(tmp_path_factory, task_files):
    """Three tiny task models trained from one random trunk, and that trunk as their base."""
    from dtmerge.train import TrainConfig, train
    from dtmerge.train.recipe import save_start

    root = tmp_path_factory.mktemp("shared")
    configs = {t: TrainConfig(dataset=str(path), out=str(root / t), steps=4, warmup_steps=2, batch_size=8,
                              device="cpu", precision="fp32", seed=i, init_seed=7, model=TINY)
               for i, (t, path) in enumerate(task_files.items())}
    models = {t: train(c, progress=False) for t, c in configs.items()}
    return models, save_start(configs["hopper"], root / "base")


def _method_config(tmp_path, shared_start, **extra) -> dict:
    models, base = shared_start
    return {"models": [str(models[t]) for t in ("hopper", "walker2d", "halfcheetah")], "select": ["attn", "mlp"],
            "method": "ties", "base": str(base), "space": {"density": [0.1, 1.0], "scale": [0.2, 1.5]},
            "trials": 4, "episodes": 1, "report_episodes": 2, "max_steps": 15, "output": str(tmp_path / "s"), **extra}


@pytest.mark.parametrize("sampler", ["tpe", "cmaes"])
def test_a_method_search_starts_at_its_defaults_and_keeps_the_merge_it_reports(tmp_path, shared_start, sampler):
    cfg = SearchConfig(**_method_config(tmp_path, shared_start, sampler=sampler))
    summary = run_search(cfg, progress=False)
    assert summary["reference"] == "defaults" and summary["defaults"]["trial"] == 0
    assert summary["defaults"]["params"] == {"density": 0.2, "scale": 1.0}  # ties' own defaults
    best = summary["best"]["params"]
    assert all(lo <= best[k] <= hi for k, (lo, hi) in cfg.space.items())
    assert len({tuple(sorted(h["scores"].items())) for h in summary["history"]}) > 1  # the trials differ
    expected = merge(MergeConfig(models=cfg.models, select=cfg.select, method="ties", base=cfg.base, params=best,
                                 output=str(tmp_path / "m")))
    searched = load_file(tmp_path / "s" / "best" / "shared.safetensors")
    wanted = load_file(expected / "shared.safetensors")
    assert searched.keys() == wanted.keys() and all(torch.equal(searched[k], wanted[k]) for k in wanted)
    bundle = json.loads((tmp_path / "s" / "best" / "bundle.json").read_text())
    assert bundle["merge"]["method"] == "ties" and bundle["merge"]["params"] == best
    assert "Best parameters" in (tmp_path / "s" / "results.md").read_text()


def test_a_method_search_resumes_as_if_never_stopped(tmp_path, shared_start, monkeypatch):
    whole = run_search(SearchConfig(**_method_config(tmp_path / "whole", shared_start, sampler="cmaes", trials=6)),
                       progress=False)
    cfg = SearchConfig(**_method_config(tmp_path, shared_start, sampler="cmaes", trials=6))
    _stop_at_rollout(cfg, 4, monkeypatch)
    assert run_search(cfg, resume=True, progress=False)["history"] == whole["history"]


@pytest.mark.parametrize("change, message", [
    ({"space": {"lambda": [0.1, 1.0]}}, r"takes \['density', 'scale'\], not \['lambda'\]"),
    ({"space": {"density": [0.5, 1.0]}}, r"first trial's value 0.2 .* \[0.5, 1.0\]"),
    ({"method": "dare", "space": {"seed": [0, 3.5]}}, "whole number"),
    ({"method": "dare", "space": {"seed": [0, 3]}, "sampler": "cmaes"}, "cmaes searches real numbers only"),
    ({"method": "task_arithmetic", "space": {"scale": [0.1, 1.0]}}, r"first trial's value None"),
    ({"method": "nope"}, "unknown method 'nope'"),
    ({"base": None}, "needs base"),
])
def test_a_method_search_that_cannot_run_is_refused_before_any_rollout(tmp_path, shared_start, change, message):
    cfg = SearchConfig(**{**_method_config(tmp_path, shared_start), **change})
    with pytest.raises(search.SearchError, match=message):
        run_search(cfg, progress=False)
    assert not (tmp_path / "s").exists()


@pytest.mark.parametrize("change, message", [
    ({"space": {}}, "give space"),
    ({"space": {"density": [1.0, 0.5]}}, "must be below high"),
    ({"align": "weights"}, "align the models first"),
    ({"params": {"density": 0.3}}, "searched .* or fixed"),
])
def test_a_method_search_config_that_contradicts_itself_is_invalid(tmp_path, shared_start, change, message):
    with pytest.raises(ValidationError, match=message):
        SearchConfig(**{**_method_config(tmp_path, shared_start), **change})


def test_the_guides_method_search_config_is_valid():
    """docs/merging.md's example of a method search parses as a search config."""
    text = (Path(__file__).resolve().parent.parent / "docs" / "merging.md").read_text()
    block = text.split("The same search tunes", 1)[1].split("```yaml\n", 1)[1].split("```", 1)[0]
    cfg = SearchConfig(**yaml.safe_load(block))
    assert cfg.method == "ties" and cfg.space == {"density": (0.1, 1.0), "scale": (0.3, 1.5)}
    assert cfg.reference() == "defaults"


def test_cma_es_learns_in_the_unit_cube_whatever_the_ranges():
    """A space's CMA-ES is the cmaes library's optimiser on the unit cube: it is told the unit
    points it proposed (not the scaled ones), and the scaled ones stay inside the ranges."""
    import numpy as np
    import optuna
    from cmaes import CMA

    dists = {"a": optuna.distributions.FloatDistribution(0.3, 0.9),
             "b": optuna.distributions.FloatDistribution(-2.0, 6.0)}
    low, span = np.array([0.3, -2.0]), np.array([0.6, 8.0])
    cma = CMA(mean=(np.array([0.5, 1.0]) - low) / span, sigma=1 / 6, bounds=np.array([[0.0, 1.0]] * 2), seed=3)
    finished, generation = [], []
    for _ in range(2 * cma.population_size):
        unit = cma.ask()
        value = -float(((unit - 0.9) ** 2).sum())
        params = dict(zip("ab", map(float, np.clip(low + unit * span, low, low + span))))
        finished.append(optuna.trial.create_trial(params=params, distributions=dists, value=value))
        generation.append((unit, -value))
        if len(generation) == cma.population_size:
            cma.tell(generation)
            generation = []
    proposal = search.cma_proposal(3, finished, dists, {"a": 0.5, "b": 1.0}, Path("study.log"))
    expected = np.clip(low + cma.ask() * span, low, low + span)
    assert [proposal["a"], proposal["b"]] == pytest.approx(expected.tolist(), rel=1e-12)
    assert all(dists[k].low <= v <= dists[k].high for k, v in proposal.items())
