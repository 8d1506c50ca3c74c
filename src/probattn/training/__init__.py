"""The one training loop behind ``probattn train`` and ``probattn compare``.

``train(TrainConfig(...)) -> RunResult``: data, model, alignment / repulsive options, checkpoints and
``--resume``, DDP under ``torchrun``, non-finite guards, metrics. ``predict`` runs a trained model over a data
split and returns per-example probabilities and labels. See docs/training.md.
"""

from probattn.training.config import TrainConfig, load_config_file
from probattn.training.evaluate import Predictions, evaluate_split, predict
from probattn.training.loop import NonFiniteError, RunResult, train
from probattn.training.modeling import Encoder, build_model, load_trained

__all__ = [
    "Encoder",
    "NonFiniteError",
    "Predictions",
    "RunResult",
    "TrainConfig",
    "build_model",
    "evaluate_split",
    "load_config_file",
    "load_trained",
    "predict",
    "train",
]
