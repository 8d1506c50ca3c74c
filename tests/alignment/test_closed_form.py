import math

import pytest
import torch

from probattn.alignment.closed_form import (
    BANDWIDTHS,
    _entropic_ot,
    _weights,
    mmd,
    sinkhorn_divergence,
)
from probattn.metrics.alignment import squared_distances

from ._reference import entropic_ot_unrolled, mmd_reference


def _points(*shape, seed, shift=0.0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=torch.float64) + shift


def test_single_points_hand_checkable():
    # one point each at squared distance D: the mean distance is D, so MMD^2 = mean_c (2 - 2 exp(-1/c))
    x = torch.tensor([[[0.0, 0.0]]], dtype=torch.float64)
    y = torch.tensor([[[3.0, 4.0]]], dtype=torch.float64)
    one = torch.ones(1, 1, dtype=torch.bool)
    want = sum(2 - 2 * math.exp(-1 / c) for c in BANDWIDTHS) / len(BANDWIDTHS)
    assert mmd(x, y, one, one).item() == pytest.approx(want, rel=1e-12)
    # entropic OT between two Diracs is the cost itself; self terms are 0 -> divergence = 25
    assert sinkhorn_divergence(x, y, one, one).item() == pytest.approx(25.0, rel=1e-9)


def test_mmd_matches_loop_reference_and_ignores_padding():
    x, y = _points(2, 6, 3, seed=0), _points(2, 5, 3, seed=1, shift=0.5)
    xv = torch.tensor([[1, 1, 1, 1, 0, 0], [1] * 6], dtype=torch.bool)
    yv = torch.tensor([[1, 1, 1, 0, 0], [1, 0, 1, 1, 1]], dtype=torch.bool)
    got = mmd(x, y, xv, yv)
    for b in range(2):
        assert got[b].item() == pytest.approx(mmd_reference(x[b][xv[b]], y[b][yv[b]], BANDWIDTHS), rel=1e-10)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("cloud", ["one point", "six copies of one point", "tiny spread far from 0"])
def test_mmd_gradients_stay_bounded_when_keys_equal_queries(cloud, dtype):
    """At its own optimum (keys == queries) the bandwidth must not collapse to 0 (once: |grad| 1e+30, inf, NaN)."""
    g = torch.Generator().manual_seed(0)
    point = torch.randn(1, 1, 8, generator=g, dtype=torch.float64)
    points = {"one point": point, "six copies of one point": point.expand(1, 6, 8),
              "tiny spread far from 0": 10 + 1e-4 * torch.randn(1, 6, 8, generator=g, dtype=torch.float64)}[cloud]
    x, y = (points.to(dtype).clone().requires_grad_() for _ in range(2))
    value = mmd(x, y, None, None).sum()
    value.backward()
    assert abs(value.item()) < 1e-5
    for grad in (x.grad, y.grad):
        assert torch.isfinite(grad).all() and grad.abs().max() < 1e-3
    # the floor is relative to the data's size: the same cloud scaled by 1000 gives the same (scaled) picture
    big = mmd(1000 * points, 1000 * points + 1e-2, None, None)
    assert big.item() == pytest.approx(mmd(points, points + 1e-5, None, None).item(), rel=1e-4)


def test_entropic_ot_value_and_gradient_match_unrolled_autograd():
    x = _points(7, 3, seed=2).requires_grad_()
    y = _points(6, 3, seed=3, shift=1.0)
    eps, iters = 0.5, 400
    ref = entropic_ot_unrolled(x, y, eps, iters)
    (ref_grad,) = torch.autograd.grad(ref, x)
    a = _weights(None, torch.Size([1, 7]), x.dtype, x.device)
    b = _weights(torch.ones(1, 6, dtype=torch.bool), torch.Size([1, 6]), x.dtype, x.device)
    got = _entropic_ot(squared_distances(x[None], y[None]), a, b, torch.tensor([[[eps]]], dtype=x.dtype), iters)[0]
    (got_grad,) = torch.autograd.grad(got, x)
    assert got.item() == pytest.approx(ref.item(), rel=1e-8)
    torch.testing.assert_close(got_grad, ref_grad, rtol=1e-6, atol=1e-8)


def test_sinkhorn_divergence_ignores_padding_and_is_zero_on_identical_clouds():
    x, y = _points(1, 6, 3, seed=4), _points(1, 5, 3, seed=5, shift=1.0)
    xv = torch.tensor([[1, 1, 1, 1, 0, 0]], dtype=torch.bool)
    yv = torch.ones(1, 5, dtype=torch.bool)
    padded = sinkhorn_divergence(x, y, xv, yv, iters=200)
    trimmed = sinkhorn_divergence(x[:, :4], y, xv[:, :4], yv, iters=200)
    torch.testing.assert_close(padded, trimmed)
    assert sinkhorn_divergence(x, x, xv, xv, iters=200).abs().item() < 1e-8
    assert padded.item() > 0


@pytest.mark.parametrize("distance", [mmd, sinkhorn_divergence])
def test_matched_clouds_score_lower_than_shifted(distance):
    ones = torch.ones(3, 20, dtype=torch.bool)
    x, y = _points(3, 20, 4, seed=6), _points(3, 20, 4, seed=7)
    matched = distance(x, y, ones, ones)
    shifted = distance(x, y + 2.0, ones, ones)
    assert (matched < shifted).all()
    assert (matched >= -1e-12).all()
