"""Model selection: evaluate on the validation split during training, keep the best weights, stop early.

Used by the training loop (:func:`probattn.training.train`, ``eval_every`` / ``patience``) and by studies with
their own loops (``experiment graph``). Higher scores are better; ties keep the earlier step (fewer epochs).
"""

from __future__ import annotations

import copy
import math
from typing import Any

from torch import nn

__all__ = ["BestCheckpoint", "epoch_warning"]


class BestCheckpoint:
    """Track a validation score and keep a copy of the best model weights.

    ``update(step, score, model)`` returns True when training should stop: ``patience`` evaluations in a row
    without a better score (0 = never stop early). ``restore(model)`` loads the best weights back. ``record()``
    gives ``best_step``, ``best_score``, ``stopped_early`` and ``evaluations`` for the run record.
    """

    def __init__(self, patience: int = 0) -> None:
        if patience < 0:
            raise ValueError(f"--patience {patience}: must be >= 0 (0 = no early stopping)")
        self.patience = patience
        self.best_score, self.best_step, self.state = -math.inf, 0, None
        self.since_best, self.evaluations, self.stopped_early = 0, 0, False

    def update(self, step: int, score: float, model: nn.Module) -> bool:
        self.evaluations += 1
        if math.isfinite(score) and score > self.best_score:
            self.best_score, self.best_step, self.since_best = score, step, 0
            self.state = copy.deepcopy({k: v.detach().clone() for k, v in model.state_dict().items()})
            return False
        self.since_best += 1
        self.stopped_early = bool(self.patience) and self.since_best >= self.patience
        return self.stopped_early

    def restore(self, model: nn.Module) -> None:
        if self.state is not None:
            model.load_state_dict(self.state)

    def record(self) -> dict[str, Any]:
        return {"best_step": self.best_step, "best_score": self.best_score if self.state is not None else None,
                "stopped_early": self.stopped_early, "evaluations": self.evaluations}


def epoch_warning(steps: int, batch_size: int, examples: int, *, limit: float = 10.0) -> str | None:
    """A warning when ``steps`` of ``batch_size`` mean ``limit`` or more passes over ``examples``; else None."""
    epochs = steps * batch_size / max(1, examples)
    if epochs < limit:
        return None
    return (f"a budget of {steps} steps of {batch_size} on {examples} training examples is {epochs:.0f} epochs: "
            "expect overfitting; keep model selection on (--eval-every, --patience) or lower --max-steps")
