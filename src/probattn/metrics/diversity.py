"""Head diversity and collapse: do a layer's heads attend to, and output, different things?

* :func:`head_js_divergence` — Jensen–Shannon divergence between two heads' attention rows (base 2, so in
  ``[0, 1]``: 0 = identical distributions, 1 = disjoint supports), averaged over real queries.
  The attention-map similarity reported by ``probattn diagnose`` is ``1 − JS``.
  (The cosine of flattened attention maps is deliberately not offered: maps are non-negative and close to
  uniform, so it is ≈1 whatever the diversity.)
* :func:`linear_cka` / :func:`head_cka_from_covariance` — linear CKA (Kornblith et al. 2019) between heads'
  output features ``O_h = A_h V_h`` across tokens: ``‖C_hg‖_F² / (‖C_hh‖_F ‖C_gg‖_F)`` with ``C`` the
  centred cross-covariance; 1 = same features up to rotation and scale.
* :func:`lin_redundancy` — Lin et al. (2017)'s penalty ``‖A Aᵀ − I‖_F``, the diversity measure in the
  repulsive-attention authors' code (``train_svgd.py``, self-attentive hops). Here ``A (H, Lk)`` stacks the
  heads' rows for one query; averaging over queries is our extension to multi-head attention.
* :func:`parameter_cosine_similarity` — mean pairwise cosine of per-head weight vectors, the measure in the
  repulsive authors' GraphWriter code (``train_r.py``). Whether the paper reports either of these two is
  unverified; treat them as the code's measures, not the paper's.
* :func:`head_clusters` / :func:`classical_mds` — heads of all layers grouped by their Jensen–Shannon
  distances, and laid out in 2-D, as Clark et al. (2019, "What does BERT look at?", §6) did: compute
  :func:`head_js_divergence` over the heads of every layer stacked on the head axis, then cluster / embed.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from probattn.metrics._validity import validity

__all__ = [
    "classical_mds",
    "head_cka_from_covariance",
    "head_clusters",
    "head_js_divergence",
    "lin_redundancy",
    "linear_cka",
    "parameter_cosine_similarity",
]


def _mean_over_queries(per_query: Tensor, query_valid: Tensor | None) -> Tensor:
    """Mean of ``(B, ..., Lq)`` over real queries -> ``(B, ...)``."""
    if query_valid is None:
        return per_query.mean(-1)
    shape = (query_valid.shape[0],) + (1,) * (per_query.dim() - 2) + (query_valid.shape[1],)
    valid = query_valid.reshape(shape)
    total = per_query.masked_fill(~valid, 0.0).sum(-1)  # padded rows may hold garbage (even NaN)
    return total / valid.sum(-1).clamp_min(1).to(per_query.dtype)


def head_js_divergence(weights: Tensor, *, query_valid: Tensor | None = None) -> Tensor:
    """Pairwise Jensen–Shannon divergence between heads, ``(B, H, H)``, in bits (``[0, 1]``).

    ``JS(p, r) = ½ KL(p ‖ μ) + ½ KL(r ‖ μ)`` with ``μ = (p + r) / 2``, for the rows ``p = A_g[i, :]``,
    ``r = A_h[i, :]`` of heads ``g, h`` at query ``i``, averaged over real queries (``query_valid (B, Lq)``).
    ``weights (B, H, Lq, Lk)``: padded keys already hold zero weight, so they need no mask.
    """
    qv, _ = validity(weights, query_valid, None)
    w = weights.clamp_min(0)
    b, h, lq, _ = w.shape
    # JS(p, r) = H((p + r) / 2) − (H(p) + H(r)) / 2 with entropies H in nats; only pairs g < h are computed
    own = -torch.xlogy(w, w).sum(-1)  # (B, H, Lq)
    js = torch.zeros(b, h, h, lq, dtype=w.dtype, device=w.device)
    for g in range(h - 1):
        mid = 0.5 * (w[:, g : g + 1] + w[:, g + 1 :])  # (B, H-g-1, Lq, Lk)
        pair = -torch.xlogy(mid, mid).sum(-1) - 0.5 * (own[:, g : g + 1] + own[:, g + 1 :])
        js[:, g, g + 1 :] = pair / math.log(2)
        js[:, g + 1 :, g] = pair / math.log(2)
    return _mean_over_queries(js, qv).clamp(0.0, 1.0)


def linear_cka(x: Tensor, y: Tensor) -> Tensor:
    """Linear CKA between features ``x (N, D1)`` and ``y (N, D2)`` of the same ``N`` samples (scalar in [0, 1]).

    ``CKA = ‖Ycᵀ Xc‖_F² / (‖Xcᵀ Xc‖_F · ‖Ycᵀ Yc‖_F)`` with column-centred ``Xc, Yc``.
    """
    if x.dim() != 2 or y.dim() != 2 or x.shape[0] != y.shape[0]:
        raise ValueError(f"x and y must be (N, D) with the same N, got {tuple(x.shape)} and {tuple(y.shape)}")
    xc, yc = x - x.mean(0), y - y.mean(0)
    cross = (yc.T @ xc).pow(2).sum()
    return cross / ((xc.T @ xc).norm() * (yc.T @ yc).norm()).clamp_min(torch.finfo(x.dtype).tiny)


def head_cka_from_covariance(covariance: Tensor, heads: int) -> Tensor:
    """Pairwise linear CKA between heads, ``(H, H)``, from the covariance of concatenated head outputs.

    ``covariance (H·Dv, H·Dv)`` is the centred covariance of ``z = [O_1, …, O_H]`` over tokens (see
    :class:`probattn.metrics.streaming.MomentAccumulator`); block ``C_gh`` is ``(Dv, Dv)``. Then
    ``CKA_gh = ‖C_gh‖_F² / (‖C_gg‖_F ‖C_hh‖_F)``, equal to :func:`linear_cka` of the two heads' outputs.
    """
    n = covariance.shape[0]
    if covariance.dim() != 2 or covariance.shape[1] != n or n % heads:
        raise ValueError(f"covariance must be square with side divisible by heads={heads}, got {tuple(covariance.shape)}")
    d = n // heads
    blocks = covariance.reshape(heads, d, heads, d).permute(0, 2, 1, 3)  # (H, H, Dv, Dv)
    sq = blocks.pow(2).sum((-1, -2))  # ‖C_gh‖_F²
    norms = sq.diagonal().sqrt()
    return sq / (norms[:, None] * norms[None, :]).clamp_min(torch.finfo(covariance.dtype).tiny)


def lin_redundancy(weights: Tensor, *, query_valid: Tensor | None = None) -> Tensor:
    """Lin et al.'s ``‖A Aᵀ − I‖_F`` per example, ``(B,)``, averaged over real queries.

    For each query ``i``, ``A (H, Lk)`` stacks the heads' attention rows. 0 means one-hot rows on distinct keys
    (maximally diverse heads); identical one-hot rows give ``sqrt(H² − H)``.
    """
    qv, _ = validity(weights, query_valid, None)
    rows = weights.transpose(1, 2)  # (B, Lq, H, Lk)
    gram = rows @ rows.transpose(-1, -2)  # (B, Lq, H, H)
    eye = torch.eye(weights.shape[1], dtype=weights.dtype, device=weights.device)
    per_query = (gram - eye).flatten(-2).norm(dim=-1)  # (B, Lq)
    return _mean_over_queries(per_query, qv)


def parameter_cosine_similarity(head_params: Tensor) -> Tensor:
    """Mean pairwise cosine ``mean_{g≠h} cos(θ_g, θ_h)`` of per-head parameter vectors ``head_params (H, P)``.

    Lower is more diverse; the minimum for ``H`` vectors is ``−1/(H−1)``. Needs ``H ≥ 2``.
    """
    if head_params.dim() != 2 or head_params.shape[0] < 2:
        raise ValueError(f"head_params must be (heads >= 2, params), got {tuple(head_params.shape)}")
    unit = torch.nn.functional.normalize(head_params, dim=-1)
    cos = unit @ unit.T
    h = cos.shape[0]
    return (cos.sum() - cos.diagonal().sum()) / (h * (h - 1))


def _check_distance(distance: Tensor) -> int:
    if distance.dim() != 2 or distance.shape[0] != distance.shape[1] or distance.shape[0] < 2:
        raise ValueError(f"distance must be a square (n >= 2, n) matrix, got {tuple(distance.shape)}")
    if not bool(torch.isfinite(distance).all()) or bool((distance < 0).any()):
        raise ValueError("distance must hold finite, non-negative values")
    return distance.shape[0]


def classical_mds(distance: Tensor, dims: int = 2) -> Tensor:
    """Classical (Torgerson) multidimensional scaling: points ``(n, dims)`` whose Euclidean distances best match
    ``distance (n, n)`` (symmetric, zero diagonal): the top eigenvectors of ``B = −½ J D² J`` scaled by
    ``sqrt(λ)`` (negative eigenvalues clipped to 0). Unique up to rotation / reflection."""
    n = _check_distance(distance)
    d2 = distance.to(torch.float64).pow(2)
    centre = torch.eye(n, dtype=torch.float64, device=distance.device) - 1.0 / n
    gram = -0.5 * centre @ d2 @ centre
    values, vectors = torch.linalg.eigh((gram + gram.T) / 2)
    top = values.flip(0)[:dims].clamp_min(0)
    return vectors.flip(1)[:, :dims] * top.sqrt()


def head_clusters(distance: Tensor, clusters: int) -> Tensor:
    """Average-linkage agglomerative clustering of ``n`` heads from ``distance (n, n)`` into ``clusters`` groups.

    Returns cluster ids ``(n,)`` long, numbered 0.. in order of each cluster's first member. Repeatedly merges the
    two clusters with the smallest mean pairwise distance (ties: the lowest indices).
    """
    n = _check_distance(distance)
    if not 1 <= clusters <= n:
        raise ValueError(f"clusters must be between 1 and the number of heads ({n}), got {clusters}")
    d = distance.to(torch.float64).clone()
    members = [[i] for i in range(n)]
    alive = list(range(n))
    while len(alive) > clusters:
        sub = d[alive][:, alive] + torch.diag(torch.full((len(alive),), float("inf"), dtype=torch.float64))
        flat = int(torch.argmin(sub))
        a, b = alive[flat // len(alive)], alive[flat % len(alive)]
        a, b = min(a, b), max(a, b)
        size_a, size_b = len(members[a]), len(members[b])
        merged = (d[a] * size_a + d[b] * size_b) / (size_a + size_b)  # average linkage (Lance–Williams)
        d[a], d[:, a] = merged, merged
        members[a] += members[b]
        alive.remove(b)
    labels = torch.empty(n, dtype=torch.long)
    for rank, root in enumerate(sorted(alive, key=lambda r: min(members[r]))):
        labels[members[root]] = rank
    return labels
