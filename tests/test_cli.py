import json

import yaml
from click.testing import CliRunner

from dtmerge.cli import main


def run(*args):
    result = CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)
    return result


def test_train_from_yaml_with_flag_override_then_eval(tmp_path, hopper_file):
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump({"dataset": str(hopper_file), "out": str(tmp_path / "run"), "steps": 50,
                                   "warmup_steps": 2, "device": "cpu",
                                   "model": {"n_embd": 32, "n_layer": 1}}))
    r = run("train", "--config", cfg, "--steps", 4, "--n-head", 2, "--quiet")
    assert r.exit_code == 0, r.output
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert saved["steps"] == 4 and saved["model"]["n_head"] == 2 and saved["model"]["n_embd"] == 32
    from huggingface_hub import ModelCard  # the checkpoint's model card, parsed back as the Hub would

    card = ModelCard.load(tmp_path / "run" / "checkpoint" / "README.md")
    scores = json.loads((tmp_path / "run" / "eval.json").read_text())["targets"]
    assert card.data.library_name == "dtmerge" and "hopper" in card.data.tags
    assert [r.metric_value for r in card.data.eval_results] == [round(t["score_mean"], 2) for t in scores]
    assert "## How it was made" in card.text and '"steps": 4' in card.text
    out = tmp_path / "eval.json"
    r = run("eval", tmp_path / "run" / "checkpoint", "--episodes", 2, "--target", 500, "--out", out, "--quiet")
    assert r.exit_code == 0, r.output
    assert "| hopper | 500 |" in r.output and json.loads(out.read_text())["episodes"] == 2


def test_bad_config_is_a_usage_error(tmp_path, hopper_file):
    r = CliRunner().invoke(main, ["train", "--dataset", str(hopper_file), "--steps", "-3"])
    assert r.exit_code == 2 and "steps" in r.output and "greater than 0" in r.output
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("dataset: [unclosed")
    r = CliRunner().invoke(main, ["train", "--config", str(cfg)])
    assert r.exit_code == 2 and "bad.yaml: not a YAML document dtmerge can read" in r.output


def test_data_info_and_export(tmp_path, hopper_file):
    r = run("data", "info", hopper_file)
    info = json.loads(r.output)
    assert info["transitions"] == 3000 and info["task"] == "hopper"
    r = run("data", "export", hopper_file, tmp_path / "copy.hdf5")
    assert r.exit_code == 0 and json.loads(run("data", "info", tmp_path / "copy.hdf5").output)["transitions"] == 3000
    r = CliRunner().invoke(main, ["data", "export", str(hopper_file), str(hopper_file)])
    assert r.exit_code == 1 and "the output is the input" in r.output


def test_help_explains_every_option():
    r = run("train", "--help")
    for flag in ("--dataset", "--steps", "--n-embd", "--context-len", "--resume", "--precision"):
        line = next(ln for ln in r.output.splitlines() if ln.strip().startswith(flag))
        assert len(line.split(maxsplit=2)) == 3, line  # every option carries a help text


def test_shipped_config_files_are_valid():
    from pathlib import Path

    from dtmerge.cli import TrainCommand
    from dtmerge.merge.engine import load_merge_config
    from dtmerge.merge.mff import MFFConfig

    root = Path(__file__).parent.parent / "configs"
    TrainCommand(**yaml.safe_load((root / "train-hopper.yaml").read_text()))
    assert load_merge_config(root / "merge-attention-swap.yaml").params == {"alpha": 1.0}
    assert MFFConfig(**yaml.safe_load((root / "mff-fisher.yaml").read_text())).merge.method == "fisher"
    from dtmerge.merge.pipeline import FinetuneMergeConfig

    assert FinetuneMergeConfig(**yaml.safe_load((root / "finetune-merge.yaml").read_text())).method == "fisher"


def test_bad_input_is_one_clear_line_not_a_traceback(tmp_path):
    r = CliRunner().invoke(main, ["data", "info", str(tmp_path / "missing.hdf5")])
    assert r.exit_code == 1 and "missing.hdf5: file not found" in r.output and "Traceback" not in r.output
    r = CliRunner().invoke(main, ["eval", str(tmp_path)])
    assert r.exit_code == 1 and "meta.json: file not found" in r.output


def test_multitask_from_the_command_line(tmp_path, task_files):
    r = run("train", "--dataset", task_files["hopper"], "--dataset", task_files["walker2d"], "--out", tmp_path / "m",
            "--steps", 2, "--warmup-steps", 1, "--n-embd", 32, "--n-layer", 1, "--eval-episodes", 1,
            "--eval-targets", 100, "--device", "cpu", "--quiet")
    assert r.exit_code == 0, r.output
    assert "| hopper | 100 |" in r.output and "| walker2d | 100 |" in r.output
    from huggingface_hub import ModelCard

    card = ModelCard.load(tmp_path / "m" / "checkpoint" / "README.md")
    assert {"hopper", "walker2d"} <= set(card.data.tags) and len(card.data.eval_results) == 2


def test_yaml_reads_a_float_without_a_dot_as_the_number_a_user_means(tmp_path):
    """YAML 1.1 (PyYAML's default) reads `5e-1` as a string; a config means the number."""
    from dtmerge.merge.engine import load_merge_config

    (tmp_path / "m.yaml").write_text("models: [a, b]\nmethod: interpolate\nparams: {alpha: 5e-1}\noutput: m\n")
    assert load_merge_config(tmp_path / "m.yaml").params == {"alpha": 0.5}
    (tmp_path / "m.yaml").write_text("models: [a, b]\nparams: {note: e5}\noutput: m\n")
    assert load_merge_config(tmp_path / "m.yaml").params == {"note": "e5"}  # not a number: still a string
