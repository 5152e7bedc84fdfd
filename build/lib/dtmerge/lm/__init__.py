"""Language-model initialisations for Decision Transformers (GPT-2 and GPT-2-shaped LMs like ChibiT)."""

from dtmerge.lm.gpt2 import dt_from_gpt2, read_gpt2

__all__ = ["dt_from_gpt2", "read_gpt2"]
