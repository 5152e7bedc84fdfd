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
import torch
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
        compute_fisher(ws / task, estimator="empirical", batches=1, batch_size=4, progress=False, overwrite=True)
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
                f"link:{os.readlink(p)}" if p.is_symlink() else
                hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "special")
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


@case("train.yaml: not a YAML document dtmerge can read")
def config_train_broken_yaml(ws):
    (ws / "train.yaml").write_text("dataset: [unclosed\n")
    return ["train", "--config", "train.yaml"]


@case("steps: Input should be greater than 0")
def config_train_negative_steps(ws):
    (ws / "train.yaml").write_text("dataset: data.hdf5\nsteps: -1\n")
    return ["train", "--config", "train.yaml"]


@case("Invalid value for '--preset'")
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


# --- class by class: each generator mutates one valid input in every way a class holds -------------

def register(name: str, expect: str, prepare) -> None:
    prepare.__name__ = name
    CASES.append(pytest.param(prepare, expect, id=name))


ARRAY_DAMAGE = {  # D4RL array -> what replaces it
    "strings": lambda a: np.array([b"x"] * len(a)),
    "complex": lambda a: a.astype(np.complex64),
    "compound": lambda a: np.zeros(len(a), dtype=[("x", "f4"), ("y", "f4")]),
    "scalar": lambda a: np.float32(1.0),
    "three_d": lambda a: np.zeros((len(a), 2, 2), np.float32),
}
for key in ("observations", "actions", "rewards", "terminals", "timeouts"):
    for damage, change in ARRAY_DAMAGE.items():
        def prepare(ws, key=key, change=change):
            arrays = _d4rl()
            _write_h5(ws / "hopper-x.hdf5", **{**arrays, key: change(arrays[key])})
            return ["data", "info", "hopper-x.hdf5"]
        register(f"hdf5_{key}_{damage}", f"hopper-x.hdf5: '{key}'", prepare)


def _h5_file_damage(ws, how):
    path = ws / "hopper-x.hdf5"
    arrays = _d4rl(n=4000)
    with h5py.File(path, "w") as f:
        for k, v in arrays.items():
            if k == "observations" and how == "external_link":
                f["observations"] = h5py.ExternalLink("data.hdf5", "/observations")
            else:
                f.create_dataset(k, data=v, compression="gzip" if k == "observations" else None,
                                 chunks=(500, 11) if k == "observations" else None)
        if how == "attribute_not_json":
            f.attrs["dtmerge"] = "{broken"
        if how == "attribute_a_list":
            f.attrs["dtmerge"] = "[1, 2]"
        if how == "attribute_not_utf8":
            f.attrs["note"] = np.bytes_(b"\xff\xfe")
        if how == "flags_not_0_1":
            del f["terminals"]
            f.create_dataset("terminals", data=np.full(4000, 2, np.int8))
        if how == "attribute_nested":
            f.attrs["dtmerge"] = "[" * 5000 + "]" * 5000
    if how == "corrupt_chunks":
        with h5py.File(path, "r") as f:
            offset = f["observations"].id.get_chunk_info(1).byte_offset
        data = bytearray(path.read_bytes())
        data[offset:offset + 64] = b"\x00" * 64
        path.write_bytes(bytes(data))
    return ["data", "info", "hopper-x.hdf5"]


for how, expect in (("external_link", "'observations' links to another file"),
                    ("corrupt_chunks", "cannot read 'observations'"),
                    ("attribute_not_json", "attribute 'dtmerge': not valid JSON"),
                    ("attribute_a_list", "attribute 'dtmerge' should be a JSON object"),
                    ("attribute_nested", "attribute 'dtmerge': JSON nested more than 64 deep"),
                    ("attribute_not_utf8", "attribute 'note' is not UTF-8 text"),
                    ("flags_not_0_1", "'terminals' must hold true/false (0/1) values")):
    register(f"hdf5_file_{how}", expect, lambda ws, how=how: _h5_file_damage(ws, how))


def _minari(ws, metadata=None, raw_metadata: bytes | None = None, episode=None):
    """A small Minari dataset directory `mini/`, damaged as asked."""
    data = ws / "mini" / "data"
    data.mkdir(parents=True)
    meta = {"dataset_id": "mini/x-v0", "data_format": "hdf5", "env_spec": '{"id": "Hopper-v5"}', **(metadata or {})}
    (data / "metadata.json").write_bytes(raw_metadata if raw_metadata is not None else json.dumps(meta).encode())
    n = 20
    arrays = {"observations": np.zeros((n + 1, 11), np.float32), "actions": np.zeros((n, 3), np.float32),
              "rewards": np.ones(n, np.float32), "terminations": np.zeros(n, bool), "truncations": np.zeros(n, bool)}
    with h5py.File(data / "main_data.hdf5", "w") as f:
        if episode == "a_dataset":
            f.create_dataset("episode_0", data=np.zeros(3))
        else:
            ep = f.create_group("episode_0")
            for k, v in arrays.items():
                if k == episode:
                    ep.create_group(k)
                elif episode == "strings" and k == "terminations":
                    ep.create_dataset(k, data=np.array([b"no"] * n))
                else:
                    ep.create_dataset(k, data=v)
    return ["data", "info", "mini"]


