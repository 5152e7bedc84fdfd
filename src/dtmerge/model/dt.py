"""The Decision Transformer: per-task embeddings and action head around a shared-shape GPT trunk.

Everything task-specific (return/state/action/timestep embeddings, `embed_ln`, the action head)
lives outside `transformer`, because its shapes differ between tasks and it is never merged. The
trunk's parameters are named `transformer.h.{i}...` exactly like Hugging Face's GPT2LMHeadModel.
Timestep embeddings are added before `embed_ln`, as in the original DT (kzl/decision-transformer)
and Hugging Face's DecisionTransformerModel.

A run's starting weights come from `init_weights`: the trunk from one seed, the task's parts from
another, so several tasks can share a random trunk on purpose and otherwise never do by accident.
The task's parts start as GPT-2's (N(0, 0.02), biases 0) unless `embed_init="original"` asks for the
original DT code's PyTorch defaults, whose N(0, 1) timestep embedding swamps the other inputs and
slows learning several-fold at short budgets (docs/experiments.md, "Base models").
"""

from __future__ import annotations

import torch
import torch.nn as nn
from pydantic import BaseModel, ConfigDict, Field, model_validator

from dtmerge.model.gpt import ACTIVATIONS, GPT
from dtmerge.model.groups import parameter_groups

EMBED_INITS = ("gpt2", "original")


# Bounds that keep a hand-edited config from asking for terabytes (GPT-2 XL is 1600 wide, 48 deep;
# MuJoCo episodes are 1,000 steps).
MAX_WIDTH, MAX_LAYERS, MAX_EP_LEN = 16_384, 256, 100_000


class DTConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    state_dim: int = Field(gt=0, le=MAX_WIDTH)
    act_dim: int = Field(gt=0, le=MAX_WIDTH)
    n_embd: int = Field(128, gt=0, le=MAX_WIDTH, description="embedding width")
    n_layer: int = Field(3, gt=0, le=MAX_LAYERS, description="transformer blocks")
    n_head: int = Field(1, gt=0, description="attention heads")
    n_inner: int | None = Field(None, gt=0, le=4 * MAX_WIDTH, description="MLP width (default 4 x n_embd)")
    activation: str = Field("relu", description=f"MLP activation: {', '.join(ACTIVATIONS)}")
    dropout: float = Field(0.1, ge=0.0, lt=1.0, description="embedding, attention and residual dropout")
    context_len: int = Field(20, gt=0, le=MAX_EP_LEN, description="K: timesteps per window (3K tokens)")
    max_ep_len: int = Field(1000, gt=0, le=MAX_EP_LEN, description="size of the timestep embedding table")
    layer_norm_epsilon: float = Field(1e-5, gt=0, description="LayerNorm epsilon of the trunk (GPT-2: 1e-5)")

    @model_validator(mode="after")
    def _check(self):
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"activation {self.activation!r} is not one of {', '.join(ACTIVATIONS)}")
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd {self.n_embd} is not divisible by n_head {self.n_head}")
        return self

    @property
    def inner(self) -> int:
        return self.n_inner or 4 * self.n_embd


class DecisionTransformer(nn.Module):
    def __init__(self, config: DTConfig):
        super().__init__()
        self.config = c = config
        self.embed_timestep = nn.Embedding(c.max_ep_len, c.n_embd)
        self.embed_return = nn.Linear(1, c.n_embd)
        self.embed_state = nn.Linear(c.state_dim, c.n_embd)
        self.embed_action = nn.Linear(c.act_dim, c.n_embd)
        self.embed_ln = nn.LayerNorm(c.n_embd)
        self.transformer = GPT(c.n_embd, c.n_layer, c.n_head, c.inner, c.activation, c.dropout, c.layer_norm_epsilon)
        self.predict_action = nn.Sequential(nn.Linear(c.n_embd, c.act_dim), nn.Tanh())

    def forward(self, states, actions, returns_to_go, timesteps, mask=None, last_only: bool = False):
        """Predict a_t from the state token of step t; inputs are (B, K, ·), output (B, K, act_dim),
        or (B, 1, act_dim) for the last step only (`last_only`, what acting needs; it skips the
        last block's work for every other token)."""
        K = states.shape[1]
        keep = slice(3 * K - 2, 3 * K - 1) if last_only else slice(1, None, 3)  # state tokens
        key_mask = None if mask is None else mask.repeat_interleave(3, dim=1)
        return self.predict_action(self.transformer(self.tokens(states, actions, returns_to_go, timesteps), key_mask,
                                                    keep))

    def tokens(self, states, actions, returns_to_go, timesteps):
        """The trunk's input: (R, s, a) tokens interleaved per step, (B, 3K, n_embd), after embed_ln."""
        B, K = states.shape[:2]
        t = self.embed_timestep(timesteps)
        tokens = torch.stack((self.embed_return(returns_to_go) + t, self.embed_state(states) + t,
                              self.embed_action(actions) + t), dim=2).reshape(B, 3 * K, -1)
        return self.embed_ln(tokens)

    def parameter_groups(self) -> dict[str, list[str]]:
        return parameter_groups(self)

    def task_layers(self) -> list[nn.Module]:
        """The layers outside the trunk that carry weights drawn at random (not `embed_ln`)."""
        return [self.embed_timestep, self.embed_return, self.embed_state, self.embed_action, self.predict_action[0]]

    @torch.no_grad()
    def init_weights(self, trunk_seed: int, task_seed: int, embed_init: str = "gpt2") -> None:
        """Draw the starting weights: the trunk from `trunk_seed` (GPT-2's init, so one seed gives one
        trunk whatever the task's sizes), the embeddings and head from `task_seed`. The global RNG
        is left as it was."""
        if embed_init not in EMBED_INITS:
            raise ValueError(f"embed_init must be one of {', '.join(EMBED_INITS)}, not {embed_init!r}")
        with torch.random.fork_rng(devices=[]):  # only the CPU generator is seeded, and restored after
            torch.default_generator.manual_seed(trunk_seed)
            self.transformer.init_weights()
            torch.default_generator.manual_seed(task_seed)
            for layer in self.task_layers():
                if embed_init == "original":
                    layer.reset_parameters()
                else:
                    nn.init.normal_(layer.weight, 0.0, 0.02)
                    if getattr(layer, "bias", None) is not None:
                        nn.init.zeros_(layer.bias)
            self.embed_ln.reset_parameters()
