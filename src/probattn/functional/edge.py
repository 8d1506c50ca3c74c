"""``edge_attention``: softmax / doubly / hybrid / Sinkhorn attention over a graph's edges (docs/graph.md).

Edge ``e = (s, t)`` of ``edge_index (2, E)`` goes from source ``s`` to target ``t``: target ``t`` is the query
and attends over its incoming edges; source ``s`` is the key/value. Per head the score is
``S_e = scale * <q_t, k_s>`` and

* ``softmax``: ``A_e = exp(S_e) / sum_{e' into t} exp(S_e')`` (normalize per target);
* ``doubly``: first normalize each source's outgoing scores, ``C_e = exp(S_e - c_s)`` with
  ``c_s = logsumexp_{e' out of s} S_e'``, then per target: ``A_e = C_e / sum_{e' into t} C_e'``;
* ``hybrid``: ``alpha * softmax + (1 - alpha) * doubly``;
* ``sinkhorn``: ``sinkhorn_iters`` times (source step, then target step); 1 == doubly.

This is the dense :func:`probattn.functional.attention` restricted to the adjacency pattern (query = target,
key = source), with one difference the dense form cannot express: every edge is its own entry, so a
duplicated edge counts twice in both normalizations. Rules:

* a node with no incoming (unmasked) edge outputs zeros; a self-loop ``(i, i)`` is an ordinary edge;
* ``edge_mask (E,)`` (True = the edge takes part) acts exactly as deleting the False edges; they get weight 0;
* minimum share (doubly / sinkhorn): every source ``s`` with at least one outgoing edge receives total weight
  ``sum_{e out of s} A_e >= 1 / max_{t: s -> t} indeg(t)`` (at least ``(1 - alpha)`` times that for hybrid).

Segment statistics use ``scatter_reduce`` (amax) and ``index_add_``: memory ``O(E * H * max(1, dv))``, never
``O(N^2)``. Scores and normalizers are computed in float32 for float16/bfloat16 inputs (float64 stays).
"""

from __future__ import annotations

import math
import numbers

import torch
from torch import Tensor

from probattn.functional.attention import NORMALIZATIONS, check_hybrid_alpha, check_same_dtype_and_device
from probattn.masks import edge_validity

__all__ = ["edge_attention", "segment_logsumexp"]


def segment_logsumexp(x: Tensor, index: Tensor, num_segments: int) -> Tensor:
    """``out (num_segments, H)``: log-sum-exp of the rows of ``x (E, H)`` that ``index (E,)`` puts in each segment.

    Stable (the segment maximum is subtracted first); an empty segment gets 0, with zero gradient.
    """
    expanded = index[:, None].expand_as(x)
    peak = torch.full((num_segments, x.shape[1]), -math.inf, dtype=x.dtype, device=x.device)
    peak = peak.scatter_reduce(0, expanded, x.detach(), reduce="amax", include_self=True)
    peak = torch.where(torch.isfinite(peak), peak, torch.zeros_like(peak))  # empty segments
    total = torch.zeros_like(peak).index_add_(0, index, torch.exp(x - peak[index]))
    empty = total == 0
    return peak + torch.log(total.masked_fill(empty, 1.0))


def _check_tensors(q: object, k: object, v: object) -> tuple[int, int, int]:
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dim() != 3:
            raise ValueError(f"{name} must be 3-D (num_nodes, heads, head_dim), got shape {tuple(t.shape)}")
        if not t.is_floating_point():
            raise TypeError(f"{name} must be a floating-point tensor, got {t.dtype}")
        if t.shape[0] < 1 or t.shape[1] < 1 or t.shape[2] < 1:
            raise ValueError(f"{name} is empty (shape {tuple(t.shape)}); every dimension must be at least 1")
    assert isinstance(q, Tensor) and isinstance(k, Tensor) and isinstance(v, Tensor)
    check_same_dtype_and_device(q, k, v)
    if not (q.shape[:2] == k.shape[:2] == v.shape[:2]):
        raise ValueError(f"q, k and v must agree on (num_nodes, heads): q {tuple(q.shape[:2])}, "
                         f"k {tuple(k.shape[:2])}, v {tuple(v.shape[:2])}")
    if q.shape[2] != k.shape[2]:
        raise ValueError(f"q and k must share head_dim: q {q.shape[2]} vs k {k.shape[2]}")
    for name, t in (("q", q), ("k", k), ("v", v)):
        low, high = torch.aminmax(t)
        if not bool(torch.isfinite(low) & torch.isfinite(high)):
            raise ValueError(f"{name} contains NaN or infinite values; attention inputs must be finite")
    return q.shape[0], q.shape[1], q.shape[2]


