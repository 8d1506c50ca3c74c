"""Matplotlib figures of a diagnostics run, returned as PNG bytes.

Every function takes ``runs``: a list of ``(label, layers)`` where ``layers`` is the list of per-layer
summaries of :meth:`probattn.metrics.AttentionStatistics.summary` (one run per model; two when comparing).
"""

from __future__ import annotations

import io
from collections.abc import Sequence

import numpy as np
from matplotlib.figure import Figure

Run = tuple[str, Sequence[dict]]

__all__ = ["example_maps", "explained_away_grid", "mass_histograms", "similarity_heatmaps", "to_png"]


def to_png(fig: Figure, dpi: int = 100) -> bytes:
    """Render ``fig`` to PNG bytes (no pyplot, so the user's matplotlib backend is left alone)."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    return buffer.getvalue()


def _grid(rows: int, cols: int, size: float = 2.4) -> tuple[Figure, np.ndarray]:
    fig = Figure(figsize=(size * cols + 0.6, size * rows + 0.6), layout="constrained")
    return fig, fig.subplots(rows, cols, squeeze=False)


def similarity_heatmaps(runs: Sequence[Run], key: str = "attention_similarity", title: str = "") -> bytes | None:
    """Head × head similarity matrices (``key`` of each layer summary), one row per run, one column per layer.

    Returns None when no layer has ``key`` (e.g. head outputs were not captured).
    """
    if not any(key in layer for _, layers in runs for layer in layers):
        return None
    cols = max(len(layers) for _, layers in runs)
    fig, axes = _grid(len(runs), cols)
    image = None
    for r, (label, layers) in enumerate(runs):
        for c in range(cols):
            ax = axes[r, c]
            ax.set_xticks([])
            ax.set_yticks([])
            if c >= len(layers) or key not in layers[c]:
                ax.axis("off")
                continue
            image = ax.imshow(np.asarray(layers[c][key]), vmin=0.0, vmax=1.0, cmap="viridis")
            ax.set_title(f"layer {c}", fontsize=9)
            if c == 0:
                ax.set_ylabel(label, fontsize=9)
    if image is not None:
        fig.colorbar(image, ax=axes.ravel().tolist(), shrink=0.8)
    fig.suptitle(title or key.replace("_", " "), fontsize=11)
    return to_png(fig)


def mass_histograms(runs: Sequence[Run]) -> bytes:
    """Histograms of ``log10 m̃`` (normalized incoming mass) per layer, runs overlaid; lines at 0.1 and 0.01."""
    cols = max(len(layers) for _, layers in runs)
    fig, axes = _grid(1, cols, size=2.8)
    for c in range(cols):
        ax = axes[0, c]
        for label, layers in runs:
            if c >= len(layers) or "incoming_mass_histogram" not in layers[c]:
                continue
            hist = layers[c]["incoming_mass_histogram"]
            counts = np.asarray(hist["counts"], dtype=float)
            lo, hi = hist["log10_range"]
            edges = np.linspace(lo, hi, len(counts) + 1)
            ax.stairs(counts / max(counts.sum(), 1.0), edges, label=label)
        for tau in (-1, -2):
            ax.axvline(tau, color="grey", linestyle=":", linewidth=1)
        ax.set_title(f"layer {c}", fontsize=9)
        ax.set_xlabel("log10 normalized incoming mass", fontsize=8)
        if c == 0:
            ax.set_ylabel("fraction of keys", fontsize=8)
    axes[0, 0].legend(fontsize=7)
    fig.suptitle("incoming attention mass per key (1 = fair share; dotted: 0.1 and 0.01)", fontsize=11)
    return to_png(fig)


def explained_away_grid(runs: Sequence[Run], threshold: float = 0.1) -> bytes:
    """Layer × head grid of the explained-away fraction ``mean_j [m̃_j < threshold]``, one panel per run."""
    key = f"explained_away_{threshold:g}"
    fig, axes = _grid(1, len(runs), size=4.0)
    image = None
    for i, (label, layers) in enumerate(runs):
        grid = np.asarray([layer[key] for layer in layers if key in layer])
        ax = axes[0, i]
        image = ax.imshow(grid, vmin=0.0, vmax=1.0, cmap="magma", aspect="auto")
        ax.set_title(label, fontsize=9)
        ax.set_xlabel("head")
        ax.set_ylabel("layer")
        ax.set_xticks(range(grid.shape[1]))
        ax.set_yticks(range(grid.shape[0]))
        for (row, col), value in np.ndenumerate(grid):
            ax.text(col, row, f"{value:.2f}", ha="center", va="center", fontsize=6,
                    color="white" if value < 0.5 else "black")
    if image is not None:
        fig.colorbar(image, ax=axes.ravel().tolist(), shrink=0.8)
    fig.suptitle(f"fraction of keys explained away (normalized mass < {threshold:g})", fontsize=11)
    return to_png(fig)


def example_maps(runs: Sequence[Run], maps: Sequence[Sequence[np.ndarray]], tokens: Sequence[Sequence[str]]) -> bytes:
    """The first example's attention map (mean over heads) per layer.

    ``maps[run][layer]`` is ``(N, N)`` over the run's real tokens ``tokens[run]`` (runs may tokenize differently).
    """
    cols = max(len(m) for m in maps)
    fig, axes = _grid(len(runs), cols, size=3.0)
    shared = all(list(t) == list(tokens[0]) for t in tokens)
    for r, ((label, _), run_maps, run_tokens) in enumerate(zip(runs, maps, tokens)):
        show = len(run_tokens) <= 24
        for c in range(cols):
            ax = axes[r, c]
            if c >= len(run_maps):
                ax.axis("off")
                continue
            ax.imshow(run_maps[c], vmin=0.0, cmap="Blues")
            ax.set_title(f"layer {c}", fontsize=9)
            ax.set_xticks([])
            ax.set_yticks([])
            if show and c == 0:  # tokens once per row: text layout is what makes these figures slow
                ax.set_yticks(range(len(run_tokens)), run_tokens, fontsize=5)
            if show and (r == len(runs) - 1 or not shared):
                ax.set_xticks(range(len(run_tokens)), run_tokens, rotation=90, fontsize=5)
            if c == 0:
                ax.set_ylabel(label, fontsize=9)
    fig.suptitle("attention of the first example, averaged over heads (rows: queries, columns: keys)", fontsize=11)
    return to_png(fig)
