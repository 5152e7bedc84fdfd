"""One config for a training run: the original DT recipe plus the paper's Eq. 5 terms."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from dtmerge.model.dt import EMBED_INITS, MAX_EP_LEN, MAX_LAYERS, MAX_WIDTH
from dtmerge.runtime import MAX_BATCH, RunConfig
from dtmerge.validate import one_line

# Table III's variants (all decay l1 = 0.1 to 0 by step 5000). l3 is the original code's 1e-4.
PRESETS = {
    "chibit": {"cos_weight": 0.1, "cos_until": 5000},
    "chibit-co": {"cos_weight": 0.1, "cos_until": 5000, "lm_weight": 1.0},
    "chibit-r": {"cos_weight": 0.1, "cos_until": 5000, "l2_weight": 1e-4},
    "gpt2-r": {"cos_weight": 0.1, "cos_until": 5000, "l2_weight": 1e-4},
}


class ModelShape(BaseModel):
    """The DT architecture minus the task's state/action sizes (which come from the dataset)."""

    model_config = ConfigDict(extra="forbid")
    n_embd: int = Field(128, gt=0, le=MAX_WIDTH, description="embedding width")
    n_layer: int = Field(3, gt=0, le=MAX_LAYERS, description="transformer blocks")
    n_head: int = Field(1, gt=0, description="attention heads")
    activation: str = Field("relu", description="MLP activation: relu, gelu or gelu_new")
    dropout: float = Field(0.1, ge=0.0, lt=1.0, description="embedding, attention and residual dropout")
    context_len: int = Field(20, gt=0, le=MAX_EP_LEN, description="K: timesteps per training window")


class TrainConfig(RunConfig):
    dataset: list[str] = Field(description="D4RL .hdf5 file, Minari dataset directory or id, or a made id like "
                                           "hopper-medium; several (one per task) train one multi-task DT")
    task: str | None = Field(None, description="halfcheetah, hopper or walker2d (default: from the dataset)")

    @field_validator("dataset", mode="before")
    @classmethod
    def _one_or_more(cls, v):
        return [v] if isinstance(v, str) else v
    out: str = Field("runs/dt", description="run directory (checkpoint/, metrics.jsonl, config.json)")
    steps: int = Field(10000, gt=0, description="optimizer steps in total")
    keep_steps: list[Annotated[int, Field(gt=0)]] = Field(
        default_factory=list, description="steps whose weights are also kept, in <out>/snapshots/step-<N> (for "
                                          "learning curves; repeat the flag for several)")
    batch_size: int = Field(64, gt=0, le=MAX_BATCH, description="windows per step")
    lr: float = Field(1e-4, gt=0, description="AdamW learning rate after warmup")
    weight_decay: float = Field(1e-4, ge=0, description="AdamW weight decay")
    warmup_steps: int = Field(10000, gt=0, description="linear learning-rate warmup steps")
    grad_clip: float = Field(0.25, gt=0, description="gradient norm clip")
    rtg_scale: float = Field(1000.0, gt=0, description="returns-to-go are divided by this")
    model: ModelShape = Field(default_factory=ModelShape)
    init: str | None = Field(None, description="start from a DT checkpoint (its architecture and state "
                                               "normalisation are kept), one task of a bundle, or a GPT-2 model "
                                               "(Hugging Face directory or hub id: its trunk) instead of a random init")
    init_seed: int | None = Field(None, ge=0, lt=2**63, description="seed of the starting weights (default: derived "
                                  "from --seed, the task(s) and the run's role, so no two tasks share a start; give "
                                  "several tasks one value to start them from one random trunk)")
    embed_init: Literal[EMBED_INITS] = Field("gpt2", description="embeddings and action head: gpt2 (N(0, 0.02), "
                                             "biases 0) or original (PyTorch defaults, as the original DT code)")
    share_lm_positions: bool = Field(True, description="with a GPT-2 init, use its position embedding as "
                                                       "the timestep embedding (tiled past its length)")
    freeze: list[str] = Field(default_factory=list, description="selector of parameters to keep fixed "
                                                                 "(groups such as attn, mlp; globs; '!item')")
    cos_weight: float = Field(0.0, ge=0, description="l1 of Eq. 5: weight of L_cos, the pull of input "
                                                     "embeddings toward the LM's token clusters (needs a GPT-2 init)")
    cos_until: int = Field(5000, gt=0, description="the L_cos weight decays (sigmoid) to ~0 by this step")
    cos_clusters: int = Field(1000, gt=0, description="k-means centres of the LM's token embeddings")
    l2_weight: float = Field(0.0, ge=0, description="l3 of Eq. 5: weight of L_2, the distance of the trunk's "
                                                    "blocks to their initial (e.g. the LM's) weights")
    l2_norm: Literal["fro", "squared"] = Field("fro", description="fro: sum of per-tensor Frobenius norms (the "
                                                                  "original); squared: squared L2 distance")
    lm_weight: float = Field(0.0, ge=0, description="l2 of Eq. 5: weight of L_LM, language modelling through "
                                                    "the trunk on --lm-corpus (co-training; needs a GPT-2 init)")
    lm_corpus: list[str] = Field(default_factory=list, description="text files for L_LM")
    lm_seq_len: int = Field(1024, gt=1, description="tokens per L_LM block (the original: 1024)")
    lm_batch_size: int = Field(2, gt=0, le=MAX_BATCH, description="L_LM blocks per step (the original: 2)")
    preset: Literal[tuple(PRESETS)] | None = Field(
        None, description="Table III's variants: sets cos/lm/l2 weights not given explicitly (with --init "
                          "a ChibiT or GPT-2 model; chibit-co also needs --lm-corpus)")

    @model_validator(mode="before")
    @classmethod
    def _apply_preset(cls, data):
        if isinstance(data, dict) and data.get("preset") in PRESETS:
            data = {**PRESETS[data["preset"]], **data}
        return data


# Fields that may change when a run is resumed: how long, on what, how often it reports, and where the
# run and its data live (a run or a store may be moved; the data's content is compared instead).
RESUMABLE_CHANGES = {"steps", "device", "precision", "log_every", "log", "save_every", "keep_steps", "out",
                     "dataset"}  # device and precision: what they resolve to is checked instead


def check_finetune_fields(fields: dict, set_by_pipeline: set[str]) -> dict:
    """TrainConfig fields a pipeline passes to its finetuning runs, checked when its config is read
    rather than when the first run starts."""
    taken = sorted(set_by_pipeline & set(fields))
    if taken:
        raise ValueError(f"finetune may not set {taken}: the pipeline sets them itself")
    try:
        TrainConfig(dataset=["(set by the pipeline)"], **fields)
    except ValidationError as e:
        raise ValueError(one_line(e)) from None
    return fields