def _check_edge_index(edge_index: object, num_nodes: int, device: torch.device) -> Tensor:
    if not isinstance(edge_index, Tensor):
        raise TypeError(f"edge_index must be a torch.Tensor of shape (2, E), got {type(edge_index).__name__}")
    if edge_index.dtype not in (torch.int64, torch.int32):
        raise TypeError(f"edge_index must hold int64 (or int32) node ids, got {edge_index.dtype}")
    if edge_index.dim() != 2 or edge_index.shape[0] != 2:
        raise ValueError(f"edge_index must have shape (2, E) (row 0 = source, row 1 = target), "
                         f"got {tuple(edge_index.shape)}; transpose an (E, 2) list with .t()")
    if edge_index.device != device:
        raise ValueError(f"edge_index is on {edge_index.device} but q is on {device}; move it with .to()")
    if edge_index.numel() and (int(edge_index.min()) < 0 or int(edge_index.max()) >= num_nodes):
        raise ValueError(f"edge_index holds node ids outside [0, {num_nodes}) "
                         f"(min {int(edge_index.min())}, max {int(edge_index.max())})")
    return edge_index.long()


def _check_options(normalization: object, num_nodes: object, n: int, scale: object, sinkhorn_iters: object,
                   return_weights: object) -> None:
    if normalization not in NORMALIZATIONS:
        raise ValueError(f"normalization must be one of {', '.join(map(repr, NORMALIZATIONS))}; got {normalization!r}")
    if num_nodes is not None and (isinstance(num_nodes, bool) or not isinstance(num_nodes, numbers.Integral)
                                  or int(num_nodes) != n):
        raise ValueError(f"num_nodes must be None or equal q.shape[0] = {n} (one row of q, k, v per node), "
                         f"got {num_nodes!r}")
    if scale is not None and (
        isinstance(scale, bool) or not isinstance(scale, numbers.Real) or not math.isfinite(float(scale))
    ):
        raise ValueError(f"scale must be a finite number or None (1/sqrt(head_dim)), got {scale!r}")
    if isinstance(sinkhorn_iters, bool) or not isinstance(sinkhorn_iters, numbers.Integral) or sinkhorn_iters < 1:
        raise ValueError(f"sinkhorn_iters must be an integer >= 1 (1 == 'doubly'), got {sinkhorn_iters!r}")
    if not isinstance(return_weights, bool):
        raise TypeError(f"return_weights must be a bool, got {type(return_weights).__name__}")


def _edge_alpha(hybrid_alpha: object, heads: int) -> float | Tensor:
    """``hybrid_alpha`` as a float or an ``(H,)``/``()`` tensor broadcastable against ``(E, H)``."""
    alpha = check_hybrid_alpha(hybrid_alpha, heads)
    if isinstance(alpha, Tensor):
        if alpha.numel() not in (1, heads) or (alpha.dim() == 4 and alpha.shape[0] != 1):
            raise ValueError(f"hybrid_alpha tensor must have shape () or ({heads},) for edge attention, "
                             f"got {tuple(hybrid_alpha.shape)}")  # type: ignore[union-attr]
        alpha = alpha.reshape(-1)
    return alpha


def edge_weights(scores: Tensor, src: Tensor, dst: Tensor, num_nodes: int, *, normalization: str,
                 alpha: float | Tensor = 0.5, sinkhorn_iters: int = 3) -> Tensor:
    """Weights ``(E, H)`` of edge ``scores (E, H)`` from ``src`` to ``dst`` (each ``(E,)``); no validation."""
    def target_softmax(z: Tensor) -> Tensor:
        return torch.exp(z - segment_logsumexp(z, dst, num_nodes)[dst])

    if normalization == "softmax":
        return target_softmax(scores)
    if normalization == "hybrid":
        doubly = edge_weights(scores, src, dst, num_nodes, normalization="doubly")
        return alpha * target_softmax(scores) + (1 - alpha) * doubly
    iters = 1 if normalization == "doubly" else sinkhorn_iters
    z = scores - segment_logsumexp(scores, src, num_nodes)[src]  # source step
    for _ in range(iters - 1):
        z = z - segment_logsumexp(z, dst, num_nodes)[dst]  # target step
        z = z - segment_logsumexp(z, src, num_nodes)[src]  # source step
    return target_softmax(z)


