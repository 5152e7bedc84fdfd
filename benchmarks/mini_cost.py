"""What each experiment costs at a scale, from the wall-clock seconds every artifact records in the
store (`artifact.json`'s `seconds`, one worker's time). Experiments are taken in the paper's order
and each is charged only for the artifacts no earlier one made (the expert DTs of Fig. 2a, for
example, are charged to Fig. 2a and reused by Fig. 3 and Tables I and II); `all` is what the
experiment costs alone, from an empty store. Artifacts made before timing was recorded take the mean
of timed ones of the same kind and training steps, and are counted; artifacts not made yet are
estimated as `dtmerge experiment run` estimates them, and counted too. The artifacts are those a
run on this machine makes (its device kind and precision are in their keys).

    python benchmarks/mini_cost.py [--scale mini] [--store DIR] [--workers 2]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import report  # noqa: E402

from dtmerge.data.make import data_home  # noqa: E402
from dtmerge.experiments import EXPERIMENTS  # noqa: E402
from dtmerge.experiments.artifacts import estimate  # noqa: E402
from dtmerge.experiments.runner import all_nodes, measured_seconds_per_step, this_runtime  # noqa: E402
from dtmerge.experiments.scales import SCALES  # noqa: E402
from dtmerge.experiments.store import Node, Store  # noqa: E402


def group(node: Node) -> tuple:
    steps = node.spec.get("steps") or node.spec.get("finetune", {}).get("steps")
    return node.kind, steps


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--scale", default="mini", choices=list(SCALES))
    ap.add_argument("--store", type=Path, default=None)
    ap.add_argument("--workers", type=int, default=2, help="for the wall-clock column: seconds / workers")
    args = ap.parse_args()
    scale, store = SCALES[args.scale].on(this_runtime()), Store(args.store or data_home() / "store")
    nodes = {name: all_nodes(list(module.nodes(scale.for_experiment(name)).values()))
             for name, module in EXPERIMENTS.items()}

    timed, untimed, missing = {}, set(), set()
    for node in {n.key: n for ns in nodes.values() for n in ns}.values():
        if not store.done(node):
            missing.add(node.key)
            continue
        seconds = json.loads((store.path(node) / "artifact.json").read_text()).get("seconds")
        if seconds is None:
            untimed.add(node.key)
        else:
            timed[node.key] = seconds
    by_group = defaultdict(list)
    for ns in nodes.values():
        for n in ns:
            if n.key in timed:
                by_group[group(n)].append(timed[n.key])
    per_step = measured_seconds_per_step(store)

    def seconds(node: Node) -> float:
        if node.key in timed:
            return timed[node.key]
        if node.key in untimed and by_group.get(group(node)):
            return statistics.mean(by_group[group(node)])
        return estimate(node, per_step)

    rows, charged = {}, set()
    for name, ns in nodes.items():
        new = [n for n in ns if n.key not in charged]
        charged |= {n.key for n in ns}
        rows[name] = {
            "artifacts": len(ns), "new_artifacts": len(new),
            "hours_alone": sum(map(seconds, ns)) / 3600, "hours_new": sum(map(seconds, new)) / 3600,
            "measured": sum(n.key in timed for n in new), "imputed": sum(n.key in untimed for n in new),
            "estimated_not_made": sum(n.key in missing for n in new)}
    total = sum(r["hours_new"] for r in rows.values())
    table = ["| experiment | artifacts (new) | compute, new (h) | wall clock with "
             f"{args.workers} workers (h) | alone (h) | timed / imputed / not made yet |",
             "| --- | --- | --- | --- | --- | --- |"]
    table += [f"| {name} | {r['artifacts']} ({r['new_artifacts']}) | {r['hours_new']:.2f} | "
              f"{r['hours_new'] / args.workers:.2f} | {r['hours_alone']:.2f} | {r['measured']} / {r['imputed']} / "
              f"{r['estimated_not_made']} |" for name, r in rows.items()]
    table.append(f"| all | {sum(r['new_artifacts'] for r in rows.values())} | {total:.2f} | "
                 f"{total / args.workers:.2f} | | |")
    print("\n".join(table))
    report(f"{args.scale}_cost", {"scale": args.scale, "store": str(store.root), "workers": args.workers,
                                  "seconds_per_training_step": per_step, "experiments": rows,
                                  "total_compute_hours": total, "total_wall_hours": total / args.workers})


if __name__ == "__main__":
    main()
