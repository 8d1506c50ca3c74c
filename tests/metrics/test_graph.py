"""Edge-level diagnostics against their dense counterparts and hand-computed values."""

from __future__ import annotations

import math

import torch

from probattn.functional import edge_attention
from probattn.metrics import head_js_divergence
from probattn.metrics.graph import (
    edge_explained_away_fraction,
    edge_fair_share,
    edge_head_js_divergence,
    source_explained_away_fraction,
)


def _weights(seed: int = 0, n: int = 7):
    g = torch.Generator().manual_seed(seed)
    pairs = sorted({(int(s), int(t)) for s, t in torch.randint(0, n, (25, 2), generator=g)})
    edges = torch.tensor(pairs).t()
    q, k, v = (torch.randn(n, 3, 2, generator=g, dtype=torch.float64) for _ in range(3))
    return edge_attention(q, k, v, edges, return_weights=True)[1], edges, n


def test_js_equals_dense_head_js_over_targets_with_two_or_more_edges():
    w, edges, n = _weights()
    dense = torch.zeros(1, 3, n, n, dtype=torch.float64)
    dense[0, :, edges[1], edges[0]] = w.t()
    indeg = torch.bincount(edges[1], minlength=n)
    expected = head_js_divergence(dense, query_valid=(indeg >= 2)[None])[0]
    torch.testing.assert_close(edge_head_js_divergence(w, edges, n), expected, atol=1e-12, rtol=0)


def test_fair_share_and_explained_away_by_hand():
    # target 0 hears 1, 2, 3 with weights 0.9, 0.08, 0.02 (head 0) and uniformly (head 1); target 4 hears 0 only
    edges = torch.tensor([[1, 2, 3, 0], [0, 0, 0, 4]])
    w = torch.tensor([[0.9, 1 / 3], [0.08, 1 / 3], [0.02, 1 / 3], [1.0, 1.0]], dtype=torch.float64)
    torch.testing.assert_close(edge_fair_share(w, edges, 5)[:, 0], torch.tensor([2.7, 0.24, 0.06, 1.0],
                                                                                 dtype=torch.float64))
    # fair share < 0.1 only for (3 -> 0) in head 0; the in-degree-1 edge is not counted
    torch.testing.assert_close(edge_explained_away_fraction(w, edges, 5), torch.tensor([1 / 3, 0.0],
                                                                                       dtype=torch.float64))
    assert math.isnan(edge_explained_away_fraction(w, edges, 5, min_in_degree=4)[0].item())
    js = edge_head_js_divergence(w, edges, 5)
    assert js[0, 0] == 0 and js[0, 1] > 0 and js[0, 1] == js[1, 0]


def test_source_explained_away_by_hand():
    # node 0 hears 1 and 2, node 3 hears 2: fair totals are 0.5 (source 1) and 0.5 + 1.0 (source 2)
    edges = torch.tensor([[1, 2, 2], [0, 0, 3]])
    w = torch.tensor([[0.95, 0.99], [0.05, 0.01], [1.0, 0.1]], dtype=torch.float64)
    # head 0: nobody below 0.1 x fair; head 1: source 2 receives 0.11 < 0.1 * 1.5 = 0.15
    torch.testing.assert_close(source_explained_away_fraction(w, edges, 4), torch.tensor([0.0, 0.5],
                                                                                         dtype=torch.float64))
    assert math.isnan(source_explained_away_fraction(w[:0], edges[:, :0], 4)[0].item())
