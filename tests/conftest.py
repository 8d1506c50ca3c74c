"""Shared test configuration: GPU marker handling, one intra-op thread, the shipped real-data sample."""

from __future__ import annotations

import os
from importlib import resources
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


SAMPLE = Path(str(resources.files("probattn") / "data" / "samples" / "rt_sample.csv"))


@pytest.fixture
def sample_csv() -> Path:
    """200 real Rotten Tomatoes snippets (columns text, label) shipped with probattn."""
    return SAMPLE


@pytest.fixture
def small_config(sample_csv):
    """A tiny model on the sample: a few ms per step."""
    from probattn.training import TrainConfig

    return TrainConfig(data=str(sample_csv), text_column="text", label_column="label", embed_dim=16, num_heads=4,
                       num_layers=1, max_length=24, batch_size=8, max_steps=6, lr=3e-3, eval_batch_size=64)


@pytest.fixture
def bert_folder(tmp_path) -> Path:
    """A tiny random BERT encoder folder (2 layers x 2 heads, width 16) with a word-piece vocabulary of the
    sample's words: a local Hugging Face model for ``--model DIR``."""
    transformers = pytest.importorskip("transformers")
    words = sorted({w.strip(".,\"'!?") for w in SAMPLE.read_text().lower().split()} - {""})
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words[:400]]) + "\n")
    tokenizer = transformers.BertTokenizerFast(vocab_file=str(vocab))
    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=len(tokenizer), hidden_size=16, num_hidden_layers=2,
                                     num_attention_heads=2, intermediate_size=24, max_position_embeddings=64)
    folder = tmp_path / "encoder"
    transformers.BertModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder
