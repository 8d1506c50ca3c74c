"""A small pre-norm transformer encoder classifier, trained from scratch, built on probattn attention.

``TinyEncoderClassifier(input_ids (B, L) long, attention_mask (B, L) bool) -> logits (B, C)``:
token + learned position embeddings, a ``torch.nn.TransformerEncoder`` of ``num_layers`` pre-norm layers
(``x = x + MHA(LN(x)); x = x + FFN(LN(x))``) whose attention is swapped for
:class:`probattn.nn.MultiheadAttention` by :func:`probattn.nn.replace_attention` (so ``normalization``,
alignment regularizers, repulsive heads and probes all apply), a final LayerNorm, mean pooling over the real
tokens and a linear head.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import Tensor, nn

from probattn.nn import replace_attention

__all__ = ["TinyEncoderClassifier", "TinyEncoderConfig"]


@dataclass(frozen=True)
class TinyEncoderConfig:
    """Sizes and attention options of :class:`TinyEncoderClassifier`."""

    vocab_size: int
    num_labels: int
    max_length: int = 128
    embed_dim: int = 64
    num_heads: int = 4
    num_layers: int = 2
    ff_dim: int = 128
    dropout: float = 0.1
    normalization: str = "softmax"
    hybrid_alpha: float = 0.5
    sinkhorn_iters: int = 3


class TinyEncoderClassifier(nn.Module):
    """Small transformer encoder + mean pooling + linear classifier (see the module docstring)."""

    def __init__(self, config: TinyEncoderConfig):
        super().__init__()
        if config.embed_dim % config.num_heads:
            raise ValueError(f"embed_dim ({config.embed_dim}) must be divisible by num_heads ({config.num_heads})")
        self.config = config
        self.token_embedding = nn.Embedding(config.vocab_size, config.embed_dim, padding_idx=0)
        self.position_embedding = nn.Embedding(config.max_length, config.embed_dim)
        self.dropout = nn.Dropout(config.dropout)
        layer = nn.TransformerEncoderLayer(config.embed_dim, config.num_heads, config.ff_dim, config.dropout,
                                           activation="gelu", batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, config.num_layers, norm=nn.LayerNorm(config.embed_dim),
                                             enable_nested_tensor=False)
        replace_attention(self.encoder, normalization=config.normalization, hybrid_alpha=config.hybrid_alpha,
                          sinkhorn_iters=config.sinkhorn_iters)
        self.classifier = nn.Linear(config.embed_dim, config.num_labels)

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        """``input_ids (B, L)``, ``attention_mask (B, L)`` bool/0-1 (True = real token) -> logits ``(B, C)``."""
        length = input_ids.shape[1]
        if length > self.config.max_length:
            raise ValueError(f"input of {length} tokens is longer than the model's max_length "
                             f"{self.config.max_length}; truncate it (--max-length)")
        valid = torch.ones_like(input_ids, dtype=torch.bool) if attention_mask is None else attention_mask.bool()
        positions = torch.arange(length, device=input_ids.device)
        x = self.dropout(self.token_embedding(input_ids) + self.position_embedding(positions))
        x = self.encoder(x, src_key_padding_mask=~valid)
        weights = valid.unsqueeze(-1).to(x.dtype)
        pooled = (x * weights).sum(1) / weights.sum(1).clamp_min(1.0)
        return self.classifier(pooled)

    def config_dict(self) -> dict:
        return asdict(self.config)
