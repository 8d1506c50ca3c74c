"""Hand-checkable vectors of doubly-normalized attention (exact fractions) and its invariances."""

from __future__ import annotations

import math
from fractions import Fraction as Fr

import torch

from probattn.functional import attention, doubly_weights, hybrid_weights, sinkhorn_weights, softmax_weights
from probattn.masks import build_mask_spec

# Example 1: exp(S) = [[8,4,1],[4,8,1],[8,4,2]], scale 1 (the scores are given).
K0 = [[8, 4, 1], [4, 8, 1], [8, 4, 2]]
S = torch.tensor(K0, dtype=torch.float64).log().view(1, 1, 3, 3)
V = torch.tensor([[1, 0], [0, 1], [1, 1]], dtype=torch.float64).view(1, 1, 3, 2)


def _frac(rows):
    return torch.tensor([[float(x) for x in row] for row in rows], dtype=torch.float64).view(1, 1, 3, -1)


def _spec(lq=3, lk=3, **kw):
    return build_mask_spec(batch=1, heads=1, q_len=lq, k_len=lk, device=torch.device("cpu"), **kw)


def _attend(normalization, **kw):
    """Run the public function on scores S by choosing q = S-rows and k = identity with scale 1."""
    q = S.clone()
    k = torch.eye(3, dtype=torch.float64).view(1, 1, 3, 3)
    return attention(q, k, V, normalization=normalization, scale=1.0, return_weights=True, **kw)


def test_example1_softmax_rows_and_column_sums():
    expected = _frac([[Fr(8, 13), Fr(4, 13), Fr(1, 13)], [Fr(4, 13), Fr(8, 13), Fr(1, 13)], [Fr(4, 7), Fr(2, 7), Fr(1, 7)]])
    out, w = _attend("softmax")
    torch.testing.assert_close(w, expected, atol=1e-15, rtol=0)
    torch.testing.assert_close(w.sum(-2).flatten(), torch.tensor([136 / 91, 110 / 91, 27 / 91], dtype=torch.float64))
    torch.testing.assert_close(out, _frac([[Fr(9, 13), Fr(5, 13)], [Fr(5, 13), Fr(9, 13)], [Fr(5, 7), Fr(3, 7)]]))


def test_example1_doubly_steps_rows_and_outputs():
    spec = _spec()
    c = S.logsumexp(dim=-2)
    torch.testing.assert_close(c.flatten(), torch.tensor([20.0, 16.0, 4.0], dtype=torch.float64).log())
    expected = _frac([[Fr(4, 9), Fr(5, 18), Fr(5, 18)], [Fr(4, 19), Fr(10, 19), Fr(5, 19)],
                      [Fr(8, 23), Fr(5, 23), Fr(10, 23)]])
    torch.testing.assert_close(doubly_weights(S, spec), expected, atol=1e-15, rtol=0)
    out, w = _attend("doubly")
    torch.testing.assert_close(w, expected, atol=1e-15, rtol=0)
    torch.testing.assert_close(
        w.sum(-2).flatten(),
        torch.tensor([3944 / 3933, 8035 / 7866, 7675 / 7866], dtype=torch.float64),
    )
    torch.testing.assert_close(
        out, _frac([[Fr(13, 18), Fr(5, 9)], [Fr(9, 19), Fr(15, 19)], [Fr(18, 23), Fr(15, 23)]]), atol=1e-15, rtol=0
    )


def test_example1_hybrid_and_sinkhorn_column_sums():
    spec = _spec()
    hybrid = hybrid_weights(S, spec, 0.5)
    torch.testing.assert_close(hybrid.sum(-2).flatten(), torch.tensor([1.2487, 1.1151, 0.6362], dtype=torch.float64),
                               atol=1e-4, rtol=0)
    two = sinkhorn_weights(S, spec, 2).sum(-2).flatten()
    torch.testing.assert_close(two, torch.tensor([0.9993, 1.0016, 0.9991], dtype=torch.float64), atol=1e-4, rtol=0)
    assert (sinkhorn_weights(S, spec, 3).sum(-2) - 1).abs().max() < 1.25e-4  # the spec: "within 1.2e-4" (measured 1.23e-4)
    assert (sinkhorn_weights(S, spec, 5).sum(-2) - 1).abs().max() < 1e-5


def test_example2_padded_query_does_not_steal_column_mass():
    scores = torch.tensor([[2.0, 0, 1], [0, 2, 1], [5, 5, 5]], dtype=torch.float64).view(1, 1, 3, 3)
    valid = torch.tensor([[True, True, False]])
    w = doubly_weights(scores, _spec(query_padding_mask=valid))
    e2 = math.e**2
    row0 = torch.tensor([e2 / (e2 + 1), 1 / (1 + e2), 0.5], dtype=torch.float64) / 1.5
    torch.testing.assert_close(w[0, 0, 0], row0)
    torch.testing.assert_close(w[0, 0, :2], torch.tensor([[0.5872, 0.0795, 0.3333], [0.0795, 0.5872, 0.3333]],
                                                         dtype=torch.float64), atol=1e-4, rtol=0)
    assert (w[0, 0, 2] == 0).all()
    wrong = doubly_weights(scores, _spec())  # padding ignored: the documented wrong answer
    torch.testing.assert_close(wrong[0, 0, 0], torch.tensor([0.6621, 0.0896, 0.2483], dtype=torch.float64),
                               atol=1e-4, rtol=0)


def test_softmax_has_no_lower_bound_but_doubly_does():
    scores = torch.tensor([[15.0, 0, 0]] * 3, dtype=torch.float64).view(1, 1, 3, 3)
    soft = softmax_weights(scores, _spec()).sum(-2).flatten()
    e15 = math.exp(15)
    exact = torch.tensor([3 * e15 / (e15 + 2), 3 / (e15 + 2), 3 / (e15 + 2)], dtype=torch.float64)  # [3.0, 9e-7, 9e-7]
    torch.testing.assert_close(soft, exact, atol=1e-15, rtol=0)
    assert doubly_weights(scores, _spec()).sum(-2).min() >= 1 / 3 - 1e-12


def test_per_key_bias_invariance_and_degeneracies():
    g = torch.Generator().manual_seed(0)
    scores = torch.randn(2, 3, 4, 5, generator=g, dtype=torch.float64)
    spec = build_mask_spec(batch=2, heads=3, q_len=4, k_len=5, device=torch.device("cpu"))
    per_key = torch.randn(2, 3, 1, 5, generator=g, dtype=torch.float64) * 10
    torch.testing.assert_close(doubly_weights(scores + per_key, spec), doubly_weights(scores, spec))
    per_query = torch.randn(2, 3, 4, 1, generator=g, dtype=torch.float64)
    assert not torch.allclose(doubly_weights(scores + per_query, spec), doubly_weights(scores, spec))
    identical_rows = scores[:, :, :1].expand(2, 3, 4, 5)
    torch.testing.assert_close(doubly_weights(identical_rows, spec), torch.full((2, 3, 4, 5), 0.2, dtype=torch.float64))
