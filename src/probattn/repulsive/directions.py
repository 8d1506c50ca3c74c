"""SVGD and SPOS gradient rewrites over a set of particles (repulsive.md §3.2, the authors' exact transform).

Shapes: ``particles`` Θ and ``grads`` G are ``(M, P)`` or batched ``(B, M, P)``: row i is head i's parameters and
its ordinary loss gradient. With the RBF kernel ``K`` (:mod:`probattn.repulsive.kernels`) and

    R_i = Σ_j K_ij (Θ_i − Θ_j) / h²        (repulsion: minus the kernel-energy gradient, §3.5)

the rewritten gradients, which the optimizer then descends, are

    SVGD:  Ĝ = s · (K·G − α·R) / M
    SPOS:  Ĝ = s · [ (K·G − α·R) / M + β·G − sqrt(2β/s) · median|G| · Ξ ],   Ξ ~ N(0, I)

(s = ``stepsize``; ``normalize_by_M=False`` drops the 1/M). Descending −α·R moves each head away from the
others. Everything is computed in float32 or wider and returned in the dtype of ``grads``. M = 1 returns the
gradients unchanged; identical heads and M = 2 stay finite (bandwidth floor, true median).

:func:`svgd_terms` spells the pieces out one by one; :func:`svgd_direction` computes the same in two batched
matrix products, ``Ĝ = c·K·G + c·(α/h²)·(K·Θ − rowsum(K) ⊙ Θ)`` with ``c = s/M`` folded into the M×M factors.
"""

from __future__ import annotations

import math
from typing import Literal, NamedTuple

import torch
from torch import Tensor

from probattn.repulsive.kernels import (
    MedianKind,
    median_bandwidth,
    min_squared_bandwidth,
    rbf_kernel,
    sq_dists_from_gram,
)

KernelGradDiv = Literal["h2", "h"]
Bandwidth = float | Literal["median"]

__all__ = ["KernelGradDiv", "SVGDTerms", "spos_direction", "svgd_direction", "svgd_terms"]


class SVGDTerms(NamedTuple):
    """The pieces of an SVGD direction, in the compute dtype (float32 or wider)."""

    kernel: Tensor  # K (..., M, M)
    bandwidth: Tensor  # h (...,), k(a, b) = exp(−‖a − b‖² / (2h²))
    driving: Tensor  # K·G (..., M, P): kernel-weighted average of all heads' gradients
    repulsion: Tensor  # R (..., M, P)


class KernelParts(NamedTuple):
    """Kernel of a particle set and what it was computed from (compute dtype)."""

    centred: Tensor  # Θ − mean_i Θ_i (..., M, P); R and D2 are translation invariant
    mean: Tensor  # mean_i Θ_i (..., 1, P)
    gram: Tensor  # centred Gram matrix (..., M, M)
    kernel: Tensor  # K (..., M, M)
    h2: Tensor  # squared bandwidth (...,)


def _check_particles(particles: Tensor, grads: Tensor) -> None:
    if not isinstance(particles, Tensor) or not isinstance(grads, Tensor):
        raise TypeError("particles and grads must be torch.Tensor")
    if particles.shape != grads.shape:
        raise ValueError(
            f"particles {tuple(particles.shape)} and grads {tuple(grads.shape)} must have the same shape"
        )
    if particles.dim() not in (2, 3):
        raise ValueError(f"particles must be (M, P) or (B, M, P), got shape {tuple(particles.shape)}")
    if not particles.is_floating_point() or not grads.is_floating_point():
        raise TypeError("particles and grads must be floating-point tensors")