for name, kwargs, expect in (
        ("metadata_a_list", {"raw_metadata": b"[1, 2]"}, "metadata.json: expected a JSON object"),
        ("metadata_not_utf8", {"raw_metadata": b'{"dataset_id": "\xff"}'}, "metadata.json: not UTF-8 text"),
        ("metadata_nested", {"raw_metadata": b"[" * 3000 + b"]" * 3000}, "metadata.json: JSON nested more than"),
        ("data_format_a_number", {"metadata": {"data_format": 5}}, "data_format should be str"),
        ("dataset_id_a_list", {"metadata": {"dataset_id": ["a"]}}, "dataset_id should be str"),
        ("env_spec_a_number", {"metadata": {"env_spec": 3}}, "env_spec should be str or dict"),
        ("actions_a_group", {"episode": "actions"}, "'episode_0/actions' is a group"),
        ("rewards_a_group", {"episode": "rewards"}, "'episode_0/rewards' is a group"),
        ("episode_an_array", {"episode": "a_dataset"}, "episode_0 is an array, expected an episode group"),
        ("terminations_strings", {"episode": "strings"}, "terminations and truncations must be true/false")):
    register(f"minari_{name}", expect, lambda ws, kwargs=kwargs: _minari(ws, **kwargs))


def _special(path: Path, kind: str) -> None:
    """Replace metadata file `path` by something no metadata file should be."""
    path.unlink()
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "dev_zero":
        path.symlink_to("/dev/zero")
    elif kind == "nested":
        path.write_text("[" * 10_000 + "]" * 10_000)
    elif kind == "not_utf8":
        path.write_bytes(b'{"task": "\xff\xfe"}')
    elif kind == "huge":
        with open(path, "wb") as f:
            f.truncate(65 << 20)


SPECIAL = {"fifo": "not a regular file", "dev_zero": "not a regular file", "nested": "JSON nested more than 64",
           "not_utf8": "not UTF-8 text", "huge": "larger than 64 MiB"}
for document, file, args in (("meta", "hopper/meta.json", ["info", "hopper"]),
                             ("bundle", "bundle/bundle.json", ["info", "bundle"]),
                             ("fisher", "hopper/fisher.json", ["merge", "--model", "hopper", "--model", "walker2d",
                                                               "--method", "fisher", "--output", "m"])):
    for kind, expect in SPECIAL.items():
        def prepare(ws, file=file, kind=kind, args=args):
            _special(ws / file, kind)
            return args
        register(f"json_{document}_{kind}", f"{Path(file).name}: {expect}", prepare)


YAML_DAMAGE = {
    "nested": ("models: " + "[" * 5000 + "]" * 5000, "YAML nested more than 64"),
    "alias_bomb": ("a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join(['*' + chr(97 + i)] * 10)}]\n" for i in range(6)),
        "YAML expands to more than 100,000 values"),
    "alias_deep": ("a: &a [x]\n" + "".join(f"l{i + 1}: &l{i + 1} [*{'a' if i == 0 else f'l{i}'}]\n" for i in range(70)),
                   "YAML nested more than 64"),
    "python_tag": ("models: !!python/object/apply:os.system [echo hacked]\n", "could not determine a constructor"),
    "not_utf8": (b"models: [\xff]\n", "not UTF-8 text"),
    "a_list": ("- models\n- output\n", "must be a mapping of option: value"),
}
for command, file in (("merge", "merge.yaml"), ("train", "train.yaml"), ("mff", "mff.yaml"),
                      ("search", "search.yaml")):
    for damage, (text, expect) in YAML_DAMAGE.items():
        def prepare(ws, command=command, file=file, text=text):
            (ws / file).write_bytes(text if isinstance(text, bytes) else text.encode())
            return [command, "--config", file] if command == "train" else [command, file]
        register(f"yaml_{command}_{damage}", expect if damage in ("python_tag", "a_list") else f"{file}: {expect}",
                 prepare)


def _weights(ws, model: str, damage: str) -> None:
    f = ws / model / "model.safetensors"
    if damage == "truncated":
        f.write_bytes(f.read_bytes()[:-100])
    elif damage == "header_garbage":
        f.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not a header!!}" + f.read_bytes()[24:])
    else:
        t = load_file(f)
        name = "transformer.h.0.attn.c_attn.weight" if damage != "nan_embedding" else "embed_state.weight"
        if damage == "missing_tensor":
            del t[name]
        elif damage == "misshaped":
            t[name] = t[name][:, :-1].contiguous()
        elif damage == "float8":
            t[name] = t[name].to(torch.float8_e4m3fn)
        else:
            t[name][0, 0] = float("nan")
        save_file(t, f)


