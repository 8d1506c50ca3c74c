"""Run a trained classifier over a data split: per-example probabilities, then accuracy / ECE / NLL / Brier."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from probattn.data import Encoded, TextClassificationData
from probattn.metrics.calibration import calibration
from probattn.training.modeling import Encoder, batch_inputs, forward_logits

__all__ = ["Predictions", "evaluate_split", "predict", "predict_encoded"]


@dataclass(frozen=True)
class Predictions:
    """``probs (N, C)`` float32 softmax probabilities and ``labels (N,)`` long, in the split's order."""

    probs: Tensor
    labels: Tensor

    def metrics(self, n_bins: int = 15) -> dict[str, float]:
        """``accuracy``, ``ece`` (``n_bins`` equal-width bins), ``nll``, ``brier`` and the example ``count``."""
        result = calibration(self.probs, self.labels, n_bins=n_bins)
        return {"accuracy": result.accuracy, "ece": result.ece, "nll": result.nll, "brier": result.brier,
                "count": result.count}


@torch.no_grad()
def predict_encoded(model: nn.Module, encoded: Encoded, labels: Tensor, *, batch_size: int = 128,
                    device: torch.device | str | None = None) -> Predictions:
    """Probabilities of ``model`` (put in eval mode, restored afterwards) over already-encoded inputs."""
    device = torch.device(device) if device is not None else next(model.parameters()).device
    was_training = model.training
    model.eval()
    chunks = []
    try:
        for start in range(0, len(labels), batch_size):
            logits = forward_logits(model, *batch_inputs(encoded, slice(start, start + batch_size), device))
            chunks.append(torch.softmax(logits.float(), dim=-1).cpu())
    finally:
        model.train(was_training)
    probs = torch.cat(chunks) if chunks else torch.empty(0, 0)
    return Predictions(probs, labels.cpu().long())


def predict(model: nn.Module, encode: Encoder, data: TextClassificationData, *, batch_size: int = 128,
            device: torch.device | str | None = None) -> Predictions:
    """Encode ``data`` with ``encode`` and return the model's :class:`Predictions` on it.

    Example: ``preds = predict(result.model, result.encode, splits.test); preds.metrics()["ece"]``.
    """
    if len(data) == 0:
        raise ValueError(f"{data.name or 'data'} has no examples to predict")
    return predict_encoded(model, encode(data.texts, data.text_pairs), torch.tensor(data.labels),
                           batch_size=batch_size, device=device)


def evaluate_split(model: nn.Module, encode: Encoder, data: TextClassificationData, *, batch_size: int = 128,
                   device: torch.device | str | None = None) -> dict[str, float]:
    """``{"accuracy", "ece", "nll", "brier", "count"}`` of ``model`` on ``data`` (ECE with 15 bins)."""
    return predict(model, encode, data, batch_size=batch_size, device=device).metrics()
