"""edge_attention against the dense float64 reference, gradcheck, properties and argument errors."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from probattn.functional import edge_attention, segment_logsumexp
from probattn.reference import reference_edge_attention

NORMS = ("softmax", "doubly", "hybrid", "sinkhorn")


def random_graph(n: int, e: int, seed: int, *, heads: int = 2, d: int = 3, dv: int = 2, isolated: int = 2):
    """Random q, k, v and edges over ``n`` nodes, with self-loops, duplicated edges and ``isolated`` nodes
    that receive no edge (the last ``isolated`` ids are never targets)."""
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(n, heads, d, generator=g, dtype=torch.float64)
    k = torch.randn(n, heads, d, generator=g, dtype=torch.float64)
    v = torch.randn(n, heads, dv, generator=g, dtype=torch.float64)
    src = torch.randint(0, n, (e,), generator=g)
    dst = torch.randint(0, n - isolated, (e,), generator=g)
    edges = torch.stack([src, dst])
    loops = torch.tensor([[0, 1], [0, 1]])
    edges = torch.cat([edges, loops, edges[:, :3]], dim=1)  # self-loops and 3 duplicated edges
    return q, k, v, edges


@pytest.mark.parametrize("normalization", NORMS)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_equals_dense_reference(normalization, seed):
    q, k, v, edges = random_graph(9, 20, seed)
    alpha = torch.tensor([0.25, 0.8], dtype=torch.float64)
    out, w = edge_attention(q, k, v, edges, normalization=normalization, hybrid_alpha=alpha, sinkhorn_iters=4,
                            return_weights=True)
    ref_out, ref_w = reference_edge_attention(q, k, v, edges, normalization=normalization, hybrid_alpha=alpha,
                                              sinkhorn_iters=4)
    torch.testing.assert_close(out, ref_out, atol=1e-10, rtol=0)
    torch.testing.assert_close(w, ref_w, atol=1e-10, rtol=0)
    assert out[-2:].abs().max() == 0  # isolated nodes output zeros


@pytest.mark.parametrize("normalization", NORMS)
def test_one_edge_graph_and_no_edges(normalization):
    q, k, v, _ = random_graph(4, 1, 0)
    edge = torch.tensor([[2], [1]])
    out, w = edge_attention(q, k, v, edge, normalization=normalization, return_weights=True)
    ref_out, ref_w = reference_edge_attention(q, k, v, edge, normalization=normalization)
    torch.testing.assert_close(out, ref_out, atol=1e-10, rtol=0)
    torch.testing.assert_close(w, torch.ones(1, 2, dtype=torch.float64), atol=1e-12, rtol=0)
    torch.testing.assert_close(ref_w, w, atol=1e-10, rtol=0)
    expected = torch.zeros_like(out)
    expected[1] = v[2]
    torch.testing.assert_close(out, expected, atol=1e-12, rtol=0)
    empty = torch.zeros(2, 0, dtype=torch.long)
    out, w = edge_attention(q, k, v, empty, normalization=normalization, return_weights=True)
    assert out.abs().max() == 0 and w.shape == (0, 2)


def test_duplicate_edge_counts_twice():
    """Two parallel edges s -> t weigh like one edge with score + log 2, split evenly (softmax, by hand)."""
    q = torch.zeros(3, 1, 1, dtype=torch.float64)
    k = torch.zeros(3, 1, 1, dtype=torch.float64)
    v = torch.tensor([[[1.0]], [[3.0]], [[0.0]]], dtype=torch.float64)
    edges = torch.tensor([[0, 0, 1], [2, 2, 2]])  # node 2 hears node 0 twice, node 1 once (equal scores)
    out, w = edge_attention(q, k, v, edges, return_weights=True)
    torch.testing.assert_close(w.flatten(), torch.full((3,), 1 / 3, dtype=torch.float64))
    torch.testing.assert_close(out[2].flatten(), torch.tensor([5 / 3], dtype=torch.float64))


@pytest.mark.parametrize("normalization", NORMS)
def test_edge_mask_equals_removing_edges(normalization):
    q, k, v, edges = random_graph(8, 16, 3)
    mask = torch.rand(edges.shape[1], generator=torch.Generator().manual_seed(0)) > 0.3
    out, w = edge_attention(q, k, v, edges, normalization=normalization, edge_mask=mask, return_weights=True)
    ref_out, ref_w = reference_edge_attention(q, k, v, edges[:, mask], normalization=normalization)
    torch.testing.assert_close(out, ref_out, atol=1e-10, rtol=0)
    torch.testing.assert_close(w[mask], ref_w, atol=1e-10, rtol=0)
    assert w[~mask].abs().max() == 0
    ref_masked = reference_edge_attention(q, k, v, edges, normalization=normalization, edge_mask=mask)[0]
    torch.testing.assert_close(out, ref_masked, atol=1e-10, rtol=0)


@pytest.mark.parametrize("normalization", NORMS)
def test_gradcheck(normalization):
    q, k, v, edges = random_graph(6, 10, 4, heads=2, d=2, dv=2, isolated=1)
    inputs = tuple(t.clone().requires_grad_(True) for t in (q, k, v))
    assert torch.autograd.gradcheck(
        lambda a, b, c: edge_attention(a, b, c, edges, normalization=normalization, sinkhorn_iters=2), inputs
    )


def test_float32_close_to_reference_and_large_scores_stable():
    q, k, v, edges = random_graph(10, 30, 5)
    big = 200.0  # scores in the thousands: only a max-subtracted log-sum-exp survives
    out = edge_attention((q * big).float(), k.float(), v.float(), edges, normalization="doubly")
    ref = reference_edge_attention(q * big, k, v, edges, normalization="doubly")[0]
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out.double(), ref, atol=1e-4, rtol=1e-4)


def test_segment_logsumexp_empty_segment_zero_and_finite_grad():
    x = torch.tensor([[1.0], [2.0]], dtype=torch.float64, requires_grad=True)
    out = segment_logsumexp(x, torch.tensor([0, 0]), 3)
    torch.testing.assert_close(out[:, 0], torch.tensor([torch.tensor([1.0, 2.0]).logsumexp(0).item(), 0, 0],
                                                        dtype=torch.float64))
    out.sum().backward()
    assert torch.isfinite(x.grad).all()


@st.composite
def graphs(draw):
    n = draw(st.integers(1, 7))
    e = draw(st.integers(1, 20))
    src = draw(st.lists(st.integers(0, n - 1), min_size=e, max_size=e))
    dst = draw(st.lists(st.integers(0, n - 1), min_size=e, max_size=e))
    seed = draw(st.integers(0, 2**16))
    spread = draw(st.sampled_from([0.1, 1.0, 5.0]))
    return n, torch.tensor([src, dst]), seed, spread


@settings(max_examples=60, deadline=None)
@given(graphs(), st.sampled_from(["doubly", "sinkhorn", "hybrid"]))
def test_minimum_share_and_row_sums(graph, normalization):
    """Doubly / Sinkhorn: every source s with an outgoing edge gets sum_{e out of s} A_e >= 1 / max indeg(t)
    over its targets t ((1 - alpha) times that for hybrid); every target's incoming weights sum to 1."""
    n, edges, seed, spread = graph
    g = torch.Generator().manual_seed(seed)
    q, k, v = (spread * torch.randn(n, 2, 3, generator=g, dtype=torch.float64) for _ in range(3))
    alpha = 0.3
    _, w = edge_attention(q, k, v, edges, normalization=normalization, hybrid_alpha=alpha, return_weights=True)
    src, dst = edges
    indeg = torch.bincount(dst, minlength=n).double()
    incoming = torch.zeros(n, 2, dtype=torch.float64).index_add_(0, dst, w)
    has_in = indeg > 0
    torch.testing.assert_close(incoming[has_in], torch.ones_like(incoming[has_in]), atol=1e-12, rtol=0)
    share = torch.zeros(n, 2, dtype=torch.float64).index_add_(0, src, w)
    worst = torch.zeros(n, dtype=torch.float64).scatter_reduce(0, src, indeg[dst], reduce="amax")
    floor = (1.0 - alpha if normalization == "hybrid" else 1.0) / worst
    senders = torch.bincount(src, minlength=n) > 0
    assert bool((share[senders] >= floor[senders, None] - 1e-12).all())


