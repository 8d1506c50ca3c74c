"""Loop-based float64 references for the alignment distances (one comparison set at a time)."""

from __future__ import annotations

import math

import torch
from torch import Tensor


def ct_reference(fq, fk, nq, nk, *, rho: float, cost: str, temperature: float) -> float:
    """CT of one set: ``fq (m, s)``, ``fk (n, s)`` critic features, ``nq``, ``nk`` navigator features (valid only)."""
    m, n = fq.shape[0], fk.shape[0]
    c = [[0.0] * n for _ in range(m)]
    s = [[0.0] * n for _ in range(m)]
    for i in range(m):
        for j in range(n):
            a, b = fq[i].tolist(), fk[j].tolist()
            if cost == "cosine":  # 1 - cos of the angle, from the definition
                norms = math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b))
                c[i][j] = 1 - sum(x * y for x, y in zip(a, b)) / norms
            else:  # the distance itself, coordinate by coordinate
                c[i][j] = math.sqrt(sum((x - y) ** 2 for x, y in zip(a, b)))
            s[i][j] = float(nq[i] @ nk[j]) / temperature
    backward = 0.0
    for i in range(m):
        z = sum(math.exp(s[i][j]) for j in range(n))
        backward += sum(math.exp(s[i][j]) / z * c[i][j] for j in range(n)) / m
    forward = 0.0
    for j in range(n):
        z = sum(math.exp(s[i][j]) for i in range(m))
        forward += sum(math.exp(s[i][j]) / z * c[i][j] for i in range(m)) / n
    return (1 - rho) * backward + rho * forward


def mmd_reference(x: Tensor, y: Tensor, bandwidths) -> float:
    """Biased squared MMD between point sets ``x (n, d)`` and ``y (m, d)``."""
    def d2(a, b):
        return float(((a - b) ** 2).sum())

    scale = sum(d2(a, b) for a in x for b in y) / (len(x) * len(y))
    size = (sum(float((a**2).sum()) for a in x) / len(x) + sum(float((b**2).sum()) for b in y) / len(y)) / 2
    scale = max(scale, 1e-3 * size + torch.finfo(x.dtype).eps)  # the floor for coinciding clouds

    def k(a, b):
        return sum(math.exp(-d2(a, b) / (c * scale)) for c in bandwidths) / len(bandwidths)

    def mean_k(u, v):
        return sum(k(a, b) for a in u for b in v) / (len(u) * len(v))

    return mean_k(x, x) + mean_k(y, y) - 2 * mean_k(x, y)


def entropic_ot_unrolled(x: Tensor, y: Tensor, eps: float, iters: int) -> Tensor:
    """Entropic OT (uniform weights, squared Euclidean cost) by unrolled log-domain Sinkhorn; differentiable."""
    c = ((x[:, None, :] - y[None, :, :]) ** 2).sum(-1)
    log_a = torch.full((x.shape[0],), -math.log(x.shape[0]), dtype=x.dtype)
    log_b = torch.full((y.shape[0],), -math.log(y.shape[0]), dtype=x.dtype)
    f = torch.zeros_like(log_a)
    g = torch.zeros_like(log_b)
    for _ in range(iters):
        f = -eps * torch.logsumexp(log_b[None, :] + (g[None, :] - c) / eps, dim=1)
        g = -eps * torch.logsumexp(log_a[:, None] + (f[:, None] - c) / eps, dim=0)
    plan = torch.exp(log_a[:, None] + log_b[None, :] + (f[:, None] + g[None, :] - c) / eps)
    return (plan * c).sum() + eps * (plan * (plan.log() - log_a[:, None] - log_b[None, :])).sum()
