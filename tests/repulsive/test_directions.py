"""SVGD / SPOS directions: spec §9 vectors, float64 reference, kernel-energy gradient, properties, edge cases."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from probattn.repulsive import spos_direction, svgd_direction, svgd_terms

F64 = torch.float64
THETA = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 2.0]], dtype=F64)
GRADS = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]], dtype=F64)


def reference_svgd(theta, grads, *, alpha, median="true", div="h2", normalize=True, stepsize=1.0):
    """Textbook loops in float64: Ĝ_i = s/M Σ_j [k_ij g_j − α k_ij (θ_i − θ_j) / h²]."""
    theta, grads = theta.to(F64), grads.to(F64)
    m = theta.shape[0]
    d2 = torch.tensor([[float(((theta[i] - theta[j]) ** 2).sum()) for j in range(m)] for i in range(m)], dtype=F64)
    ordered = sorted(d2.flatten().tolist())
    n = len(ordered)
    med = ordered[(n - 1) // 2] if median == "lower" else 0.5 * (ordered[(n - 1) // 2] + ordered[n // 2])
    h2 = med / (2 * math.log(m + 1))
    out = torch.zeros_like(grads)
    for i in range(m):
        for j in range(m):
            k = math.exp(-float(d2[i, j]) / (2 * h2))
            out[i] += k * grads[j] - alpha * k * (theta[i] - theta[j]) / (h2 if div == "h2" else math.sqrt(h2))
    return stepsize * out / (m if normalize else 1)


def test_spec_vectors_exact():
    terms = svgd_terms(THETA, GRADS)
    assert terms.bandwidth.item() ** 2 == pytest.approx(1 / (2 * math.log(4)), abs=1e-12)
    expected_kernel = 4.0 ** -torch.tensor([[0, 1, 4], [1, 0, 5], [4, 5, 0]], dtype=F64)
    torch.testing.assert_close(terms.kernel, expected_kernel, rtol=0, atol=1e-15)
    expected = torch.tensor([[0.565684, 0.091856], [-0.148293, 0.335464], [0.335538, 0.324634]], dtype=F64)
    torch.testing.assert_close(svgd_direction(THETA, GRADS, alpha=1.0), expected, rtol=0, atol=1e-6)
    repulsion = torch.tensor([[0.231049, 0.007220], [-0.231952, 0.001805], [0.000903, -0.009025]], dtype=F64)
    torch.testing.assert_close(svgd_direction(THETA, torch.zeros_like(GRADS), alpha=1.0), repulsion, rtol=0, atol=1e-6)


def test_spec_median_kinds_m4():
    theta = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [3.0, 3.0]], dtype=F64)
    lower = svgd_terms(theta, theta, median="lower").bandwidth ** 2
    true = svgd_terms(theta, theta, median="true").bandwidth ** 2
    assert lower.item() == pytest.approx(1.0 / (2 * math.log(5)), abs=1e-12)
    assert true.item() == pytest.approx(1.5 / (2 * math.log(5)), abs=1e-12)


def test_descending_pure_repulsion_moves_heads_apart():
    step = svgd_direction(THETA, torch.zeros_like(GRADS), alpha=1.0)
    before = torch.cdist(THETA, THETA)
    after = torch.cdist(THETA - 0.1 * step, THETA - 0.1 * step)
    assert (after[0, 1:] > before[0, 1:]).all()


@pytest.mark.parametrize("median", ["true", "lower"])
@pytest.mark.parametrize("div", ["h2", "h"])
@pytest.mark.parametrize("normalize", [True, False])
def test_matches_float64_reference(median, div, normalize):
    gen = torch.Generator().manual_seed(0)
    theta, grads = torch.randn(5, 7, generator=gen), torch.randn(5, 7, generator=gen)
    out = svgd_direction(theta, grads, alpha=0.3, median=median, kernel_grad_div=div, normalize_by_M=normalize,
                         stepsize=0.5)
    expected = reference_svgd(theta, grads, alpha=0.3, median=median, div=div, normalize=normalize, stepsize=0.5)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out.to(F64), expected, rtol=1e-5, atol=1e-6)


def test_batched_equals_each_block():
    gen = torch.Generator().manual_seed(1)
    theta, grads = torch.randn(3, 4, 6, dtype=F64, generator=gen), torch.randn(3, 4, 6, dtype=F64, generator=gen)
    batched = svgd_direction(theta, grads, alpha=0.1)
    for b in range(3):
        torch.testing.assert_close(batched[b], reference_svgd(theta[b], grads[b], alpha=0.1))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_computed_in_float32(dtype):
    gen = torch.Generator().manual_seed(2)
    theta, grads = torch.randn(4, 64, generator=gen), torch.randn(4, 64, generator=gen)
    out = svgd_direction(theta.to(dtype), grads.to(dtype), alpha=0.1)
    assert out.dtype == dtype
    expected = reference_svgd(theta.to(dtype), grads.to(dtype), alpha=0.1)
    torch.testing.assert_close(out.to(F64), expected, rtol=2e-2, atol=2e-2)


def test_repulsion_is_minus_gradient_of_kernel_energy_with_fixed_bandwidth():
    gen = torch.Generator().manual_seed(3)
    theta = torch.randn(6, 5, dtype=F64, generator=gen)
    terms = svgd_terms(theta, torch.zeros_like(theta))
    h2 = terms.bandwidth.detach() ** 2

    def energy(t):
        diff = t[:, None, :] - t[None, :, :]
        return 0.5 * torch.exp(-diff.square().sum(-1) / (2 * h2)).sum()

    leaf = theta.clone().requires_grad_(True)
    (autograd,) = torch.autograd.grad(energy(leaf), leaf)
    torch.testing.assert_close(terms.repulsion, -autograd, rtol=1e-10, atol=1e-12)
    # central finite differences of the same energy
    fd = torch.zeros_like(theta)
    eps = 1e-6
    for idx in range(theta.numel()):
        e = torch.zeros(theta.numel(), dtype=F64)
        e[idx] = eps
        e = e.view_as(theta)
        fd.view(-1)[idx] = (energy(theta + e) - energy(theta - e)) / (2 * eps)
    torch.testing.assert_close(terms.repulsion, -fd, rtol=1e-6, atol=1e-8)


def test_permutation_equivariance():
    gen = torch.Generator().manual_seed(4)
    theta, grads = torch.randn(6, 9, dtype=F64, generator=gen), torch.randn(6, 9, dtype=F64, generator=gen)
    perm = torch.randperm(6, generator=gen)
    out = svgd_direction(theta, grads, alpha=0.7)
    torch.testing.assert_close(svgd_direction(theta[perm], grads[perm], alpha=0.7), out[perm])


def test_scale_property_kernel_invariant_repulsion_inverse():
    gen = torch.Generator().manual_seed(5)
    theta, grads = torch.randn(5, 4, dtype=F64, generator=gen), torch.randn(5, 4, dtype=F64, generator=gen)
    base, scaled = svgd_terms(theta, grads), svgd_terms(3.0 * theta, grads)
    torch.testing.assert_close(scaled.kernel, base.kernel)
    torch.testing.assert_close(scaled.repulsion, base.repulsion / 3.0)


def test_single_head_is_a_no_op():
    grads = torch.randn(1, 8)
    out = svgd_direction(torch.randn(1, 8), grads, alpha=1.0, stepsize=0.1)
    torch.testing.assert_close(out, grads)
    torch.testing.assert_close(spos_direction(torch.randn(1, 8), grads, alpha=1.0, beta=1.0), grads)


@pytest.mark.parametrize("median", ["true", "lower"])
def test_two_heads_and_identical_heads_stay_finite(median):
    two = torch.tensor([[0.0, 0.0], [1.0, 0.0]])
    grads = torch.randn(2, 2)
    assert torch.isfinite(svgd_direction(two, grads, alpha=1.0, median=median)).all()
    identical = torch.ones(4, 3).repeat(2, 1, 1)
    grads = torch.randn(2, 4, 3)
    out = svgd_direction(identical, grads, alpha=1.0, median=median)
    # identical heads: K = 1 everywhere, no repulsion, every head gets the mean gradient
    torch.testing.assert_close(out, grads.mean(dim=1, keepdim=True).expand_as(grads))
    assert torch.isfinite(svgd_direction(torch.zeros(3, 5), torch.randn(3, 5), alpha=1.0, median=median)).all()


def test_two_heads_true_median_value():
    two = torch.tensor([[0.0, 0.0], [2.0, 0.0]], dtype=F64)  # D2 entries [0, 0, 4, 4]: true median 2
    torch.testing.assert_close(svgd_terms(two, two).bandwidth ** 2, torch.tensor(2 / (2 * math.log(3)), dtype=F64))


def test_spos_formula_with_seeded_generator():
    gen = torch.Generator().manual_seed(6)
    theta, grads = torch.randn(4, 5, dtype=F64, generator=gen), torch.randn(4, 5, dtype=F64, generator=gen)
    alpha, beta, s = 0.2, 0.5, 0.1
    out = spos_direction(theta, grads, alpha=alpha, beta=beta, stepsize=s,
                         generator=torch.Generator().manual_seed(7))
    xi = torch.randn(4, 5, dtype=F64, generator=torch.Generator().manual_seed(7))
    svgd = reference_svgd(theta, grads, alpha=alpha)
    expected = s * (svgd + beta * grads - math.sqrt(2 * beta / s) * grads.abs().flatten().median() * xi)
    torch.testing.assert_close(out, expected)
    torch.testing.assert_close(spos_direction(theta, grads, alpha=alpha, beta=0.0, stepsize=s),
                               svgd_direction(theta, grads, alpha=alpha, stepsize=s))


@given(m=st.integers(2, 6), p=st.integers(1, 8), shift=st.floats(-100, 100), seed=st.integers(0, 2**16))
@settings(max_examples=25, deadline=None)
def test_translation_invariant_and_finite(m, p, shift, seed):
    gen = torch.Generator().manual_seed(seed)
    theta, grads = torch.randn(m, p, dtype=F64, generator=gen), torch.randn(m, p, dtype=F64, generator=gen)
    out = svgd_direction(theta, grads, alpha=0.5)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(svgd_direction(theta + shift, grads, alpha=0.5), out, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        (dict(particles=torch.zeros(3, 2), grads=torch.zeros(3, 3)), ValueError,
         r"particles \(3, 2\) and grads \(3, 3\) must have the same shape"),
        (dict(particles=torch.zeros(6), grads=torch.zeros(6)), ValueError, r"particles must be \(M, P\) or \(B, M, P\)"),
        (dict(particles=torch.zeros(3, 2, dtype=torch.long), grads=torch.zeros(3, 2, dtype=torch.long)), TypeError,
         "particles and grads must be floating-point"),
        (dict(alpha=-1.0), ValueError, r"alpha must be a finite number >= 0, got -1\.0"),
        (dict(stepsize=0.0), ValueError, r"stepsize must be a finite number > 0, got 0\.0"),
        (dict(median="upper"), ValueError, "median must be 'true' or 'lower', got 'upper'"),
        (dict(kernel_grad_div="h3"), ValueError, "kernel_grad_div must be 'h2' or 'h', got 'h3'"),
        (dict(bandwidth=-1.0), ValueError, r"bandwidth must be 'median' or a positive number h, got -1\.0"),
        (dict(bandwidth=1e-30), ValueError, r"bandwidth h = 1e-30 is outside \[3\.29e-10, 1\.84e\+19\]"),  # NaN
        (dict(bandwidth=1e300), ValueError, r"bandwidth h = 1e\+300 is outside"),  # raw OverflowError
    ],
)
def test_bad_input_is_named(kwargs, error, match):
    args = dict(particles=torch.randn(3, 2), grads=torch.randn(3, 2), alpha=0.1) | kwargs
    with pytest.raises(error, match=match):
        svgd_direction(**args)
