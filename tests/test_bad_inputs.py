"""Hostile inputs across datasets, checkpoints, bundles, Fisher files, configs and CLI arguments.

Each case prepares its own copy of a small workspace (real data, trained checkpoints, Fisher
files, a bundle), possibly damaging a file, then runs one `dtmerge` command. Every case must end
with a non-zero exit, exactly one line on stderr that names the problem, no traceback, and every
file in the workspace byte-identical (nothing written, nothing removed). conftest.py prints how
many cases passed.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
from click.testing import CliRunner
from safetensors.torch import load_file, save_file

from dtmerge.cli import main
from dtmerge.merge.engine import MergeConfig, merge
from dtmerge.merge.fisher import compute_fisher

CASES = []


def case(expect: str):
    """Register a case: `fn(ws)` damages the workspace as it likes and returns the command's args;
    `expect` must appear in the one line on stderr."""
    def deco(fn):
        CASES.append(pytest.param(fn, expect, id=fn.__name__))
        return fn
    return deco


@pytest.fixture(scope="session")
def pristine(tmp_path_factory, task_files, task_models):
    ws = tmp_path_factory.mktemp("pristine")
    shutil.copy(task_files["hopper"], ws / "data.hdf5")
    for task in ("hopper", "walker2d"):
        shutil.copytree(task_models[task], ws / task)
        compute_fisher(ws / task, estimator="empirical", batches=1, batch_size=4, progress=False)
    merge(MergeConfig(models=[str(ws / "hopper"), str(ws / "walker2d")], select=["attn"], output=str(ws / "bundle")))
    shutil.copy(task_models["hopper"].parent / "metrics.jsonl", ws / "log.jsonl")
    (ws / "merge.yaml").write_text("models: [hopper, walker2d]\nselect: [attn]\noutput: merged\n")
    (ws / "existing.json").write_text("{}\n")
    return ws


def _snapshot(root: Path) -> dict[str, str]:
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            rel = str(p.relative_to(root))
            out[rel] = "dir" if p.is_dir() and not p.is_symlink() else (
                f"link:{os.readlink(p)}" if p.is_symlink() else hashlib.sha256(p.read_bytes()).hexdigest())
    return out


@pytest.mark.parametrize("prepare,expect", CASES)
def test_hostile_input(prepare, expect, pristine, tmp_path, monkeypatch):
    ws = tmp_path / "ws"
    shutil.copytree(pristine, ws, symlinks=True)
    monkeypatch.chdir(ws)
    monkeypatch.setenv("DTMERGE_HOME", str(ws / "home"))
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(ws / "minari"))
    args = prepare(ws)
    before = _snapshot(tmp_path)
    result = CliRunner().invoke(main, [str(a) for a in args])
    assert result.exit_code not in (0, None), result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("Error: ") and expect in lines[0], lines[0]
    assert "Traceback" not in result.output
    assert _snapshot(tmp_path) == before


def _edit_json(path: Path, change) -> None:
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


def _write_h5(path: Path, **arrays) -> None:
    with h5py.File(path, "w") as f:
        for k, v in arrays.items():
            if v is None:
                f.create_group(k)
            else:
                f.create_dataset(k, data=v)


def _d4rl(n=50, obs=11, act=3, **changes):
    arrays = {"observations": np.zeros((n, obs), np.float32), "actions": np.zeros((n, act), np.float32),
              "rewards": np.ones(n, np.float32), "terminals": np.zeros(n, bool), "timeouts": np.zeros(n, bool)}
    arrays.update(changes)
    return {k: v for k, v in arrays.items() if not (isinstance(v, str) and v == "drop")}


# --- datasets ---------------------------------------------------------------------------------------

@case("missing.hdf5: file not found")
def dataset_missing(ws):
    return ["data", "info", "missing.hdf5"]


@case("not a readable HDF5 file")
def dataset_not_hdf5(ws):
    (ws / "notes.hdf5").write_text("these are notes, not HDF5")
    return ["data", "info", "notes.hdf5"]


@case("missing D4RL key(s) actions")
def dataset_missing_key(ws):
    _write_h5(ws / "hopper-x.hdf5", **_d4rl(actions="drop"))
    return ["data", "info", "hopper-x.hdf5"]


@case("'observations' contains NaN or inf (first at row 7)")
def dataset_nan(ws):
    obs = np.zeros((50, 11), np.float32)
    obs[7, 3] = np.nan
    _write_h5(ws / "hopper-x.hdf5", **_d4rl(observations=obs))
    return ["data", "info", "hopper-x.hdf5"]


@case("'rewards' contains NaN or inf")
def dataset_inf_reward(ws):
    r = np.ones(50, np.float32)
    r[-1] = np.inf
    _write_h5(ws / "hopper-x.hdf5", **_d4rl(rewards=r))
    return ["data", "info", "hopper-x.hdf5"]


@case("'rewards' has 49 rows but 'observations' has 50")
def dataset_length_mismatch(ws):
    _write_h5(ws / "hopper-x.hdf5", **_d4rl(rewards=np.ones(49, np.float32)))
    return ["data", "info", "hopper-x.hdf5"]


@case("the dataset is empty")
def dataset_empty(ws):
    _write_h5(ws / "hopper-x.hdf5", **_d4rl(n=0))
    return ["data", "info", "hopper-x.hdf5"]


@case("'observations' is a group")
def dataset_group(ws):
    _write_h5(ws / "hopper-x.hdf5", **_d4rl(observations=None))
    return ["data", "info", "hopper-x.hdf5"]


@case("observations have 11 columns but walker2d")
def dataset_wrong_task_dims(ws):
    return ["data", "info", "data.hdf5", "--task", "walker2d"]


@case("unknown task 'cartpole'")
def dataset_unknown_task(ws):
    return ["data", "info", "data.hdf5", "--task", "cartpole"]


@case("is not TASK-LEVEL")
def dataset_id_odd_characters(ws):
    return ["data", "make", "hopper-medium;rm -rf ~"]


@case("is not TASK-LEVEL")
def dataset_id_unknown_level(ws):
    return ["data", "make", "hopper-legendary"]


@case("Invalid value for '--transitions'")
def dataset_negative_size(ws):
    return ["data", "make", "hopper-medium", "--transitions", "-5"]


@case("out of range")
def dataset_absurd_size(ws):
    return ["data", "make", "hopper-medium-999999999999"]


@case("not a valid Minari dataset id")
def dataset_minari_id_escapes(ws):
    return ["data", "make", "hopper-medium-100", "--minari-id", "../../outside"]


@case("metadata.json: not valid JSON")
def dataset_minari_bad_metadata(ws):
    (ws / "mini" / "data").mkdir(parents=True)
    (ws / "mini" / "data" / "metadata.json").write_text("{broken")
    return ["data", "info", "mini"]


# --- checkpoints ------------------------------------------------------------------------------------

def _meta(ws, change):
    _edit_json(ws / "hopper" / "meta.json", change)


@case("meta.json: file not found")
def checkpoint_meta_missing(ws):
    (ws / "hopper" / "meta.json").unlink()
    return ["info", "hopper"]


@case("meta.json: not valid JSON")
def checkpoint_meta_not_json(ws):
    (ws / "hopper" / "meta.json").write_text("{not json")
    return ["info", "hopper"]


@case("unknown format 'dtmerge.dt/9'")
def checkpoint_future_format(ws):
    _meta(ws, lambda m: m.update(format="dtmerge.dt/9"))
    return ["info", "hopper"]


@case("meta.json: task: Field required")
def checkpoint_missing_field(ws):
    _meta(ws, lambda m: m.pop("task"))
    return ["info", "hopper"]


@case("surprise: Extra inputs are not permitted")
def checkpoint_extra_field(ws):
    _meta(ws, lambda m: m.update(surprise=1))
    return ["info", "hopper"]


@case("step: Input should be a valid integer")
def checkpoint_wrong_type(ws):
    _meta(ws, lambda m: m.update(step="ten"))
    return ["info", "hopper"]


@case("state_mean has 3 entries, config.state_dim is 11")
def checkpoint_stats_shape(ws):
    _meta(ws, lambda m: m.update(state_mean=[0.0, 0.0, 0.0]))
    return ["eval", "hopper", "--episodes", "1", "--quiet"]


@case("state_std entries must be positive")
def checkpoint_zero_std(ws):
    _meta(ws, lambda m: m["state_std"].__setitem__(0, 0.0))
    return ["eval", "hopper", "--episodes", "1", "--quiet"]


@case("state_mean.2: Input should be a finite number")
def checkpoint_nan_stats(ws):
    text = (ws / "hopper" / "meta.json").read_text()
    meta = json.loads(text)
    meta["state_mean"][2] = float("nan")
    (ws / "hopper" / "meta.json").write_text(json.dumps(meta))  # json writes NaN
    return ["eval", "hopper", "--episodes", "1", "--quiet"]


@case("unknown task 'cartpole'")
def checkpoint_unregistered_task(ws):
    _meta(ws, lambda m: m.update(task="cartpole"))
    return ["info", "hopper"]


@case("rtg_scale: Input should be greater than 0")
def checkpoint_negative_rtg_scale(ws):
    _meta(ws, lambda m: m.update(rtg_scale=-1000.0))
    return ["eval", "hopper", "--episodes", "1", "--quiet"]


@case("config dims 5/3 do not fit task hopper")
def checkpoint_dims_do_not_fit_task(ws):
    _meta(ws, lambda m: m["config"].update(state_dim=5))
    return ["eval", "hopper", "--episodes", "1", "--quiet"]


@case("model.safetensors: not a readable safetensors file")
def checkpoint_truncated_weights(ws):
    f = ws / "hopper" / "model.safetensors"
    f.write_bytes(f.read_bytes()[:1000])
    return ["eval", "hopper", "--episodes", "1", "--quiet"]


@case("tensors do not match the model config")
def checkpoint_config_disagrees_with_tensors(ws):
    _meta(ws, lambda m: m["config"].update(n_layer=3))
    return ["eval", "hopper", "--episodes", "1", "--quiet"]


@case("contains NaN or inf")
def checkpoint_nan_weight(ws):
    f = ws / "hopper" / "model.safetensors"
    t = load_file(f)
    t["transformer.h.0.mlp.c_fc.weight"][0, 0] = float("nan")
    save_file(t, f)
    return ["eval", "hopper", "--episodes", "1", "--quiet"]


# --- bundles ----------------------------------------------------------------------------------------

def _bundle(ws, change):
    _edit_json(ws / "bundle" / "bundle.json", change)


@case("no task '../../x' in this bundle")
def bundle_task_path_traversal_argument(ws):
    return ["eval", "bundle", "--task", "../../x", "--episodes", "1", "--quiet"]


@case("unknown task '../../x'")
def bundle_task_path_traversal_in_file(ws):
    def rename(b):
        b["tasks"]["../../x"] = {**b["tasks"].pop("hopper"), "task": "../../x"}
    _bundle(ws, rename)
    return ["info", "bundle"]


@case("merged_by: Extra inputs are not permitted")
def bundle_extra_field(ws):
    _bundle(ws, lambda b: b.update(merged_by="me"))
    return ["info", "bundle"]


@case("tasks.hopper.config: Field required")
def bundle_task_without_config(ws):
    _bundle(ws, lambda b: b["tasks"]["hopper"].pop("config"))
    return ["eval", "bundle", "--task", "hopper", "--episodes", "1", "--quiet"]


@case("its tensors differ from bundle.json's shared list")
def bundle_shared_list_lies(ws):
    _bundle(ws, lambda b: b["shared"].append("transformer.h.0.mlp.c_fc.weight"))
    return ["eval", "bundle", "--task", "hopper", "--episodes", "1", "--quiet"]


@case("hopper.safetensors: file not found")
def bundle_task_file_missing(ws):
    (ws / "bundle" / "hopper.safetensors").unlink()
    return ["eval", "bundle", "--task", "hopper", "--episodes", "1", "--quiet"]


@case("unknown format 'dtmerge.bundle/0'")
def bundle_old_format(ws):
    _bundle(ws, lambda b: b.update(format="dtmerge.bundle/0"))
    return ["info", "bundle"]


@case("tasks.hopper: config dims 11/3 do not fit task walker2d (17/6)")
def bundle_key_and_task_disagree(ws):
    _bundle(ws, lambda b: b["tasks"]["hopper"].update(task="walker2d"))
    return ["info", "bundle"]


# --- Fisher files -----------------------------------------------------------------------------------

FISHER_MERGE = ["merge", "--model", "hopper", "--model", "walker2d", "--method", "fisher", "--select", "attn",
                "--output", "merged"]


def _fisher_tensors(ws, change):
    f = ws / "hopper" / "fisher.safetensors"
    t = load_file(f)
    change(t)
    save_file(t, f)
    _edit_json(ws / "hopper" / "fisher.json",  # keep the hash right: only the values are hostile
               lambda m: m.update(fisher_sha256=hashlib.sha256(f.read_bytes()).hexdigest()))


@case("has negative or non-finite values")
def fisher_negative(ws):
    _fisher_tensors(ws, lambda t: t["transformer.h.0.attn.c_attn.weight"].__setitem__((0, 0), -1.0))
    return FISHER_MERGE


@case("has negative or non-finite values")
def fisher_nan(ws):
    _fisher_tensors(ws, lambda t: t["transformer.h.1.attn.c_proj.bias"].__setitem__(0, float("nan")))
    return FISHER_MERGE


@case("fisher.json: estimator: Field required")
def fisher_missing_field(ws):
    _edit_json(ws / "hopper" / "fisher.json", lambda m: m.pop("estimator"))
    return FISHER_MERGE


@case("computed for other weights")
def fisher_of_other_weights(ws):
    _edit_json(ws / "hopper" / "fisher.json", lambda m: m.update(model_sha256="0" * 64))
    return FISHER_MERGE


@case("fisher_sha256 differs")
def fisher_file_swapped(ws):
    shutil.copy(ws / "walker2d" / "fisher.safetensors", ws / "hopper" / "fisher.safetensors")
    return FISHER_MERGE


@case("estimator: Input should be 'exact', 'empirical' or 'batch'")
def fisher_unknown_estimator(ws):
    _edit_json(ws / "hopper" / "fisher.json", lambda m: m.update(estimator="guess"))
    return FISHER_MERGE


@case("fisher.json: file not found; compute it first")
def fisher_missing(ws):
    (ws / "hopper" / "fisher.json").unlink()
    return FISHER_MERGE


# --- config files -----------------------------------------------------------------------------------

@case("merge.yaml: a merge config must be a mapping of option: value")
def config_merge_not_mapping(ws):
    (ws / "merge.yaml").write_text("- hopper\n- walker2d\n")
    return ["merge", "merge.yaml"]


@case("mystery: Extra inputs are not permitted")
def config_merge_unknown_key(ws):
    (ws / "merge.yaml").write_text((ws / "merge.yaml").read_text() + "mystery: 1\n")
    return ["merge", "merge.yaml"]


@case("parameter alpha='abc' is not a float")
def config_merge_param_wrong_type(ws):
    (ws / "merge.yaml").write_text((ws / "merge.yaml").read_text() + "method: interpolate\nparams: {alpha: abc}\n")
    return ["merge", "merge.yaml"]


@case("output: Field required")
def config_mff_missing_output(ws):
    (ws / "mff.yaml").write_text("merge: {models: [hopper, walker2d], output: m}\n")
    return ["mff", "mff.yaml"]


@case("finetune may not set ['init']")
def config_mff_finetune_sets_init(ws):
    (ws / "mff.yaml").write_text("merge: {models: [hopper, walker2d], output: m}\noutput: b\nfinetune: {init: x}\n")
    return ["mff", "mff.yaml"]


@case("cannot read YAML config")
def config_train_broken_yaml(ws):
    (ws / "train.yaml").write_text("dataset: [unclosed\n")
    return ["train", "--config", "train.yaml"]


@case("steps: Input should be greater than 0")
def config_train_negative_steps(ws):
    (ws / "train.yaml").write_text("dataset: data.hdf5\nsteps: -1\n")
    return ["train", "--config", "train.yaml"]


@case("preset: Input should be")
def config_train_unknown_preset(ws):
    return ["train", "--dataset", "data.hdf5", "--preset", "chibit-xl"]


# --- outputs and arguments --------------------------------------------------------------------------

@case("hopper: the output is the input hopper")
def output_merge_into_own_model(ws):
    return ["merge", "--model", "hopper", "--model", "walker2d", "--output", "hopper"]


@case("the output lies inside the input hopper")
def output_merge_inside_a_model(ws):
    return ["merge", "--model", "hopper", "--model", "walker2d", "--output", "hopper/merged"]


@case("the output is the input hopper")
def output_merge_through_a_symlink(ws):
    (ws / "link").symlink_to(ws / "hopper")
    return ["merge", "--model", "hopper", "--model", "walker2d", "--output", "link"]


@case("hopper: the output is the input hopper")
def output_perturb_onto_itself(ws):
    return ["perturb", "hopper", "hopper", "--kind", "remove"]


@case("walker2d exists; pass --overwrite")
def output_perturb_onto_another_checkpoint(ws):
    return ["perturb", "hopper", "walker2d", "--kind", "remove"]


@case("existing.json exists; pass --overwrite")
def output_eval_existing_file(ws):
    return ["eval", "hopper", "--episodes", "1", "--out", "existing.json", "--quiet"]


@case("the output lies inside the input hopper")
def output_eval_inside_checkpoint(ws):
    return ["eval", "hopper", "--episodes", "1", "--out", "hopper/eval.json", "--quiet"]


@case("the output contains the input")
def output_train_over_its_init(ws):
    return ["train", "--dataset", "data.hdf5", "--init", "hopper", "--out", ".", "--steps", "1"]


@case("--overwrite and --resume exclude each other")
def output_train_resume_and_overwrite(ws):
    return ["train", "--dataset", "data.hdf5", "--out", "run", "--resume", "--overwrite", "--steps", "1"]


@case("fisher.safetensors exists; pass --overwrite")
def output_fisher_exists(ws):
    return ["fisher", "hopper", "--quiet"]


@case("data.hdf5: the output is the input")
def output_export_onto_input(ws):
    return ["data", "export", "data.hdf5", "data.hdf5"]


@case("existing.json exists; pass --overwrite")
def output_plot_existing(ws):
    return ["plot", "log.jsonl", "--out", "existing.json"]


@case("log.jsonl: line 2 is not valid JSON")
def output_plot_garbage_log(ws):
    (ws / "log.jsonl").write_text('{"step": 1, "loss": 2.0}\nnot json\n')
    return ["plot", "log.jsonl", "--out", "curve.png"]


@case("unknown method 'magic'")
def argument_unknown_method(ws):
    return ["merge", "--model", "hopper", "--model", "walker2d", "--method", "magic", "--output", "m"]


@case("--param 'alpha': expected KEY=VALUE")
def argument_param_without_value(ws):
    return ["merge", "--model", "hopper", "--model", "walker2d", "--param", "alpha", "--output", "m"]


@case("Invalid value for '--episodes'")
def argument_zero_episodes(ws):
    return ["eval", "hopper", "--episodes", "0"]


@case("per-task tensors are never merged")
def argument_merge_embeddings(ws):
    return ["merge", "--model", "hopper", "--model", "walker2d", "--select", "embed", "--output", "m"]


@case("selector item 'attention' matches nothing")
def argument_selector_matches_nothing(ws):
    return ["merge", "--model", "hopper", "--model", "walker2d", "--select", "attention", "--output", "m"]


@case("No such option '--steps'")
def argument_unknown_option(ws):
    return ["eval", "hopper", "--steps", "3"]


@case("density must be in (0, 1]")
def argument_ties_bad_density(ws):
    return ["merge", "--model", "walker2d", "--model", "hopper", "--method", "ties", "--base", "hopper",
            "--param", "density=2", "--select", "attn", "--force", "--output", "m"]


# every writing command: an existing output without --overwrite, and an output over an input

@case("bundle exists; pass --overwrite")
def existing_train_out(ws):
    return ["train", "--dataset", "data.hdf5", "--out", "bundle", "--steps", "1"]


@case("bundle exists; pass --overwrite")
def existing_merge_output(ws):
    return ["merge", "--model", "hopper", "--model", "walker2d", "--output", "bundle"]


@case("bundle exists; pass --overwrite")
def existing_mff_output(ws):
    (ws / "mff.yaml").write_text("merge: {models: [hopper, walker2d], output: m}\noutput: bundle\n")
    return ["mff", "mff.yaml"]


@case("hopper: the output is the input hopper")
def overlap_mff_output(ws):
    (ws / "mff.yaml").write_text("merge: {models: [hopper, walker2d], output: m}\noutput: hopper\n")
    return ["mff", "mff.yaml"]


def _finetune_merge_yaml(ws, output):
    (ws / "fm.yaml").write_text(f"multitask: bundle\ndatasets: {{hopper: data.hdf5, walker2d: data.hdf5}}\n"
                                f"output: {output}\n")
    return ["finetune-merge", "fm.yaml"]


@case("existing.json exists; pass --overwrite")
def existing_finetune_merge_output(ws):
    return _finetune_merge_yaml(ws, "existing.json")


@case("bundle: the output is the input bundle")
def overlap_finetune_merge_output(ws):
    return _finetune_merge_yaml(ws, "bundle")


@case("bundle exists; pass --overwrite")
def existing_lm_pretrain_out(ws):
    (ws / "corpus.txt").write_text("words " * 100)
    return ["lm", "pretrain", "--corpus", "corpus.txt", "--out", "bundle"]


@case("the output contains the input")
def overlap_lm_pretrain_corpus_inside_out(ws):
    (ws / "lm").mkdir()
    (ws / "lm" / "corpus.txt").write_text("words " * 100)
    return ["lm", "pretrain", "--corpus", "lm/corpus.txt", "--out", "lm"]


@case("bundle exists; pass --overwrite")
def existing_demo_out(ws):
    return ["demo", "--out", "bundle"]


@case("bundle exists; pass --overwrite")
def existing_collect_out(ws):
    return ["data", "collect", "hopper", "--out", "bundle"]


@case("existing.json exists; pass --overwrite")
def existing_export_dest(ws):
    return ["data", "export", "data.hdf5", "existing.json"]


@case("exists; pass --overwrite")
def existing_minari_export(ws):
    (ws / "minari" / "mine").mkdir(parents=True)
    return ["data", "make", "hopper-medium-100", "--minari-id", "mine"]


@case("log.jsonl: the output is the input")
def overlap_plot_onto_its_log(ws):
    return ["plot", "log.jsonl", "--out", "log.jsonl"]


@case("only same-shaped trunks can be aligned")
def align_different_trunks(ws):
    from dtmerge.model import DecisionTransformer, DTConfig
    from dtmerge.store.checkpoint import hand_built_meta, save_checkpoint

    save_checkpoint(ws / "wide", DecisionTransformer(DTConfig(state_dim=17, act_dim=6, n_embd=16, n_layer=1)),
                    hand_built_meta("walker2d"))
    return ["align", "hopper", "wide", "aligned"]


@case("walker2d: the output is the input")
def overlap_align_onto_its_source(ws):
    return ["align", "hopper", "walker2d", "walker2d"]


@case("bundle: a multi-task bundle; align takes single-task checkpoints")
def align_a_bundle(ws):
    return ["align", "hopper", "bundle", "aligned"]


@case("existing.json exists; pass --overwrite")
def existing_align_out(ws):
    return ["align", "hopper", "walker2d", "existing.json"]


@case("study.log: line 2 is not an optuna journal entry")
def search_resumed_from_a_damaged_study(ws):
    from dtmerge.atomic import write_json
    from dtmerge.merge.search import load_search_config

    (ws / "search.yaml").write_text("models: [hopper, walker2d]\ntrials: 2\nepisodes: 1\nmax_steps: 5\n"
                                    "output: searched\n")
    (ws / "searched").mkdir()
    write_json(ws / "searched" / "search.json", load_search_config(ws / "search.yaml").model_dump())
    (ws / "searched" / "study.log").write_text('{"op_code": 0, "worker_id": "x", "study_name": "dtmerge-search", '
                                               '"directions": [1]}\nnot json\n')
    return ["search", "search.yaml", "--resume", "--quiet"]


def test_enough_hostile_inputs():
    assert len(CASES) >= 40, len(CASES)


def test_every_project_error_survives_a_process_boundary():
    """A worker's error reaches the CLI as the same one-line error (pickled back by the pool), not
    as a BrokenProcessPool traceback."""
    import inspect
    import pickle

    from dtmerge.errors import DtmergeError

    def subclasses(cls):
        for sub in cls.__subclasses__():
            yield sub
            yield from subclasses(sub)

    import dtmerge.data  # noqa: F401 - every error class is defined once its module is imported
    import dtmerge.experiments  # noqa: F401
    import dtmerge.merge.align  # noqa: F401
    import dtmerge.merge.search  # noqa: F401

    classes = [DtmergeError, *subclasses(DtmergeError)]
    assert len(classes) >= 8
    for cls in classes:
        takes_problem = "problem" in inspect.signature(cls.__init__).parameters  # DatasetError(path, problem)
        error = cls("some/file", "a problem") if takes_problem else cls("some/file: a problem")
        again = pickle.loads(pickle.dumps(error))
        assert type(again) is cls and str(again) == str(error) == "some/file: a problem"
