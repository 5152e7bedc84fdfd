"""`dtmerge experiment run` and `report`: the chosen experiments' artifacts through one store,
then a report per experiment under the output directory (results.json, results.md, figures)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from dtmerge.atomic import atomic_path, read_json, write_json
from dtmerge.data.make import data_home
from dtmerge.errors import DtmergeError
from dtmerge.experiments import EXPERIMENTS, runner
from dtmerge.experiments.batching import batch_trainings
from dtmerge.experiments.common import SUMMARY_FORMAT
from dtmerge.experiments.scales import SCALES, Scale
from dtmerge.experiments.store import Store
from dtmerge.loggers import Loggers, check_loggers
from dtmerge.outputs import claim_outputs, run_directory


def scale_of(name: str, seeds: int | None = None) -> Scale:
    """A scale by name; `seeds` given replaces its seed count for every experiment."""
    if name not in SCALES:
        raise DtmergeError(f"unknown scale {name!r}; scales: {', '.join(SCALES)}")
    scale = SCALES[name]
    if not seeds:
        return scale
    sized = {exp: {k: v for k, v in fields.items() if k != "seeds"} for exp, fields in scale.sized.items()}
    return dataclasses.replace(scale, seeds=seeds, sized=sized)


def run_suite(names: list[str], scale_name: str, out, seeds: int | None = None, workers: int | None = 1, store=None,
              resume: bool = False, overwrite: bool = False, progress: bool = True, echo=print,
              executor: str = "local", gpus_per_artifact: float | None = None, log=(),
              batch_dts: int | None = None, dry_run: bool = False) -> Path | None:
    """Run experiments `names` at a scale, then report them under `out`; `workers` None: one per
    GPU where there are GPUs, else one per core; `log`: loggers that get every artifact's training
    metrics and evaluation scores (replayed from the store once the run is complete); `batch_dts`:
    DTs differing only in seed trained up to this many at once (None: BATCH_ON_GPU on a GPU, else
    none); `dry_run`: print the plan (what is cached, what is to make, the time it should take) and
    stop, making and writing nothing."""
    workers = runner.default_workers() if workers is None else workers
    unknown = [n for n in names if n not in EXPERIMENTS]
    if unknown or not names:
        raise DtmergeError(f"unknown experiment(s) {unknown or names}; experiments: {', '.join(EXPERIMENTS)}")
    if workers < 1:
        raise DtmergeError(f"--workers must be at least 1, got {workers}")
    if executor not in ("local", "ray"):
        raise DtmergeError(f"unknown executor {executor!r}: local or ray")
    runtime = runner.executor_runtime(executor, workers, gpus_per_artifact)
    if batch_dts is None:
        batch_dts = BATCH_ON_GPU if runtime["device"] == "cuda" else 0
    out = Path(out)
    scale = scale_of(scale_name, seeds).on(runtime)
    store = Store(store or data_home() / "store")
    claim_outputs([out], [store.root], overwrite, resume)  # an --out over the store would replace the store
    if resume and (out / "run.json").is_file():
        saved = json.loads((out / "run.json").read_text())
        if (saved.get("scale"), saved.get("seeds"), saved.get("batch_dts", 0)) != (scale.name, seeds, batch_dts):
            given = lambda n: "no --seeds" if n is None else f"--seeds {n}"  # noqa: E731
            raise DtmergeError(f"{out}: holds a {saved.get('scale')} run with {given(saved.get('seeds'))} and "
                               f"--batch-dts {saved.get('batch_dts', 0)}; resume it with the same --scale, --seeds "
                               "and --batch-dts, or choose another --out")
        if saved.get("runtime", runtime) != runtime:
            raise DtmergeError(f"{out}: holds a run made on {saved['runtime']['device']}/"
                               f"{saved['runtime']['precision']}, and this machine runs {runtime['device']}/"
                               f"{runtime['precision']}; resume it on such a machine, or choose another --out")
        names = list(dict.fromkeys(saved["experiments"] + names))
    targets = [node for graph in graphs(names, scale, batch_dts).values() for node in graph.values()]
    check_loggers(log)  # refused before any work, not after hours of it
    if dry_run:
        echo(runner.dry_run(store, targets, workers))
        return None
    runner.run(store, targets, workers, progress, echo, executor, gpus_per_artifact)
    with run_directory(out, overwrite, resume) as work:
        write_json(work / "run.json", {"experiments": names, "scale": scale.name, "seeds": seeds,
                                       "batch_dts": batch_dts, "runtime": runtime, "store": str(store.root.resolve())})
        report(work, echo)
        if log:
            with Loggers(log, work, f"{scale.name}: {', '.join(names)}", {"experiments": names,
                                                                          "scale": scale.name}) as loggers:
                log_artifacts(loggers, store, runner.all_nodes(targets))
    return out


BATCH_ON_GPU = 8  # DTs trained at once on a GPU by default (dtmerge.train.many)


def graphs(names: list[str], scale: Scale, batch_dts: int) -> dict[str, dict]:
    """Each experiment's nodes at its own sizes, with DTs batched as `batch_dts` says (one rewrite
    over all of them, so a report rebuilds the graph the run made)."""
    built = [EXPERIMENTS[name].nodes(scale.for_experiment(name)) for name in names]
    return dict(zip(names, batch_trainings(built, batch_dts)))


def log_artifacts(loggers: Loggers, store: Store, nodes) -> None:
    """Each training artifact's metrics.jsonl under `<kind>/<key>`, each evaluation's scores under
    `eval/<key>/<task>/rtg_<target>` (step: the evaluated model's training step)."""
    for node in nodes:
        if node.kind in ("dt", "batched-dt", "lm", "mff"):
            for metrics in sorted(store.path(node).rglob("metrics.jsonl")):
                for line in metrics.read_text().splitlines():
                    rec = json.loads(line)
                    loggers.log(rec, rec["step"], prefix=f"{node.kind}/{node.key}")
        elif node.kind == "eval":
            result = store.result(node)
            for t in result["targets"]:
                loggers.log({"score": t["score_mean"], "return": t["return_mean"]}, result.get("step") or 0,
                            prefix=f"eval/{node.key}/{result['task']}/rtg_{t['target']:g}")


def report(out, echo=print) -> dict:
    """Write each experiment's report from the store's results, then REPORT.md from their summaries;
    returns the summaries. An experiment whose results the store no longer holds (a store cleaned
    or left on another machine) keeps the report already under `out`, said so, and its summary is
    read back from that report's results.json."""
    out = Path(out)
    file = out / "run.json"
    if not file.is_file():
        raise DtmergeError(f"{file}: file not found; `dtmerge experiment run ... --out {out}` writes it")
    saved = json.loads(file.read_text())
    scale, store = scale_of(saved["scale"], saved["seeds"]), Store(saved["store"])
    if "runtime" in saved:  # else a run from before it was recorded: its artifacts are under older keys
        scale = scale.on(saved["runtime"])
    summaries = {}
    built = graphs(saved["experiments"], scale, saved.get("batch_dts", 0))
    for name in saved["experiments"]:
        module, sized = EXPERIMENTS[name], scale.for_experiment(name)
        nodes = built[name]
        missing = [k for k, n in nodes.items() if not store.done(n)]
        if missing and (out / name / "results.json").is_file():
            summaries[name] = kept_summary(out / name / "results.json", name, sized)
            echo(f"{name}: {len(missing)} result(s) not in the store {store.root}; kept {out / name / 'results.json'}")
            continue
        if missing:
            raise DtmergeError(f"{name}: {len(missing)} result(s) not in the store {store.root} yet (e.g. "
                               f"{missing[0]}); run the experiment first")
        results = {k: store.result(n) for k, n in nodes.items()}
        summaries[name] = module.report(sized, results, out / name)
        echo(f"{name}: {out / name / 'results.md'}")
    seeds = sorted({scale.for_experiment(name).seeds for name in summaries})
    lines = [f"# Our runs against the paper's claims (scale {scale.name}, {' or '.join(map(str, seeds))} seed(s))", "",
             "Each line: the paper's claim, what our run measured (mean [95% bootstrap interval over seeds]), and the "
             "rule that judged it: agrees or disagrees when the interval lies on one side of the claim, inconclusive "
             "when it straddles it or when the experiment's base models have not learned their data. The numbers "
             "are in each experiment's results.md.", ""]
    for name, summary in summaries.items():
        for f in EXPERIMENTS[name].findings(summary):
            lines.append(f"- **{f['verdict']}** — {f['claim']} Ours: {f['ours']} ({f['rule']}; `{name}`).")
    with atomic_path(out / "REPORT.md") as tmp:
        tmp.write_text("\n".join(lines) + "\n")
    echo(f"findings: {out / 'REPORT.md'}")
    return summaries


def kept_summary(file: Path, name: str, scale: Scale) -> dict:
    """An experiment's results.json, checked to be that experiment's at this scale and seed count."""
    try:
        summary = read_json(file)
    except ValueError as e:
        raise DtmergeError(str(e)) from None
    if summary.get("summary_format") != SUMMARY_FORMAT:
        raise DtmergeError(f"{file}: written by an older dtmerge (summary_format {summary.get('summary_format')}, this "
                           f"one reads {SUMMARY_FORMAT}); run the experiment again to judge it with intervals")
    found = (summary.get("experiment"), summary.get("scale"), summary.get("seeds"))
    if found != (name, scale.name, scale.seeds):
        raise DtmergeError(f"{file}: holds {found[0]!r} at scale {found[1]!r} with {found[2]} seed(s), not {name!r} "
                           f"at scale {scale.name!r} with {scale.seeds}")
    return summary
