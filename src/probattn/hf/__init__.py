"""Hugging Face integration: convert pretrained transformers to probattn attention (or pick it with
``attn_implementation="probattn_doubly"`` etc. after this import), save / load, adapt, train.

The only part of probattn that imports ``transformers`` (install ``probattn[hf]``).
"""

from probattn.hf.adapt import AdaptResult, adapt, sentence_cosine, sentence_embeddings
from probattn.hf.attention import (
    ATTENTION_NAME,
    NAMES,
    HybridWeight,
    LayerSettings,
    probattn_attention,
    register,
)
from probattn.hf.convert import attention_modules, convert, repulsive_heads
from probattn.hf.pretrained import PRETRAINED, load, load_model, load_pretrained
from probattn.hf.trainer import RepulsiveCallback, Trainer, unfreeze_probattn

register()  # attn_implementation="probattn", "probattn_doubly", ... work in from_pretrained after import

__all__ = [
    "ATTENTION_NAME",
    "NAMES",
    "PRETRAINED",
    "AdaptResult",
    "HybridWeight",
    "LayerSettings",
    "RepulsiveCallback",
    "Trainer",
    "adapt",
    "attention_modules",
    "convert",
    "load",
    "load_model",
    "load_pretrained",
    "probattn_attention",
    "register",
    "repulsive_heads",
    "sentence_cosine",
    "sentence_embeddings",
    "unfreeze_probattn",
]
