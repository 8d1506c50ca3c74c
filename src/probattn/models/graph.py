"""A small graph transformer node classifier built on :class:`probattn.nn.GraphAttention`.

``GraphTransformer(x (N, F), edge_index (2, E)) -> logits (N, C)``: a linear input embedding, ``num_layers``
pre-norm blocks ``h = h + Attn(LN(h)); h = h + FFN(LN(h))`` where ``Attn`` attends over each node's incoming
edges, a final LayerNorm and a linear head. Dropout acts on the features (input and after each sublayer).
"""

from __future__ import annotations

from torch import Tensor, nn

from probattn.nn.graph import GraphAttention

__all__ = ["GraphTransformer", "MLPClassifier"]


class _Block(nn.Module):
    def __init__(self, hidden: int, heads: int, dropout: float, attention_options: dict) -> None:
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(hidden), nn.LayerNorm(hidden)
        self.attn = GraphAttention(hidden, heads, **attention_options)
        self.ffn = nn.Sequential(nn.Linear(hidden, 2 * hidden), nn.GELU(), nn.Linear(2 * hidden, hidden))
        self.drop = nn.Dropout(dropout)

    def forward(self, h: Tensor, edge_index: Tensor, need_weights: bool) -> tuple[Tensor, Tensor | None]:
        result = self.attn(self.norm1(h), edge_index, need_weights=need_weights)
        attended, weights = result if need_weights else (result, None)
        h = h + self.drop(attended)
        return h + self.drop(self.ffn(self.norm2(h))), weights


class GraphTransformer(nn.Module):
    """Node classifier: ``in_features -> hidden``, ``num_layers`` graph-attention blocks, ``-> num_classes``.

    ``attention_options`` (``normalization``, ``hybrid_alpha``, ``sinkhorn_iters``) go to every
    :class:`GraphAttention`.
    """

    def __init__(self, in_features: int, num_classes: int, *, hidden: int = 64, num_heads: int = 4,
                 num_layers: int = 2, dropout: float = 0.2, **attention_options) -> None:
        super().__init__()
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must lie in [0, 1), got {dropout!r}")
        if isinstance(num_layers, bool) or not isinstance(num_layers, int) or num_layers < 1:
            raise ValueError(f"num_layers must be a positive integer, got {num_layers!r}")
        self.embed = nn.Linear(in_features, hidden)
        self.drop = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(_Block(hidden, num_heads, dropout, attention_options) for _ in range(num_layers))
        self.norm = nn.LayerNorm(hidden)
        self.head = nn.Linear(hidden, num_classes)

    def forward(self, x: Tensor, edge_index: Tensor, *, need_weights: bool = False) -> Tensor | tuple[Tensor, list]:
        """Logits ``(N, C)``; with ``need_weights`` also the per-layer edge weights ``[(E, H), ...]``."""
        h = self.drop(self.embed(x))
        weights = []
        for block in self.blocks:
            h, w = block(h, edge_index, need_weights)
            weights.append(w)
        logits = self.head(self.norm(h))
        return (logits, weights) if need_weights else logits


class MLPClassifier(nn.Module):
    """The same features without the graph: ``Linear -> GELU -> Dropout -> Linear`` (a baseline)."""

    def __init__(self, in_features: int, num_classes: int, *, hidden: int = 64, dropout: float = 0.2) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(in_features, hidden), nn.GELU(), nn.Dropout(dropout),
                                 nn.Linear(hidden, num_classes))

    def forward(self, x: Tensor, edge_index: Tensor | None = None) -> Tensor:
        """Logits ``(N, C)``; ``edge_index`` is ignored (same call signature as :class:`GraphTransformer`)."""
        return self.net(x)
