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
"""

from __future__ import annotations

import math
from typing import Literal, NamedTuple

import torch
from torch import Tensor

from probattn.repulsive.kernels import MedianKind, median_bandwidth, pairwise_sq_dists, rbf_kernel

KernelGradDiv = Literal["h2", "h"]

__all__ = ["KernelGradDiv", "SVGDTerms", "spos_direction", "svgd_direction", "svgd_terms"]


class SVGDTerms(NamedTuple):
    """The pieces of an SVGD direction, in the compute dtype (float32 or wider)."""

    kernel: Tensor  # K (..., M, M)
    bandwidth: Tensor  # h (...,), k(a, b) = exp(−‖a − b‖² / (2h²))
    driving: Tensor  # K·G (..., M, P): kernel-weighted average of all heads' gradients
    repulsion: Tensor  # R (..., M, P)


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


def svgd_terms(
    particles: Tensor,
    grads: Tensor,
    *,
    bandwidth: float | Literal["median"] = "median",
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
    if kernel_grad_div not in ("h2", "h"):
        raise ValueError(f"kernel_grad_div must be 'h2' or 'h', got {kernel_grad_div!r}")
    dtype = torch.promote_types(torch.promote_types(particles.dtype, grads.dtype), torch.float32)
    theta = particles.detach().to(dtype)
    theta = theta - theta.mean(
        dim=-2, keepdim=True
    )  # R and D2 are translation invariant; centring keeps precision
    sq_dists = pairwise_sq_dists(theta)
    if bandwidth == "median":
        h2 = median_bandwidth(sq_dists, particles.detach().to(dtype), median=median, eps=eps)
    elif isinstance(bandwidth, (int, float)) and not isinstance(bandwidth, bool) and bandwidth > 0:
        h2 = torch.full(sq_dists.shape[:-2], float(bandwidth) ** 2, dtype=dtype, device=theta.device)
    else:
        raise ValueError(f"bandwidth must be 'median' or a positive number h, got {bandwidth!r}")
    kernel = rbf_kernel(sq_dists, h2)
    divisor = h2 if kernel_grad_div == "h2" else h2.sqrt()
    repulsion = (kernel.sum(dim=-1, keepdim=True) * theta - kernel @ theta) / divisor[..., None, None]
    return SVGDTerms(kernel, h2.sqrt(), kernel @ grads.to(dtype), repulsion)


def _check_scalars(alpha: float, stepsize: float) -> None:
    if not (math.isfinite(alpha) and alpha >= 0):
        raise ValueError(f"alpha must be a finite number >= 0, got {alpha!r}")
    if not (math.isfinite(stepsize) and stepsize > 0):
        raise ValueError(f"stepsize must be a finite number > 0, got {stepsize!r}")


def _svgd_from_terms(terms: SVGDTerms, *, alpha: float, stepsize: float, normalize_by_M: bool) -> Tensor:
    m = terms.kernel.shape[-1]
    return stepsize * (terms.driving - alpha * terms.repulsion) / (m if normalize_by_M else 1)


def _spos_noise(
    grads: Tensor, dtype: torch.dtype, *, beta: float, stepsize: float, generator: torch.Generator | None
) -> Tensor:
    """``β·G − sqrt(2β/s) · median|G| · Ξ`` (median over each block's entries), in ``dtype``."""
    g = grads.to(dtype)
    median_abs = g.abs().flatten(-2).median(dim=-1).values[..., None, None]
    device = generator.device if generator is not None else g.device
    xi = torch.randn(g.shape, generator=generator, device=device, dtype=dtype).to(g.device)
    return beta * g - math.sqrt(2.0 * beta / stepsize) * median_abs * xi


def svgd_direction(
    particles: Tensor,
    grads: Tensor,
    *,
    alpha: float,
    bandwidth: float | Literal["median"] = "median",
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
    _check_scalars(alpha, stepsize)
    if particles.shape[-2] < 2:
        return grads.clone()
    terms = svgd_terms(
        particles, grads, bandwidth=bandwidth, median=median, kernel_grad_div=kernel_grad_div, eps=eps
    )
    out = _svgd_from_terms(terms, alpha=alpha, stepsize=stepsize, normalize_by_M=normalize_by_M)
    return out.to(grads.dtype)


def spos_direction(
    particles: Tensor,
    grads: Tensor,
    *,
    alpha: float,
    beta: float,
    generator: torch.Generator | None = None,
    bandwidth: float | Literal["median"] = "median",
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
    _check_particles(particles, grads)
    _check_scalars(alpha, stepsize)
    if not (math.isfinite(beta) and beta >= 0):
        raise ValueError(f"beta must be a finite number >= 0, got {beta!r}")
    if particles.shape[-2] < 2:
        return grads.clone()
    terms = svgd_terms(
        particles, grads, bandwidth=bandwidth, median=median, kernel_grad_div=kernel_grad_div, eps=eps
    )
    svgd = _svgd_from_terms(terms, alpha=alpha, stepsize=1.0, normalize_by_M=normalize_by_M)
    noise = _spos_noise(grads, svgd.dtype, beta=beta, stepsize=stepsize, generator=generator)
    return (stepsize * (svgd + noise)).to(grads.dtype)
