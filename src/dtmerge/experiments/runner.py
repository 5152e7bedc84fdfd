"""Make the artifacts an experiment needs: print the plan, then run the graph with one progress bar.

`workers=1` makes every artifact in this process with all cores; `workers=N` runs up to N
artifacts at once in separate processes or Ray tasks, each with cores // N threads, an artifact
starting as soon as everything it is made from is done; of those ready, the one with the longest
estimated chain of work waiting on it goes first (a DT whose merges and evaluations are still to
come before a lone evaluation), so the long trainings do not end up last. A stopped run is resumed by running it
again: finished artifacts are skipped and a stopped training continues from its last checkpoint.
"""

from __future__ import annotations

import concurrent.futures as cf
import json
import multiprocessing
import os
import signal
import statistics
from pathlib import Path

import torch
from threadpoolctl import threadpool_limits
from tqdm.auto import tqdm

from dtmerge.errors import DtmergeError
from dtmerge.experiments.artifacts import GPU_KINDS, estimate, make
from dtmerge.experiments.store import Node, Store, legacy_twin
from dtmerge.runtime import pick_device, resolve_precision, runtime_kind

DEFAULT_SECONDS_PER_STEP = 0.075  # a 128/3/1 DT step, batch 64, bf16, 2 cores (measured)


def all_nodes(targets: list[Node]) -> list[Node]:
    """Every node the targets need, each once, inputs first."""
    seen: dict[str, Node] = {}
    for target in targets:
        for node in target.walk():
            seen.setdefault(node.key, node)
    return list(seen.values())


def this_runtime() -> dict:
    """The device kind and precision a DT here trains on (`precision: auto`)."""
    device = pick_device("auto")
    return runtime_kind(device, resolve_precision("auto", device))


def executor_runtime(executor: str, workers: int, gpus_per_artifact: float | None) -> dict:
    """The device kind and precision the artifacts that train or roll out will be made on: this
    machine's for the local pool; for Ray, what a task declaring the GPUs such an artifact declares
    finds (a CPU-only head may drive GPU workers, and the other way round)."""
    if executor != "ray":
        return this_runtime()
    pool = _RayTasks(1, workers, gpus_per_artifact)
    try:
        probe = pool.ray.remote(num_cpus=1, num_gpus=pool.gpus)(this_runtime)
        return pool.ray.get(probe.remote())
    finally:
        pool.close()


def made_on(run: Path) -> dict:
    """The runtime a DT run in the store recorded (config.json); runs from before it was recorded
    trained on a CPU, in a precision not recorded."""
    try:
        recorded = json.loads((run / "config.json").read_text()).get("runtime")
    except (OSError, ValueError, AttributeError):
        recorded = None
    return recorded if isinstance(recorded, dict) else {"device": "cpu", "precision": None}


def legacy_twins(store: Store, nodes: list[Node]) -> list[tuple[Node, Node]]:
    """(DT, its twin) for the DTs a run from before runs recorded their runtime trained (their keys
    held no device) where the run's config.json shows it trained on the device kind and precision
    the new key names: the same computation, so it need not be trained again. Only DTs made from
    inputs that hold no runtime (datasets): one started from another trained model could have been
    made from a model trained elsewhere."""
    pairs = []
    for node in nodes:
        if node.kind != "dt" or "device" not in node.spec or store.done(node) or store.begun(node):
            continue  # a run of the new key that has begun is its own: `Store.adopt` leaves it alone
        runtime = {"device": node.spec["device"], "precision": node.spec["precision"]}
        for twin in (legacy_twin(node, "auto"), legacy_twin(node, runtime["precision"])):
            if (all(d.key == node.deps[name].key for name, d in twin.deps.items()) and store.done(twin)
                    and made_on(store.path(twin) / "run") == runtime):
                pairs.append((node, twin))
                break
    return pairs


def adopt_legacy(store: Store, nodes: list[Node]) -> int:
    """Take over the DTs `legacy_twins` finds; returns how many were adopted."""
    return sum(store.adopt(node, twin) for node, twin in legacy_twins(store, nodes))


def measured_seconds_per_step(store: Store, runtime: dict) -> float | None:
    """Median training speed of the store's runs on this kind of device and precision (None before
    any has trained on it)."""
    rates = []
    for log in (store.root / "dt").glob("*/run/metrics.jsonl"):
        made = made_on(log.parent)
        if made["device"] != runtime["device"] or made["precision"] not in (None, runtime["precision"]):
            continue
        for line in log.read_text().splitlines()[1:]:
            try:
                rates.append(json.loads(line)["steps_per_s"])
            except (json.JSONDecodeError, KeyError, TypeError):
                continue
    return 1.0 / statistics.median(rates) if rates else None


