"""Doubly-normalized attention ("Attention that does not Explain Away", Ding et al. 2020) and the hybrid.

Normalize the scores over queries first, then over keys. With the per-key log-normalizer
``c_j = logsumexp_{i valid} S_ij`` this is ordinary row-softmax attention with a per-key bias:

    A_ij = softmax_j(S_ij - c_j)

Every key that some query may attend to receives total attention ``sum_i A_ij >= 1/N`` (N = most keys any
valid query may attend to), so no key is "explained away". Padded queries never enter ``c``; a key no
query may see gets ``c_j = 0`` and no mass.

The hybrid mixes the two schemes per head: ``A = alpha * softmax + (1 - alpha) * doubly``.
"""

from __future__ import annotations

from torch import Tensor

from probattn.functional._masked import masked_logsumexp, masked_softmax
from probattn.masks import MaskSpec


def column_log_normalizer(scores: Tensor, spec: MaskSpec) -> Tensor:
    """``c (B, H, 1, Lk)``: log-sum-exp of each key's column over the queries allowed to see it (0 if none)."""
    return masked_logsumexp(scores, spec.allowed, dim=-2)


def doubly_weights(scores: Tensor, spec: MaskSpec) -> Tensor:
    """Doubly-normalized weights ``(B, H, Lq, Lk)`` of ``scores (B, H, Lq, Lk)``; rows sum to 1 on valid queries."""
    return masked_softmax(scores - column_log_normalizer(scores, spec), spec.allowed)


def hybrid_weights(scores: Tensor, spec: MaskSpec, alpha: Tensor | float) -> Tensor:
    """``alpha * softmax + (1 - alpha) * doubly``; ``alpha`` a float or a tensor broadcastable to ``(B, H, 1, 1)``."""
    return alpha * masked_softmax(scores, spec.allowed) + (1 - alpha) * doubly_weights(scores, spec)
