"""Shared test configuration: GPU marker handling, one intra-op thread."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


@pytest.fixture(autouse=True)
def _one_thread():
    """The test tensors are small: extra intra-op threads only contend (5-25x slower on a busy 2-core CPU)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


_ROOT = Path(__file__).resolve().parents[1]
_SCRATCH = {".pytest_cache", ".hypothesis", "__pycache__", ".ruff_cache"}


@pytest.fixture(autouse=True, scope="session")
def _nothing_written_into_the_checkout():
    """A command run by a test writes into its tmp_path only: a new entry in the repository root (a default
    ``--output`` such as ``diagnose-report``) fails the session."""
    before = set(os.listdir(_ROOT))
    yield
    new = sorted(set(os.listdir(_ROOT)) - before - _SCRATCH)
    assert not new, f"tests wrote {new} into the repository root; run the command with an --output under tmp_path"
