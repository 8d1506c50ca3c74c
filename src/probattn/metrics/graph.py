"""Attention diagnostics over a graph's edges (weights ``(E, H)`` from :func:`probattn.functional.edge_attention`).

* :func:`edge_fair_share` — ``A_e · indeg(t_e)``: an edge's weight relative to its fair share ``1 / indeg(t_e)``
  of its target's attention (1 = uniform over the target's incoming edges);
* :func:`edge_explained_away_fraction` — fraction of edges below ``threshold`` times their fair share, over
  edges whose target has at least ``min_in_degree`` incoming edges (with one incoming edge the weight is 1);
* :func:`source_explained_away_fraction` — the node version: fraction of source nodes whose total outgoing
  weight ``sum_{e out of s} A_e`` is below ``threshold`` times their fair total ``sum_{e out of s} 1/indeg(t_e)``
  (what doubly-normalized attention bounds from below, see docs/graph.md);
* :func:`edge_head_js_divergence` — pairwise Jensen–Shannon divergence (bits) between heads' distributions
  over each target's incoming edges, averaged over targets with at least ``min_in_degree`` incoming edges
  (the edge version of :func:`probattn.metrics.head_js_divergence`).

In-degrees count every edge of ``edge_index``, duplicates and self-loops included, as the attention does.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["edge_explained_away_fraction", "edge_fair_share", "edge_head_js_divergence",
           "source_explained_away_fraction"]


def _check(weights: Tensor, edge_index: Tensor, num_nodes: int) -> Tensor:
    if weights.dim() != 2 or edge_index.dim() != 2 or edge_index.shape[0] != 2 or \
            weights.shape[0] != edge_index.shape[1]:
        raise ValueError(f"weights must be (E, H) and edge_index (2, E) with the same E, got {tuple(weights.shape)} "
                         f"and {tuple(edge_index.shape)}")
    return torch.bincount(edge_index[1], minlength=num_nodes)


def edge_fair_share(weights: Tensor, edge_index: Tensor, num_nodes: int) -> Tensor:
    """``(E, H)``: ``weights[e] * indeg(target of e)``."""
    indeg = _check(weights, edge_index, num_nodes)
    return weights * indeg[edge_index[1]].to(weights.dtype)[:, None]


def edge_explained_away_fraction(weights: Tensor, edge_index: Tensor, num_nodes: int, *, threshold: float = 0.1,
                                 min_in_degree: int = 2) -> Tensor:
    """``(H,)``: fraction of edges into targets of in-degree ``>= min_in_degree`` with fair share ``< threshold``
    (NaN when no such edge exists)."""
    indeg = _check(weights, edge_index, num_nodes)
    counted = indeg[edge_index[1]] >= min_in_degree
    share = edge_fair_share(weights, edge_index, num_nodes)[counted]
    if share.shape[0] == 0:
        return torch.full((weights.shape[1],), math.nan, dtype=weights.dtype, device=weights.device)
    return (share < threshold).to(weights.dtype).mean(0)


def source_explained_away_fraction(weights: Tensor, edge_index: Tensor, num_nodes: int, *,
                                   threshold: float = 0.1) -> Tensor:
    """``(H,)``: fraction of nodes with an outgoing edge whose received total ``sum_{e out of s} A_e`` is below
    ``threshold * sum_{e out of s} 1/indeg(t_e)`` (NaN when there is no edge)."""
    indeg = _check(weights, edge_index, num_nodes)
    src, dst = edge_index
    received = torch.zeros(num_nodes, weights.shape[1], dtype=weights.dtype, device=weights.device)
    received.index_add_(0, src, weights)
    fair = torch.zeros(num_nodes, dtype=weights.dtype, device=weights.device)
    fair.index_add_(0, src, 1.0 / indeg[dst].to(weights.dtype))
    senders = torch.bincount(src, minlength=num_nodes) > 0
    if not bool(senders.any()):
        return torch.full((weights.shape[1],), math.nan, dtype=weights.dtype, device=weights.device)
    return (received[senders] < threshold * fair[senders, None]).to(weights.dtype).mean(0)


def edge_head_js_divergence(weights: Tensor, edge_index: Tensor, num_nodes: int, *,
                            min_in_degree: int = 2) -> Tensor:
    """``(H, H)`` pairwise JS divergence in bits between heads, averaged over targets of in-degree
    ``>= min_in_degree`` (NaN when there is none)."""
    indeg = _check(weights, edge_index, num_nodes)
    dst, heads = edge_index[1], weights.shape[1]
    targets = indeg >= min_in_degree
    w = weights.clamp_min(0)
    own = torch.zeros(num_nodes, heads, dtype=w.dtype, device=w.device).index_add_(0, dst, -torch.xlogy(w, w))
    js = torch.zeros(heads, heads, dtype=w.dtype, device=w.device)
    count = int(targets.sum())
    if count == 0:
        return torch.full((heads, heads), math.nan, dtype=w.dtype, device=w.device)
    for g in range(heads - 1):
        mid = 0.5 * (w[:, g: g + 1] + w[:, g + 1:])  # (E, H-g-1)
        mixed = torch.zeros(num_nodes, heads - g - 1, dtype=w.dtype, device=w.device).index_add_(
            0, dst, -torch.xlogy(mid, mid))
        pair = (mixed - 0.5 * (own[:, g: g + 1] + own[:, g + 1:]))[targets].sum(0) / count / math.log(2)
        js[g, g + 1:] = pair
        js[g + 1:, g] = pair
    return js.clamp(0.0, 1.0)
