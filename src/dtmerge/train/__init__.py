"""Training: one config (config.py), the composition of a run (recipe.py), the loop (loop.py)."""

from dtmerge.train.config import PRESETS, ModelShape, TrainConfig
from dtmerge.train.recipe import train

__all__ = ["PRESETS", "ModelShape", "TrainConfig", "train"]
