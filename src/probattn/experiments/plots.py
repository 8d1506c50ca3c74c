"""Figures of ``probattn compare`` and the experiments: accuracy/ECE with intervals and baselines, reliability
diagrams, per-layer head diversity / explained away / key-query distance, time/memory bars, metric curves over
training steps (``experiment nmt``'s validation BLEU) and :func:`interval_figure` (``experiment graph``).

The reliability and per-layer figures read the saved runs (see :mod:`probattn.experiments.results`):

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
    "cost_figure",
    "curves_figure",
    "interval_figure",
    "metrics_figure",
    "per_layer_figure",
    "pool_reliability",
    "reliability_figure",
]


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


def interval_figure(path: Path, names: Sequence[str], values: Sequence[Sequence[float] | None], *, ylabel: str,
                    title: str, lines: dict[str, float] | None = None) -> Path:
    """One point per name at ``mean`` with a ``[low, high]`` bar (``values[i] = (mean, low, high)``, the output
    of :func:`probattn.metrics.mean_interval`; NaN bounds draw no bar), and labelled horizontal ``lines``."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(1.1 * len(names) + 2.5, 3.2))
    for i, value in enumerate(values):
        if value is None:
            continue
        mean, low, high = value
        err = None if not (np.isfinite(low) and np.isfinite(high)) else [[mean - low], [high - mean]]
        ax.errorbar([i], [mean], yerr=err, marker="o", capsize=4, color="C0")
    for j, (label, y) in enumerate((lines or {}).items()):
        ax.axhline(y, ls="--", lw=1, color=f"C{j + 1}", label=label)
    if lines:
        ax.legend(fontsize=8)
    ax.set_xticks(range(len(names)), list(names))
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return _save(fig, path)


def _save(fig, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    _pyplot().close(fig)
    return path


def metrics_figure(summary, variants: Sequence[str], baselines: Sequence[str], splits: dict[str, str],
                   path: Path) -> Path:
    """Accuracy and ECE per split: one bar per variant (mean, 95% interval over seeds as error bars) and each
    baseline as a horizontal line. ``summary``: :func:`probattn.experiments.results.summarize` output holding
    the variants and the baselines; ``splits``: ``{"in_domain": title, "ood": title}``."""
    plt = _pyplot()
    suffix = {"in_domain": "id", "ood": "ood"}
    panels = [(f"{metric}_{suffix[s]}", f"{label} ({title})") for s, title in splits.items()
              for metric, label in (("accuracy", "accuracy"), ("ece", "ECE"))]
    fig, axes = plt.subplots(1, len(panels), figsize=(3.6 * len(panels), 3.4), squeeze=False)
    styles = ["--", ":", "-.", (0, (5, 1))]
    for ax, (key, label) in zip(axes[0], panels):
        if (key, "mean") not in summary.columns:
            ax.set_visible(False)
            continue
        means = np.array([summary.loc[v, (key, "mean")] for v in variants], dtype=float)
        low = np.array([summary.loc[v, (key, "low")] for v in variants], dtype=float)
        high = np.array([summary.loc[v, (key, "high")] for v in variants], dtype=float)
        err = np.vstack([np.where(np.isfinite(low), means - low, 0), np.where(np.isfinite(high), high - means, 0)])
        ax.bar(range(len(variants)), means, yerr=err, capsize=3, color="tab:blue", alpha=0.8)
        for i, name in enumerate(baselines):
            value = summary.loc[name, (key, "mean")] if name in summary.index else np.nan
            if np.isfinite(value):
                ax.axhline(value, color=f"C{i + 1}", ls=styles[i % len(styles)], lw=1.2, label=f"{name} {value:.3f}")
        finite = np.concatenate([means[np.isfinite(means)], high[np.isfinite(high)], low[np.isfinite(low)]])
        lines = [summary.loc[b, (key, "mean")] for b in baselines if b in summary.index]
        everything = np.concatenate([finite, np.asarray(lines, dtype=float)])
        everything = everything[np.isfinite(everything)]
        if key.startswith("accuracy") and everything.size:
            ax.set_ylim(max(0.0, everything.min() - 0.05), min(1.0, everything.max() + 0.03))
        ax.set_xticks(range(len(variants)), variants, rotation=30, fontsize=8)
        ax.set_title(label, fontsize=9)
        if baselines:
            ax.legend(fontsize=6, loc="lower right" if key.startswith("accuracy") else "upper right")
    fig.tight_layout()
    return _save(fig, path)


def cost_figure(cost, variants: Sequence[str], path: Path) -> Path:
    """Bars of wall and CPU ms per training step and peak memory per variant (mean, interval over timing rounds)."""
    plt = _pyplot()
    panels = [("ms_per_step", "wall ms / step"), ("cpu_ms_per_step", "CPU ms / step"),
              ("peak_memory_mb", "peak memory (MiB)")]
    fig, axes = plt.subplots(1, len(panels), figsize=(3.6 * len(panels), 3.2), squeeze=False)
    names = [v for v in variants if v in cost.index]
    for ax, (key, label) in zip(axes[0], panels):
        means = np.array([cost.loc[v, (key, "mean")] for v in names], dtype=float)
        low = np.array([cost.loc[v, (key, "low")] for v in names], dtype=float)
        high = np.array([cost.loc[v, (key, "high")] for v in names], dtype=float)
        err = np.vstack([np.where(np.isfinite(low), means - low, 0), np.where(np.isfinite(high), high - means, 0)])
        ax.bar(range(len(names)), np.nan_to_num(means), yerr=err, capsize=3, color="tab:gray")
        ax.set_xticks(range(len(names)), names, rotation=30, fontsize=8)
        ax.set_title(label, fontsize=9)
    fig.tight_layout()
    return _save(fig, path)


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
