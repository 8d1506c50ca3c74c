"""Gradient reversal: identity in the forward pass, ``-coeff * grad`` in the backward pass.

This is how one optimizer plays both sides of a min-max game: whatever sits behind a reversal receives the
gradient of the opposite objective.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["grad_reverse"]


class _GradReverse(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, coeff: float) -> Tensor:
        ctx.coeff = coeff
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:
        return -ctx.coeff * grad, None


def grad_reverse(x: Tensor, coeff: float = 1.0) -> Tensor:
    """Return ``x`` unchanged; in backward, the gradient flowing into ``x`` is multiplied by ``-coeff``."""
    if not isinstance(x, Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    return _GradReverse.apply(x, float(coeff))