def test_softmax_has_no_minimum_share():
    """Softmax can explain a source away: a far-off key gets almost nothing (contrast with the floor above)."""
    q = torch.tensor([[[10.0]], [[0.0]], [[0.0]]], dtype=torch.float64)
    k = torch.tensor([[[0.0]], [[10.0]], [[-10.0]]], dtype=torch.float64)
    v = torch.zeros(3, 1, 1, dtype=torch.float64)
    edges = torch.tensor([[1, 2], [0, 0]])  # node 0 hears 1 and 2; source 2 only sends to 0 (indeg 2)
    _, w_soft = edge_attention(q, k, v, edges, return_weights=True, scale=1.0)
    _, w_doubly = edge_attention(q, k, v, edges, normalization="doubly", return_weights=True, scale=1.0)
    assert w_soft[1].item() < 1e-40
    assert w_doubly[1].item() >= 0.5 - 1e-12


def _args():
    q, k, v, edges = random_graph(5, 6, 0)
    return q, k, v, edges


@pytest.mark.parametrize(
    ("change", "error", "match"),
    [
        (lambda a: {**a, "q": a["q"][None]}, ValueError, "q must be 3-D"),
        (lambda a: {**a, "k": a["k"].float()}, TypeError, "share a dtype"),
        (lambda a: {**a, "v": a["v"][:4]}, ValueError, "agree on \\(num_nodes, heads\\)"),
        (lambda a: {**a, "k": a["k"][..., :2]}, ValueError, "share head_dim"),
        (lambda a: {**a, "q": a["q"].long()}, TypeError, "q must be a floating-point"),
        (lambda a: {**a, "edge_index": a["edge_index"].t()}, ValueError, "edge_index must have shape \\(2, E\\)"),
        (lambda a: {**a, "edge_index": a["edge_index"].float()}, TypeError, "edge_index must hold int64"),
        (lambda a: {**a, "edge_index": a["edge_index"] + 5}, ValueError, "outside \\[0, 5\\)"),
        (lambda a: {**a, "edge_index": [[0], [1]]}, TypeError, "edge_index must be a torch.Tensor"),
        (lambda a: {**a, "normalization": "l2"}, ValueError, "normalization must be one of"),
        (lambda a: {**a, "num_nodes": 4}, ValueError, "num_nodes must be None or equal"),
        (lambda a: {**a, "scale": float("nan")}, ValueError, "scale must be a finite"),
        (lambda a: {**a, "sinkhorn_iters": 0}, ValueError, "sinkhorn_iters must be an integer >= 1"),
        (lambda a: {**a, "return_weights": 1}, TypeError, "return_weights must be a bool"),
        (lambda a: {**a, "normalization": "hybrid", "hybrid_alpha": 1.5}, ValueError, "hybrid_alpha must lie"),
        (lambda a: {**a, "normalization": "hybrid", "hybrid_alpha": torch.ones(3)}, ValueError,
         "hybrid_alpha tensor must have shape"),
        (lambda a: {**a, "edge_mask": torch.ones(3, dtype=torch.bool)}, ValueError, "edge_mask must have shape"),
        (lambda a: {**a, "edge_mask": torch.ones(a["edge_index"].shape[1])}, TypeError, "edge_mask must be bool"),
        (lambda a: {**a, "q": a["q"].clone().fill_(float("nan"))}, ValueError, "q contains NaN"),
    ],
)
def test_bad_arguments(change, error, match):
    q, k, v, edges = _args()
    kwargs = change({"q": q, "k": k, "v": v, "edge_index": edges})
    with pytest.raises(error, match=match):
        edge_attention(kwargs.pop("q"), kwargs.pop("k"), kwargs.pop("v"), kwargs.pop("edge_index"), **kwargs)


def test_overflow_is_an_error_not_nan():
    q, k, v, edges = random_graph(5, 8, 0)
    with pytest.raises(ValueError, match="not finite"):
        edge_attention(q.float() * 1e30, k.float() * 1e30, v.float(), edges)
