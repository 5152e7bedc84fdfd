"""Shared setup for the benchmarks: a results folder and a small JSON writer."""

from __future__ import annotations

import json
import platform
from pathlib import Path

import torch

OUT = Path(__file__).resolve().parent.parent / "bench-out"


def report(name: str, result: dict) -> None:
    result = {"machine": {"cpu_threads": torch.get_num_threads(), "python": platform.python_version(),
                          "torch": torch.__version__, "cpu_capability": torch.backends.cpu.get_cpu_capability()},
              **result}
    OUT.mkdir(exist_ok=True)
    (OUT / f"{name}.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
