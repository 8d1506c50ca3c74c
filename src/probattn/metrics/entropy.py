"""Attention entropy per head: how spread out each query's attention row is."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from probattn.metrics._validity import validity

__all__ = ["attention_entropy"]


def attention_entropy(
    weights: Tensor, *, key_valid: Tensor | None = None, normalized: bool = False, causal: bool = False
) -> Tensor:
    """Row entropy ``H_i = −Σ_j A_ij ln A_ij`` in nats, shape ``(B, H, Lq)``.

    ``weights (B, H, Lq, Lk)``. With ``normalized=True`` the entropy is divided by ``ln n_i``, the log of the
    number of keys query ``i`` may see: ``N_k`` real keys (``key_valid (B, Lk)``), or with ``causal=True`` the
    real keys ``j ≤ i``. So 1 = uniform over what the query may see and 0 = one-hot; a query that sees a
    single key gives 0. Average over real queries yourself (padded query rows are not meaningful).
    """
    _, kv = validity(weights, None, key_valid)
    ent = -torch.xlogy(weights.clamp_min(0), weights.clamp_min(0)).sum(-1)
    if not normalized:
        return ent
    b, _, lq, lk = weights.shape
    real = torch.ones(b, lk, dtype=torch.bool, device=weights.device) if kv is None else kv
    if causal:
        if lq != lk:
            raise ValueError(f"causal=True needs square attention weights (q_len == k_len), got {lq} and {lk}")
        n_i = real.to(weights.dtype).cumsum(-1)[:, None, :]  # (B, 1, Lq): real keys j <= i
    else:
        n_i = real.sum(-1).to(weights.dtype)[:, None, None]  # (B, 1, 1)
    scale = torch.where(n_i > 1, 1.0 / n_i.clamp_min(2).log().clamp_min(math.log(2)), torch.zeros_like(n_i))
    return ent * scale
