"""Figures of the studies: :func:`summary_figure` (the runner's standard figure: bars from 0 with intervals inside
each quantity's range, baselines as lines, the legend below the panels), reliability diagrams, per-layer head
diversity / explained away / key-query distance, and metric curves over training steps (``experiment nmt``).

The reliability and per-layer figures read the saved runs (see :mod:`probattn.experiments.runner`):

* ``run["reliability"][split]`` (:func:`reliability_figure`, which lives in :mod:`probattn.report.figures` and is
  re-exported here): ``bin_edges``, ``bin_confidence``, ``bin_accuracy``, ``bin_count`` of
  :class:`probattn.metrics.CalibrationResult`; seeds are pooled by bin (count-weighted means).
* ``run["per_layer"][metric]``: one value per attention layer; plotted as mean ± std over seeds.
* ``run["history"]``: records with ``step`` and the plotted metric.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from probattn.report.figures import pool_reliability, reliability_figure

__all__ = [
    "curves_figure",
    "per_layer_figure",
    "pool_reliability",
    "reliability_figure",
    "summary_figure",
]


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def per_layer_figure(runs: Sequence[dict[str, Any]], variants: Sequence[str], metrics: dict[str, str],
                     path: Path) -> Path:
    """One panel per metric (``{key in run["per_layer"]: axis label}``): value per layer, mean ± std over seeds (the
    bars stop at 0: these quantities are non-negative); the legend sits below the panels."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.2 * len(metrics), 3.2), squeeze=False)
    for ax, (key, label) in zip(axes[0], metrics.items()):
        for variant in variants:
            series = [r["per_layer"][key] for r in runs if r["variant"] == variant and key in r.get("per_layer", {})]
            if not series:
                continue
            values = np.asarray(series, dtype=float)  # (seeds, layers)
            layers = np.arange(values.shape[1])
            mean = values.mean(0)
            std = values.std(0, ddof=1) if len(values) > 1 else np.zeros_like(mean)
            ax.errorbar(layers, mean, yerr=np.vstack([np.minimum(std, np.maximum(mean, 0)), std]), marker="o",
                        capsize=3, label=variant)
        ax.set_xlabel("layer")
        ax.set_ylabel(label)
        ax.set_xticks(range(max((len(r["per_layer"].get(key, [])) for r in runs), default=0)))
    handles, labels = axes[0, 0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="lower center", ncol=min(5, len(labels)), fontsize=8, frameon=False)
        fig.tight_layout(rect=(0, 0.1, 1, 1))
    else:
        fig.tight_layout()
    return _save(fig, path)


def curves_figure(runs: Sequence[dict[str, Any]], variants: Sequence[str], key: str, label: str,
                  path: Path) -> Path:
    """``key`` over training steps per variant: each seed a thin line, the mean over seeds (at the steps all
    of them reached) a thick one. Reads ``run["history"]`` records that hold ``key``."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.0, 3.8))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, variant in enumerate(variants):
        color = colors[i % len(colors)]
        series = []
        for r in runs:
            if r["variant"] != variant:
                continue
            points = [(h["step"], h[key]) for h in r.get("history", []) if key in h]
            if points:
                steps, values = zip(*points)
                ax.plot(steps, values, color=color, lw=0.7, alpha=0.5)
                series.append(dict(points))
        if series:
            common = sorted(set.intersection(*(set(s) for s in series)))
            ax.plot(common, [np.mean([s[t] for s in series]) for t in common], color=color, lw=2,
                    label=f"{variant} ({len(series)} seed{'s' if len(series) > 1 else ''})")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel(label)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    fig.tight_layout()
    return _save(fig, path)


def _save(fig, path: Path) -> Path:
    from probattn.io import save_figure

    save_figure(fig, path, dpi=80)  # atomic, never through a link
    _pyplot().close(fig)
    return Path(path)


def summary_figure(cells: dict[str, dict[str, dict[str, Any]]], variants: Sequence[str], baselines: Sequence[str],
                   metrics: Sequence[Any], path: Path, *, title: str = "") -> Path:
    """The runner's standard figure: one panel per metric, a bar per variant from 0 with its interval (already
    inside the quantity's range) and each baseline as a labelled horizontal line; the legend sits below the
    panels, so it covers no bar. ``cells[name][metric.key]``: ``{"mean", "low", "high"}``; ``metrics``:
    :class:`probattn.experiments.runner.Metric` (``key``, ``label``, ``bounds``)."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(metrics), figsize=(max(3.2, 0.55 * len(variants) + 1.6) * len(metrics), 3.6),
                             squeeze=False)
    styles = ["--", ":", "-.", (0, (5, 1))]
    handles: dict[str, Any] = {}
    for ax, metric in zip(axes[0], metrics):
        rows = [cells.get(v, {}).get(metric.key, {}) for v in variants]
        means = np.array([r.get("mean", np.nan) for r in rows], dtype=float)
        low = np.array([r.get("low", np.nan) for r in rows], dtype=float)
        high = np.array([r.get("high", np.nan) for r in rows], dtype=float)
        lo, hi = metric.bounds
        low, high = np.clip(low, lo, hi), np.clip(high, lo, hi)
        err = np.vstack([np.where(np.isfinite(low), np.maximum(means - low, 0), 0),
                         np.where(np.isfinite(high), np.maximum(high - means, 0), 0)])
        ax.bar(range(len(variants)), np.nan_to_num(means), yerr=err, capsize=3, color="tab:blue", alpha=0.8)
        top = np.nanmax(np.concatenate([means, high, [0.0]]))
        for i, name in enumerate(baselines):
            value = cells.get(name, {}).get(metric.key, {}).get("mean", np.nan)
            if value is not None and np.isfinite(value):
                line = ax.axhline(value, color=f"C{i + 1}", ls=styles[i % len(styles)], lw=1.2)
                handles.setdefault(name.replace(" (baseline)", ""), line)
                top = max(top, value)
        upper = min(hi, top * 1.08) if np.isfinite(hi) else top * 1.08
        ax.set_ylim(lo if np.isfinite(lo) else min(0.0, np.nanmin(means)), upper if upper > 0 else 1.0)
        ax.set_xticks(range(len(variants)), list(variants), rotation=30, fontsize=8)
        ax.set_title(metric.label, fontsize=9)
    if title:
        fig.suptitle(title, fontsize=9)
    if handles:
        fig.legend(list(handles.values()), list(handles), loc="lower center", ncol=min(4, len(handles)), fontsize=7,
                   frameon=False)
        fig.tight_layout(rect=(0, 0.1, 1, 1))
    else:
        fig.tight_layout()
    return _save(fig, path)
