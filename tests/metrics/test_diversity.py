"""Head diversity: extremes (identical heads, disjoint one-hot heads), CKA against its definition."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from probattn.metrics import (
    head_cka_from_covariance,
    head_js_divergence,
    lin_redundancy,
    linear_cka,
    parameter_cosine_similarity,
)
from probattn.metrics.streaming import MomentAccumulator


def test_identical_heads_have_zero_divergence():
    w = torch.softmax(torch.randn(2, 1, 5, 6, dtype=torch.float64), -1).expand(2, 3, 5, 6)
    torch.testing.assert_close(head_js_divergence(w), torch.zeros(2, 3, 3, dtype=torch.float64))


def test_disjoint_one_hot_heads_have_maximal_divergence():
    eye = torch.eye(4, dtype=torch.float64)
    w = torch.stack([eye, eye.roll(1, dims=-1)])[None]  # head 1 attends to a different key at every query
    js = head_js_divergence(w)
    torch.testing.assert_close(js[0], torch.tensor([[0.0, 1.0], [1.0, 0.0]], dtype=torch.float64))
    assert lin_redundancy(w).item() == pytest.approx(0.0)  # one-hot, distinct keys
    same = torch.stack([eye, eye])[None]
    assert lin_redundancy(same).item() == pytest.approx(math.sqrt(2))  # sqrt(H^2 - H)


def test_js_hand_value_and_query_padding():
    # p = [1, 0], r = [1/2, 1/2]: JS = 1/2 KL(p||m) + 1/2 KL(r||m), m = [3/4, 1/4]
    expected = 0.5 * math.log2(4 / 3) + 0.5 * (0.5 * math.log2(0.5 / 0.75) + 0.5 * math.log2(0.5 / 0.25))
    p = torch.tensor([[1.0, 0.0], [0.3, 0.7]], dtype=torch.float64)
    r = torch.tensor([[0.5, 0.5], [0.9, 0.1]], dtype=torch.float64)
    w = torch.stack([p, r])[None]
    js = head_js_divergence(w, query_valid=torch.tensor([[True, False]]))
    assert js[0, 0, 1].item() == pytest.approx(expected)
    assert js[0, 1, 0].item() == pytest.approx(expected)


@settings(max_examples=25, deadline=None)
@given(st.integers(1, 3), st.integers(2, 4), st.integers(1, 5), st.integers(1, 6), st.integers(0, 10_000))
def test_js_properties(b, h, lq, lk, seed):
    g = torch.Generator().manual_seed(seed)
    w = torch.softmax(3 * torch.randn(b, h, lq, lk, generator=g, dtype=torch.float64), -1)
    js = head_js_divergence(w)
    torch.testing.assert_close(js, js.transpose(1, 2))
    assert bool((js >= 0).all()) and bool((js <= 1).all())
    torch.testing.assert_close(js.diagonal(dim1=1, dim2=2), torch.zeros(b, h, dtype=torch.float64))


def test_linear_cka_definition_and_invariances():
    x = torch.randn(50, 4, dtype=torch.float64)
    q, _ = torch.linalg.qr(torch.randn(4, 4, dtype=torch.float64))
    assert linear_cka(x, x).item() == pytest.approx(1.0)
    assert linear_cka(x, 3 * x @ q + 1).item() == pytest.approx(1.0)  # rotation, scale, shift
    y = torch.randn(50, 3, dtype=torch.float64)
    # definition via HSIC with centred Gram matrices: tr(Kc Lc) / sqrt(tr(Kc Kc) tr(Lc Lc))
    h = torch.eye(50, dtype=torch.float64) - 1 / 50
    kc, lc = h @ x @ x.T @ h, h @ y @ y.T @ h
    ref = (kc * lc).sum() / ((kc * kc).sum() * (lc * lc).sum()).sqrt()
    assert linear_cka(x, y).item() == pytest.approx(ref.item())


def test_streamed_head_cka_matches_one_shot():
    outputs = torch.randn(3, 20, 3, 4, dtype=torch.float64)  # (B, L, H, Dv)
    outputs[:, :, 2] = outputs[:, :, 0] * 2  # head 2 copies head 0
    acc = MomentAccumulator(12)
    for b in range(3):
        acc.update(outputs[b].flatten(1))
    cka = head_cka_from_covariance(acc.covariance(), heads=3)
    flat = outputs.reshape(60, 3, 4)
    for g in range(3):
        for h in range(3):
            assert cka[g, h].item() == pytest.approx(linear_cka(flat[:, g], flat[:, h]).item())
    assert cka[0, 2].item() == pytest.approx(1.0)


def test_parameter_cosine_extremes():
    same = torch.ones(3, 5)
    assert parameter_cosine_similarity(same).item() == pytest.approx(1.0)
    # three unit vectors at 120 degrees reach the minimum -1/(H-1)
    angles = torch.tensor([0.0, 2 * math.pi / 3, 4 * math.pi / 3])
    spread = torch.stack([angles.cos(), angles.sin()], -1)
    assert parameter_cosine_similarity(spread).item() == pytest.approx(-0.5, abs=1e-6)
    with pytest.raises(ValueError, match="head_params"):
        parameter_cosine_similarity(torch.ones(1, 5))