def edge_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    edge_index: Tensor,
    *,
    normalization: str = "softmax",
    edge_mask: Tensor | None = None,
    hybrid_alpha: float | Tensor = 0.5,
    sinkhorn_iters: int = 3,
    num_nodes: int | None = None,
    scale: float | None = None,
    return_weights: bool = False,
) -> Tensor | tuple[Tensor, Tensor]:
    """Multi-head attention of every node over its incoming edges.

    Args:
        q: ``(N, H, D)`` queries (a node reads them as a target).
        k: ``(N, H, D)`` keys, v: ``(N, H, Dv)`` values (a node offers them as a source).
        edge_index: ``(2, E)`` int64 (or int32), row 0 = source, row 1 = target. Self-loops are ordinary edges;
            duplicated edges are separate edges (each counts once more in every normalization).
        normalization: ``"softmax"`` (per target), ``"doubly"`` (per source, then per target), ``"hybrid"``
            (``alpha * softmax + (1 - alpha) * doubly``) or ``"sinkhorn"`` (``sinkhorn_iters`` source-then-target
            steps; 1 == doubly).
        edge_mask: ``(E,)`` bool (True = the edge takes part) or None; a False edge is treated as absent.
        hybrid_alpha: weight of softmax in ``"hybrid"``: a float in [0, 1] or a tensor ``()`` / ``(H,)``.
        sinkhorn_iters: iterations for ``"sinkhorn"`` (>= 1).
        num_nodes: optional check that the graph has ``q.shape[0]`` nodes (PyG-style call sites).
        scale: score scale, default ``1 / sqrt(D)``.
        return_weights: also return the ``(E, H)`` edge weights (0 on masked edges).

    Returns:
        ``out (N, H, Dv)`` (zeros for a node with no incoming edge), or ``(out, weights)``. Weights of the
        edges into each target sum to 1 over its incoming edges.

    Raises:
        TypeError, ValueError: for bad arguments; the message names the argument.
    """
    n, heads, dim = _check_tensors(q, k, v)
    index = _check_edge_index(edge_index, n, q.device)
    _check_options(normalization, num_nodes, n, scale, sinkhorn_iters, return_weights)
    alpha = _edge_alpha(hybrid_alpha, heads) if normalization == "hybrid" else 0.0
    valid = edge_validity(edge_mask, index.shape[1], q.device)
    kept = index if valid is None else index[:, valid]
    src, dst = kept[0], kept[1]
    compute = torch.float64 if q.dtype == torch.float64 else torch.float32
    scale = float(scale) if scale is not None else 1.0 / math.sqrt(dim)
    scores = (q.to(compute)[dst] * k.to(compute)[src]).sum(-1) * scale  # (E, H)
    if isinstance(alpha, Tensor):
        alpha = alpha.to(device=q.device, dtype=compute)
    weights = edge_weights(scores, src, dst, n, normalization=normalization, alpha=alpha,
                           sinkhorn_iters=int(sinkhorn_iters))
    messages = weights[:, :, None] * v.to(compute)[src]  # (E, H, Dv)
    out = torch.zeros(n, heads, v.shape[2], dtype=compute, device=q.device).index_add_(0, dst, messages)
    low, high = torch.aminmax(out)
    if not bool(torch.isfinite(low) & torch.isfinite(high)):
        raise ValueError(f"the attention output is not finite: the q·k scores overflowed in {compute} "
                         "(scale down q or k, or pass a smaller scale=)")
    out = out.to(q.dtype)
    if not return_weights:
        return out
    if valid is not None:
        weights = torch.zeros(index.shape[1], heads, dtype=compute, device=q.device).masked_scatter(
            valid[:, None].expand(-1, heads), weights)
    return out, weights.to(q.dtype)
