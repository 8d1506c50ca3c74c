"""The data a :class:`TrainConfig` names: train/validation/test splits and the optional OOD test set."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from probattn.data import (
    DataSplits,
    TextClassificationData,
    load_amazon_fine_food,
    load_file,
    rotten_tomatoes_splits,
    split_random,
)
from probattn.training.config import TrainConfig

__all__ = ["load_ood", "load_splits"]

BUILTIN = "rotten_tomatoes"
SENTIMENT_NAMES = (("negative", "positive"), ("0", "1"))


def load_splits(config: TrainConfig) -> DataSplits:
    """Rotten Tomatoes split by movie, or the user's ``--data FILE`` split at random (70/10/20, ``data_seed``).

    ``max_train_examples`` keeps a seeded random subset of the training split (validation/test unchanged).
    """
    if config.data == BUILTIN:
        splits = rotten_tomatoes_splits(seed=config.data_seed)
    else:
        data = load_file(config.data, text_column=config.text_column, label_column=config.label_column,
                         text_pair_column=config.text_pair_column)
        splits = split_random(data, seed=config.data_seed)
    limit = config.max_train_examples
    if limit is not None and limit < len(splits.train):
        keep = np.sort(np.random.default_rng(config.data_seed).permutation(len(splits.train))[:limit]).tolist()
        splits = DataSplits(splits.train.subset(keep), splits.validation, splits.test)
    return splits


def load_ood(config: TrainConfig, label_names: tuple[str, ...]) -> TextClassificationData | None:
    """``--ood amazon`` (needs negative/positive or 0/1 training labels) or an evaluation file, or None."""
    if config.ood is None:
        return None
    if config.ood == "amazon":
        if tuple(label_names) not in SENTIMENT_NAMES:
            raise ValueError(f"--ood amazon is binary sentiment (0 = negative, 1 = positive) but the training "
                             f"labels are {list(label_names)}; use --ood FILE with the same labels instead")
        return load_amazon_fine_food()
    if not Path(config.ood).exists():
        raise FileNotFoundError(f"--ood {config.ood}: no such file (use 'amazon' or a CSV/JSONL/Parquet file)")
    return load_file(config.ood, text_column=config.text_column or "text",
                     label_column=config.label_column or "label", text_pair_column=config.text_pair_column,
                     label_names=label_names)