def plan(store: Store, targets: list[Node], workers: int = 1, taken_over=frozenset()) -> tuple[list[Node], str]:
    """The nodes still to make, longest chain of work first (`critical_path`: still inputs before
    what uses them), and a description of the plan: its time from the step rate measured on this
    kind of device, or the CPU default, said to be unmeasured, before one has run here. Keys in
    `taken_over` count as cached (a dry run's DTs that `legacy_twins` would take over)."""
    nodes = all_nodes(targets)
    runtime = this_runtime()
    measured = measured_seconds_per_step(store, runtime)
    per_step = measured or DEFAULT_SECONDS_PER_STEP
    todo = [n for n in nodes if not store.done(n) and n.key not in taken_over]
    rank = critical_path(todo, per_step)
    todo.sort(key=lambda n: -rank[n.key])  # an input outranks what uses it: its chain is that one's and more
    device_kind = f"{runtime['device']}/{runtime['precision']}"
    lines = [f"store: {store.root}", f"{len(nodes)} artifacts: {len(nodes) - len(todo)} cached, {len(todo)} to make"]
    kinds = sorted({n.kind for n in nodes})
    for kind in kinds:
        k_all = [n for n in nodes if n.kind == kind]
        k_todo = [n for n in todo if n.kind == kind]
        seconds = sum(estimate(n, per_step) for n in k_todo)
        lines.append(f"  {kind:8s} {len(k_all) - len(k_todo):5d} cached {len(k_todo):5d} to make"
                     f"  ~{seconds / 60:.1f} min")
    total = sum(estimate(n, per_step) for n in todo)
    rate = (f"{per_step * 1000:.0f} ms per training step measured on {device_kind} in this store" if measured else
            f"{per_step * 1000:.0f} ms per training step assumed, a 2-core CPU's: unmeasured, no DT in this store "
            f"has trained on {device_kind}")
    lines.append(f"estimated time: ~{total / 60:.1f} min of compute ({rate}), "
                 f"~{total / 60 / max(workers, 1):.1f} min with {workers} worker(s) if they do not slow each other")
    return todo, "\n".join(lines)


def critical_path(todo: list[Node], seconds_per_step: float) -> dict[str, float]:
    """Each node's estimated seconds from its start to the end of the longest chain of work in
    `todo` that waits on it (`todo` lists inputs first)."""
    keys = {n.key for n in todo}
    dependents: dict[str, list[Node]] = {n.key: [] for n in todo}
    for node in todo:
        for dep in node.deps.values():
            if dep.key in keys:
                dependents[dep.key].append(node)
    rank: dict[str, float] = {}
    for node in reversed(todo):  # what uses a node comes after it, so it is ranked first
        rank[node.key] = estimate(node, seconds_per_step) + max((rank[m.key] for m in dependents[node.key]),
                                                                default=0.0)
    return rank


def dry_run(store: Store, targets: list[Node], workers: int = 1) -> str:
    """What `run` would print before it starts, without making or taking over anything."""
    twins = legacy_twins(store, all_nodes(targets))
    note = [f"{len(twins)} DT(s) trained before keys held the runtime, on this one, would be taken over from the "
            "store"] if twins else []
    return "\n".join([*note, plan(store, targets, workers, {node.key for node, _ in twins})[1]])


def visible_gpus() -> list[str]:
    """The CUDA devices this process may use, as CUDA_VISIBLE_DEVICES names them."""
    if not torch.cuda.is_available():
        return []
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    names = [d.strip() for d in listed.split(",") if d.strip()] if listed else []
    return names or [str(i) for i in range(torch.cuda.device_count())]


def default_workers() -> int:
    """One worker per GPU where there are GPUs (workers sharing one GPU contend for it), else one
    per core (measured 1.27x faster than one worker with every core)."""
    return len(visible_gpus()) or os.cpu_count() or 1