WEIGHT_DAMAGE = {"truncated": "not a readable safetensors file", "header_garbage": "not a readable safetensors file",
                 "missing_tensor": "tensors do not match the model config", "misshaped": "has shape",
                 "nan_embedding": "embed_state.weight contains NaN or inf", "float8": "has dtype float8_e4m3fn"}
MERGE = ["merge", "--model", "hopper", "--model", "walker2d", "--output", "m"]
for damage, expect in WEIGHT_DAMAGE.items():
    for model in ("hopper", "walker2d"):  # the first model of a merge and a later one
        for how, args in (("merge", MERGE), ("dry_run", MERGE + ["--dry-run"])):
            def prepare(ws, model=model, damage=damage, args=args):
                _weights(ws, model, damage)
                return args
            register(f"weights_{how}_{model}_{damage}", f"{model}/model.safetensors: ", prepare)
    register(f"weights_info_{damage}", "hopper/model.safetensors: ",
             lambda ws, damage=damage: (_weights(ws, "hopper", damage), ["info", "hopper"])[1])


def _train(ws, *extra):
    return ["train", "--dataset", "data.hdf5", "--out", "run", "--steps", "3", "--warmup-steps", "1",
            "--batch-size", "4", "--n-embd", "16", "--n-layer", "1", "--context-len", "5", "--eval-episodes", "0",
            "--quiet", *extra]


NUMBERS = [  # (name, args, expect): numbers out of range, on the command line and in configs
    *((f"seed_{cmd}_{v}", args + ["--seed", v], "Invalid value for '--seed'")
      for v in ("-1", str(2**64)) for cmd, args in (
          ("eval", ["eval", "hopper", "--episodes", "1"]), ("fisher", ["fisher", "hopper", "--overwrite"]),
          ("align", ["align", "hopper", "walker2d", "aligned"]),
          ("perturb", ["perturb", "hopper", "p", "--kind", "random"]),
          ("demo", ["demo", "--out", "d"]))),
    *((f"seed_train_{v}", _train(None, "--seed", v), "seed: Input should be") for v in ("-1", str(2**64))),
    *((f"seed_dare_{v}", MERGE + ["--method", "dare", "--base", "hopper", "--force", "--param", f"seed={v}"],
       "parameter seed=") for v in ("-1", str(2**64))),
    ("precision_eval_fp16", ["eval", "hopper", "--precision", "fp16"], "Invalid value for '--precision'"),
    ("precision_train_fp16", _train(None, "--precision", "fp16"), "Invalid value for '--precision'"),
    ("device_eval_cuda99", ["eval", "hopper", "--episodes", "1", "--device", "cuda:99"], "--device 'cuda:99'"),
    ("device_eval_bogus", ["eval", "hopper", "--episodes", "1", "--device", "toaster"], "--device 'toaster'"),
    ("device_train_cuda99", _train(None, "--device", "cuda:99"), "--device 'cuda:99'"),
    ("device_train_bogus", _train(None, "--device", "toaster"), "--device 'toaster'"),
    ("lr_inf", _train(None, "--lr", "inf"), "lr: Input should be a finite number"),
    ("lr_diverges", _train(None, "--lr", "1e30", "--warmup-steps", "1"), "is not finite"),
    ("batch_too_large", _train(None, "--batch-size", str(10**9)), "batch_size: Input should be less than"),
    ("fisher_batch_too_large", ["fisher", "hopper", "--batch-size", str(10**9), "--overwrite"],
     "Invalid value for '--batch-size'"),
    ("eval_target_nan", ["eval", "hopper", "--episodes", "1", "--target", "nan"], "RTG targets must be finite"),
    ("merge_alpha_huge", MERGE + ["--method", "interpolate", "--param", "alpha=1e30"], "must be finite and within"),
    ("merge_weights_overflow", MERGE + ["--param", "weights=[1e38, 1e38]"], "must be finite and within"),
    ("demo_zero_episodes", ["demo", "--out", "d", "--episodes", "0"], "Invalid value for '--episodes'"),
]
for name, args, expect in NUMBERS:
    register(f"number_{name}", expect, lambda ws, args=args: args)


@case("config.max_ep_len: Input should be less than or equal to 100000")
def number_max_ep_len_in_meta(ws):
    _meta(ws, lambda m: m["config"].update(max_ep_len=10**12))
    return ["info", "hopper"]


@case("datasets: no model of task 'hoper'")
def config_mff_misspelled_task(ws):
    (ws / "mff.yaml").write_text("merge: {models: [hopper, walker2d], output: m}\noutput: out\n"
                                 "datasets: {hoper: data.hdf5}\n")
    return ["mff", "mff.yaml"]


@case("missing-model: not a checkpoint directory")
def leftover_search_with_a_typo(ws):
    (ws / "search.yaml").write_text("models: [hopper, missing-model]\ntrials: 2\nepisodes: 1\noutput: searched\n")
    return ["search", "search.yaml", "--quiet"]


def test_enough_hostile_inputs():
    assert len(CASES) >= 200, len(CASES)


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
