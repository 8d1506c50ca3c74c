"""``GraphAttention``: dot-product multi-head attention of each node over its in-neighbours (graph-transformer style).

Per head ``h``: ``q = x W_q``, ``k = x W_k``, ``v = x W_v`` (``nn.Linear`` each, ``embed_dim = heads * head_dim``),
then :func:`probattn.functional.edge_attention` over ``edge_index`` and an output projection. The projections
are named ``q_proj``/``k_proj``/``v_proj`` with a ``head_dim`` attribute, so :class:`probattn.repulsive.RepulsiveHeads`
finds the heads like any other attention layer; the ``probattn_alignment`` slot and the
:func:`probattn.nn.hooks.observe_qk` call let :func:`probattn.alignment.attach_alignment` attach to it. The graph is
handed to the hooks as one "sequence" of ``N`` nodes: ``q, k`` of shape ``(1, H, N, head_dim)``.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn

from probattn.functional.attention import NORMALIZATIONS, check_hybrid_alpha
from probattn.functional.edge import edge_attention
from probattn.nn.hooks import REGULARIZER_ATTR, is_observed, observe_qk

__all__ = ["GraphAttention"]


class GraphAttention(nn.Module):
    """Multi-head attention over a graph's edges.

    Args:
        embed_dim: node feature width ``E`` (input and output).
        num_heads: ``H``; ``E % H == 0``.
        normalization: ``"softmax" | "doubly" | "hybrid" | "sinkhorn"`` (see :func:`edge_attention`).
        hybrid_alpha: softmax weight for ``"hybrid"`` (float in [0, 1]) or ``"learned"`` (one logit per head).
        sinkhorn_iters: iterations for ``"sinkhorn"``.
        bias: biases in the four projections.
    """

    def __init__(self, embed_dim: int, num_heads: int, *, normalization: str = "softmax",
                 hybrid_alpha: float | Literal["learned"] = 0.5, sinkhorn_iters: int = 3, bias: bool = True) -> None:
        super().__init__()
        for name, value in (("embed_dim", embed_dim), ("num_heads", num_heads)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if embed_dim % num_heads:
            raise ValueError(f"embed_dim ({embed_dim}) must be divisible by num_heads ({num_heads})")
        if normalization not in NORMALIZATIONS:
            raise ValueError(f"normalization must be one of {NORMALIZATIONS}, got {normalization!r}")
        if isinstance(sinkhorn_iters, bool) or not isinstance(sinkhorn_iters, int) or sinkhorn_iters < 1:
            raise ValueError(f"sinkhorn_iters must be an integer >= 1, got {sinkhorn_iters!r}")
        self.embed_dim, self.num_heads, self.head_dim = embed_dim, num_heads, embed_dim // num_heads
        self.normalization, self.sinkhorn_iters = normalization, sinkhorn_iters
        self.q_proj = nn.Linear(embed_dim, embed_dim, bias=bias)
        self.k_proj = nn.Linear(embed_dim, embed_dim, bias=bias)
        self.v_proj = nn.Linear(embed_dim, embed_dim, bias=bias)
        self.out_proj = nn.Linear(embed_dim, embed_dim, bias=bias)
        if hybrid_alpha == "learned":
            self.hybrid_logit: nn.Parameter | None = nn.Parameter(torch.zeros(num_heads))
            self.hybrid_alpha: float = 0.5
        else:
            self.hybrid_logit = None
            self.hybrid_alpha = float(check_hybrid_alpha(hybrid_alpha, num_heads))  # type: ignore[arg-type]
        setattr(self, REGULARIZER_ATTR, None)  # slot for probattn.alignment.attach_alignment

    def extra_repr(self) -> str:
        return f"embed_dim={self.embed_dim}, num_heads={self.num_heads}, normalization={self.normalization!r}"

    def current_hybrid_alpha(self) -> float | Tensor:
        """The softmax weight of ``"hybrid"``: the fixed float, or ``sigmoid(logit)`` per head."""
        return self.hybrid_alpha if self.hybrid_logit is None else torch.sigmoid(self.hybrid_logit)

    def forward(self, x: Tensor, edge_index: Tensor, *, edge_mask: Tensor | None = None,
                need_weights: bool = False) -> Tensor | tuple[Tensor, Tensor]:
        """``x (N, E)``, ``edge_index (2, num_edges)`` (source -> target) -> ``(N, E)`` [and weights ``(num_edges, H)``]."""
        if not isinstance(x, Tensor) or x.dim() != 2 or x.shape[1] != self.embed_dim:
            raise ValueError(f"x must have shape (num_nodes, embed_dim={self.embed_dim}), got "
                             f"{tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__}")
        n, h, d = x.shape[0], self.num_heads, self.head_dim
        q = self.q_proj(x).view(n, h, d)
        k = self.k_proj(x).view(n, h, d)
        v = self.v_proj(x).view(n, h, d)
        if is_observed(self):
            observe_qk(self, q.transpose(0, 1)[None], k.transpose(0, 1)[None], query_valid=None, key_valid=None)
        result = edge_attention(q, k, v, edge_index, normalization=self.normalization, edge_mask=edge_mask,
                                hybrid_alpha=self.current_hybrid_alpha(), sinkhorn_iters=self.sinkhorn_iters,
                                return_weights=need_weights)
        out, weights = result if need_weights else (result, None)
        out = self.out_proj(out.reshape(n, self.embed_dim))
        return (out, weights) if need_weights else out
