"""Masked reductions shared by the dense normalizations.

Masked entries are filled with the dtype's most negative finite value (never -inf) before reducing, so that
forward *and* backward stay finite when a whole row or column is masked; the results for such slices are
then set explicitly (0 log-normalizer, all-zero weights).
"""

from __future__ import annotations

import torch
from torch import Tensor


def masked_logsumexp(x: Tensor, allowed: Tensor | None, dim: int) -> Tensor:
    """``logsumexp`` of ``x`` over ``dim`` restricted to ``allowed`` (keepdim); 0 where nothing is allowed.

    Args:
        x: float ``(B, H, Lq, Lk)``.
        allowed: bool broadcastable to ``x`` (True = take part), or None.
        dim: -2 for a per-key (column) statistic, -1 for a per-query (row) statistic.
    """
    if allowed is None:
        return torch.logsumexp(x, dim=dim, keepdim=True)
    lse = torch.logsumexp(x.masked_fill(~allowed, torch.finfo(x.dtype).min), dim=dim, keepdim=True)
    return torch.where(allowed.any(dim=dim, keepdim=True), lse, torch.zeros((), dtype=x.dtype, device=x.device))


def masked_softmax(x: Tensor, allowed: Tensor | None) -> Tensor:
    """Row softmax of ``x (B, H, Lq, Lk)`` over allowed keys; masked entries and empty rows are exactly 0."""
    if allowed is None:
        return torch.softmax(x, dim=-1)
    weights = torch.softmax(x.masked_fill(~allowed, torch.finfo(x.dtype).min), dim=-1)
    return weights.masked_fill(~allowed, 0.0)
