"""The small auxiliary networks of alignment attention (critic, navigator, discriminator).

All of them act on per-head vectors ``x (B, H, L, d_h)`` and either share one set of weights across heads
(``groups=1``, the release's choice) or hold one set per head (``groups=H``). Weights start at
``N(0, 0.02^2)`` with zero biases, which is what the authors' release effectively used.

``ascend=True`` passes the weights through :func:`grad_reverse` at every use: those parameters then climb the
loss they feed while everything else (the encoder's queries and keys included) descends it. Reversing the
few auxiliary weights instead of the (much larger) activations keeps the min-max cheap.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from probattn.alignment.grad_reverse import grad_reverse

__all__ = ["HeadLinear", "Highway", "critic", "discriminator", "navigator", "normalize"]

INIT_STD = 0.02
NORM_EPS = 1e-6


class HeadLinear(nn.Module):
    """``y = x @ W_g + b_g`` on ``x (B, H, L, in)`` -> ``(B, H, L, out)``; ``g`` is the head (or 0 if shared)."""

    def __init__(self, in_features: int, out_features: int, groups: int = 1, ascend: bool = False) -> None:
        super().__init__()
        self.groups, self.ascend = groups, ascend
        self.weight = nn.Parameter(torch.randn(groups, in_features, out_features) * INIT_STD)
        self.bias = nn.Parameter(torch.zeros(groups, 1, out_features))

    def forward(self, x: Tensor) -> Tensor:
        weight, bias = (grad_reverse(self.weight), grad_reverse(self.bias)) if self.ascend else (self.weight, self.bias)
        if self.groups == 1:  # one fused GEMM with bias
            return F.linear(x, weight[0].t(), bias[0, 0])
        if x.shape[1] != self.groups:
            raise ValueError(
                f"this network holds one weight per head for {self.groups} heads but got {x.shape[1]} heads; "
                "build the regularizer with the model's num_heads or use share_across_heads=True"
            )
        return x @ weight + bias


class Highway(nn.Module):
    """One-matrix highway block: ``g = W x + b``, ``x' = sigmoid(g) * relu(g) + (1 - sigmoid(g)) * x``."""

    def __init__(self, dim: int, groups: int = 1, ascend: bool = False) -> None:
        super().__init__()
        self.linear = HeadLinear(dim, dim, groups, ascend)

    def forward(self, x: Tensor) -> Tensor:
        g = self.linear(x)
        return torch.lerp(x, F.relu(g), torch.sigmoid(g))  # = gate * relu(g) + (1 - gate) * x


class Normalize(nn.Module):
    """``x / (||x||_2 + 1e-6)`` over the last axis."""

    def forward(self, x: Tensor) -> Tensor:
        return normalize(x)


def normalize(x: Tensor) -> Tensor:
    """``x / (||x||_2 + 1e-6)`` over the last axis (the release's epsilon).

    Written as ``x * r`` with ``r`` computed on the ``(*, 1)`` norms: autograd then makes fewer passes over
    the full-size tensor than for ``x / x.norm(...)``. Zero vectors (padding at initialisation) stay 0 with a
    finite gradient.
    """
    squared = x.pow(2).sum(-1, keepdim=True).clamp_min(torch.finfo(x.dtype).tiny)  # finite gradient at x = 0
    return x * (squared.sqrt() + NORM_EPS).reciprocal()


def critic(head_dim: int, hidden: int, groups: int = 1, ascend: bool = False) -> nn.Sequential:
    """CT critic: highway(d_h) -> Linear(d_h, s) -> ReLU -> Linear(s, s) -> L2-normalise."""
    return nn.Sequential(
        Highway(head_dim, groups, ascend), HeadLinear(head_dim, hidden, groups, ascend), nn.ReLU(),
        HeadLinear(hidden, hidden, groups, ascend), Normalize(),
    )


def navigator(head_dim: int, hidden: int, groups: int = 1, ascend: bool = False) -> nn.Sequential:
    """CT navigator: Linear(d_h, s) -> ReLU -> Linear(s, s) -> L2-normalise."""
    return nn.Sequential(
        HeadLinear(head_dim, hidden, groups, ascend), nn.ReLU(), HeadLinear(hidden, hidden, groups, ascend),
        Normalize(),
    )


def discriminator(head_dim: int, hidden: int, groups: int = 1, ascend: bool = False) -> nn.Sequential:
    """GAN discriminator (logit): highway(d_h) -> Linear(d_h, s) -> ReLU -> Linear(s, 1)."""
    return nn.Sequential(
        Highway(head_dim, groups, ascend), HeadLinear(head_dim, hidden, groups, ascend), nn.ReLU(),
        HeadLinear(hidden, 1, groups, ascend),
    )
