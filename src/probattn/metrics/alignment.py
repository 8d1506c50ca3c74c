"""Key/query alignment: how far apart are a head's key cloud and query cloud (alignment-attention notes §3.1)?

For one sequence and one head the empirical measures ``P_Q = (1/N_q) Σ_i δ(q_i)`` and ``P_K = (1/N_k) Σ_j δ(k_j)``
(projected, unscaled per-head vectors of the real tokens) are compared with two model-free distances:

* :func:`mmd_rbf` — squared maximum mean discrepancy with a Gaussian kernel
  ``k(a, b) = exp(−‖a − b‖² / (2σ²))``, ``σ`` = median distance between distinct points of the pooled
  sample (the median heuristic; the lower median when the number of pairs is even), biased (V-statistic) estimator:
  ``MMD² = mean k(q, q') + mean k(k, k') − 2 mean k(q, k)`` (all pairs, diagonals included). In ``[0, 2]``.
* :func:`mean_distance` — ``‖mean_i q_i − mean_j k_j‖₂``.

Both MMDs of the package (this one and the alignment regularizer's multi-bandwidth loss) are computed by
:func:`weighted_mmd`, which is differentiable and works on any batch of weighted point sets.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from probattn.metrics._validity import token_validity

__all__ = ["mean_distance", "mmd_rbf", "qk_alignment", "squared_distances", "weighted_mmd"]


def squared_distances(x: Tensor, y: Tensor) -> Tensor:
    """``‖x_i − y_j‖²`` ``(*, n, m)`` for ``x (*, n, d)``, ``y (*, m, d)`` (expanded as one matrix product, >= 0)."""
    return (x.pow(2).sum(-1)[..., :, None] + y.pow(2).sum(-1)[..., None, :] - 2 * x @ y.transpose(-1, -2)).clamp_min(0)


def weighted_mmd(
    x: Tensor, y: Tensor, x_weights: Tensor, y_weights: Tensor, sq_bandwidths: Sequence[Tensor | float]
) -> Tensor:
    """Squared MMD ``(*,)`` between weighted point sets ``x (*, n, d)`` and ``y (*, m, d)``; differentiable.

    ``x_weights (*, n)``, ``y_weights (*, m)``: probability weights (each sums to 1; zero = not a point).
    Kernel ``k(u, v) = mean_c exp(−‖u − v‖² / s_c)`` with ``s_c`` in ``sq_bandwidths`` (floats or tensors
    broadcastable to ``(*, 1, 1)``). Biased V-statistic ``aᵀK(x, x)a + bᵀK(y, y)b − 2 aᵀK(x, y)b``, computed
    as ``wᵀ K(z, z) w`` on the pooled points ``z = [x; y]`` with signed weights ``w = [a; −b]``.
    """
    z = torch.cat([x, y], dim=-2)
    w = torch.cat([x_weights, -y_weights], dim=-1)
    sq = squared_distances(z, z)
    kernel = sum(torch.exp(-sq / s) for s in sq_bandwidths) / len(sq_bandwidths)
    return ((kernel @ w[..., :, None]).squeeze(-1) * w).sum(-1)


def _weights(x: Tensor, valid: Tensor | None) -> Tensor:
    """Per-point weights ``(B, 1, N)`` summing to 1 over real points."""
    w = torch.ones(x.shape[0], 1, x.shape[2], dtype=x.dtype, device=x.device)
    if valid is not None:
        w = w * valid[:, None, :].to(x.dtype)
    count = w.sum(-1, keepdim=True)
    if bool((count == 0).any()):
        raise ValueError("a padding mask leaves an example with no real token; drop empty examples first")
    return w / count


def mean_distance(x: Tensor, y: Tensor, *, x_valid: Tensor | None = None, y_valid: Tensor | None = None) -> Tensor:
    """``‖mean x − mean y‖₂`` over real tokens, shape ``(B, H)``, for ``x (B, H, N, d)``, ``y (B, H, M, d)``."""
    wx = _weights(x, token_validity(x, x_valid, "x_valid"))
    wy = _weights(y, token_validity(y, y_valid, "y_valid"))
    mx = (wx[..., None] * x).sum(2)
    my = (wy[..., None] * y).sum(2)
    return (mx - my).norm(dim=-1)


def mmd_rbf(
    x: Tensor, y: Tensor, *, x_valid: Tensor | None = None, y_valid: Tensor | None = None,
    bandwidth: float | None = None,
) -> Tensor:
    """Squared MMD with a Gaussian kernel between ``x (B, H, N, d)`` and ``y (B, H, M, d)``, shape ``(B, H)``.

    ``x_valid (B, N)`` / ``y_valid (B, M)``: True = real token (None = all real). ``bandwidth``: fixed ``σ``;
    None = the (lower) median distance between distinct real points of the pooled sample, per example and head
    (a zero median, e.g. all points equal, falls back to ``σ = 1``; MMD is then 0 anyway).
    """
    if x.shape[:2] != y.shape[:2] or x.shape[-1] != y.shape[-1]:
        raise ValueError(f"x and y must share (batch, heads, ..., dim), got {tuple(x.shape)} and {tuple(y.shape)}")
    if bandwidth is not None and not bandwidth > 0:
        raise ValueError(f"bandwidth must be positive or None, got {bandwidth}")
    wx = _weights(x, token_validity(x, x_valid, "x_valid"))
    wy = _weights(y, token_validity(y, y_valid, "y_valid"))
    if bandwidth is None:
        z = torch.cat([x, y], dim=2)  # (B, H, N+M, d)
        real = torch.cat([wx, wy], dim=-1) > 0  # (B, 1, N+M)
        upper = torch.triu_indices(z.shape[2], z.shape[2], offset=1, device=z.device)
        pair = real[..., upper[0]] & real[..., upper[1]]  # (B, 1, P): distinct pairs of real points
        dist = torch.cdist(z, z)[..., upper[0], upper[1]].masked_fill(~pair, float("nan"))
        sigma = dist.nanmedian(dim=-1).values  # (B, H)
        sigma = torch.where(torch.isnan(sigma) | (sigma <= 0), torch.ones_like(sigma), sigma)
    else:
        sigma = torch.full(x.shape[:2], float(bandwidth), dtype=x.dtype, device=x.device)
    mmd2 = weighted_mmd(x, y, wx.expand(x.shape[:-1]), wy.expand(y.shape[:-1]), [2 * sigma[..., None, None] ** 2])
    return mmd2.clamp_min(0.0)


def qk_alignment(
    q: Tensor, k: Tensor, *, query_valid: Tensor | None = None, key_valid: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """``(MMD², mean distance)`` between each head's queries ``q (B, H, Lq, d)`` and keys ``k (B, H_kv, Lk, d)``.

    With grouped keys (``H_kv < H``) query head ``h`` is compared with key head ``h // (H / H_kv)``.
    Returns two ``(B, H)`` tensors.
    """
    if q.dim() != 4 or k.dim() != 4:
        raise ValueError(f"q and k must be (batch, heads, length, dim), got {tuple(q.shape)} and {tuple(k.shape)}")
    heads, kv_heads = q.shape[1], k.shape[1]
    if heads % kv_heads:
        raise ValueError(f"query heads ({heads}) must be a multiple of key heads ({kv_heads})")
    k = k.repeat_interleave(heads // kv_heads, dim=1)
    return (
        mmd_rbf(q, k, x_valid=query_valid, y_valid=key_valid),
        mean_distance(q, k, x_valid=query_valid, y_valid=key_valid),
    )
