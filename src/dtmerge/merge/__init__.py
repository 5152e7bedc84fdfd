"""Merging: selectors x methods over checkpoints, Fisher information, multi-task bundles, MFF."""
