"""Key/query alignment: MMD with the median bandwidth and the mean-vector distance."""

import math

import pytest
import torch

from probattn.metrics import mean_distance, mmd_rbf, qk_alignment


def _cloud(points):
    return torch.tensor(points, dtype=torch.float64)[None, None]  # (1, 1, N, d)


def test_mmd_hand_value():
    # x = {0}, y = {1} in 1-D: pooled distances are all 1, so sigma = 1 and MMD^2 = 2 - 2 exp(-1/2)
    x, y = _cloud([[0.0]]), _cloud([[1.0]])
    assert mmd_rbf(x, y).item() == pytest.approx(2 - 2 * math.exp(-0.5))
    # fixed bandwidth sigma = 2: 2 - 2 exp(-1/8)
    assert mmd_rbf(x, y, bandwidth=2.0).item() == pytest.approx(2 - 2 * math.exp(-1 / 8))


def test_mmd_extremes():
    x = torch.randn(2, 3, 7, 4, dtype=torch.float64)
    torch.testing.assert_close(mmd_rbf(x, x), torch.zeros(2, 3, dtype=torch.float64))
    far = mmd_rbf(x, x + 100)
    near = mmd_rbf(x, x + 0.01)
    assert bool((far > near).all())
    assert bool((far <= 2 + 1e-12).all())


def test_mmd_matches_reference_with_padding():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 1, 5, 3, generator=g, dtype=torch.float64)
    y = torch.randn(1, 1, 4, 3, generator=g, dtype=torch.float64) + 0.5
    xv = torch.tensor([[True, True, True, False, False]])
    yv = torch.tensor([[True, False, True, True]])
    got = mmd_rbf(x, y, x_valid=xv, y_valid=yv)
    a, b = x[0, 0, xv[0]], y[0, 0, yv[0]]
    pooled = torch.cat([a, b])
    d = torch.cdist(pooled, pooled)
    upper = torch.triu_indices(len(pooled), len(pooled), offset=1)
    sigma = d[upper[0], upper[1]].median()  # lower median

    def k(u, v):
        return torch.exp(-torch.cdist(u, v) ** 2 / (2 * sigma**2)).mean()

    ref = k(a, a) + k(b, b) - 2 * k(a, b)
    assert got.item() == pytest.approx(ref.item())


def test_mean_distance_and_gqa():
    q = _cloud([[0.0, 0.0], [2.0, 0.0]])
    k = _cloud([[0.0, 3.0], [2.0, 5.0]])
    assert mean_distance(q, k).item() == pytest.approx(4.0)
    q2 = torch.randn(1, 4, 6, 8, dtype=torch.float64)
    k2 = torch.randn(1, 2, 6, 8, dtype=torch.float64)
    mmd, dist = qk_alignment(q2, k2)
    assert mmd.shape == dist.shape == (1, 4)
    assert dist[0, 1].item() == pytest.approx(mean_distance(q2[:, 1:2], k2[:, 0:1]).item())
    assert dist[0, 2].item() == pytest.approx(mean_distance(q2[:, 2:3], k2[:, 1:2]).item())


def test_bad_input():
    with pytest.raises(ValueError, match="multiple"):
        qk_alignment(torch.randn(1, 3, 4, 2), torch.randn(1, 2, 4, 2))
    with pytest.raises(ValueError, match="x_valid"):
        mmd_rbf(torch.randn(1, 1, 4, 2), torch.randn(1, 1, 4, 2), x_valid=torch.ones(1, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match="bandwidth"):
        mmd_rbf(torch.randn(1, 1, 4, 2), torch.randn(1, 1, 4, 2), bandwidth=0.0)
