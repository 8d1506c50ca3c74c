"""Explaining away: how much attention each key receives (doubly-normalized attention, §1.3 of the notes).

For one attention map ``A (Lq, Lk)`` (one example, one head, rows sum to 1) the incoming mass of key ``j`` is
``m_j = Σ_{i valid} A_ij``. Its mean over valid keys is ``N_q / N_k``, so the *normalized* mass
``m̃_j = m_j · N_k / N_q`` has mean 1 ("fair share"). A key with ``m̃_j < τ`` is *explained away* at
threshold ``τ`` (reported for ``τ = 0.1`` and ``0.01``). Softmax attention has no lower bound on ``m̃``;
doubly-normalized attention guarantees ``m̃_j ≥ 1 / N_q``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from probattn.metrics._validity import validity

__all__ = ["explained_away_fraction", "incoming_mass", "min_incoming_mass"]


def incoming_mass(weights: Tensor, *, query_valid: Tensor | None = None, key_valid: Tensor | None = None) -> Tensor:
    """Normalized incoming mass ``m̃_j = (Σ_{i valid} A_ij) · N_k / N_q``, shape ``(B, H, Lk)``.

    Args:
        weights: attention weights ``(B, H, Lq, Lk)``, rows over valid keys summing to 1.
        query_valid: ``(B, Lq)`` bool, True = real query (padded query rows are ignored); None = all real.
        key_valid: ``(B, Lk)`` bool, True = real key; ``N_k`` counts real keys. Padded keys get ``m̃ = 0``
            and are left out by :func:`explained_away_fraction` and :func:`min_incoming_mass`.
    """
    qv, kv = validity(weights, query_valid, key_valid)
    b, _, lq, lk = weights.shape
    w = weights if qv is None else weights.masked_fill(~qv[:, None, :, None], 0.0)  # padded rows may hold garbage
    n_q = torch.full((b,), lq, dtype=weights.dtype, device=weights.device) if qv is None else qv.sum(-1).to(weights.dtype)
    n_k = torch.full((b,), lk, dtype=weights.dtype, device=weights.device) if kv is None else kv.sum(-1).to(weights.dtype)
    if bool((n_q == 0).any()) or bool((n_k == 0).any()):
        raise ValueError("query_valid / key_valid leave an example with no real token; drop empty examples first")
    mass = w.sum(dim=2) * (n_k / n_q)[:, None, None]
    return mass if kv is None else mass.masked_fill(~kv[:, None, :], 0.0)


def _key_mask(mass: Tensor, key_valid: Tensor | None) -> Tensor:
    if mass.dim() != 3:
        raise ValueError(f"mass must have shape (batch, heads, k_len), got {tuple(mass.shape)}")
    _, kv = validity(mass[:, :, None, :], None, key_valid)  # (B, H, 1, Lk): one query row per head
    if kv is None:
        return torch.ones(mass.shape[0], 1, mass.shape[2], dtype=torch.bool, device=mass.device)
    return kv[:, None, :]


def explained_away_fraction(mass: Tensor, *, threshold: float, key_valid: Tensor | None = None) -> Tensor:
    """Fraction of real keys with normalized mass below ``threshold``: ``mean_j [m̃_j < τ]``, shape ``(B, H)``.

    ``mass`` is the output of :func:`incoming_mass` ``(B, H, Lk)``; ``key_valid (B, Lk)`` as there.
    """
    if not threshold > 0:
        raise ValueError(f"threshold must be positive, got {threshold}")
    valid = _key_mask(mass, key_valid)
    below = (mass < threshold) & valid
    return below.sum(-1).to(mass.dtype) / valid.sum(-1).to(mass.dtype)


def min_incoming_mass(mass: Tensor, *, key_valid: Tensor | None = None) -> Tensor:
    """``min_j m̃_j`` over real keys, shape ``(B, H)``; ``mass`` from :func:`incoming_mass`."""
    valid = _key_mask(mass, key_valid)
    return mass.masked_fill(~valid, float("inf")).amin(-1)