def check_options(alpha: float, stepsize: float, kernel_grad_div: str, bandwidth: Bandwidth) -> None:
    """Raise ValueError naming the first option that cannot work."""
    if not (isinstance(alpha, (int, float)) and math.isfinite(alpha) and alpha >= 0):
        raise ValueError(f"alpha must be a finite number >= 0, got {alpha!r}")
    if not (isinstance(stepsize, (int, float)) and math.isfinite(stepsize) and stepsize > 0):
        raise ValueError(f"stepsize must be a finite number > 0, got {stepsize!r}")
    if kernel_grad_div not in ("h2", "h"):
        raise ValueError(f"kernel_grad_div must be 'h2' or 'h', got {kernel_grad_div!r}")
    if bandwidth != "median" and not (
        isinstance(bandwidth, (int, float)) and not isinstance(bandwidth, bool) and bandwidth > 0
    ):
        raise ValueError(f"bandwidth must be 'median' or a positive number h, got {bandwidth!r}")
    if bandwidth != "median":  # h² in float32's normal range above the median's floor: α / h², 1 / h⁴ stay finite
        low, high = math.sqrt(min_squared_bandwidth(torch.float32)), math.sqrt(torch.finfo(torch.float32).max)
        if not low <= bandwidth <= high:
            raise ValueError(f"bandwidth h = {bandwidth!r} is outside [{low:.3g}, {high:.3g}]: h² would under- or "
                             "overflow in float32 and the direction become NaN; use 'median' or a bandwidth in range")


def compute_dtype(*tensors: Tensor) -> torch.dtype:
    """float32, or wider if an input is wider."""
    dtype = torch.float32
    for t in tensors:
        dtype = torch.promote_types(dtype, t.dtype)
    return dtype


def kernel_parts(
    particles: Tensor, dtype: torch.dtype, *, bandwidth: Bandwidth = "median", median: MedianKind = "true",
    eps: float = 1e-8,
) -> KernelParts:
    """RBF kernel of ``particles (..., M, P)`` computed in ``dtype``, see :mod:`probattn.repulsive.kernels`."""
    theta = particles.detach().to(dtype)
    mean = theta.mean(dim=-2, keepdim=True)
    centred = theta - mean
    gram = centred @ centred.transpose(-1, -2)
    sq_dists = sq_dists_from_gram(gram)
    if bandwidth == "median":
        mean_sq_norm = gram.diagonal(dim1=-2, dim2=-1).mean(dim=-1) + mean.square().sum(dim=(-1, -2))
        h2 = median_bandwidth(sq_dists, mean_sq_norm, median=median, eps=eps)
    else:
        h2 = torch.full(sq_dists.shape[:-2], float(bandwidth) ** 2, dtype=dtype, device=theta.device)
    return KernelParts(centred, mean, gram, rbf_kernel(sq_dists, h2), h2)


def repulsion_scale(parts: KernelParts, alpha: float, kernel_grad_div: KernelGradDiv) -> Tensor:
    """``α / h²`` (or ``α / h``) per particle set, shape ``(...,)``."""
    return alpha / (parts.h2 if kernel_grad_div == "h2" else parts.h2.sqrt())


def fused_svgd(parts: KernelParts, grads: Tensor, *, alpha: float, coef: float, kernel_grad_div: KernelGradDiv) -> Tensor:
    """``coef · (K·G − α·R)`` for batched ``(B, M, P)`` inputs in two ``baddbmm`` (see module doc)."""
    k_driving = parts.kernel * coef
    k_repulsion = k_driving * repulsion_scale(parts, alpha, kernel_grad_div)[:, None, None]
    out = torch.baddbmm(parts.centred * -k_repulsion.sum(dim=-1, keepdim=True), k_driving, grads)
    return out.baddbmm_(k_repulsion, parts.centred)


def spos_noise(grads: Tensor, *, beta: float, stepsize: float, generator: torch.Generator | None) -> Tensor:
    """``β·G − sqrt(2β/s) · median|G| · Ξ`` with the median over each block's entries, ``Ξ ~ N(0, I)``.

    ``Ξ`` is drawn on the generator's device (then moved), so one seeded generator gives the same noise anywhere.
    """
    median_abs = grads.abs().flatten(-2).median(dim=-1).values[..., None, None]
    device = generator.device if generator is not None else grads.device
    xi = torch.randn(grads.shape, generator=generator, device=device, dtype=grads.dtype).to(grads.device)
    return beta * grads - math.sqrt(2.0 * beta / stepsize) * median_abs * xi


