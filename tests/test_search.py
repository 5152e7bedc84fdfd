"""dtmerge search at smoke size: optuna over merge weights, held-out report, and a stopped study resumed."""

import json
from pathlib import Path

import pytest
import torch
import yaml
from click.testing import CliRunner
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


@pytest.mark.parametrize("sampler", ["tpe", "cmaes"])
def test_a_stopped_search_resumes_as_if_never_stopped(tmp_path, task_models, monkeypatch, sampler):
    whole = run_search(SearchConfig(**_config(tmp_path / "whole", task_models, sampler=sampler, trials=8)),
                       progress=False)
    cfg = SearchConfig(**_config(tmp_path, task_models, sampler=sampler, trials=8))
    real, calls = search.Merger.evaluate, []

    def stop_on_sixth(self, *args):
        calls.append(1)
        if len(calls) == 6:
            raise KeyboardInterrupt
        return real(self, *args)
    monkeypatch.setattr(search.Merger, "evaluate", stop_on_sixth)
    with pytest.raises(KeyboardInterrupt):
        run_search(cfg, progress=False)
    monkeypatch.setattr(search.Merger, "evaluate", real)
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
