"""Modules: ``MultiheadAttention`` (drop-in for PyTorch's) and ``replace_attention``."""

from probattn.nn.attention import MultiheadAttention, replace_attention

__all__ = ["MultiheadAttention", "replace_attention"]