def svgd_terms(
    particles: Tensor,
    grads: Tensor,
    *,
    bandwidth: Bandwidth = "median",
    median: MedianKind = "true",
    kernel_grad_div: KernelGradDiv = "h2",
    eps: float = 1e-8,
) -> SVGDTerms:
    """Kernel, bandwidth, driving term ``K·G`` and repulsion ``R`` for ``particles``/``grads`` ``(..., M, P)``.

    ``bandwidth``: ``"median"`` (median heuristic, see :func:`~probattn.repulsive.kernels.median_bandwidth`)
    or a fixed positive ``h``. ``kernel_grad_div="h"`` divides R by h instead of h² (the self-attentive and
    GraphWriter code: R larger by a factor h, which their α absorbs).
    """
    _check_particles(particles, grads)
    check_options(0.0, 1.0, kernel_grad_div, bandwidth)  # no alpha / stepsize here
    dtype = compute_dtype(particles, grads)
    parts = kernel_parts(particles, dtype, bandwidth=bandwidth, median=median, eps=eps)
    k, theta = parts.kernel, parts.centred
    repulsion = (k.sum(dim=-1, keepdim=True) * theta - k @ theta) * repulsion_scale(parts, 1.0, kernel_grad_div)[
        ..., None, None
    ]
    return SVGDTerms(k, parts.h2.sqrt(), k @ grads.to(dtype), repulsion)


def svgd_direction(
    particles: Tensor,
    grads: Tensor,
    *,
    alpha: float,
    bandwidth: Bandwidth = "median",
    median: MedianKind = "true",
    kernel_grad_div: KernelGradDiv = "h2",
    normalize_by_M: bool = True,
    stepsize: float = 1.0,
    eps: float = 1e-8,
) -> Tensor:
    """SVGD replacement gradient ``Ĝ = s·(K·G − α·R)/M`` for ``particles``, ``grads`` ``(M, P)`` or ``(B, M, P)``.

    Returns a tensor shaped and typed like ``grads``; M = 1 returns a copy of ``grads`` (nothing to repel).
    """
    _check_particles(particles, grads)
    check_options(alpha, stepsize, kernel_grad_div, bandwidth)
    m = particles.shape[-2]
    if m < 2:
        return grads.clone()
    dtype = compute_dtype(particles, grads)
    theta3, grads3 = (particles[None], grads[None]) if particles.dim() == 2 else (particles, grads)
    parts = kernel_parts(theta3, dtype, bandwidth=bandwidth, median=median, eps=eps)
    coef = stepsize / (m if normalize_by_M else 1)
    out = fused_svgd(parts, grads3.to(dtype), alpha=alpha, coef=coef, kernel_grad_div=kernel_grad_div)
    return out.reshape(grads.shape).to(grads.dtype)


def spos_direction(
    particles: Tensor,
    grads: Tensor,
    *,
    alpha: float,
    beta: float,
    generator: torch.Generator | None = None,
    bandwidth: Bandwidth = "median",
    median: MedianKind = "true",
    kernel_grad_div: KernelGradDiv = "h2",
    normalize_by_M: bool = True,
    stepsize: float = 1.0,
    eps: float = 1e-8,
) -> Tensor:
    """SPOS replacement gradient ``s·[(K·G − α·R)/M + β·G − sqrt(2β/s)·median|G|·Ξ]``, shaped like ``grads``.

    ``Ξ ~ N(0, I)`` is drawn from ``generator`` (on the generator's device, then moved), so seeding it
    identically on every DDP rank gives identical noise. ``median|G|`` is the median absolute gradient entry of
    each block (authors' heuristic). M = 1 returns a copy of ``grads`` and draws nothing.
    """
    if not (isinstance(beta, (int, float)) and math.isfinite(beta) and beta >= 0):
        raise ValueError(f"beta must be a finite number >= 0, got {beta!r}")
    svgd = svgd_direction(
        particles, grads, alpha=alpha, bandwidth=bandwidth, median=median, kernel_grad_div=kernel_grad_div,
        normalize_by_M=normalize_by_M, stepsize=stepsize, eps=eps,
    )
    if particles.shape[-2] < 2:
        return svgd
    g = grads.to(compute_dtype(particles, grads))
    noise = spos_noise(g, beta=beta, stepsize=stepsize, generator=generator)
    return (svgd.to(g.dtype) + stepsize * noise).to(grads.dtype)
