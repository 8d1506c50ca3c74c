"""Modules: ``MultiheadAttention`` (drop-in for PyTorch's), ``replace_attention`` and ``GraphAttention``."""

from probattn.nn.attention import MultiheadAttention, replace_attention
from probattn.nn.graph import GraphAttention

__all__ = ["GraphAttention", "MultiheadAttention", "replace_attention"]
