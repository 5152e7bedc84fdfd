"""Make the artifacts an experiment needs: print the plan, then run the graph with one progress bar.

`workers=1` makes every artifact in this process with all cores; `workers=N` runs up to N
artifacts at once in separate processes, each with cores // N threads, an artifact starting as soon
as everything it is made from is done. A stopped run is resumed by running it again: finished
artifacts are skipped and a stopped training continues from its last checkpoint.
"""

from __future__ import annotations

import concurrent.futures as cf
import json
import multiprocessing
import os
import statistics
from pathlib import Path

import torch
from tqdm.auto import tqdm

from dtmerge.experiments.artifacts import estimate, make
from dtmerge.experiments.store import Node, Store

DEFAULT_SECONDS_PER_STEP = 0.075  # a 128/3/1 DT step, batch 64, bf16, 2 cores (measured)


def all_nodes(targets: list[Node]) -> list[Node]:
    """Every node the targets need, each once, inputs first."""
    seen: dict[str, Node] = {}
    for target in targets:
        for node in target.walk():
            seen.setdefault(node.key, node)
    return list(seen.values())


def measured_seconds_per_step(store: Store) -> float:
    """Median training speed of the finished runs in the store (or the default before there are any)."""
    rates = []
    for log in (store.root / "dt").glob("*/run/metrics.jsonl"):
        for line in log.read_text().splitlines()[1:]:
            try:
                rates.append(json.loads(line)["steps_per_s"])
            except (json.JSONDecodeError, KeyError):
                continue
    return 1.0 / statistics.median(rates) if rates else DEFAULT_SECONDS_PER_STEP


def plan(store: Store, targets: list[Node], workers: int = 1) -> tuple[list[Node], str]:
    """The nodes still to make, and a description of the plan."""
    nodes = all_nodes(targets)
    todo = [n for n in nodes if not store.done(n)]
    per_step = measured_seconds_per_step(store)
    lines = [f"store: {store.root}", f"{len(nodes)} artifacts: {len(nodes) - len(todo)} cached, {len(todo)} to make"]
    kinds = sorted({n.kind for n in nodes})
    for kind in kinds:
        k_all = [n for n in nodes if n.kind == kind]
        k_todo = [n for n in todo if n.kind == kind]
        seconds = sum(estimate(n, per_step) for n in k_todo)
        lines.append(f"  {kind:8s} {len(k_all) - len(k_todo):5d} cached {len(k_todo):5d} to make"
                     f"  ~{seconds / 60:.1f} min")
    total = sum(estimate(n, per_step) for n in todo)
    lines.append(f"estimated time: ~{total / 60:.1f} min of compute ({per_step * 1000:.0f} ms per training step"
                 f"{' measured' if per_step != DEFAULT_SECONDS_PER_STEP else ' assumed'}), "
                 f"~{total / 60 / max(workers, 1):.1f} min with {workers} worker(s) if they do not slow each other")
    return todo, "\n".join(lines)


def run(store: Store, targets: list[Node], workers: int = 1, progress: bool = True, echo=print) -> None:
    """Make every target and what it needs; artifacts already in the store are reused."""
    todo, description = plan(store, targets, workers)
    echo(description)
    if not todo:
        return
    pending = {n.key: n for n in todo}
    bar = tqdm(total=len(todo), desc="artifacts", unit="artifact", disable=not progress)
    if workers <= 1:
        for node in todo:
            bar.set_postfix_str(node.kind)
            make(store, node)
            bar.update()
        bar.close()
        return
    threads = max(1, (os.cpu_count() or 1) // workers)
    ctx = multiprocessing.get_context("spawn")
    with cf.ProcessPoolExecutor(workers, mp_context=ctx, initializer=_init_worker, initargs=(threads,)) as pool:
        running: dict[cf.Future, Node] = {}
        while pending or running:
            for key, node in list(pending.items()):
                if len(running) >= workers:
                    break
                if all(store.done(d) for d in node.deps.values()):
                    running[pool.submit(_make_in_worker, str(store.root), node)] = node
                    del pending[key]
            if not running:
                raise RuntimeError("no artifact can start: an input failed to be made")
            finished, _ = cf.wait(running, return_when=cf.FIRST_COMPLETED)
            for future in finished:
                node = running.pop(future)
                future.result()  # re-raise a worker's error here
                bar.update()
                bar.set_postfix_str(node.kind)
    bar.close()


def _init_worker(threads: int) -> None:
    torch.set_num_threads(threads)


def _make_in_worker(root: str, node: Node) -> None:
    make(Store(Path(root)), node)
