"""Named sets of :class:`TrainConfig` options shared by ``probattn train --preset`` and ``probattn compare --preset``.

Precedence everywhere: TrainConfig defaults < preset < ``--config FILE`` < flags. Measured budgets and results
of each preset: docs/experiments.md.
"""

from __future__ import annotations

from typing import Any

__all__ = ["DEFAULT_PRESET", "PRESETS", "PRESET_HELP"]

DEFAULT_PRESET = "minilm"

PRESETS: dict[str, dict[str, Any]] = {
    "minilm": {"model": "minilm-states", "embed_dim": 128, "num_heads": 4, "num_layers": 2, "max_length": 128,
               "batch_size": 32, "lr": 1e-3, "warmup_steps": 30, "max_steps": 300, "dropout": 0.1},
    "tiny": {"model": "tiny", "embed_dim": 64, "num_heads": 4, "num_layers": 2, "max_length": 32,
             "batch_size": 32, "lr": 1e-2, "warmup_steps": 30, "max_steps": 200},
    "minilm-full": {"model": "minilm", "max_length": 64, "batch_size": 16, "lr": 5e-5, "warmup_steps": 20,
                    "max_steps": 150, "dropout": 0.1},
    "self-attentive": {"model": "self-attentive", "embed_dim": 64, "num_heads": 30, "max_length": 48,
                       "batch_size": 32, "lr": 5e-4, "dropout": 0.3, "max_grad_norm": 0.5, "max_steps": 300,
                       "repulsive_alpha": 0.01},
}
PRESET_HELP = {
    "minilm": "fresh attention layers over frozen, disk-cached all-MiniLM-L6-v2 token states (default)",
    "tiny": "small encoder trained from scratch (fast smoke runs, CI)",
    "minilm-full": "fine-tune every MiniLM layer (a GPU, or patience)",
    "self-attentive": "Lin et al. 2017 self-attentive classifier",
}
