"""Tiny random Hugging Face models for the hf tests (each built from its own config object)."""

from __future__ import annotations

import copy
from types import SimpleNamespace

import pytest
import torch

try:
    import transformers
except ImportError:  # the test modules skip themselves with pytest.importorskip("transformers")
    transformers = None

VOCAB = 99
# family -> (config class, model class, config kwargs, pad token id, causal)
FAMILIES = {
    "bert": ("BertConfig", "BertModel", dict(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2,
                                             num_attention_heads=4, intermediate_size=37,
                                             max_position_embeddings=64), 0),
    "roberta": ("RobertaConfig", "RobertaModel", dict(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2,
                                                      num_attention_heads=4, intermediate_size=37,
                                                      max_position_embeddings=64, pad_token_id=1), 1),
    "distilbert": ("DistilBertConfig", "DistilBertModel", dict(vocab_size=VOCAB, dim=32, n_layers=2, n_heads=4,
                                                               hidden_dim=37, max_position_embeddings=64), 0),
    "gpt2": ("GPT2Config", "GPT2Model", dict(vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4, n_positions=64,
                                             bos_token_id=0, eos_token_id=0), 0),
    "llama": ("LlamaConfig", "LlamaModel", dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=37,
                                                num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                                max_position_embeddings=64), 0),
    "vit": ("ViTConfig", "ViTModel", dict(image_size=16, patch_size=4, num_channels=3, hidden_size=32,
                                          num_hidden_layers=2, num_attention_heads=4, intermediate_size=37), None),
    "deberta-v2": ("DebertaV2Config", "DebertaV2Model", dict(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2,
                                                             num_attention_heads=4, intermediate_size=37), 0),
}
ENCODERS = ("bert", "roberta", "distilbert")
DECODERS = ("gpt2", "llama")


def build(family: str, seed: int = 0, **overrides):
    """A tiny random model of ``family`` in eval mode, built from a fresh (deep-copied) config."""
    config_name, model_name, kwargs, _ = FAMILIES[family]
    torch.manual_seed(seed)
    config = getattr(transformers, config_name)(**copy.deepcopy({**kwargs, **overrides}))
    return getattr(transformers, model_name)(config).eval()


def text_batch(family: str, lengths: list[int], *, left: bool = False, seed: int = 1):
    """``(input_ids, attention_mask)`` for sequences of ``lengths``, padded (right, or left) to the longest."""
    pad = FAMILIES[family][3]
    gen = torch.Generator().manual_seed(seed)
    width = max(lengths)
    ids = torch.full((len(lengths), width), pad, dtype=torch.long)
    mask = torch.zeros(len(lengths), width, dtype=torch.long)
    for b, n in enumerate(lengths):
        tokens = torch.randint(2, VOCAB, (n,), generator=gen)
        where = slice(width - n, width) if left else slice(0, n)
        ids[b, where], mask[b, where] = tokens, 1
    return ids, mask


def image_batch(batch: int = 2, seed: int = 1) -> torch.Tensor:
    return torch.randn(batch, 3, 16, 16, generator=torch.Generator().manual_seed(seed))


def run(model, family: str, inputs, **kwargs):
    """Forward with either (ids, mask) or pixel values."""
    if family == "vit":
        return model(pixel_values=inputs, **kwargs)
    ids, mask = inputs
    return model(input_ids=ids, attention_mask=mask, **kwargs)


def valid_positions(family: str, inputs, output) -> torch.Tensor:
    """bool ``(B, L)``: the positions whose outputs mean something (real tokens; every ViT patch)."""
    if family == "vit":
        return torch.ones(output.last_hidden_state.shape[:2], dtype=torch.bool)
    return inputs[1].bool()


@pytest.fixture
def tiny() -> SimpleNamespace:
    """The helpers above, for test modules (pytest's importlib mode does not import conftest by name)."""
    return SimpleNamespace(build=build, text_batch=text_batch, image_batch=image_batch, run=run,
                           valid_positions=valid_positions, FAMILIES=FAMILIES, ENCODERS=ENCODERS,
                           DECODERS=DECODERS)
