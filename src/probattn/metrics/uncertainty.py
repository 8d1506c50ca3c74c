"""Uncertainty of a classifier's predictions: predictive entropy and PAvPU (Mukhoti & Gal 2018).

``H(p) = −Σ_k p_k ln p_k`` (nats; ``0 ln 0 = 0``) of the predicted distribution. A prediction is *certain* when
``H(p) < threshold`` and *uncertain* otherwise; it is *accurate* when ``argmax_k p_k`` (the first maximum) is the
label. With ``n_ac`` accurate-and-certain, ``n_au`` accurate-and-uncertain, ``n_ic`` inaccurate-and-certain and
``n_iu`` inaccurate-and-uncertain predictions,

    PAvPU = (n_ac + n_iu) / (n_ac + n_au + n_ic + n_iu),

the share of predictions whose certainty matches their correctness (1 = the model is uncertain exactly where it
is wrong). The default threshold is ``ln 2`` nats (:data:`PAVPU_THRESHOLD`): the entropy of an even split between
two answers, so a prediction is "certain" when it is less uncertain than a coin toss between two answers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["PAVPU_THRESHOLD", "PAvPUResult", "certainty_matches", "pavpu", "predictive_entropy"]

PAVPU_THRESHOLD = math.log(2.0)


def _check(probs: Tensor, labels: Tensor | None = None) -> Tensor:
    if probs.dim() != 2:
        raise ValueError(f"probs must be (N, classes), got shape {tuple(probs.shape)}")
    p = probs.detach().to(torch.float64)
    if not bool(torch.isfinite(p).all()) or bool((p < 0).any()) or bool((p > 1).any()):
        raise ValueError("probs must be finite probabilities in [0, 1]; pass softmax(logits), not logits")
    if not torch.allclose(p.sum(-1), torch.ones(p.shape[0], dtype=p.dtype, device=p.device), atol=1e-4):
        raise ValueError("each row of probs must sum to 1; pass softmax(logits)")
    if labels is not None:
        if labels.shape != (p.shape[0],) or labels.is_floating_point() or labels.dtype == torch.bool:
            raise ValueError(f"labels must be integer class indices of shape ({p.shape[0]},), got "
                             f"{labels.dtype} {tuple(labels.shape)}")
        if bool((labels < 0).any()) or bool((labels >= p.shape[1]).any()):
            raise ValueError(f"labels must lie in [0, {p.shape[1]})")
    return p


def predictive_entropy(probs: Tensor) -> Tensor:
    """``H(p)`` in nats per row of ``probs (N, C)``: float64 ``(N,)``."""
    p = _check(probs)
    return -torch.xlogy(p, p).sum(-1)


@dataclass(frozen=True)
class PAvPUResult:
    """PAvPU and its four counts at ``threshold`` (nats)."""

    pavpu: float
    accurate_certain: int
    accurate_uncertain: int
    inaccurate_certain: int
    inaccurate_uncertain: int
    threshold: float

    @property
    def count(self) -> int:
        return self.accurate_certain + self.accurate_uncertain + self.inaccurate_certain + self.inaccurate_uncertain


def pavpu(probs: Tensor, labels: Tensor, *, threshold: float = PAVPU_THRESHOLD) -> PAvPUResult:
    """PAvPU of ``probs (N, C)`` against integer ``labels (N,)``; uncertain iff ``H(p) >= threshold`` (module doc).

    Raises:
        ValueError for a non-positive threshold, an empty batch, or probabilities / labels of the wrong form.
    """
    if not (isinstance(threshold, (int, float)) and math.isfinite(threshold) and threshold > 0):
        raise ValueError(f"threshold must be a positive number of nats, got {threshold!r}")
    p = _check(probs, labels)
    if p.shape[0] == 0:
        raise ValueError("probs is empty: PAvPU needs at least one prediction")
    accurate = p.argmax(-1) == labels.to(p.device)
    uncertain = (-torch.xlogy(p, p).sum(-1)) >= threshold
    counts = [int((accurate & ~uncertain).sum()), int((accurate & uncertain).sum()),
              int((~accurate & ~uncertain).sum()), int((~accurate & uncertain).sum())]
    return PAvPUResult(pavpu=(counts[0] + counts[3]) / p.shape[0], accurate_certain=counts[0],
                       accurate_uncertain=counts[1], inaccurate_certain=counts[2], inaccurate_uncertain=counts[3],
                       threshold=float(threshold))


def certainty_matches(probs: Tensor, labels: Tensor, *, threshold: float = PAVPU_THRESHOLD) -> Tensor:
    """Per prediction, bool ``(N,)``: accurate and certain, or inaccurate and uncertain (its mean is PAvPU);
    the per-example score a paired test of PAvPU resamples."""
    result = pavpu(probs, labels, threshold=threshold)  # validates
    p = probs.detach().to(torch.float64)
    accurate = p.argmax(-1) == labels.to(p.device)
    uncertain = (-torch.xlogy(p, p).sum(-1)) >= result.threshold
    return accurate != uncertain
