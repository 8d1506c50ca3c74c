"""Figures of ``probattn compare``: reliability diagrams and per-layer head diversity / explained away.

Both read the saved runs (see :mod:`probattn.experiments.results`):

* ``run["reliability"][split]`` (:func:`reliability_figure`, which lives in :mod:`probattn.report.figures` and is
  re-exported here): ``bin_edges``, ``bin_confidence``, ``bin_accuracy``, ``bin_count`` of
  :class:`probattn.metrics.CalibrationResult`; seeds are pooled by bin (count-weighted means).
* ``run["per_layer"][metric]``: one value per attention layer; plotted as mean ± std over seeds.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from probattn.report.figures import pool_reliability, reliability_figure

__all__ = ["per_layer_figure", "pool_reliability", "reliability_figure"]


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def per_layer_figure(runs: Sequence[dict[str, Any]], variants: Sequence[str], metrics: dict[str, str],
                     path: Path) -> Path:
    """One panel per metric (``{key in run["per_layer"]: axis label}``): value per layer, mean ± std over seeds."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.2 * len(metrics), 3.2), squeeze=False)
    for ax, (key, label) in zip(axes[0], metrics.items()):
        for variant in variants:
            series = [r["per_layer"][key] for r in runs if r["variant"] == variant and key in r.get("per_layer", {})]
            if not series:
                continue
            values = np.asarray(series, dtype=float)  # (seeds, layers)
            layers = np.arange(values.shape[1])
            std = values.std(0, ddof=1) if len(values) > 1 else None
            ax.errorbar(layers, values.mean(0), yerr=std, marker="o", capsize=3, label=variant)
        ax.set_xlabel("layer")
        ax.set_ylabel(label)
        ax.set_xticks(range(max((len(r["per_layer"].get(key, [])) for r in runs), default=0)))
    axes[0, 0].legend(fontsize=8)
    fig.tight_layout()
    return _save(fig, path)


def _save(fig, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    _pyplot().close(fig)
    return path
