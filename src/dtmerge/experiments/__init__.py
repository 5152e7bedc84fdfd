"""The paper's experiments as a resumable pipeline: one module per experiment (its artifacts and
its report), one artifact store (store.py), one runner (runner.py)."""

from dtmerge.experiments import (
    alignment,
    attention_interp,
    attention_perturb,
    dt_curves,
    finetune_merge,
    fisher_scale,
    incremental,
    lm_init,
    merge_benchmark,
    mff_steps,
    mff_subsets,
    per_layer,
)

EXPERIMENTS = {m.NAME: m for m in (dt_curves, per_layer, incremental, attention_interp, attention_perturb, mff_subsets,
                                   lm_init, fisher_scale, finetune_merge, mff_steps, alignment, merge_benchmark)}

__all__ = ["EXPERIMENTS"]
