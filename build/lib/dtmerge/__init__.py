"""dtmerge: train, merge and evaluate Decision Transformers for multi-task MuJoCo locomotion.

The public API, one function per step of the flow (the CLI is a thin layer over these):

    load_dataset / make_dataset     data (D4RL HDF5, Minari, or made from the shipped policies)
    train(TrainConfig)              one DT per task -> checkpoint directory
    compute_fisher(checkpoint)      diagonal Fisher stored beside the checkpoint
    merge(MergeConfig)              selector x method -> multi-task bundle (or a checkpoint)
    merge_freeze_finetune(MFFConfig)
    evaluate_checkpoint(path)       batched MuJoCo rollouts, D4RL-normalised (-v5) scores
"""

__version__ = "0.1.0"

from dtmerge.data import load_dataset  # noqa: E402
from dtmerge.data.make import make_dataset  # noqa: E402
from dtmerge.evaluate import evaluate_checkpoint  # noqa: E402
from dtmerge.merge.engine import MergeConfig, merge  # noqa: E402
from dtmerge.merge.fisher import compute_fisher  # noqa: E402
from dtmerge.merge.mff import MFFConfig, merge_freeze_finetune  # noqa: E402
from dtmerge.train import TrainConfig, train  # noqa: E402

__all__ = ["MFFConfig", "MergeConfig", "TrainConfig", "compute_fisher", "evaluate_checkpoint", "load_dataset",
           "make_dataset", "merge", "merge_freeze_finetune", "train"]
