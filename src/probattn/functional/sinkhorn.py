"""Sinkhorn attention: alternating normalizations of ``exp(S)`` that start on the query axis.

One iteration is a column step (normalize each key's column over the queries) followed by a row step
(normalize each query's row over the keys). With log-domain potentials ``u`` (rows) and ``v`` (columns):

    v_j = -logsumexp_i (S_ij + u_i)        u_i = -logsumexp_j (S_ij + v_j)

The last row step is the returned row softmax of ``S + v``, so rows always sum to 1. One iteration is exactly
doubly-normalized attention (same operations, bit for bit); more iterations approach a doubly-stochastic
matrix (columns summing to ``Nq/Nk``). Note: Sinkformers start on the key axis, so their ``n_it=3`` differs.
"""

from __future__ import annotations

from torch import Tensor

from probattn.functional._masked import masked_logsumexp, masked_softmax
from probattn.functional.doubly import column_log_normalizer
from probattn.masks import MaskSpec


def sinkhorn_weights(scores: Tensor, spec: MaskSpec, iters: int) -> Tensor:
    """Weights ``(B, H, Lq, Lk)`` after ``iters >= 1`` column-then-row normalizations of ``exp(scores)``."""
    c = column_log_normalizer(scores, spec)
    for _ in range(iters - 1):
        u = -masked_logsumexp(scores - c, spec.allowed, dim=-1)  # row step -> row potentials (B, H, Lq, 1)
        c = column_log_normalizer(scores + u, spec)  # column step on the row-normalized plan
    return masked_softmax(scores - c, spec.allowed)
