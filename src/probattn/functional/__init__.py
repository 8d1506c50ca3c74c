"""Functional attention: ``attention(q, k, v, *, normalization=...)``, the per-scheme weight functions, and
``edge_attention`` (the same normalizations over a graph's edges)."""

from probattn.functional.attention import (
    COLUMN_NORMALIZED,
    IMPLS,
    NORMALIZATIONS,
    attention,
    check_hybrid_alpha,
)
from probattn.functional.doubly import column_log_normalizer, doubly_weights, hybrid_weights
from probattn.functional.edge import edge_attention, segment_logsumexp
from probattn.functional.sinkhorn import sinkhorn_weights
from probattn.functional.softmax import softmax_weights

__all__ = [
    "COLUMN_NORMALIZED",
    "IMPLS",
    "NORMALIZATIONS",
    "attention",
    "check_hybrid_alpha",
    "column_log_normalizer",
    "doubly_weights",
    "edge_attention",
    "hybrid_weights",
    "segment_logsumexp",
    "sinkhorn_weights",
    "softmax_weights",
]
