"""Matplotlib figures of a diagnostics run, returned as PNG bytes.

Every function takes ``runs``: a list of ``(label, layers)`` where ``layers`` is the list of per-layer
summaries of :meth:`probattn.metrics.AttentionStatistics.summary` (one run per model; two when comparing).
Figures stay readable for deep models: per-layer panels wrap into rows of at most :data:`WRAP` panels, per-head
maps are paginated, and :func:`to_png` never writes a PNG wider than :data:`MAX_WIDTH_PX` pixels.

Also the reliability diagram shared with ``probattn compare`` (:func:`reliability_figure`).
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from probattn.io import save_figure

Run = tuple[str, Sequence[dict]]

WRAP = 6  # per-layer panels per row
MAX_WIDTH_PX = 3000

__all__ = ["MAX_WIDTH_PX", "WRAP", "difference_grid", "embedding_cosine", "example_maps", "explained_away_grid",
           "head_clusters_figure", "head_maps", "layer_head_grid", "mass_histograms", "pool_reliability",
           "reliability_figure", "similarity_heatmaps", "to_png"]


def to_png(fig: Figure, dpi: int = 100) -> bytes:
    """Render ``fig`` to PNG bytes (no pyplot, so the user's matplotlib backend is left alone); the resolution is
    lowered when needed so that the image is at most :data:`MAX_WIDTH_PX` pixels wide."""
    width_in = fig.get_figwidth()
    dpi = min(dpi, math.floor(MAX_WIDTH_PX / width_in))
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    return buffer.getvalue()


def _grid(rows: int, cols: int, size: float = 2.4) -> tuple[Figure, np.ndarray]:
    fig = Figure(figsize=(size * cols + 0.6, size * rows + 0.6), layout="constrained")
    return fig, fig.subplots(rows, cols, squeeze=False)


def _wrapped(runs: int, layers: int, size: float) -> tuple[Figure, list[list[Any]]]:
    """Axes ``[run][layer]`` with each run's layers wrapped into rows of at most :data:`WRAP` panels."""
    cols = min(WRAP, max(layers, 1))
    rows_per_run = math.ceil(layers / cols)
    fig, axes = _grid(runs * rows_per_run, cols, size)
    out = []
    for r in range(runs):
        out.append([axes[r * rows_per_run + c // cols, c % cols] for c in range(layers)])
        for c in range(layers, rows_per_run * cols):
            axes[r * rows_per_run + c // cols, c % cols].axis("off")
    return fig, out


def similarity_heatmaps(runs: Sequence[Run], key: str = "attention_similarity", title: str = "") -> bytes | None:
    """Head × head similarity matrices (``key`` of each layer summary), one row per run, one column per layer.

    Returns None when no layer has ``key`` (e.g. head outputs were not captured).
    """
    if not any(key in layer for _, layers in runs for layer in layers):
        return None
    cols = max(len(layers) for _, layers in runs)
    fig, axes = _wrapped(len(runs), cols, 2.4)
    image = None
    for r, (label, layers) in enumerate(runs):
        for c in range(cols):
            ax = axes[r][c]
            ax.set_xticks([])
            ax.set_yticks([])
            if c >= len(layers) or key not in layers[c]:
                ax.axis("off")
                continue
            image = ax.imshow(np.asarray(layers[c][key]), vmin=0.0, vmax=1.0, cmap="viridis")
            ax.set_title(f"{label}: layer {c}" if c % WRAP == 0 and len(runs) > 1 else f"layer {c}", fontsize=8)
    if image is not None:
        fig.colorbar(image, ax=[ax for row in axes for ax in row], shrink=0.6)
    fig.suptitle(title or key.replace("_", " "), fontsize=11)
    return to_png(fig)


def mass_histograms(runs: Sequence[Run]) -> bytes:
    """Histograms of ``log10 m̃`` (normalized incoming mass) per layer, runs overlaid; lines at 0.1 and 0.01."""
    cols = max(len(layers) for _, layers in runs)
    fig, wrapped = _wrapped(1, cols, 2.8)
    for c in range(cols):
        ax = wrapped[0][c]
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
        if c % WRAP == 0:
            ax.set_ylabel("fraction of keys", fontsize=8)
    wrapped[0][0].legend(fontsize=7)
    fig.suptitle("incoming attention mass per key (1 = fair share; dotted: 0.1 and 0.01)", fontsize=11)
    return to_png(fig)


def layer_head_grid(runs: Sequence[Run], key: str, title: str, *, vmin: float = 0.0, vmax: float = 1.0,
                    cmap: str = "magma") -> bytes:
    """Layer × head grid of the per-head values ``layer[key]``, one panel per run, values written in the cells
    (up to 16 heads). Deep models get a tall figure (rows = layers), never a wide one."""
    grids = [np.asarray([layer[key] for layer in layers if key in layer], dtype=float) for _, layers in runs]
    heads = max(g.shape[1] for g in grids if g.size) if any(g.size for g in grids) else 1
    layers = max(len(g) for g in grids)
    cell = 0.45 if heads <= 16 else 0.2
    fig = Figure(figsize=(len(runs) * (cell * heads + 1.2) + 0.8, cell * layers + 1.6), layout="constrained")
    axes = fig.subplots(1, len(runs), squeeze=False)[0]
    image = None
    for ax, (label, _), grid in zip(axes, runs, grids):
        if not grid.size:
            ax.axis("off")
            continue
        image = ax.imshow(grid, vmin=vmin, vmax=vmax, cmap=cmap, aspect="auto")
        ax.set_title(label, fontsize=9)
        ax.set_xlabel("head")
        ax.set_ylabel("layer")
        step = max(1, layers // 15)
        ax.set_xticks(range(grid.shape[1]))
        ax.set_yticks(range(0, grid.shape[0], step))
        ax.tick_params(labelsize=7)
        if heads <= 16:
            for (row, col), value in np.ndenumerate(grid):
                ax.text(col, row, f"{value:.2f}", ha="center", va="center", fontsize=5.5,
                        color="white" if (value - vmin) < 0.5 * (vmax - vmin) else "black")
    if image is not None:
        fig.colorbar(image, ax=list(axes), shrink=0.8)
    fig.suptitle(title, fontsize=10)
    return to_png(fig)


def explained_away_grid(runs: Sequence[Run], threshold: float = 0.1) -> bytes:
    """Layer × head grid of the explained-away fraction ``mean_j [m̃_j < threshold]``, one panel per run."""
    return layer_head_grid(runs, f"explained_away_{threshold:g}",
                           f"fraction of keys explained away (normalized mass < {threshold:g})")


def difference_grid(a: Run, b: Run, keys: dict[str, str]) -> bytes | None:
    """``B − A`` layer × head grids of each ``keys`` entry (``{summary key: title}``), side by side; None when the
    two models' layers or heads differ in number."""
    (label_a, layers_a), (label_b, layers_b) = a, b
    if len(layers_a) != len(layers_b) or any(x["heads"] != y["heads"] for x, y in zip(layers_a, layers_b)):
        return None
    panels = []
    for key, title in keys.items():
        if all(key in x and key in y for x, y in zip(layers_a, layers_b)):
            panels.append((title, np.asarray([np.subtract(y[key], x[key]) for x, y in zip(layers_a, layers_b)])))
    if not panels:
        return None
    heads, layers = panels[0][1].shape[1], panels[0][1].shape[0]
    cell = 0.4 if heads <= 16 else 0.2
    fig = Figure(figsize=(len(panels) * (cell * heads + 1.4) + 0.6, cell * layers + 1.8), layout="constrained")
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, (title, grid) in zip(axes, panels):
        bound = max(float(np.abs(grid).max()), 1e-12)
        image = ax.imshow(grid, vmin=-bound, vmax=bound, cmap="RdBu_r", aspect="auto")
        ax.set_title(title, fontsize=8)
        ax.set_xlabel("head", fontsize=8)
        ax.set_ylabel("layer", fontsize=8)
        ax.tick_params(labelsize=6)
        fig.colorbar(image, ax=ax, shrink=0.8)
    fig.suptitle(f"difference {label_b} − {label_a} per layer and head (red: higher in {label_b})", fontsize=10)
    return to_png(fig)


def embedding_cosine(cosines: np.ndarray, labels: tuple[str, str]) -> bytes:
    """Histogram of the per-example cosine between the two models' mean-pooled last hidden states."""
    fig = Figure(figsize=(5.0, 3.0), layout="constrained")
    ax = fig.subplots()
    ax.hist(cosines, bins=30, range=(min(-0.0, float(cosines.min())), 1.0), color="tab:blue")
    ax.set_xlabel("cosine of the example's embeddings")
    ax.set_ylabel("examples")
    ax.set_title(f"{labels[0]} vs {labels[1]}: mean {cosines.mean():.3f}, min {cosines.min():.3f}", fontsize=9)
    return to_png(fig)


def head_maps(maps: Sequence[np.ndarray], tokens: Sequence[str], label: str, layers_per_page: int = 6) -> list[bytes]:
    """The example's attention per head: pages of ``layers_per_page`` layers × heads, one PNG per page.

    ``maps[layer]`` is ``(H, N, N)`` (queries × keys) over ``tokens``. Each page is one mosaic image (rows: layers,
    columns: heads; one image per page keeps deep models fast to draw), at most :data:`MAX_WIDTH_PX` wide.
    """
    pages = []
    heads = max(m.shape[0] for m in maps)
    n = len(tokens)
    gap = max(1, n // 8)
    block = n + gap
    cell = min(1.4, 24.0 / heads)
    for first in range(0, len(maps), layers_per_page):
        chunk = maps[first : first + layers_per_page]
        mosaic = np.full((len(chunk) * block - gap, heads * block - gap), np.nan)
        for r, layer_maps in enumerate(chunk):
            for h in range(layer_maps.shape[0]):
                mosaic[r * block : r * block + n, h * block : h * block + n] = layer_maps[h]
        fig = Figure(figsize=(cell * heads + 1.4, cell * len(chunk) + 1.0), layout="constrained")
        ax = fig.subplots()
        image = ax.imshow(np.ma.masked_invalid(mosaic), vmin=0.0, vmax=1.0, cmap="Blues", interpolation="nearest")
        ax.set_xticks([h * block + n / 2 - 0.5 for h in range(heads)], [f"H{h}" for h in range(heads)], fontsize=7)
        ax.set_yticks([r * block + n / 2 - 0.5 for r in range(len(chunk))],
                      [f"L{first + r}" for r in range(len(chunk))], fontsize=7)
        ax.tick_params(length=0)
        for side in ax.spines.values():
            side.set_visible(False)
        fig.colorbar(image, ax=ax, shrink=0.6)
        last = first + len(chunk) - 1
        ax.set_title(f"{label}: attention per head, layers {first}-{last} ({n} tokens; in each block rows are "
                     "queries, columns keys)", fontsize=8)
        pages.append(to_png(fig))
    return pages


def head_clusters_figure(distance: np.ndarray, heads_per_layer: Sequence[int], clusters: np.ndarray,
                         label: str) -> bytes:
    """Heads of all layers laid out by classical MDS of their Jensen–Shannon distances (Clark et al. 2019,
    Fig. 6): colour = layer, marker text = cluster id."""
    import torch

    from probattn.metrics import classical_mds

    points = classical_mds(torch.as_tensor(distance, dtype=torch.float64).clamp_min(0).sqrt()).numpy()
    layer_of = np.repeat(np.arange(len(heads_per_layer)), heads_per_layer)
    fig = Figure(figsize=(6.0, 5.0), layout="constrained")
    ax = fig.subplots()
    scatter = ax.scatter(points[:, 0], points[:, 1], c=layer_of, cmap="viridis", s=18)
    for (x, y), c in zip(points, clusters):
        ax.annotate(str(int(c)), (x, y), fontsize=5, xytext=(2, 2), textcoords="offset points")
    fig.colorbar(scatter, ax=ax, label="layer")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(f"{label}: heads by Jensen–Shannon distance (MDS; numbers: cluster)", fontsize=9)
    return to_png(fig)


def example_maps(runs: Sequence[Run], maps: Sequence[Sequence[np.ndarray]], tokens: Sequence[Sequence[str]]) -> bytes:
    """The first example's attention map (mean over heads) per layer.

    ``maps[run][layer]`` is ``(N, N)`` over the run's real tokens ``tokens[run]`` (runs may tokenize differently).
    """
    cols = max(len(m) for m in maps)
    fig, axes = _wrapped(len(runs), cols, 3.0)
    shared = all(list(t) == list(tokens[0]) for t in tokens)
    for r, ((label, _), run_maps, run_tokens) in enumerate(zip(runs, maps, tokens)):
        show = len(run_tokens) <= 24
        for c in range(cols):
            ax = axes[r][c]
            if c >= len(run_maps):
                ax.axis("off")
                continue
            ax.imshow(run_maps[c], vmin=0.0, cmap="Blues")
            ax.set_title(f"layer {c}", fontsize=9)
            ax.set_xticks([])
            ax.set_yticks([])
            if show and c % WRAP == 0:  # tokens once per row: text layout is what makes these figures slow
                ax.set_yticks(range(len(run_tokens)), run_tokens, fontsize=5)
            if show and (r == len(runs) - 1 or not shared) and c >= cols - WRAP:
                ax.set_xticks(range(len(run_tokens)), run_tokens, rotation=90, fontsize=5)
            if c % WRAP == 0:
                ax.set_ylabel(label, fontsize=9)
    fig.suptitle("attention of the first example, averaged over heads (rows: queries, columns: keys)", fontsize=11)
    return to_png(fig)


def pool_reliability(bins: Sequence[dict[str, Any]]) -> dict[str, np.ndarray]:
    """Pool reliability data of several runs (same edges): summed counts, count-weighted confidence/accuracy.

    Returns ``edges (M+1,)``, ``count (M,)``, ``confidence (M,)``, ``accuracy (M,)`` (NaN for empty bins).
    """
    edges = np.asarray(bins[0]["bin_edges"], dtype=float)
    count = np.zeros(len(edges) - 1)
    conf_sum, acc_sum = np.zeros_like(count), np.zeros_like(count)
    for b in bins:
        if not np.allclose(b["bin_edges"], edges):
            raise ValueError("reliability: runs use different bins; they cannot be pooled")
        n = np.asarray(b["bin_count"], dtype=float)
        count += n
        conf_sum += n * np.array([c if c is not None else 0.0 for c in b["bin_confidence"]])
        acc_sum += n * np.array([a if a is not None else 0.0 for a in b["bin_accuracy"]])
    with np.errstate(invalid="ignore", divide="ignore"):
        return {"edges": edges, "count": count, "confidence": conf_sum / count, "accuracy": acc_sum / count}


def reliability_figure(runs: Sequence[dict[str, Any]], variants: Sequence[str], splits: dict[str, str],
                       path: Path) -> Path:
    """One panel per (split, variant): accuracy per confidence bin (bars, with bin counts) against the
    diagonal; each title gives the pooled ECE and the number of examples.

    ``runs``: ``run["variant"]`` and ``run["reliability"][split]`` (``bin_edges``, ``bin_confidence``,
    ``bin_accuracy``, ``bin_count`` of :class:`probattn.metrics.CalibrationResult`; seeds are pooled by bin).
    ``splits`` maps the key in ``run["reliability"]`` to a row title, e.g. ``{"in_domain": "Rotten Tomatoes"}``.
    Writes a PNG to ``path`` and returns it.
    """
    one = len(variants) == 1  # one model (``probattn train``): its splits side by side, not a narrow strip
    rows, cols = (1, len(splits)) if one else (len(splits), len(variants))
    fig = Figure(figsize=(3.2 * cols, 3.2 * rows), layout="tight")
    axes = fig.subplots(rows, cols, sharex=True, sharey=True, squeeze=False)
    for row_index, (split, title) in enumerate(splits.items()):
        for col_index, variant in enumerate(variants):
            row, col = (0, row_index) if one else (row_index, col_index)
            ax = axes[row, col]
            bins = [r["reliability"][split] for r in runs if r["variant"] == variant and split in r["reliability"]]
            ax.plot([0, 1], [0, 1], color="gray", lw=0.8, ls="--")
            if bins:
                pooled = pool_reliability(bins)
                left, width = pooled["edges"][:-1], np.diff(pooled["edges"])
                filled = pooled["count"] > 0
                ax.bar(left[filled], pooled["accuracy"][filled], width=width[filled], align="edge",
                       edgecolor="black", lw=0.4, alpha=0.8)
                ax.plot(pooled["confidence"][filled], pooled["accuracy"][filled], "k.", ms=3)
                for x, w, y, n in zip(left[filled], width[filled], pooled["accuracy"][filled], pooled["count"][filled]):
                    # the count of each bin, upright above its bar (inside the axes: capped below the top)
                    ax.text(x + w / 2, min(y, 0.82) + 0.03, f"{int(n)}", ha="center", va="bottom", fontsize=7,
                            rotation=90)
                total = pooled["count"].sum()
                ece = float(np.nansum(pooled["count"] * np.abs(pooled["accuracy"] - pooled["confidence"])) / total)
                label = f"\npooled ECE {ece:.3f}, n={int(total)}"
            else:
                label = ""
            ax.set_title((f"{variant}: {title}" if row == 0 else title) + label, fontsize=8)
            ax.set_xlim(0, 1)
            ax.set_ylim(0, 1)
            if row == rows - 1:
                ax.set_xlabel("confidence", fontsize=8)
            if col == 0:
                ax.set_ylabel("accuracy (bar labels: examples per bin)" if one else "accuracy", fontsize=8)
    save_figure(fig, path, dpi=100)  # atomic, never through a link
    return Path(path)
