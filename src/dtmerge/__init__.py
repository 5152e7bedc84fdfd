"""dtmerge: train, merge and evaluate Decision Transformers for multi-task MuJoCo locomotion."""

__version__ = "0.1.0"
