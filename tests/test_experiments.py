"""The experiments pipeline at smoke scale: every experiment end to end, one store shared by all,
finished artifacts never made twice, reports written from the store."""

from __future__ import annotations

import dataclasses
import json
import shutil

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from dtmerge.cli import main
from dtmerge.errors import DtmergeError
from dtmerge.experiments import EXPERIMENTS, common, runner
from dtmerge.experiments import store as store_module
from dtmerge.experiments.runner import all_nodes
from dtmerge.experiments.scales import SCALES
from dtmerge.experiments.store import Node, Store
from dtmerge.experiments.suite import run_suite


def _records(store: Store) -> dict[str, float]:
    return {str(p): p.stat().st_mtime_ns for p in store.root.rglob("artifact.json")}


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("experiments")
    lines = []
    run_suite(list(EXPERIMENTS), "smoke", root / "out", store=root / "store", progress=False, echo=lines.append)
    return root, lines


def test_experiment_list_names_every_experiment():
    r = CliRunner().invoke(main, ["experiment", "list"])
    assert r.exit_code == 0
    assert [ln.split()[0] for ln in r.output.splitlines()] == list(EXPERIMENTS)


@pytest.mark.parametrize("name", list(EXPERIMENTS))
def test_smoke_run_reports_every_experiment(smoke_run, name):
    root, _ = smoke_run
    out = root / "out" / name
    results = json.loads((out / "results.json").read_text())
    assert results["experiment"] == name and results["scale"] == "smoke"
    assert results["settings"]["steps"] == SCALES["smoke"].steps  # the sizes it ran at are recorded
    assert (out / "results.md").read_text().startswith("# ")
    assert name == "dt-curves" or "## Base models" in (out / "results.md").read_text()  # dt-curves: the curves
    assert (out / f"{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    report = (root / "out" / "REPORT.md").read_text()
    assert f"`{name}`)." in report  # every experiment states its findings against the paper's claims


def test_the_plan_counts_shared_artifacts_once(smoke_run):
    root, lines = smoke_run
    scale = SCALES["smoke"]
    nodes = all_nodes([n for m in EXPERIMENTS.values() for n in m.nodes(scale).values()])
    assert f"{len(nodes)} artifacts: 0 cached, {len(nodes)} to make" in "\n".join(lines)
    recipe = scale.train_spec(0).keys()
    single = [n for n in nodes if n.kind == "dt" and set(n.deps) == {"data"} and n.spec.keys() == recipe
              and n.spec["steps"] == scale.steps]  # dt-curves' long schedule trains one of them longer
    assert len(single) == 3 * 3 * scale.seeds  # one random-init DT per task, data level and seed, shared by all
    assert sum(n.deps["data"].spec["level"] == "expert" for n in single) == 3 * scale.seeds
    arms = [n for n in nodes if n.kind == "dt" and set(n.deps) == {"data"} and n.spec.keys() != recipe]
    shared = [n for n in arms if "init_seed" in n.spec]  # Random-shared: alignment (expert), lm-init (2 levels)
    assert len(shared) == 3 * 3 * scale.seeds and len({n.spec["init_seed"] for n in shared}) == scale.seeds
    assert {k for n in arms if n not in shared for k in n.spec.keys() - recipe} == {"lr", "embed_init"}  # dt-curves


def test_tables_three_and_four_share_their_own_mini_sizes():
    """lm-init and fisher-scale train every model with the budget `sized` gives them, from one
    language model; the other experiments keep the scale's own sizes."""
    mini = SCALES["mini"]
    table3 = all_nodes(list(EXPERIMENTS["lm-init"].nodes(mini.for_experiment("lm-init")).values()))
    table4 = all_nodes(list(EXPERIMENTS["fisher-scale"].nodes(mini).values()))
    sized = mini.sized["lm-init"]
    for node in table3 + table4:
        if node.kind == "dt" and "init" in node.deps and node.deps["init"].kind == "dt":  # Single, trained on
            assert node.spec["steps"] == sized["finetune_steps"]
        elif node.kind == "dt":
            assert node.spec["steps"] == sized["steps"] != mini.steps
        if node.kind == "mff":
            assert node.spec["finetune"]["steps"] == sized["finetune_steps"] != mini.finetune_steps

    def recipes(nodes, **match):
        return {json.dumps(n.spec, sort_keys=True) for n in nodes if n.kind == "dt" and
                all(n.spec.get(k) == v for k, v in match.items())}
    assert recipes(table4) == recipes(table3, preset="chibit-r")  # Table IV's DTs: Table III's ChibiT_R recipe
    assert {n.key for n in table3 if n.kind == "lm"} == {n.key for n in table4 if n.kind == "lm"}  # one LM
    assert {n.deps["data"].spec["level"] for n in table3 if n.kind == "dt" and "data" in n.deps} == {"medium"}
    assert all(n.spec["steps"] == mini.steps for n in all_nodes(list(EXPERIMENTS["per-layer"].nodes(mini).values()))
               if n.kind == "dt")


def test_the_dataset_that_needs_more_steps_gets_them_where_the_recipe_applies():
    """mini trains HalfCheetah medium-expert 20,000 steps (dt-curves: it learns its return conditioning
    only after 10,000) in Table I; dt-curves still measures it at the recipe's steps, beside its long
    schedule; everything else keeps the recipe's steps."""
    mini = SCALES["mini"]

    def steps(name):
        return {(n.deps["data"].spec["task"], n.deps["data"].spec["level"], n.spec["steps"])
                for n in all_nodes(list(EXPERIMENTS[name].nodes(mini.for_experiment(name)).values()))
                if n.kind == "dt" and "data" in n.deps and "init" not in n.deps}
    table1 = steps("attention-perturb")
    assert ("halfcheetah", "medium-expert", 20_000) in table1
    assert all(s == mini.steps for t, lv, s in table1 if (t, lv) != ("halfcheetah", "medium-expert"))
    curves = steps("dt-curves")
    assert {("halfcheetah", "medium-expert", mini.steps), ("halfcheetah", "medium-expert", 20_000)} <= curves
    assert {s for t, lv, s in curves if lv == "medium-expert" and t != "halfcheetah"} == {mini.steps}

    def long_dts(name):
        return {n.key for n in all_nodes(list(EXPERIMENTS[name].nodes(mini.for_experiment(name)).values()))
                if n.kind == "dt" and n.spec["steps"] == 20_000 and n.spec["seed"] == 0}
    assert long_dts("dt-curves") == long_dts("attention-perturb")  # one run: trained once, measured and merged


def test_a_second_run_makes_nothing_again(smoke_run):
    root, _ = smoke_run
    store = Store(root / "store")
    before = _records(store)
    lines = []
    run_suite(["incremental"], "smoke", root / "again", store=store.root, progress=False, echo=lines.append)
    assert _records(store) == before  # nothing remade
    n = len(all_nodes(list(EXPERIMENTS["incremental"].nodes(SCALES["smoke"]).values())))
    assert f"{n} artifacts: {n} cached, 0 to make" in "\n".join(lines)


def test_a_stopped_run_resumes_where_it_stopped(tmp_path):
    """Make part of the graph (as a run stopped midway would have), then the rest: only the rest is made."""
    scale = SCALES["smoke"].on(runner.this_runtime())  # as a run here resolves it
    store_root = tmp_path / "store"
    targets = list(EXPERIMENTS["incremental"].nodes(scale).values())
    from dtmerge.experiments.runner import run

    run(Store(store_root), targets[:3], progress=False, echo=lambda s: None)
    made = _records(Store(store_root))
    lines = []
    run_suite(["incremental"], "smoke", tmp_path / "out", store=store_root, progress=False, echo=lines.append)
    after = _records(Store(store_root))
    assert all(after[k] == v for k, v in made.items())  # finished artifacts untouched
    assert len(after) > len(made)
    assert f"artifacts: {len(made)} cached" in "\n".join(lines)


def test_keys_follow_every_setting():
    a = Node("dt", {"steps": 10, "seed": 0}, {"data": Node("dataset", {"task": "hopper"})})
    assert a.key == Node("dt", {"seed": 0, "steps": 10}, {"data": Node("dataset", {"task": "hopper"})}).key
    assert a.key != Node("dt", {"steps": 10, "seed": 1}, {"data": Node("dataset", {"task": "hopper"})}).key
    assert a.key != Node("dt", {"steps": 10, "seed": 0}, {"data": Node("dataset", {"task": "walker2d"})}).key


def test_the_runtime_is_in_the_keys_and_a_resume_on_another_is_refused(tmp_path, monkeypatch):
    """Models trained or rolled out on a GPU in bf16 never answer for a CPU's fp32 ones: the resolved
    device and precision are in every such spec, run.json records them, and --resume checks them."""
    smoke, mini = SCALES["smoke"], SCALES["mini"]
    cpu, gpu = {"device": "cpu", "precision": "fp32"}, {"device": "cuda", "precision": "bf16"}
    assert mini.on(gpu).runtime() == gpu and smoke.on(gpu).runtime() == {"device": "cuda", "precision": "fp32"}
    on_cpu, on_gpu = (all_nodes(list(EXPERIMENTS["lm-init"].nodes(smoke.on(r)).values())) for r in (cpu, gpu))
    runs = {"dt", "eval", "mff", "lm", "search"}
    keys = lambda nodes, kinds: {n.key for n in nodes if n.kind in kinds}  # noqa: E731
    assert keys(on_cpu, runs) and not keys(on_cpu, runs) & keys(on_gpu, runs)
    assert keys(on_cpu, {"dataset", "corpus"}) == keys(on_gpu, {"dataset", "corpus"})  # no device in them
    out = tmp_path / "out"
    run_suite(["incremental"], "smoke", out, store=tmp_path / "store", progress=False, echo=lambda *_: None)
    here = runner.this_runtime()
    assert json.loads((out / "run.json").read_text())["runtime"] == here
    monkeypatch.setattr(runner, "this_runtime", lambda: {**here, "device": "cuda"})
    with pytest.raises(DtmergeError, match=f"made on {here['device']}/{here['precision']}.*this machine runs cuda/"):
        run_suite(["incremental"], "smoke", out, store=tmp_path / "store", resume=True, progress=False, batch_dts=0)


def test_a_revised_kind_gets_new_keys_and_no_other_does(monkeypatch):
    search, dt = Node("search", {"trials": 3}), Node("dt", {"steps": 10})
    before = search.key, dt.key
    monkeypatch.setitem(store_module.REVISIONS, "search", store_module.REVISIONS["search"] + 1)
    assert Node("search", {"trials": 3}).key != before[0] and Node("dt", {"steps": 10}).key == before[1]


def test_verdicts_come_from_bootstrap_intervals_over_seeds():
    from scipy.stats import bootstrap

    def cells(row, per_task_seed_values):
        return {f"{row}|{t}": common.summarise(v) for t, v in zip(("hopper", "halfcheetah", "walker2d"),
                                                                   per_task_seed_values)}
    base = cells("direct", [[10, 20, 30], [30, 40, 50], [50, 60, 70]])
    clear = common.paired_difference({**base, **cells("fisher", [[13, 24, 33], [33, 44, 53], [53, 64, 73]])},
                                     "fisher", "direct")
    assert clear["values"] == [3.0, 4.0, 3.0]
    expected = bootstrap(([3.0, 4.0, 3.0],), np.mean, n_resamples=10_000, method="percentile",
                         rng=np.random.default_rng(0)).confidence_interval
    assert (clear["lo"], clear["hi"]) == (expected.low, expected.high) and clear["lo"] > 0
    assert common.versus(clear, 0.0) is True and common.below(clear, 0.0) is False
    noisy = common.paired_difference({**base, **cells("fisher", [[13, 17, 30], [30, 40, 50], [50, 60, 70]])},
                                     "fisher", "direct")
    assert noisy["values"] == [1.0, -1.0, 0.0] and common.versus(noisy, 0.0) is None
    one_seed = common.summarise([5.0])
    assert one_seed["lo"] is None and common.versus(one_seed, 0.0) is None  # one seed: no interval, no verdict
    assert common.finding("c", "o", None, "r")["verdict"] == "inconclusive"
    assert common.finding("c", "o", False, "r")["verdict"] == "disagrees"
    failed = common.finding("c", "o", True, "r", precondition="base models not shown")
    assert failed["verdict"] == "inconclusive" and "base models not shown" in failed["ours"]


def test_a_base_model_below_its_data_makes_the_verdicts_inconclusive():
    results = {"data|hopper|expert": {"score_mean": 100.0},
               **{f"orig|hopper|{s}": {"targets": [{"score_mean": v}]} for s, v in enumerate((95.0, 97.0, 99.0))},
               "data|walker2d|expert": {"score_mean": 100.0},
               **{f"orig|walker2d|{s}": {"targets": [{"score_mean": v}]} for s, v in enumerate((40.0, 60.0, 50.0))}}
    scale = SCALES["mini"]
    rows = common.base_models(scale, results, {"hopper": ("hopper", "expert", "orig|hopper"),
                                               "walker2d": ("walker2d", "expert", "orig|walker2d")})
    assert [r["learned"] for r in rows] == [True, False]
    assert "walker2d 0.50" in common.unmet(rows) and common.unmet(rows[:1]) is None
    assert "| walker2d | 100.0 | 50.0 [" in "\n".join(common.base_table(rows))


LEARNED_BASE = [{"model": "m", "task": "hopper", "level": "expert", "learned": True,
                 "of_data": common.summarise([1.0, 1.1, 1.2])}]


def _row(per_task: dict) -> dict:
    return {f"{row}|{t}": common.summarise(v) for row, tasks in per_task.items() for t, v in tasks.items()}


def test_table_four_needs_direct_mff_to_lose_something_before_fisher_can_win():
    fisher_scale = EXPERIMENTS["fisher-scale"]
    same = {"hopper": [50, 60, 70], "halfcheetah": [50, 60, 70], "walker2d": [50, 60, 70]}
    better = {t: [v + 5 for v in vs] for t, vs in same.items()}
    kept = _row({"initial": same, "Direct": same, "Fisher": better})  # direct MFF lost nothing
    [f] = fisher_scale.findings({"cells": kept, "base_models": LEARNED_BASE})
    assert f["verdict"] == "inconclusive" and "direct MFF is not shown to lose anything" in f["ours"]
    lost = _row({"initial": {t: [v + 20 for v in vs] for t, vs in same.items()}, "Direct": same, "Fisher": better})
    assert fisher_scale.findings({"cells": lost, "base_models": LEARNED_BASE})[0]["verdict"] == "agrees"


def test_table_five_needs_every_task_above_the_multi_task_model():
    finetune_merge = EXPERIMENTS["finetune-merge"]
    multi = {"hopper": [50, 60, 70], "halfcheetah": [30, 31, 32], "walker2d": [50, 60, 70]}
    up = {t: [v + 10 for v in vs] for t, vs in multi.items()}
    cells = _row({"Multi-Task Medium": multi, "Finetuned Experts": {t: [v + 40 for v in vs] for t, vs in multi.items()},
                  "Direct Merge": multi, "Fisher Merge": up})
    gain = {t: common.summarise([40.0, 40.0, 40.0]) for t in multi}
    summary = {"cells": cells, "gain": gain, "base_models": LEARNED_BASE}
    assert [f["verdict"] for f in finetune_merge.findings(summary)] == ["agrees", "agrees"]
    cells = {**cells, **_row({"Fisher Merge": {**up, "halfcheetah": [20, 21, 22]}})}  # one task below
    assert finetune_merge.findings({**summary, "cells": cells})[1]["verdict"] == "disagrees"


def test_table_two_recovers_only_above_95_percent_on_both_tasks_and_mff_must_beat_m():
    mff_subsets = EXPERIMENTS["mff-subsets"]

    def rows(mff, merged):
        return {"Attention (MFF)": {t: common.summarise(v) for t, v in mff.items()},
                "Attention (M)": {t: common.summarise(v) for t, v in merged.items()}}
    near = {"hopper": [96, 99, 101], "halfcheetah": [97, 100, 102]}
    low = {"hopper": [92, 93, 94], "halfcheetah": [100, 101, 102]}  # above 90%, not 95%, on Hopper
    m = {"hopper": [80, 79, 78], "halfcheetah": [98, 97, 96]}
    assert [f["verdict"] for f in mff_subsets.findings({"rows": rows(near, m), "base_models": LEARNED_BASE})] == \
        ["agrees", "agrees"]
    assert mff_subsets.findings({"rows": rows(low, m), "base_models": LEARNED_BASE})[0]["verdict"] == "disagrees"


def test_paper_scale_has_the_original_codes_budgets():
    """The original code: 10 x 10,000 = 100k DT steps with a 10k warmup, MFF 10 x 10,000 = 100k steps
    per task with a fresh 10k warmup, Fisher from 750 batches of 64, 50 evaluation episodes, Table V's
    multi-task DT 512 wide with 4 heads and gelu_new, L_cos decayed by step 5,000."""
    paper = SCALES["paper"]
    assert (paper.steps, paper.warmup_steps, paper.batch_size) == (100_000, 10_000, 64)
    assert paper.finetune_spec(0)["steps"] == 100_000 and paper.finetune_spec(0)["warmup_steps"] == 10_000
    assert (paper.fisher_batches, paper.episodes) == (750, 50)
    assert paper.multitask_model == {"n_embd": 512, "n_head": 4, "activation": "gelu_new"}
    assert paper.cos_until() == 5_000 and SCALES["mini"].cos_until() == 250
    multi = [n for n in all_nodes(list(EXPERIMENTS["finetune-merge"].nodes(paper).values()))
             if n.kind == "dt" and "data_hopper" in n.deps]
    assert multi and all(n.spec["model"]["n_embd"] == 512 for n in multi)
    fishers = [n for n in all_nodes(list(EXPERIMENTS["fisher-scale"].nodes(paper).values())) if n.kind == "fisher"]
    assert fishers and all(n.spec["batches"] == 750 for n in fishers)


def test_expert_experiments_take_five_seeds_and_the_rest_three():
    from dtmerge.experiments.suite import scale_of

    mini = scale_of("mini")
    assert {mini.for_experiment(n).seeds for n in ("per-layer", "incremental", "attention-interp", "mff-subsets")} \
        == {5}
    assert {mini.for_experiment(n).seeds for n in ("attention-perturb", "lm-init", "finetune-merge", "alignment")} \
        == {3}
    assert scale_of("mini", 2).for_experiment("per-layer").seeds == 2  # --seeds wins everywhere


def test_no_two_tasks_share_a_start_unless_an_arm_says_so():
    mini = SCALES["mini"]
    dts = [n for n in all_nodes(list(EXPERIMENTS["alignment"].nodes(mini).values())) if n.kind == "dt"]
    shared = [n for n in dts if "init_seed" in n.spec]
    assert len({n.spec["init_seed"] for n in shared if n.spec["seed"] == 0}) == 1  # one start for the 3 tasks
    assert len({n.spec["init_seed"] for n in shared}) == mini.seeds  # and another per seed
    assert len(shared) == len(dts) - len(shared) == 3 * mini.seeds


def test_report_again_and_resume_rules(smoke_run):
    root, _ = smoke_run
    r = CliRunner().invoke(main, ["experiment", "report", str(root / "out")])
    assert r.exit_code == 0 and "per-layer:" in r.output
    r = CliRunner().invoke(main, ["experiment", "run", "per-layer", "--scale", "smoke", "--out", str(root / "out"),
                                  "--store", str(root / "store")])
    assert r.exit_code == 1 and "out exists; pass --overwrite" in r.stderr
    r = CliRunner().invoke(main, ["experiment", "run", "per-layer", "--scale", "smoke", "--seeds", "2", "--out",
                                  str(root / "out"), "--store", str(root / "store"), "--resume"])
    assert r.exit_code == 1 and "resume it with the same --scale, --seeds and --batch-dts" in r.stderr
    before = sorted(p.relative_to(root) for p in (root / "store").rglob("*"))
    for out in (root / "store", root):  # --out is the store, or holds it
        r = CliRunner().invoke(main, ["experiment", "run", "per-layer", "--scale", "smoke", "--out", str(out),
                                      "--store", str(root / "store"), "--overwrite"])
        assert r.exit_code == 1 and "the input" in r.stderr, r.stderr
    assert sorted(p.relative_to(root) for p in (root / "store").rglob("*")) == before  # nothing deleted


def test_a_report_whose_store_is_gone_keeps_its_results(smoke_run, tmp_path):
    """REPORT.md is rebuilt from the reports' results.json when the store no longer holds their
    results; a results.json of another scale is refused, naming the file."""
    root, _ = smoke_run
    out = tmp_path / "copy"
    shutil.copytree(root / "out", out)
    saved = json.loads((out / "run.json").read_text())
    (out / "run.json").write_text(json.dumps({**saved, "store": str(tmp_path / "empty-store")}))
    (out / "REPORT.md").unlink()
    r = CliRunner().invoke(main, ["experiment", "report", str(out)])
    assert r.exit_code == 0, r.output
    assert "per-layer: " in r.output and "not in the store" in r.output
    assert (out / "REPORT.md").read_text() == (root / "out" / "REPORT.md").read_text()
    results = out / "incremental" / "results.json"
    results.write_text(json.dumps({**json.loads(results.read_text()), "scale": "mini"}))
    r = CliRunner().invoke(main, ["experiment", "report", str(out)])
    assert r.exit_code == 1 and f"{results}: holds 'incremental' at scale 'mini'" in r.stderr
    old = {k: v for k, v in json.loads(results.read_text()).items() if k != "summary_format"}  # as round 1 wrote
    results.write_text(json.dumps({**old, "scale": "smoke"}))
    r = CliRunner().invoke(main, ["experiment", "report", str(out)])
    assert r.exit_code == 1 and f"{results}: written by an older dtmerge" in r.stderr


def test_ray_executor_gives_the_numbers_of_the_local_one(tmp_path):
    """Both with 2 workers (one thread per artifact): a local Ray instance started here, no network."""
    ray = pytest.importorskip("ray")
    results = {}
    for executor in ("local", "ray"):
        run_suite(["incremental"], "smoke", tmp_path / executor, workers=2, store=tmp_path / f"store-{executor}",
                  progress=False, echo=lambda s: None, executor=executor)
        results[executor] = json.loads((tmp_path / executor / "incremental" / "results.json").read_text())["curves"]
    assert not ray.is_initialized()  # the instance the run started is shut down again
    assert results["ray"] == results["local"]
    ran_on = [json.loads((tmp_path / e / "run.json").read_text())["runtime"] for e in ("local", "ray")]
    assert ran_on[0] == ran_on[1] == runner.this_runtime()  # Ray's is asked of a task with the training resources


def test_the_searchs_equal_weight_merge_is_the_plain_average(smoke_run):
    """The search's first trial and the pipeline's 3-way average are one merge, evaluated alike
    (up to float rounding between processes with other thread counts, which rollouts amplify)."""
    root, _ = smoke_run
    rows = json.loads((root / "out" / "alignment" / "results.json").read_text())["rows"]
    for align in ("none", "weights"):
        assert rows[f"searched weights attn+mlp, all three (equal weights)|{align}"]["values"] == \
            pytest.approx(rows[f"average attn+mlp, all three|{align}"]["values"], rel=1e-3)


def test_the_benchmark_iqm_and_its_stratified_interval():
    import numpy as np

    from dtmerge.experiments.merge_benchmark import iqm_interval, runs

    # IQM of 8 values: the mean of the middle four
    scores = np.array([[0.1, 0.5], [0.6, 0.7], [0.8, 0.9], [1.0, 5.0]])
    ci = iqm_interval(scores)
    assert ci["mean"] == pytest.approx((0.6 + 0.7 + 0.8 + 0.9) / 4)
    assert ci["lo"] <= ci["mean"] <= ci["hi"] and iqm_interval(scores) == ci  # a fixed resampling seed
    same = iqm_interval(np.full((3, 3), 0.7))
    assert same["lo"] == pytest.approx(0.7) and same["hi"] == pytest.approx(0.7)
    assert iqm_interval(scores[:1])["lo"] is None  # one seed: no interval
    # methods that need a common base run only from the shared start
    assert "task_arithmetic" in runs("shared") and "task_arithmetic" not in runs("independent")
    assert {"average", "fisher", "regmean"} <= set(runs("independent")) and "interpolate" not in runs("shared")


def test_the_benchmark_winner_of_each_cell_and_its_paired_lead():
    import numpy as np

    from dtmerge.experiments.merge_benchmark import cell_winners, iqm_difference, iqm_interval

    rng = np.random.default_rng(0)
    b = rng.uniform(0.5, 1.0, size=(5, 3))
    lead = iqm_difference(b + 0.1, b)  # the same seeds 0.1 better: exactly 0.1 in every paired resample
    assert lead["mean"] == pytest.approx(0.1) and lead["lo"] == pytest.approx(0.1) and lead["hi"] == pytest.approx(0.1)
    apart = iqm_interval(b + 0.1)["lo"] - iqm_interval(b)["hi"]
    assert apart < 0  # unpaired, the two intervals overlap: pairing is what shows the lead
    assert iqm_difference(b[:1], b[:1])["lo"] is None
    row = lambda method, selection, shift: {"regime": "mff", "start": "shared", "method": method,  # noqa: E731
                                            "selection_score": selection, "iqm": iqm_interval(b + shift)}
    board = [row("ties", 50.0, 0.2), row("average", 60.0, 0.0), row("dare", 70.0, 0.05), row("tsv", 70.0, 0.3)]
    (w,) = cell_winners(board)
    assert (w["method"], w["runner_up"]) == ("dare", "tsv")  # the selection score decides; a tie goes by name
    assert w["over_runner_up"]["mean"] == pytest.approx(-0.25) and w["over_average"]["mean"] == pytest.approx(0.05)
    assert cell_winners([row("average", 1.0, 0.0)])[0]["over_average"] is None


def test_the_longest_chain_of_work_starts_first():
    """Of the artifacts ready to start, a DT with evaluations waiting on it goes before a lone
    evaluation listed ahead of it, so a long training is not left for the end."""
    data = Node("dataset", {"task": "hopper", "level": "expert", "transitions": 100, "seed": 0})
    dt = Node("dt", {"steps": 100}, {"data": data})
    lone = [Node("eval", {"episodes": 1, "seed": i}, {"model": data}) for i in range(3)]
    after = Node("eval", {"episodes": 1}, {"model": dt})
    todo = [*lone, dt, after]  # inputs first, as `plan` lists them; the dataset is made
    rank = runner.critical_path(todo, seconds_per_step=0.1)
    assert rank[dt.key] == pytest.approx(10 + rank[after.key]) and rank[dt.key] > max(rank[n.key] for n in lone)

    made, started = {data.key}, []

    class Pool:
        def submit(self, root, node, threads):
            started.append(node.key)
            made.add(node.key)
            return node.key

        def wait(self, handles):
            return handles[:1]

    class Made:
        root = "store"

        def done(self, node):
            return node.key in made

    class Bar:
        def update(self):
            pass

        def set_postfix_str(self, text):
            pass

    runner._schedule(Made(), sorted(todo, key=lambda n: -rank[n.key]), 1, 1, Pool(), Bar())
    assert started[0] == dt.key and set(started) == {n.key for n in todo}


def test_the_plan_estimates_from_runs_on_this_kind_of_device(tmp_path):
    """A plan's time comes from DTs that trained on this device kind and precision; before one has,
    it says the rate is assumed, not measured."""
    store = Store(tmp_path / "store")
    node = Node("dt", {"steps": 100})
    assert "unmeasured" in runner.plan(store, [node])[1]
    run = tmp_path / "store" / "dt" / "x" / "run"
    run.mkdir(parents=True)
    (run / "metrics.jsonl").write_text('{"step": 100, "steps_per_s": 1.0}\n{"step": 200, "steps_per_s": 4.0}\n')
    here = runner.this_runtime()
    (run / "config.json").write_text(json.dumps({"runtime": {**here, "device": "cuda"}}))
    assert "unmeasured" in runner.plan(store, [node])[1]  # another kind of device's rate is not this one's
    (run / "config.json").write_text(json.dumps({"runtime": here}))
    kind = f"{here['device']}/{here['precision']}"
    assert f"250 ms per training step measured on {kind}" in runner.plan(store, [node])[1]


def test_a_dry_run_prints_the_plan_and_makes_and_writes_nothing(tmp_path):
    out, store = tmp_path / "out", tmp_path / "store"
    r = CliRunner().invoke(main, ["experiment", "run", "incremental", "--scale", "smoke", "--out", str(out),
                                  "--store", str(store), "--dry-run"])
    assert r.exit_code == 0, r.output
    n = len(all_nodes(list(EXPERIMENTS["incremental"].nodes(SCALES["smoke"]).values())))
    assert f"{n} artifacts: 0 cached, {n} to make" in r.output and "estimated time" in r.output
    assert not out.exists() and not any(store.rglob("artifact.json"))


def test_batched_dts_train_together_and_match_their_single_runs(tmp_path):
    """--batch-dts: a task's DTs of different seeds train as one dt-batch; each model matches the
    single run within fit_many's tolerance, under keys of its own, and the report rebuilds them."""
    from safetensors.torch import load_file

    from dtmerge.experiments.batching import batch_trainings

    scale = SCALES["smoke"].on(runner.this_runtime())
    graph = EXPERIMENTS["incremental"].nodes(dataclasses.replace(scale, seeds=2))
    batched = batch_trainings([graph], 8)[0]
    kinds = {n.kind for target in batched.values() for n in target.walk()}
    assert {"dt-batch", "batched-dt"} <= kinds and "dt" not in kinds
    assert set(batched) == set(graph) and all(batched[k].key != graph[k].key for k in graph if "|" in k
                                              and not k.startswith("data"))
    store = tmp_path / "store"
    run_suite(["incremental"], "smoke", tmp_path / "one", seeds=2, store=store, progress=False, batch_dts=0)
    run_suite(["incremental"], "smoke", tmp_path / "many", seeds=2, store=store, progress=False, batch_dts=8,
              echo=lambda *_: None)
    made = Store(store)
    for key in ("original|hopper|1", "original|halfcheetah|0"):
        alone = made.path(graph[key].deps["model"]) / "run" / "checkpoint" / "model.safetensors"
        together = made.path(batched[key].deps["model"]) / "run" / "checkpoint" / "model.safetensors"
        a, b = load_file(alone), load_file(together)
        assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-5
    assert json.loads((tmp_path / "many" / "run.json").read_text())["batch_dts"] == 8
    r = CliRunner().invoke(main, ["experiment", "report", str(tmp_path / "many")])
    assert r.exit_code == 0, r.output


def test_dts_trained_before_keys_held_the_runtime_are_taken_over_where_they_ran_on_it(tmp_path):
    """A store from before runs recorded their runtime keeps its DTs under keys without a device
    (precision `auto`); a run now takes over those whose config.json shows they trained on this
    runtime (their files linked, recorded under the new key), and trains again the one that ran
    elsewhere; never one started from another trained model, nor one whose own run has begun."""
    from safetensors.torch import load_file

    store, here = Store(tmp_path / "store"), runner.this_runtime()
    scale = dataclasses.replace(SCALES["smoke"], precision="auto", seeds=2)  # auto: as mini and paper leave it
    dts = lambda s: [n for n in all_nodes(list(EXPERIMENTS["incremental"].nodes(s).values()))  # noqa: E731
                     if n.kind == "dt"]
    old, new = dts(scale), dts(scale.on(here))
    assert old[0].spec["precision"] == "auto" and new[0].spec["precision"] == here["precision"]
    runner.run(store, old, progress=False, echo=lambda *_: None)
    elsewhere = store.path(old[0]) / "run" / "config.json"
    elsewhere.write_text(json.dumps({**json.loads(elsewhere.read_text()), "runtime": {**here, "device": "cuda"}}))
    begun = store.path(new[-1])
    (begun / "run").mkdir(parents=True)  # a training of the new key under way
    from_a_model = Node("dt", new[1].spec, {**new[1].deps, "init": new[1]})
    twin = store_module.legacy_twin(from_a_model, "auto")
    (store.path(twin) / "run").mkdir(parents=True)
    (store.path(twin) / "run" / "config.json").write_text(json.dumps({"runtime": here}))
    store.finish(twin, {"output": "run/checkpoint"}, 0.0)
    assert runner.adopt_legacy(store, [from_a_model]) == 0 and not store.done(from_a_model)
    assert len(new) == len(old) > 2 and not {n.key for n in new} & {n.key for n in old}
    told = runner.dry_run(store, new)  # says what it would take over, and takes over nothing
    assert f"{len(old) - 2} DT(s) trained before keys held the runtime, on this one, would be taken over" in told
    assert "2 to make" in told and not any(store.done(n) for n in new)
    lines = []
    runner.run(store, new, progress=False, echo=lines.append)
    assert f"{len(old) - 2} DT(s) trained before keys held the runtime" in lines[0]
    assert "2 to make" in "\n".join(lines)  # the one trained elsewhere, and the one begun
    for was, now in zip(old, new):
        assert store.result(now) == store.result(was)
        weights = [store.path(n) / "run" / "checkpoint" / "model.safetensors" for n in (was, now)]
        retrained = was is old[0] or now is new[-1]
        assert (weights[0].stat().st_ino == weights[1].stat().st_ino) != retrained
        if retrained:  # to the same numbers
            a, b = (load_file(w) for w in weights)
            assert all(torch.equal(a[k], b[k]) for k in a)
    assert store.adopt(new[1], old[1]) is False  # done: nothing changes
    assert not list(store.path(new[1]).parent.glob(f".{new[1].key}.*"))  # no staging left behind


def test_the_benchmark_judges_the_entry_chosen_on_selection_episodes_by_its_own_base_models():
    from dtmerge.experiments.merge_benchmark import findings

    ci = lambda m, lo, hi: {"mean": m, "lo": lo, "hi": hi}  # noqa: E731
    row = lambda regime, start, method, iqm, selection: {  # noqa: E731
        "regime": regime, "start": start, "method": method, "iqm": iqm, "selection_score": selection,
        "transformer_params_pct": 100.6}
    board = [row("training-free", "shared", "ties", ci(0.95, 0.90, 0.99), 40.0),  # best held out, picked by neither
             row("training-free", "shared", "average", ci(0.70, 0.60, 0.80), 50.0),  # best on selection episodes
             row("training-free", "independent", "average", ci(0.99, 0.98, 1.0), 99.0),  # no common start
             row("mff", "chibit", "fisher", ci(0.99, 0.985, 0.995), 30.0)]
    learned = lambda model, ok: {"model": model, "of_data": ci(1.0, 0.95, 1.05), "learned": ok}  # noqa: E731
    base = [learned("hopper expert (shared)", True), learned("hopper expert (chibit)", True),
            learned("hopper expert (independent)", None), learned("hopper expert (multi-task)", True)]
    free, mff = findings({"leaderboard": board, "base_models": base})
    assert free["verdict"] == "disagrees" and "average from one shared random start" in free["ours"]
    assert mff["verdict"] == "inconclusive" and "independent" in mff["ours"]  # MFF draws on every start
    base[2]["learned"] = True
    assert findings({"leaderboard": board, "base_models": base})[1]["verdict"] == "agrees"
    base[3]["learned"] = None  # the multi-task reference failing makes both inconclusive
    assert [f["verdict"] for f in findings({"leaderboard": board, "base_models": base})] == ["inconclusive"] * 2


def test_alignment_judges_each_claim_by_the_base_models_it_is_made_from():
    from dtmerge.experiments.alignment import findings

    rows = {f"average trunk, all three|{a}": common.summarise(v) for a, v in
            (("none", [0.20, 0.21, 0.19]), ("weights", [0.22, 0.23, 0.21]), ("activations", [0.18, 0.18, 0.17]),
             ("shared start", [0.19, 0.20, 0.18]))}
    rows["searched weights attn+mlp, all three (best)|none"] = common.summarise([0.4, 0.5, 0.3])
    rows["searched weights attn+mlp, all three (equal weights)|none"] = common.summarise([0.2, 0.2, 0.2])
    ci = {"mean": 1.1, "lo": 0.87, "hi": 1.2}
    base = [{"model": "walker2d expert", "of_data": ci, "learned": True},
            {"model": "walker2d expert, shared start", "of_data": ci, "learned": None}]
    verdicts = [f["verdict"] for f in findings({"rows": rows, "base_models": base})]
    assert verdicts == ["disagrees", "agrees", "inconclusive", "agrees"]  # only the shared-start claim needs it
