"""How big each scale runs. `smoke` checks the pipeline end to end in the test suite; `mini` is
sized so the whole suite fits a 2-core machine in about 8 hours; `paper` uses the paper's settings
and is meant for a GPU or a cluster. `demo` trains the models `dtmerge demo` trains (its seed 0 is the
demo's run: the same weights given the same threads per process), for looking into the demo with
the pipeline's tools.

mini, and why: a DT step (batch 64, 128 wide, 3 layers, K 20) costs ~0.075 s on 2 cores with native bf16, so
5,000 steps are ~6 minutes a model; by then a DT has fitted 200k-transition datasets to their
behaviour level. Merge-Freeze-Finetune gets 1,000 steps per task, 20% of training (the paper: 10,000 of
100,000, 10%), which keeps the whole mini suite near 8 hours on 2 cores.
10 evaluation episodes per model (batched, ~4 s) give standard errors of a few points; 2 seeds per
model, as the paper's minimum.

Tables III and IV (`lm-init`, `fisher-scale`) are sized down at mini. At the paper's two data
levels they train 52 DTs (36 from the language model, whose Eq. 5 terms make a step up to 1.6x
dearer) and 18 three-task MFFs. On a 2-core machine without native bf16 (AVX2 only: fp32, ~0.3 s
a step per one-thread worker) 5,000 steps and 1,000 MFF steps would take over 30 hours of
one-worker compute for these two tables alone. So at mini every model of the two tables trains 500
steps (warmup 50) with 200 MFF steps per task, from a language model pre-trained 1,000 steps, and
Table III runs the medium level only (Table IV keeps the paper's medium-expert): 2.8 hours of
one-worker compute measured there, 1.5 h of wall clock with 2 workers. The DTs reach roughly their medium
data's level (the demo's do by 600 steps), not an expert's. Every model within a table gets the
same budget, so the comparisons (LM init against Random, Fisher against direct) stay like for like.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Scale:
    name: str
    transitions: int  # per dataset (medium-expert: twice this)
    steps: int  # DT training steps
    warmup_steps: int
    batch_size: int
    model: dict = field(default_factory=dict)
    episodes: int = 10  # reported evaluation episodes per model and RTG target
    max_steps: int | None = None  # cap on episode length (smoke only)
    seeds: int = 2
    precision: str = "auto"
    finetune_steps: int = 1000  # Merge-Freeze-Finetune: steps per task after the merge
    lm: dict = field(default_factory=dict)  # the language model pre-trained for Table III (PretrainConfig)
    lm_terms: dict = field(default_factory=dict)  # Eq. 5 settings its DTs train with (k-means centres, L_LM blocks)
    search_trials: int = 20  # merges tried by a weight search (alignment experiment)
    levels: tuple[str, ...] = ()  # the data levels an experiment runs, where fewer than the paper's (lm-init)
    sized: dict = field(default_factory=dict)  # experiment name -> fields it overrides at this scale

    def for_experiment(self, name: str) -> "Scale":
        """This scale as experiment `name` runs it (its own sizes where `sized` gives them)."""
        return dataclasses.replace(self, **self.sized.get(name, {}))

    def finetune_spec(self, seed: int) -> dict:
        steps = self.finetune_steps
        return {"steps": steps, "warmup_steps": max(1, steps // 10), "batch_size": self.batch_size, "seed": seed,
                "save_every": max(1, min(1000, steps)), "precision": self.precision}

    def train_spec(self, seed: int, **extra) -> dict:
        return {"steps": self.steps, "warmup_steps": self.warmup_steps, "batch_size": self.batch_size,
                "model": self.model, "seed": seed, "save_every": max(1, min(1000, self.steps)),
                "precision": self.precision, **extra}


SCALES = {
    "smoke": Scale("smoke", transitions=2000, steps=20, warmup_steps=5, batch_size=8,
                   model={"n_embd": 32, "n_layer": 2, "n_head": 2, "context_len": 10}, episodes=2, max_steps=40,
                   seeds=1, precision="fp32", finetune_steps=10, search_trials=3,
                   lm={"n_embd": 32, "n_layer": 2, "n_head": 2, "n_positions": 64, "seq_len": 32, "batch_size": 4,
                       "steps": 10, "warmup_steps": 2, "vocab_size": 300, "tokenizer": "bpe", "precision": "fp32"},
                   lm_terms={"cos_clusters": 20, "lm_seq_len": 32, "lm_batch_size": 2}),
    "mini": Scale("mini", transitions=200_000, steps=5000, warmup_steps=500, batch_size=64, episodes=10, seeds=2,
                  lm={"steps": 2000, "tokenizer": "bpe"}, lm_terms={"lm_seq_len": 256, "lm_batch_size": 2},
                  sized={"lm-init": {"steps": 500, "warmup_steps": 50, "finetune_steps": 200, "levels": ("medium",),
                                     "lm": {"steps": 1000, "save_every": 250, "tokenizer": "bpe"}}}),
    "demo": Scale("demo", transitions=50_000, steps=600, warmup_steps=60, batch_size=64, episodes=10, seeds=2,
                  finetune_steps=300),
    "paper": Scale("paper", transitions=1_000_000, steps=100_000, warmup_steps=10_000, batch_size=64, episodes=50,
                   seeds=2, finetune_steps=10_000, search_trials=50, lm={"steps": 20_000, "tokenizer": "bpe"}),
}

REPORT_EVAL_SEED = 10_000  # reported episodes start at this reset seed; selection episodes stay below it
