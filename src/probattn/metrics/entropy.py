"""Attention entropy per head: how spread out each query's attention row is."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from probattn.metrics._validity import validity

__all__ = ["attention_entropy"]


def attention_entropy(
    weights: Tensor, *, key_valid: Tensor | None = None, normalized: bool = False
) -> Tensor:
    """Row entropy ``H_i = −Σ_j A_ij ln A_ij`` in nats, shape ``(B, H, Lq)``.

    ``weights (B, H, Lq, Lk)``. With ``normalized=True`` the entropy is divided by ``ln N_k`` (``N_k`` = real
    keys from ``key_valid (B, Lk)``), so 1 = uniform over the real keys and 0 = one-hot; an example with a
    single real key gives 0. Average over real queries yourself (padded query rows are not meaningful).
    """
    _, kv = validity(weights, None, key_valid)
    ent = -torch.xlogy(weights.clamp_min(0), weights.clamp_min(0)).sum(-1)
    if not normalized:
        return ent
    lk = weights.shape[-1]
    n_k = torch.full((weights.shape[0],), lk, device=weights.device) if kv is None else kv.sum(-1)
    log_n = n_k.to(weights.dtype).log()
    scale = torch.where(n_k > 1, 1.0 / log_n.clamp_min(math.log(2)), torch.zeros_like(log_n))
    return ent * scale[:, None, None]
