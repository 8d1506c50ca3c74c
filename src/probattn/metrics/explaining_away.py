"""Explaining away: how much attention each key receives (doubly-normalized attention, §1.3 of the notes).

For one attention map ``A (Lq, Lk)`` (one example, one head, rows sum to 1) the incoming mass of key ``j`` is
``m_j = Σ_{i valid} A_ij``. Its mean over valid keys is ``N_q / N_k``, so the *normalized* mass
``m̃_j = m_j · N_k / N_q`` has mean 1 ("fair share"). A key with ``m̃_j < τ`` is *explained away* at
threshold ``τ`` (reported for ``τ = 0.1`` and ``0.01``). Softmax attention has no lower bound on ``m̃``;
doubly-normalized attention guarantees ``m̃_j ≥ 1 / N_q``.

Causal-aware form (``causal=True``, decoders): query ``i`` may see only keys ``j ≤ i``, so key ``j`` is seen by
``N − j`` queries and a raw column sum would call late keys explained away by construction. The normalized mass
is then ``m̃_j = m_j / u_j`` with ``u_j = Σ_{i may see j} 1 / n_i`` (``n_i`` = keys query ``i`` may see): the mass
key ``j`` would receive if every query spread its attention uniformly over what it may see. Without a causal
mask ``u_j = N_q / N_k``, the formula above; under any mask, uniform attention gives ``m̃_j = 1`` for every key.

Sinks (:func:`attention_sinks`) are the other tail: keys with ``m̃_j ≥ κ`` (default ``κ = 3``, three times the
fair share) such as ``[CLS]``, ``[SEP]`` or a decoder's first token, reported apart from explained-away keys.
"""

from __future__ import annotations

import torch
from torch import Tensor

from probattn.metrics._validity import validity

__all__ = ["SINK_THRESHOLD", "attention_sinks", "explained_away_fraction", "incoming_mass", "min_incoming_mass"]

SINK_THRESHOLD = 3.0  # a causal first key reaches at most m̃ = N / H_N (4.7 at N = 16, H_N harmonic)


def incoming_mass(weights: Tensor, *, query_valid: Tensor | None = None, key_valid: Tensor | None = None,
                  causal: bool = False) -> Tensor:
    """Normalized incoming mass ``m̃_j = (Σ_{i valid} A_ij) · N_k / N_q``, shape ``(B, H, Lk)``.

    Args:
        weights: attention weights ``(B, H, Lq, Lk)``, rows over valid keys summing to 1.
        query_valid: ``(B, Lq)`` bool, True = real query (padded query rows are ignored); None = all real.
        key_valid: ``(B, Lk)`` bool, True = real key; ``N_k`` counts real keys. Padded keys get ``m̃ = 0``
            and are left out by :func:`explained_away_fraction` and :func:`min_incoming_mass`.
        causal: query ``i`` sees only keys ``j ≤ i``; ``m̃_j = m_j / u_j`` with ``u_j`` the mass of uniform
            attention over the visible keys (module docstring). Needs ``Lq == Lk``.
    """
    if causal:
        return _causal_mass(weights, query_valid, key_valid)
    qv, kv = validity(weights, query_valid, key_valid)
    b, _, lq, lk = weights.shape
    w = weights if qv is None else weights.masked_fill(~qv[:, None, :, None], 0.0)  # padded rows may hold garbage
    n_q = torch.full((b,), lq, dtype=weights.dtype, device=weights.device) if qv is None else qv.sum(-1).to(weights.dtype)
    n_k = torch.full((b,), lk, dtype=weights.dtype, device=weights.device) if kv is None else kv.sum(-1).to(weights.dtype)
    if bool((n_q == 0).any()) or bool((n_k == 0).any()):
        raise ValueError("query_valid / key_valid leave an example with no real token; drop empty examples first")
    mass = w.sum(dim=2) * (n_k / n_q)[:, None, None]
    return mass if kv is None else mass.masked_fill(~kv[:, None, :], 0.0)


def _causal_mass(weights: Tensor, query_valid: Tensor | None, key_valid: Tensor | None) -> Tensor:
    from probattn.masks import build_mask_spec

    qv, kv = validity(weights, query_valid, key_valid)
    b, h, lq, lk = weights.shape
    if lq != lk:
        raise ValueError(f"causal=True needs square attention weights (q_len == k_len), got {lq} and {lk}")
    spec = build_mask_spec(batch=b, heads=h, q_len=lq, k_len=lk, device=weights.device, is_causal=True,
                           key_padding_mask=kv, query_padding_mask=qv)
    allowed = spec.allowed.to(weights.dtype)  # (B|1, 1, Lq, Lk)
    if bool((allowed.sum((-1, -2)) == 0).any()):
        raise ValueError("query_valid / key_valid leave an example with no real token; drop empty examples first")
    visible = allowed.sum(-1, keepdim=True)  # n_i
    uniform = (allowed / visible.clamp_min(1.0)).sum(-2)  # u_j, (B|1, 1, Lk)
    mass = weights.masked_fill(allowed == 0, 0.0).sum(-2)  # m_j over the pairs that may attend
    return torch.where(uniform > 0, mass / uniform.clamp_min(torch.finfo(weights.dtype).tiny), 0.0)


def attention_sinks(mass: Tensor, *, threshold: float = SINK_THRESHOLD, key_valid: Tensor | None = None,
                    plain_mass: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Keys that absorb attention: ``m̃_j ≥ threshold`` (``threshold`` times the fair share).

    ``mass (B, H, Lk)`` from :func:`incoming_mass`. Under a causal mask pass ``mass`` from
    ``incoming_mass(..., causal=True)`` and ``plain_mass`` from ``incoming_mass(..., causal=False)``: a sink must
    then reach ``threshold`` in both, i.e. take a large share of what the queries that see it give *and* of all
    the attention in the sequence (otherwise a last token attending to itself, the only query that sees it,
    would count). Returns ``(is_sink (B, H, Lk) bool, fraction (B, H))``: which real keys are sinks, and the
    fraction of real keys that are.
    """
    if not threshold > 1:
        raise ValueError(f"threshold must be > 1 (a multiple of the fair share 1), got {threshold}")
    valid = _key_mask(mass, key_valid)
    sink = (mass >= threshold) & valid
    if plain_mass is not None:
        if plain_mass.shape != mass.shape:
            raise ValueError(f"plain_mass must have the shape of mass {tuple(mass.shape)}, got {tuple(plain_mass.shape)}")
        sink &= plain_mass >= threshold
    return sink, sink.sum(-1).to(mass.dtype) / valid.sum(-1).to(mass.dtype)


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
