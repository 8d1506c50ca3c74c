"""The RBF kernel between particles and its median-heuristic bandwidth (repulsive.md §3.2).

A particle set is a tensor ``(..., M, P)``: M particles (attention heads) of P numbers each, with any leading
batch dimensions. Everything here is computed in the dtype it is given; callers promote to float32 or wider.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import Tensor

MedianKind = Literal["true", "lower"]

__all__ = ["MedianKind", "median_bandwidth", "min_squared_bandwidth", "rbf_kernel", "sq_dists_from_gram"]


def sq_dists_from_gram(gram: Tensor) -> Tensor:
    """Squared distances ``‖a‖² + ‖b‖² − 2a·b`` from a Gram matrix ``(..., M, M)``: ≥ 0, exact zero diagonal.

    Pass the Gram matrix of *centred* particles (distances do not change) so that nearly identical heads keep
    their small distances in float32.
    """
    sq_norms = gram.diagonal(dim1=-2, dim2=-1)
    sq_dists = (sq_norms.unsqueeze(-1) + sq_norms.unsqueeze(-2) - 2.0 * gram).clamp_min(0.0)
    diagonal = torch.eye(gram.shape[-1], dtype=torch.bool, device=gram.device)
    return sq_dists.masked_fill(diagonal, 0.0)


def median_bandwidth(
    sq_dists: Tensor, mean_sq_norm: Tensor, *, median: MedianKind = "true", eps: float = 1e-8
) -> Tensor:
    """Median-heuristic squared bandwidth ``h² = max(med, floor) / (2 log(M + 1))`` -> shape ``(...,)``.

    ``med`` is the median of all M² entries of ``sq_dists (..., M, M)``, diagonal zeros included (as in the
    authors' code). ``median="true"`` averages the two middle entries (TF / ELECTRA code); ``"lower"`` takes
    the lower one, as ``torch.median`` does (PyTorch code: gives ``med = 0`` for two distinct heads).
    ``floor = eps · mean_sq_norm`` with ``mean_sq_norm (...,) = mean_i ‖θ_i‖²`` keeps identical heads
    (med = 0) finite. With this bandwidth ``k(θ_i, θ_j) = (M + 1)^(−D2_ij / med)``: a pair at the median
    distance has kernel ``1 / (M + 1)``.

    The result is at least :func:`min_squared_bandwidth` (``sqrt(finfo.tiny)``: 1.1e-19 in float32): when every
    particle is zero (frozen weights with zero biases) ``med`` and the relative floor are 0, and ``h²`` must
    still be a normal positive number so that ``α / h²`` and the stats' ``1 / h⁴`` stay finite (the kernel is
    then all ones and the repulsion exactly 0, whatever ``h``).
    """
    if median not in ("true", "lower"):
        raise ValueError(f"median must be 'true' or 'lower', got {median!r}")
    m = sq_dists.shape[-1]
    ordered = sq_dists.flatten(-2).sort(dim=-1).values
    n = m * m
    med = ordered[..., (n - 1) // 2]
    if median == "true":
        med = 0.5 * (med + ordered[..., n // 2])
    h2 = torch.maximum(med, eps * mean_sq_norm) / (2.0 * math.log(m + 1))
    return h2.clamp_min(min_squared_bandwidth(sq_dists.dtype))


def min_squared_bandwidth(dtype: torch.dtype) -> float:
    """The smallest ``h²`` :func:`median_bandwidth` returns: ``sqrt(finfo(dtype).tiny)``, so that ``1 / h⁴`` is at
    most ``1 / tiny`` (finite, a normal number) and ``h²`` itself is never subnormal (flushed to 0 on some CPUs)."""
    return math.sqrt(torch.finfo(dtype).tiny)


def rbf_kernel(sq_dists: Tensor, h2: Tensor) -> Tensor:
    """``K = exp(−D2 / (2 h²))`` for ``sq_dists (..., M, M)`` and ``h2 (...,)`` -> ``(..., M, M)``."""
    return torch.exp(-sq_dists / (2.0 * h2[..., None, None]))
