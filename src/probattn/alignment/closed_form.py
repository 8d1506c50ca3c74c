"""Closed-form distances between the query and key clouds (no auxiliary network).

These are extensions for ablations (the authors' release never ran them):

* :func:`mmd`: squared maximum mean discrepancy with a sum of RBF kernels,
  ``MMD^2 = E k(q, q') + E k(k, k') - 2 E k(q, k)`` (biased V-statistic of the empirical measures, >= 0) with
  ``k(x, y) = mean_c exp(-||x - y||^2 / (c * s))``, ``c`` in ``bandwidths`` and ``s`` the mean squared
  query-key distance of the set (not differentiated), at least ``1e-3`` times the mean squared norm of the
  points (so that coinciding clouds keep a finite bandwidth and bounded gradients).
* :func:`sinkhorn_divergence`: debiased entropic optimal transport with squared Euclidean cost,
  ``S = OT_eps(q, k) - OT_eps(q, q) / 2 - OT_eps(k, k) / 2``, ``eps = epsilon * s``. Potentials come from
  log-domain Sinkhorn iterations without autograd (epsilon-scaling: the blur starts at the largest cost and
  shrinks geometrically to ``eps`` over the first half of the iterations); the value is the dual objective at those potentials, so
  its gradient is the transport plan (envelope theorem) and memory does not grow with the iterations.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from probattn.alignment.sets import as_sets, mean_over_sets
from probattn.metrics.alignment import squared_distances, weighted_mmd

__all__ = ["BANDWIDTHS", "MaximumMeanDiscrepancy", "SinkhornDivergence", "mmd", "sinkhorn_divergence"]

BANDWIDTHS = (0.25, 0.5, 1.0, 2.0, 4.0)


def _weights(valid: Tensor | None, shape: torch.Size, dtype: torch.dtype, device: torch.device) -> Tensor:
    """Uniform probability weights over valid points ``(*, n)`` (None = all); a set with none valid: uniform."""
    if valid is None:
        return torch.full(shape, 1.0 / shape[-1], dtype=dtype, device=device)
    valid = valid.expand(shape)
    valid = valid | ~valid.any(-1, keepdim=True)
    w = valid.to(dtype)
    return w / w.sum(-1, keepdim=True)


SCALE_FLOOR = 1e-3


@torch.no_grad()
def _scale(x: Tensor, y: Tensor, a: Tensor, b: Tensor) -> Tensor:
    """Mean squared distance ``s = E_a E_b ||x - y||^2`` ``(*, 1, 1)``, floored relative to the data's size.

    Computed centred, ``s = Var_a x + Var_b y + ||E_a x - E_b y||^2`` (no cancellation when the clouds sit far
    from the origin), and at least ``SCALE_FLOOR * (E_a ||x||^2 + E_b ||y||^2) / 2`` (+ the dtype's epsilon): when
    the query and key clouds coincide in one point (the distances' own optimum) ``s`` is 0, and a bandwidth of 0
    would turn rounding noise into gradients of 1e+30. Not differentiated (the bandwidth is a constant of each
    step), and no distance matrix is formed.
    """
    mean_x, mean_y = (a[..., None] * x).sum(-2), (b[..., None] * y).sum(-2)
    var_x = (a * (x - mean_x[..., None, :]).pow(2).sum(-1)).sum(-1)
    var_y = (b * (y - mean_y[..., None, :]).pow(2).sum(-1)).sum(-1)
    s = var_x + var_y + (mean_x - mean_y).pow(2).sum(-1)
    size = ((a * x.pow(2).sum(-1)).sum(-1) + (b * y.pow(2).sum(-1)).sum(-1)) / 2
    return torch.maximum(s, SCALE_FLOOR * size + torch.finfo(x.dtype).eps)[..., None, None]


def mmd(x: Tensor, y: Tensor, x_valid: Tensor | None, y_valid: Tensor | None, *, bandwidths: tuple[float, ...] = BANDWIDTHS) -> Tensor:
    """Squared MMD ``(*,)`` between the valid points of ``x (*, n, d)`` and ``y (*, m, d)`` (validity bool ``(*, n|m)``).

    Computed by :func:`probattn.metrics.alignment.weighted_mmd` with the squared bandwidths ``c * s``.
    """
    a = _weights(x_valid, x.shape[:-1], x.dtype, x.device)
    b = _weights(y_valid, y.shape[:-1], y.dtype, y.device)
    scale = _scale(x, y, a, b)
    return weighted_mmd(x, y, a, b, [c * scale for c in bandwidths])


def _entropic_ot(cost: Tensor, a: Tensor, b: Tensor, eps: Tensor, iters: int) -> Tensor:
    """Entropic OT value ``(*,)`` for ``cost (*, n, m)``, weights ``a (*, n)``, ``b (*, m)``, ``eps (*, 1, 1)``."""
    log_a = a.log()[..., :, None]
    log_b = b.log()[..., None, :]
    with torch.no_grad():
        c = cost.detach()
        f = torch.zeros_like(a)
        g = torch.zeros_like(b)
        # epsilon-scaling: start at the largest cost and decrease geometrically to eps over the first half
        ratio = (c.amax((-1, -2), keepdim=True) / eps).clamp_min(1.0)
        for t in range(iters):
            e = eps * ratio ** max(0.0, 1.0 - 2.0 * t / iters)
            f = -e[..., 0] * torch.logsumexp(log_b + (g[..., None, :] - c) / e, dim=-1)
            g = -e[..., 0] * torch.logsumexp(log_a + (f[..., :, None] - c) / e, dim=-2)
    # Dual objective at fixed potentials: differentiating it in `cost` gives the transport plan.
    plan = torch.exp(log_a + log_b + (f[..., :, None] + g[..., None, :] - cost) / eps)
    return (a * f).sum(-1) + (b * g).sum(-1) - eps[..., 0, 0] * (plan.sum((-1, -2)) - 1)


def sinkhorn_divergence(
    x: Tensor, y: Tensor, x_valid: Tensor | None, y_valid: Tensor | None, *, epsilon: float = 0.1, iters: int = 50
) -> Tensor:
    """Debiased Sinkhorn divergence ``(*,)`` between the valid points of ``x (*, n, d)`` and ``y (*, m, d)``."""
    size = max(x.shape[-2], y.shape[-2])  # pad both clouds with zero-weight points: one batched Sinkhorn loop
    if x.shape[-2] != y.shape[-2]:
        x_valid = torch.ones(x.shape[:-1], dtype=torch.bool, device=x.device) if x_valid is None else x_valid
        y_valid = torch.ones(y.shape[:-1], dtype=torch.bool, device=y.device) if y_valid is None else y_valid
        x, x_valid = _pad(x, size), _pad(x_valid.expand(x.shape[:-1]), size)
        y, y_valid = _pad(y, size), _pad(y_valid.expand(y.shape[:-1]), size)
    a = _weights(x_valid, x.shape[:-1], x.dtype, x.device)
    b = _weights(y_valid, y.shape[:-1], y.dtype, y.device)
    eps = epsilon * _scale(x, y, a, b)
    costs = torch.stack([squared_distances(x, y), squared_distances(x, x), squared_distances(y, y)])
    ot = _entropic_ot(costs, torch.stack([a, a, b]), torch.stack([b, a, b]), eps, iters)
    return ot[0] - 0.5 * ot[1] - 0.5 * ot[2]


def _pad(t: Tensor, size: int) -> Tensor:
    """Pad the point axis (``-2`` for points ``(*, n, d)``, ``-1`` for masks ``(*, n)``) with zeros/False to ``size``."""
    if t.dtype == torch.bool:
        return torch.nn.functional.pad(t, (0, size - t.shape[-1]), value=False)
    return torch.nn.functional.pad(t, (0, 0, 0, size - t.shape[-2]))


class MaximumMeanDiscrepancy(nn.Module):
    """MMD estimator (no parameters); ``forward`` returns the squared MMD averaged over comparison sets."""

    def __init__(self, bandwidths: tuple[float, ...] = BANDWIDTHS) -> None:
        super().__init__()
        self.bandwidths = tuple(bandwidths)

    def forward(self, q: Tensor, k: Tensor, query_valid: Tensor | None, key_valid: Tensor | None, axis: str) -> Tensor:
        """``q (B, H, Lq, d)``, ``k (B, H, Lk, d)``, validity ``(B, Lq)`` / ``(B, Lk)`` -> scalar."""
        qs, qv = as_sets(q, query_valid, axis)
        ks, kv = as_sets(k, key_valid, axis)
        return mean_over_sets(mmd(qs, ks, qv, kv, bandwidths=self.bandwidths), qv, kv)


class SinkhornDivergence(nn.Module):
    """Debiased Sinkhorn estimator (no parameters); ``forward`` averages it over comparison sets."""

    def __init__(self, epsilon: float = 0.1, iters: int = 50) -> None:
        super().__init__()
        self.epsilon, self.iters = epsilon, iters

    def forward(self, q: Tensor, k: Tensor, query_valid: Tensor | None, key_valid: Tensor | None, axis: str) -> Tensor:
        """``q (B, H, Lq, d)``, ``k (B, H, Lk, d)``, validity ``(B, Lq)`` / ``(B, Lk)`` -> scalar."""
        qs, qv = as_sets(q, query_valid, axis)
        ks, kv = as_sets(k, key_valid, axis)
        per_set = sinkhorn_divergence(qs, ks, qv, kv, epsilon=self.epsilon, iters=self.iters)
        return mean_over_sets(per_set, qv, kv)
