"""Fresh attention layers over frozen pretrained token states (the default ``probattn compare`` model).

``StatesEncoderClassifier(input_ids (B, L) long, attention_mask (B, L) bool) -> logits (B, C)``: the ids
are rows of a table of frozen contextual token states (``lookup(ids) -> (B, L, input_dim)``, e.g.
:class:`probattn.hf.states.TokenStateStore` holding all-MiniLM-L6-v2's last layer), projected to
``embed_dim``, then ``num_layers`` pre-norm transformer layers whose attention is
:class:`probattn.nn.MultiheadAttention` (so ``normalization``, alignment regularizers, repulsive heads and
probes all apply), a final LayerNorm, mean pooling over the real tokens and a linear head. No position
embedding: the states are already contextual. As in the repulsive-attention paper's sentence classifier,
multi-head self-attention is trained over a (here pretrained, frozen) contextual encoder.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from probattn.nn import replace_attention

__all__ = ["StatesEncoderClassifier"]


class StatesEncoderClassifier(nn.Module):
    """Projection + probattn transformer layers + mean pooling + linear head over looked-up frozen states."""

    def __init__(self, lookup: Callable[[Tensor], Tensor], *, input_dim: int, num_labels: int, embed_dim: int = 128,
                 num_heads: int = 4, num_layers: int = 2, ff_dim: int = 256, dropout: float = 0.1,
                 normalization: str = "softmax", hybrid_alpha: float = 0.5, sinkhorn_iters: int = 3):
        super().__init__()
        if embed_dim % num_heads:
            raise ValueError(f"--embed-dim {embed_dim} must be divisible by --num-heads {num_heads}")
        self.lookup = lookup
        self.project = nn.Linear(input_dim, embed_dim)
        self.dropout = nn.Dropout(dropout)
        layer = nn.TransformerEncoderLayer(embed_dim, num_heads, ff_dim, dropout, activation="gelu",
                                           batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, num_layers, norm=nn.LayerNorm(embed_dim),
                                             enable_nested_tensor=False)
        replace_attention(self.encoder, normalization=normalization, hybrid_alpha=hybrid_alpha,
                          sinkhorn_iters=sinkhorn_iters)
        self.classifier = nn.Linear(embed_dim, num_labels)

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        """``input_ids (B, L)`` table rows, ``attention_mask (B, L)`` (True = real token) -> logits ``(B, C)``."""
        valid = torch.ones_like(input_ids, dtype=torch.bool) if attention_mask is None else attention_mask.bool()
        x = self.dropout(self.project(self.dropout(self.lookup(input_ids))))
        x = self.encoder(x, src_key_padding_mask=~valid)
        weights = valid.unsqueeze(-1).to(x.dtype)
        return self.classifier((x * weights).sum(1) / weights.sum(1).clamp_min(1.0))
