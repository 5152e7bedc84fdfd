"""TensorBoard and W&B logging, read back with each tool's own reader (W&B offline: its own
protobuf records), beside metrics.jsonl, which is always written."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
from click.testing import CliRunner

from dtmerge.cli import main

tensorboard = pytest.importorskip("tensorboard")


def _train(tmp_path, hopper_file, *log):
    args = ["train", "--dataset", str(hopper_file), "--out", str(tmp_path / "run"), "--steps", "4", "--log-every", "2",
            "--warmup-steps", "1", "--n-embd", "16", "--n-layer", "1", "--context-len", "5", "--batch-size", "4",
            "--eval-episodes", "1", "--eval-targets", "100", "--device", "cpu", "--quiet"]
    for kind in log:
        args += ["--log", kind]
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 0, r.output
    return [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]


def test_tensorboard_gets_what_metrics_jsonl_gets_and_the_scores(tmp_path, hopper_file):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    metrics = _train(tmp_path, hopper_file, "tensorboard")
    events = EventAccumulator(str(tmp_path / "run" / "tensorboard")).Reload()
    loss = events.Scalars("train/loss")
    assert [(e.step, round(e.value, 5)) for e in loss] == [(m["step"], round(m["loss"], 5)) for m in metrics]
    score = json.loads((tmp_path / "run" / "eval.json").read_text())["targets"][0]["score_mean"]
    assert events.Scalars("eval/hopper/rtg_100/score")[0].value == pytest.approx(score, rel=1e-6)


def _wandb_history(run_dir: Path) -> list[dict]:
    """The history records of the offline W&B run files of a run directory (training, then the
    evaluation's resumed run of the same id)."""
    return [h for f in sorted(run_dir.glob("wandb/offline-run-*/run-*.wandb")) for h in _records(f.read_bytes())]


def _records(data: bytes) -> list[dict]:
    """History records of one W&B run file: LevelDB-style log blocks of wandb's protobuf Records."""
    from wandb.proto import wandb_internal_pb2 as pb

    pos, block, chunks, buf = 7, 32768, [], b""
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:
            pos += left
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if length == 0 and kind == 0:
            pos += left
            continue
        buf += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # a full record, or the last piece of one
            chunks.append(buf)
            buf = b""
    history = []
    for chunk in chunks:
        record = pb.Record()
        record.ParseFromString(chunk)
        if record.WhichOneof("record_type") == "history":
            history.append({i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in record.history.item})
    return history


def test_wandb_offline_run_holds_the_metrics(tmp_path, hopper_file, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.delenv("WANDB_MODE", raising=False)  # offline by default: no network needed
    metrics = _train(tmp_path, hopper_file, "wandb")
    history = _wandb_history(tmp_path / "run")
    train = [h for h in history if "train/loss" in h]
    assert [(h["_step"], h["train/loss"]) for h in train] == [(m["step"], m["loss"]) for m in metrics]
    assert any("eval/hopper/rtg_100/score" in h for h in history)


def test_an_unknown_or_missing_logger_is_refused_before_any_work(tmp_path, hopper_file, monkeypatch):
    from dtmerge.errors import DtmergeError
    from dtmerge.loggers import check_loggers

    r = CliRunner().invoke(main, ["train", "--dataset", str(hopper_file), "--out", str(tmp_path / "r"),
                                  "--log", "mlflow"])
    assert r.exit_code != 0 and "Invalid value for '--log'" in r.output and not (tmp_path / "r").exists()
    import importlib.util

    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(DtmergeError, match="pip install 'dtmerge\\[wandb\\]'"):
        check_loggers(["wandb"])


def test_an_experiment_run_replays_its_artifacts_into_the_loggers(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from dtmerge.experiments.store import Node, Store
    from dtmerge.experiments.suite import log_artifacts
    from dtmerge.loggers import Loggers

    store = Store(tmp_path / "store")
    dt, ev = Node("dt", {"seed": 1}), Node("eval", {"episodes": 1})
    (store.path(dt) / "run").mkdir(parents=True)
    (store.path(dt) / "run" / "metrics.jsonl").write_text('{"step": 10, "loss": 0.5}\n{"step": 20, "loss": 0.25}\n')
    store.finish(dt, {"output": "run/checkpoint"}, 1.0)
    store.path(ev).mkdir(parents=True)
    store.finish(ev, {"output": ".", "task": "hopper", "step": 20,
                      "targets": [{"target": 3600.0, "score_mean": 42.0, "return_mean": 1000.0}]}, 1.0)
    with Loggers(["tensorboard"], tmp_path / "out", "test") as loggers:
        log_artifacts(loggers, store, [dt, ev])
    events = EventAccumulator(str(tmp_path / "out" / "tensorboard")).Reload()
    assert [(e.step, e.value) for e in events.Scalars(f"dt/{dt.key}/loss")] == [(10, 0.5), (20, 0.25)]
    assert events.Scalars(f"eval/{ev.key}/hopper/rtg_3600/score")[0].value == 42.0
