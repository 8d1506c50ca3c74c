"""Fixtures for the training tests: the shipped real-data sample."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import pytest

from probattn.training import TrainConfig

SAMPLE = Path(str(resources.files("probattn") / "data" / "samples" / "rt_sample.csv"))


@pytest.fixture
def sample_csv() -> Path:
    """200 real Rotten Tomatoes snippets (columns text, label) shipped with probattn."""
    return SAMPLE


@pytest.fixture
def small_config(sample_csv) -> TrainConfig:
    """A tiny model on the sample: a few ms per step."""
    return TrainConfig(data=str(sample_csv), text_column="text", label_column="label", embed_dim=16, num_heads=4,
                       num_layers=1, max_length=24, batch_size=8, max_steps=6, lr=3e-3, eval_batch_size=64)
