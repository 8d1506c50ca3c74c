"""Plain float64 reference implementations, written for clarity, not speed. Used by the tests only.

For each batch element and head the attention problem is cut down to the queries and keys that take part
(rows and columns with at least one allowed pair); inside that block every normalization is its textbook
definition in log space, with ``-inf`` for pairs that may not attend. Everything outside the block is zero.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def _normalize_log(log_p: Tensor, dim: int) -> Tensor:
    """Subtract the log-sum-exp over ``dim`` (every slice holds at least one finite entry)."""
    return log_p - torch.logsumexp(log_p, dim=dim, keepdim=True)


def reference_weights(
    scores: Tensor,
    allowed: Tensor | None = None,
    *,
    normalization: str,
    hybrid_alpha: float | Tensor = 0.5,
    sinkhorn_iters: int = 3,
) -> Tensor:
    """Attention weights ``(B, H, Lq, Lk)`` from ``scores (B, H, Lq, Lk)`` and ``allowed`` (True = may attend).

    * softmax: normalize rows.
    * doubly: normalize columns (over queries), then rows (over keys).
    * sinkhorn: ``sinkhorn_iters`` times (columns, then rows).
    * hybrid: ``alpha * softmax + (1 - alpha) * doubly`` (alpha a float or a per-head tensor).
    """
    scores = scores.to(torch.float64)
    b, h, lq, lk = scores.shape
    allowed = torch.ones_like(scores, dtype=torch.bool) if allowed is None else allowed.expand(b, h, lq, lk)
    if normalization == "hybrid":
        alpha = torch.as_tensor(hybrid_alpha, dtype=torch.float64).reshape(-1)
        alpha = alpha.expand(h) if alpha.numel() == 1 else alpha
        soft = reference_weights(scores, allowed, normalization="softmax")
        doubly = reference_weights(scores, allowed, normalization="doubly")
        a = alpha.view(1, h, 1, 1)
        return a * soft + (1 - a) * doubly
    out = torch.zeros_like(scores)
    for bi in range(b):
        for hi in range(h):
            keep = allowed[bi, hi]
            rows = keep.any(dim=1).nonzero().flatten()
            cols = keep.any(dim=0).nonzero().flatten()
            if rows.numel() == 0:
                continue
            block = scores[bi, hi][rows][:, cols].masked_fill(~keep[rows][:, cols], -math.inf)
            if normalization == "softmax":
                log_p = _normalize_log(block, dim=1)
            elif normalization == "doubly":
                log_p = _normalize_log(_normalize_log(block, dim=0), dim=1)
            elif normalization == "sinkhorn":
                log_p = block
                for _ in range(sinkhorn_iters):
                    log_p = _normalize_log(_normalize_log(log_p, dim=0), dim=1)
            else:
                raise ValueError(f"unknown normalization {normalization!r}")
            out[bi, hi, rows[:, None], cols[None, :]] = log_p.exp()
    return out


def reference_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    normalization: str = "softmax",
    allowed: Tensor | None = None,
    bias: Tensor | None = None,
    scale: float | None = None,
    hybrid_alpha: float | Tensor = 0.5,
    sinkhorn_iters: int = 3,
) -> tuple[Tensor, Tensor]:
    """``(out (B, H, Lq, Dv), weights (B, H, Lq, Lk))`` in float64.

    ``k, v`` may have fewer heads than ``q`` (query head ``h`` uses key head ``h // (H // H_kv)``);
    ``allowed`` is the full boolean pattern (padding and causality already folded in), ``bias`` additive.
    """
    q, k, v = q.to(torch.float64), k.to(torch.float64), v.to(torch.float64)
    groups = q.shape[1] // k.shape[1]
    k = k.repeat_interleave(groups, dim=1)
    v = v.repeat_interleave(groups, dim=1)
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    scores = scale * q @ k.transpose(-1, -2)
    if bias is not None:
        scores = scores + bias.to(torch.float64)
    weights = reference_weights(
        scores, allowed, normalization=normalization, hybrid_alpha=hybrid_alpha, sinkhorn_iters=sinkhorn_iters
    )
    return weights @ v, weights


def reference_edge_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    edge_index: Tensor,
    *,
    normalization: str = "softmax",
    edge_mask: Tensor | None = None,
    scale: float | None = None,
    hybrid_alpha: float | Tensor = 0.5,
    sinkhorn_iters: int = 3,
) -> tuple[Tensor, Tensor]:
    """``(out (N, H, Dv), weights (E, H))`` in float64 from the dense adjacency-masked problem.

    Query = target, key = source. A pair ``(t, s)`` joined by ``m`` parallel edges is one dense entry with
    score ``S_ts + log m`` (``m`` copies of ``exp(S_ts)`` in every sum); each of the ``m`` edges gets an equal
    ``1/m`` of the pair's weight. Masked edges (``edge_mask`` False) are left out.
    """
    q, k, v = q.to(torch.float64), k.to(torch.float64), v.to(torch.float64)
    n, h, d = q.shape
    scale = 1.0 / math.sqrt(d) if scale is None else scale
    src, dst = edge_index[0], edge_index[1]
    keep = torch.ones(src.shape[0], dtype=torch.bool) if edge_mask is None else edge_mask.bool()
    counts = torch.zeros(n, n, dtype=torch.float64)
    for e in range(src.shape[0]):
        if keep[e]:
            counts[dst[e], src[e]] += 1.0
    scores = scale * torch.einsum("thd,shd->hts", q, k)[None]  # (1, H, N_target, N_source)
    allowed = (counts > 0)[None, None]
    log_counts = torch.where(counts > 0, counts.log(), torch.zeros_like(counts))
    pair = reference_weights(scores + log_counts, allowed, normalization=normalization,
                             hybrid_alpha=hybrid_alpha, sinkhorn_iters=sinkhorn_iters)[0]  # (H, N, N)
    out = (pair @ v.transpose(0, 1)).transpose(0, 1)  # (N, H, Dv)
    weights = torch.zeros(src.shape[0], h, dtype=torch.float64)
    for e in range(src.shape[0]):
        if keep[e]:
            weights[e] = pair[:, dst[e], src[e]] / counts[dst[e], src[e]]
    return out, weights
