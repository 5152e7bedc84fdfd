"""A 3-way Fisher merge of GPT-2-small-sized trunks (768 wide, 12 layers, 12 heads: 85M transformer
parameters each; random weights and random Fishers): wall time and peak memory of the merge,
measured in a fresh process, against the size of one model.

    python benchmarks/merge_scale.py [--workdir /tmp/dtmerge-merge-bench]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import report  # noqa: E402

from dtmerge.merge.fisher import write_fisher  # noqa: E402
from dtmerge.model import DecisionTransformer, DTConfig  # noqa: E402
from dtmerge.store.checkpoint import hand_built_meta, save_checkpoint  # noqa: E402

TASKS = [("hopper", 11, 3), ("walker2d", 17, 6), ("halfcheetah", 17, 6)]


def make_models(root: Path) -> tuple[list[str], int]:
    paths = []
    for i, (task, s, a) in enumerate(TASKS):
        torch.manual_seed(i)
        model = DecisionTransformer(DTConfig(state_dim=s, act_dim=a, n_embd=768, n_layer=12, n_head=12))
        ckpt = save_checkpoint(root / task, model, hand_built_meta(task))
        fisher = {n: torch.rand(p.shape) for n, p in model.named_parameters() if n.startswith("transformer.")}
        write_fisher(ckpt, fisher, {"estimator": "empirical", "dataset": "(random values: a benchmark)",
                                    "task": task, "batches": 1, "batch_size": 1, "seed": i, "windows": 1,
                                    "action_tokens": 1, "normalised_by": "windows"})
        paths.append(str(ckpt))
        model_bytes = sum(p.numel() * 4 for p in model.parameters())
        trunk = sum(p.numel() for n, p in model.named_parameters() if n.startswith("transformer."))
        del model, fisher
    return paths, model_bytes, trunk


# Resident memory is sampled every 5 ms from /proc: RssAnon is what the merge allocates; RssFile is
# the memory-mapped safetensors pages the kernel can drop at will (they count in ru_maxrss).
CHILD = """
import json, sys, threading, time
from dtmerge.merge.engine import MergeConfig, merge

def rss():
    f = dict(line.split(":", 1) for line in open("/proc/self/status"))
    return {k: int(f[k].split()[0]) * 1024 for k in ("RssAnon", "RssFile")}

peak, done = {"RssAnon": 0, "RssFile": 0}, threading.Event()
def sample():
    while not done.is_set():
        for k, v in rss().items():
            peak[k] = max(peak[k], v)
        time.sleep(0.005)
cfg = MergeConfig(**json.loads(sys.argv[1]))
before = rss()
threading.Thread(target=sample, daemon=True).start()
t = time.perf_counter()
merge(cfg)
seconds = time.perf_counter() - t
done.set()
print(json.dumps({"seconds": seconds, "before": before, "peak": peak}))
"""


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--workdir", default=None)
    args = ap.parse_args()
    root = Path(args.workdir or tempfile.mkdtemp(prefix="dtmerge-merge-bench-"))
    try:
        t = time.perf_counter()
        paths, model_bytes, trunk = make_models(root)
        setup = time.perf_counter() - t
        cfg = {"models": paths, "select": ["trunk"], "method": "fisher", "output": str(root / "bundle")}
        out = subprocess.run([sys.executable, "-c", CHILD, json.dumps(cfg)], check=True, capture_output=True, text=True)
        res = json.loads(out.stdout.strip().splitlines()[-1])
        added = res["peak"]["RssAnon"] - res["before"]["RssAnon"]
        report("merge_scale", {
            "what": "3-way Fisher merge (paper normalisation) of the whole trunk, GPT-2-small-sized DTs",
            "transformer_params_per_model": trunk, "model_bytes": model_bytes, "merge_seconds": res["seconds"],
            "peak_allocated_bytes": added, "peak_allocated_over_model_size": added / model_bytes,
            "peak_mapped_file_bytes": res["peak"]["RssFile"], "process_baseline_bytes": res["before"]["RssAnon"],
            "setup_seconds": setup, "target": "about two models or less allocated by the merge"})
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
