"""Calibration of a classifier's predicted probabilities: ECE, MCE, NLL, Brier, reliability diagram.

Confidence ``c = max_k p_k`` and correctness ``[argmax_k p_k = y]``. Predictions go into ``n_bins`` (default
**15**) equal-width confidence bins ``((m−1)/M, m/M]`` (the first bin also holds ``c = 0``).

* ``ECE = Σ_m (|B_m| / N) · |acc(B_m) − conf(B_m)|`` (a fraction in ``[0, 1]``; multiply by 100 for %).
* ``MCE = max_{m: |B_m| > 0} |acc(B_m) − conf(B_m)|``.
* ``NLL = −mean ln p_y`` (probabilities clamped at 1e-12).
* ``Brier = mean Σ_k (p_k − [k = y])²`` (the multi-class sum, in ``[0, 2]``).

:class:`CalibrationAccumulator` adds batches one at a time (fixed memory); :func:`calibration` is the
one-shot form.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["CalibrationAccumulator", "CalibrationResult", "calibration", "measure_probabilities"]


@dataclass(frozen=True)
class CalibrationResult:
    """Calibration summary; ``bin_*`` are the reliability-diagram data, one entry per bin (``n_bins``)."""

    ece: float
    mce: float
    nll: float
    brier: float
    accuracy: float
    count: int
    bin_edges: list[float]  # n_bins + 1 edges
    bin_confidence: list[float | None]  # mean confidence per bin (None = empty bin)
    bin_accuracy: list[float | None]  # accuracy per bin (None = empty bin)
    bin_count: list[int]


class CalibrationAccumulator:
    """Running sums for :func:`calibration` over batches: ``update(probs, labels)`` then ``result()``."""

    def __init__(self, n_bins: int = 15) -> None:
        if not isinstance(n_bins, int) or n_bins < 1:
            raise ValueError(f"n_bins must be a positive integer, got {n_bins!r}")
        self.n_bins = n_bins
        self.count = torch.zeros(n_bins, dtype=torch.float64)
        self.conf_sum = torch.zeros(n_bins, dtype=torch.float64)
        self.correct_sum = torch.zeros(n_bins, dtype=torch.float64)
        self.nll_sum = 0.0
        self.brier_sum = 0.0

    def update(self, probs: Tensor, labels: Tensor) -> None:
        """Add ``probs (N, C)`` (rows summing to 1) and integer ``labels (N,)`` in ``[0, C)``."""
        if probs.dim() != 2 or labels.dim() != 1 or labels.shape[0] != probs.shape[0]:
            raise ValueError(
                f"probs must be (N, classes) and labels (N,), got {tuple(probs.shape)} and {tuple(labels.shape)}"
            )
        if labels.is_floating_point() or labels.dtype == torch.bool:
            raise TypeError(f"labels must be integer class indices, got {labels.dtype}")
        p = probs.detach().to(torch.float64).cpu()
        y = labels.detach().cpu().long()
        if not bool(torch.isfinite(p).all()) or bool((p < 0).any()) or bool((p > 1).any()):
            raise ValueError("probs must be finite probabilities in [0, 1]; pass softmax(logits), not logits")
        if not torch.allclose(p.sum(-1), torch.ones(p.shape[0], dtype=p.dtype), atol=1e-4):
            raise ValueError("each row of probs must sum to 1; pass softmax(logits)")
        if bool((y < 0).any()) or bool((y >= p.shape[1]).any()):
            raise ValueError(f"labels must lie in [0, {p.shape[1]}), got values {y.min().item()}..{y.max().item()}")
        conf, pred = p.max(-1)
        idx = (torch.ceil(conf * self.n_bins).long() - 1).clamp(0, self.n_bins - 1)
        self.count += torch.bincount(idx, minlength=self.n_bins).to(torch.float64)
        self.conf_sum += torch.bincount(idx, weights=conf, minlength=self.n_bins)
        self.correct_sum += torch.bincount(idx, weights=(pred == y).to(torch.float64), minlength=self.n_bins)
        p_true = p.gather(1, y[:, None]).squeeze(1)
        self.nll_sum += float(-p_true.clamp_min(1e-12).log().sum())
        onehot = torch.nn.functional.one_hot(y, p.shape[1]).to(p.dtype)
        self.brier_sum += float((p - onehot).pow(2).sum())

    def result(self) -> CalibrationResult:
        """The metrics over everything added so far; raises ValueError when nothing was added."""
        n = float(self.count.sum())
        if n == 0:
            raise ValueError("no predictions were added; call update(probs, labels) first")
        filled = self.count > 0
        conf = torch.where(filled, self.conf_sum / self.count.clamp_min(1), torch.zeros_like(self.count))
        acc = torch.where(filled, self.correct_sum / self.count.clamp_min(1), torch.zeros_like(self.count))
        gap = (acc - conf).abs()
        return CalibrationResult(
            ece=float((self.count / n * gap).sum()),
            mce=float(gap[filled].max()),
            nll=self.nll_sum / n,
            brier=self.brier_sum / n,
            accuracy=float(self.correct_sum.sum()) / n,
            count=int(n),
            bin_edges=torch.linspace(0, 1, self.n_bins + 1, dtype=torch.float64).tolist(),
            bin_confidence=[float(c) if f else None for c, f in zip(conf, filled)],
            bin_accuracy=[float(a) if f else None for a, f in zip(acc, filled)],
            bin_count=[int(c) for c in self.count],
        )


def calibration(probs: Tensor, labels: Tensor, *, n_bins: int = 15) -> CalibrationResult:
    """ECE / MCE / NLL / Brier and reliability data for ``probs (N, C)`` and ``labels (N,)`` (see module doc)."""
    acc = CalibrationAccumulator(n_bins)
    acc.update(probs, labels)
    return acc.result()


def measure_probabilities(probs: object, labels: object, suffix: str | None = None) -> dict:
    """Everything a study and ``probattn train`` report about predicted probabilities ``(N, C)``.

    Returns ``{"metrics": {accuracy, ece, nll, brier}, "correct": [0/1 per example], "scores": {"correct",
    "nll", "brier"}: one float per example (their means are the metrics; ECE is a set-level quantity), and
    "reliability": the bins}``. With ``suffix`` the metric keys are ``accuracy_<suffix>`` etc. (0.2.0 names).
    """
    import numpy as np

    p = torch.as_tensor(np.asarray(probs, dtype=np.float32))
    y = torch.as_tensor(np.asarray(labels), dtype=torch.long)
    result = calibration(p, y, n_bins=15)
    p64 = p.double()
    nll = -p64.gather(1, y[:, None])[:, 0].clamp_min(1e-12).log()
    brier = ((p64 - torch.nn.functional.one_hot(y, p.shape[1]).double()) ** 2).sum(1)
    correct = (p.argmax(1) == y).int()
    tail = f"_{suffix}" if suffix else ""
    metrics = {f"accuracy{tail}": result.accuracy, f"ece{tail}": result.ece, f"nll{tail}": result.nll,
               f"brier{tail}": result.brier}
    bins = {k: getattr(result, k) for k in ("bin_edges", "bin_confidence", "bin_accuracy", "bin_count")}
    return {"metrics": metrics, "correct": correct.tolist(),
            "scores": {"correct": correct.double().tolist(), "nll": nll.tolist(), "brier": brier.tolist()},
            "reliability": bins}
