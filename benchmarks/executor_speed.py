"""Experiment executor: one artifact at a time with every core (--workers 1), or two at once with
one thread each (--workers 2)? The same small mini-shaped graph — two 128/3/1 DTs (batch 64, K 20)
trained for a few hundred steps, merges between them, 10-episode evaluations — is made from an
empty store each way, and the wall-clock times are compared.

    python benchmarks/executor_speed.py [--steps 300]
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import report  # noqa: E402

from dtmerge.experiments import common as ex  # noqa: E402
from dtmerge.experiments.runner import run  # noqa: E402
from dtmerge.experiments.scales import SCALES  # noqa: E402
from dtmerge.experiments.store import Store  # noqa: E402


def graph(steps: int):
    scale = dataclasses.replace(SCALES["mini"], steps=steps, warmup_steps=max(1, steps // 10), transitions=20_000,
                                seeds=1)
    dts = {t: ex.dt(scale, t, "expert", 0) for t in ("hopper", "walker2d")}
    targets = [ex.evaluation(scale, dts[t], t) for t in dts]
    for unit in ("attn", "mlp", "h.0.attn", "h.1.mlp"):
        targets.append(ex.evaluation(scale, ex.interpolate(dts["hopper"], dts["walker2d"], [unit], 0.5), "hopper"))
        targets.append(ex.evaluation(scale, ex.interpolate(dts["walker2d"], dts["hopper"], [unit], 0.5), "walker2d"))
    return targets


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=300)
    args = ap.parse_args()
    targets = graph(args.steps)
    with tempfile.TemporaryDirectory() as tmp:
        data = Store(Path(tmp) / "data")  # datasets made once, outside the timing
        run(data, [n for n in targets[0].walk() + targets[1].walk() if n.kind == "dataset"], progress=False,
            echo=lambda s: None)
        seconds = {}
        for workers in (1, 2):
            store = Path(tmp) / f"w{workers}"
            (store / "dataset").parent.mkdir(parents=True)
            (store / "dataset").symlink_to(data.root / "dataset")
            start = time.perf_counter()
            run(Store(store), targets, workers=workers, progress=False, echo=lambda s: None)
            seconds[workers] = time.perf_counter() - start
    report("executor_speed", {
        "workload": f"2 DTs x {args.steps} steps (128/3/1, batch 64, K 20), 8 merges, 10 evaluations of 10 episodes",
        "workers_1_two_threads_s": seconds[1], "workers_2_one_thread_each_s": seconds[2],
        "speedup_of_2_workers": seconds[1] / seconds[2],
        "faster": "--workers 2" if seconds[2] < seconds[1] else "--workers 1"})


if __name__ == "__main__":
    main()
