"""Functional attention: ``attention(q, k, v, *, normalization=...)`` and the per-scheme weight functions."""

from probattn.functional.attention import (
    COLUMN_NORMALIZED,
    IMPLS,
    NORMALIZATIONS,
    attention,
    check_hybrid_alpha,
)
from probattn.functional.doubly import column_log_normalizer, doubly_weights, hybrid_weights
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
    "hybrid_weights",
    "sinkhorn_weights",
    "softmax_weights",
]
