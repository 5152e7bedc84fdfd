"""How big each scale runs. `smoke` checks the pipeline end to end in the test suite; `mini` is
sized for a 2-core machine; `paper` uses the original code's budgets and is meant for a GPU or a
cluster. `demo` trains the models `dtmerge demo` trains (its seed 0 is the demo's run: the same
weights given the same threads per process), for looking into the demo with the pipeline's tools.

paper, from the original code's defaults and README commands (the paper's text gives no step
counts): DTs train 10 x 10,000 = 100k steps with a 10k-step warmup; Merge-Freeze-Finetune finetunes
10 x 10,000 = 100k steps per task with a fresh 10k warmup, and so does Table V's per-task expert
finetuning; Table V's multi-task DT is 512 wide with 4 heads and gelu_new; a Fisher comes from
750 batches of 64 windows (ours uses the exact per-window Fisher, the original the squared
gradient of batch means: `dtmerge.merge.fisher`); 50 evaluation episodes; L_cos decays by step
5,000. Every step-defined schedule scales with the run at reduced scales: warmup is 10% of the
steps everywhere, and L_cos decays by 5% of the training steps (`Scale.cos_until`).

mini, as fractions of paper: DTs 5,000 steps (5%), warmup 500; MFF and finetuning 1,000 steps
per task (1%: MFF gets a fifth of a DT's training here, the paper a full one); Fisher from one
batch of 64 windows (1/750); Table V's multi-task DT 128 wide with 1 head and relu (the paper's
shape would cost 16x a step); 10 evaluation episodes (1/5); 200k-transition datasets (1/5);
seeds: 5 for the experiments on the expert DTs (Fig. 2a, 2b, 3, Table II), 3 for the rest. Why
5,000 steps: `dt-curves` measures every base DT's score against its data's at 1,000, 2,500 and
5,000 steps (the scale's `curve_steps`, kept from the very runs the experiments merge). Over 3
seeds, 8 of the 9 base DTs are shown to reach 90% of their data's mean by 5,000 steps (means
1.08-2.48x; docs/experiments/mini/dt-curves); HalfCheetah medium-expert stays at its medium half's
level (0.79 [0.73, 0.88]): asked for its medium or its expert half's return, it moves by 2.3 [0.0,
6.6] points only. Trained to 20,000 steps (one seed) it reaches 1.71x its data and follows the
return asked for (24.5 against 54.4): this one dataset needs more than 5,000 steps, so at mini its
DTs train 20,000 (`dataset_steps`; the recipe's warmup, weights kept at its curve steps, at its
5,000 and at 10,000: the very DT dt-curves' long schedule trains) in Table I, where over 3 seeds
it reaches 1.61 [1.56, 1.65] of its data; dt-curves also measures
all nine datasets at the recipe's 5,000, and Tables III and IV keep one budget for all their models. With the
original code's embedding init the expert DTs reached 0.06-0.85x by 2,500 steps (one seed).
lr 3e-4 was no faster where it mattered (HalfCheetah expert 51.0 at 2,500 steps against 54.0).
A DT step (batch 64, 128 wide, 3 layers, K 20) costs ~0.105 s on one thread with native bf16
(9.5 steps/s per worker with 2 workers, measured in the store), ~0.3 s without (AVX2 only, fp32).

Tables III and IV (`lm-init`, `fisher-scale`) are sized down at mini. At the paper's two data
levels they train 52 DTs (36 from the language model, whose Eq. 5 terms make a step up to 1.6x
dearer) and 18 three-task MFFs: over 30 hours of one-worker compute without native bf16. So at
mini every model of the two tables trains 1,000 steps (warmup 100) with 500 MFF steps per task,
from a language model pre-trained 1,000 steps, and Table III runs the medium level only (Table IV
keeps the paper's medium-expert). 1,000 steps because that is where `dt-curves` found the medium
DTs above their data's score (1.06-1.29x, means over 3 seeds; 500 steps, the earlier sizing, was not
measured to be enough). Every model within a table gets the same budget, so the
comparisons (LM init against Random, Fisher against direct) stay like for like, and the Single
baseline trains on for the MFF steps, as many as the merged models had.

`merge-benchmark` finetunes its MFF regime 500 steps per task at mini (half the scale's MFF
budget; one MFF per method, start and seed), and its ChibiT start is the language model Table
III pre-trains (1,000 steps).
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
    device: str = "auto"  # the kind of device training and rollouts run on; a run resolves both (`on`)
    finetune_steps: int = 1000  # Merge-Freeze-Finetune: steps per task after the merge
    lm: dict = field(default_factory=dict)  # the language model pre-trained for Table III (PretrainConfig)
    lm_terms: dict = field(default_factory=dict)  # Eq. 5 settings its DTs train with (k-means centres, L_LM blocks)
    search_trials: int = 20  # merges a search tries (alignment: weights; merge-benchmark: each method's)
    levels: tuple[str, ...] = ()  # the data levels an experiment runs, where fewer than the paper's (lm-init)
    sized: dict = field(default_factory=dict)  # experiment name -> fields it overrides at this scale
    curve_steps: tuple[int, ...] = ()  # steps at which every DT's weights are kept (dt-curves evaluates them)
    dataset_steps: dict = field(default_factory=dict)  # "task-level" -> a DT's steps where its data needs more
    fisher_batches: int = 1  # 64-window batches a Fisher is estimated from (the original: 750)
    multitask_model: dict = field(default_factory=dict)  # Table V's multi-task DT, where it differs from `model`

    def on(self, runtime: dict) -> "Scale":
        """This scale as a run on `runtime` ({"device", "precision"}, what `auto` resolved to) makes it:
        the device kind and precision go into every training and rollout spec, hence into their keys,
        so a GPU's bf16 models never stand in for a CPU's fp32 ones in a shared store."""
        precision = runtime["precision"] if self.precision == "auto" else self.precision
        return dataclasses.replace(self, device=runtime["device"], precision=precision)

    def runtime(self) -> dict:
        """The device and precision fields of a spec that trains or rolls out. A scale not resolved
        by `on` (a run.json from before runs recorded their runtime) gives what specs held then, the
        precision alone, so such a run's report finds its artifacts under the keys they were made with."""
        return {"device": self.device, "precision": self.precision} if self.device != "auto" else \
            {"precision": self.precision}

    def for_experiment(self, name: str) -> "Scale":
        """This scale as experiment `name` runs it (its own sizes where `sized` gives them)."""
        return dataclasses.replace(self, **self.sized.get(name, {}))

    def finetune_spec(self, seed: int) -> dict:
        steps = self.finetune_steps
        return {"steps": steps, "warmup_steps": max(1, steps // 10), "batch_size": self.batch_size, "seed": seed,
                "save_every": max(1, min(1000, steps)), **self.runtime()}

    def cos_until(self) -> int:
        """The step by which L_cos has decayed: the paper's 5,000 of 100,000, scaled with the run."""
        return max(1, round(PAPER_COS_UNTIL * self.steps / PAPER_STEPS))

    def train_spec(self, seed: int, **extra) -> dict:
        spec = {"steps": self.steps, "warmup_steps": self.warmup_steps, "batch_size": self.batch_size,
                "model": self.model, "seed": seed, "save_every": max(1, min(1000, self.steps)),
                **self.runtime(), **extra}
        keep = spec.pop("keep_steps", None) or [s for s in self.curve_steps if s < spec["steps"]]
        return {**spec, "keep_steps": keep} if keep else spec


PAPER_STEPS = 100_000  # the original code's DT training: 10 iterations x 10,000 steps
PAPER_COS_UNTIL = 5_000
EXPERT_SEEDS = 5  # the experiments on the expert DTs (Fig. 2a, 2b, 3, Table II) take more seeds than the rest
EXPERT_EXPERIMENTS = ("per-layer", "incremental", "attention-interp", "mff-subsets")

SCALES = {
    "smoke": Scale("smoke", transitions=2000, steps=20, warmup_steps=5, batch_size=8,
                   model={"n_embd": 32, "n_layer": 2, "n_head": 2, "context_len": 10}, episodes=2, max_steps=40,
                   seeds=1, precision="fp32", finetune_steps=10, search_trials=3,
                   lm={"n_embd": 32, "n_layer": 2, "n_head": 2, "n_positions": 64, "seq_len": 32, "batch_size": 4,
                       "steps": 10, "warmup_steps": 2, "vocab_size": 300, "tokenizer": "bpe", "precision": "fp32"},
                   lm_terms={"cos_clusters": 20, "lm_seq_len": 32, "lm_batch_size": 2}, curve_steps=(10,)),
    "mini": Scale("mini", transitions=200_000, steps=5000, warmup_steps=500, batch_size=64, episodes=10, seeds=3,
                  curve_steps=(1000, 2500), dataset_steps={"halfcheetah-medium-expert": 20_000},
                  lm={"steps": 2000, "tokenizer": "bpe"}, lm_terms={"lm_seq_len": 256, "lm_batch_size": 2},
                  sized={"lm-init": {"steps": 1000, "warmup_steps": 100, "finetune_steps": 500, "levels": ("medium",),
                                     "dataset_steps": {},  # one budget for every model of Tables III and IV
                                     "lm": {"steps": 1000, "save_every": 250, "tokenizer": "bpe"}},
                         "merge-benchmark": {"finetune_steps": 500,  # and Table III's language model
                                             "lm": {"steps": 1000, "save_every": 250, "tokenizer": "bpe"}},
                         **{name: {"seeds": EXPERT_SEEDS} for name in EXPERT_EXPERIMENTS}}),
    "demo": Scale("demo", transitions=50_000, steps=600, warmup_steps=60, batch_size=64, episodes=10, seeds=2,
                  finetune_steps=300, curve_steps=(150, 300)),
    "paper": Scale("paper", transitions=1_000_000, steps=PAPER_STEPS, warmup_steps=10_000, batch_size=64, episodes=50,
                   seeds=3, finetune_steps=100_000, search_trials=50, lm={"steps": 20_000, "tokenizer": "bpe"},
                   fisher_batches=750, curve_steps=(10_000, 25_000, 50_000),
                   multitask_model={"n_embd": 512, "n_head": 4, "activation": "gelu_new"},
                   sized={name: {"seeds": EXPERT_SEEDS} for name in EXPERT_EXPERIMENTS}),
}

REPORT_EVAL_SEED = 10_000  # reported episodes start at this reset seed; selection episodes stay below it