def run(store: Store, targets: list[Node], workers: int = 1, progress: bool = True, echo=print,
        executor: str = "local", gpus_per_artifact: float | None = None) -> None:
    """Make every target and what it needs; artifacts already in the store are reused.

    executor `local`: with one worker, in this process; with more, a process pool. `ray`: Ray tasks
    (on the cluster at RAY_ADDRESS, else a local instance), each declaring cores // workers CPUs and
    `gpus_per_artifact` GPUs if it trains or rolls out (default: the cluster's GPUs shared by the
    workers), the store on a path every node sees; local workers get the visible GPUs round robin.
    Either way an artifact starts as soon as what it is made from is done, at most `workers` at
    once, each with cores // workers threads — so the same --workers gives the same numbers (and
    the same device) on both executors."""
    adopted = adopt_legacy(store, all_nodes(targets))
    if adopted:
        echo(f"{adopted} DT(s) trained before keys held the runtime, on this one, taken over from the store")
    todo, description = plan(store, targets, workers)
    echo(description)
    if not todo:
        return
    bar = tqdm(total=len(todo), desc="artifacts", unit="artifact", disable=not progress)
    if executor == "local" and workers == 1:
        for node in todo:
            bar.set_postfix_str(node.kind)
            make(store, node)
            bar.update()
    else:
        threads = max(1, (os.cpu_count() or 1) // workers)
        pool = _RayTasks(threads, workers, gpus_per_artifact) if executor == "ray" else _ProcessPool(workers)
        try:
            _schedule(store, todo, workers, threads, pool, bar)
        except BaseException:
            pool.close(stop_running=True)  # Ctrl-C or SIGTERM: stop the workers' artifacts too
            raise
        pool.close()
    bar.close()


def _schedule(store: Store, todo: list[Node], workers: int, threads: int, pool, bar) -> None:
    """Start ready nodes in `todo`'s order as workers free up."""
    pending = {n.key: n for n in todo}
    running: dict = {}
    while pending or running:
        for key, node in list(pending.items()):
            if len(running) >= workers:
                break
            if all(store.done(d) for d in node.deps.values()):
                running[pool.submit(str(store.root), node, threads)] = node
                del pending[key]
        if not running:
            raise RuntimeError("no artifact can start: an input failed to be made")
        for handle in pool.wait(list(running)):
            bar.update()
            bar.set_postfix_str(running.pop(handle).kind)


def make_with_threads(root: str, node: Node, threads: int) -> None:
    """What a worker process or Ray task runs. NumPy's BLAS gets the same thread count as torch:
    its sums are ordered by its threads, and a Ray worker starts with one (OMP_NUM_THREADS=1)
    where a pool process starts with every core, so the data rolled out would differ."""
    torch.set_num_threads(threads)
    with threadpool_limits(limits=threads):
        make(Store(Path(root)), node)


def _start_worker(counter, gpus: list[str]) -> None:
    """A pool worker: SIGTERM acts as Ctrl-C (it cleans up), and it sees one GPU, round robin."""
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    if gpus:
        with counter.get_lock():
            index, counter.value = counter.value, counter.value + 1
        os.environ["CUDA_VISIBLE_DEVICES"] = gpus[index % len(gpus)]


def ray_gpus_per_artifact(cluster_gpus: float, workers: int, asked: float | None) -> float:
    """GPUs a Ray task that trains or rolls out declares: as asked, else the cluster's GPUs shared
    by the workers (at most one each), so Ray tasks train on the GPU as local workers do."""
    if asked is not None:
        return asked
    return min(1.0, cluster_gpus / workers) if cluster_gpus else 0.0


class _ProcessPool:
    def __init__(self, workers: int):
        context = multiprocessing.get_context("spawn")
        self.pool = cf.ProcessPoolExecutor(workers, mp_context=context, initializer=_start_worker,
                                           initargs=(context.Value("i", 0), visible_gpus()))

    def submit(self, root: str, node: Node, threads: int):
        return self.pool.submit(make_with_threads, root, node, threads)

    def wait(self, handles):
        done, _ = cf.wait(handles, return_when=cf.FIRST_COMPLETED)
        for future in done:
            future.result()  # re-raise a worker's error here
        return done

    def close(self, stop_running: bool = False):
        if stop_running:  # SIGTERM each worker: like Ctrl-C, it cleans up and its training resumes later
            for process in list(self.pool._processes.values()):  # no public API before Python 3.14
                process.terminate()
        self.pool.shutdown(cancel_futures=True)


class _RayTasks:
    def __init__(self, threads: int, workers: int, gpus: float | None):
        try:
            import ray
        except ImportError:
            raise DtmergeError("the ray executor needs Ray: pip install 'dtmerge[ray]'") from None
        self.ray, self.started = ray, not ray.is_initialized()
        if self.started:  # joins RAY_ADDRESS's cluster if set, else starts a local instance
            ray.init(address=os.environ.get("RAY_ADDRESS"), include_dashboard=False, log_to_driver=False)
        self.gpus = ray_gpus_per_artifact(ray.cluster_resources().get("GPU", 0), workers, gpus)
        self.task = ray.remote(num_cpus=threads)(make_with_threads)

    def submit(self, root: str, node: Node, threads: int):
        gpus = self.gpus if node.kind in GPU_KINDS else 0  # Ray hides the GPU from a task that declares none
        return self.task.options(num_gpus=gpus).remote(root, node, threads)

    def wait(self, handles):
        done, _ = self.ray.wait(handles, num_returns=1)
        self.ray.get(done)  # re-raise a task's error here
        return done

    def close(self, stop_running: bool = False):
        if self.started:  # shutting down the instance this run started stops its tasks
            self.ray.shutdown()
