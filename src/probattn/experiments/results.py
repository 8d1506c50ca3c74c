"""Aggregation of finished runs: mean and 95% interval over seeds, and the files that hold them.

A *run* is one finished (variant, seed): a JSON object ``{"variant": str, "seed": int, "metrics": {name:
float}, ...}`` saved on its own as ``runs/<variant>-seed<seed>.json`` the moment it finishes (written to a
temporary file and renamed, so a crash never leaves half a file). The summary files ``results.md`` and
``results.json`` are rebuilt from all saved runs after every run, so a later failure never loses earlier
results and ``--resume`` only has to look for the run files.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

__all__ = [
    "Column",
    "best_per_column",
    "format_table",
    "load_runs",
    "run_path",
    "save_run",
    "summarize",
    "summary_records",
    "write_json",
]

RUNS_DIR = "runs"


@dataclass(frozen=True)
class Column:
    """One reported metric: its key in ``run["metrics"]``, a table header, which way is better, digits."""

    key: str
    label: str
    higher_is_better: bool
    digits: int = 3


def write_json(path: Path, obj: Any) -> None:
    """Write ``obj`` as JSON to ``path`` atomically, never through a link (:func:`probattn.io.write_json`)."""
    from probattn.io import write_json as atomic_json

    atomic_json(path, obj)


def run_path(output_dir: Path, variant: str, seed: int) -> Path:
    """Where the run (variant, seed) is saved: ``output_dir/runs/<variant>-seed<seed>.json``."""
    return Path(output_dir) / RUNS_DIR / f"{variant}-seed{seed}.json"


def save_run(output_dir: Path, run: dict[str, Any]) -> Path:
    """Save one finished run (needs keys ``variant``, ``seed``, ``metrics``) and return its path."""
    missing = {"variant", "seed", "metrics"} - run.keys()
    if missing:
        raise ValueError(f"run: missing keys {sorted(missing)}; a run needs 'variant', 'seed' and 'metrics'")
    path = run_path(output_dir, run["variant"], int(run["seed"]))
    write_json(path, run)
    return path


def load_runs(output_dir: Path) -> list[dict[str, Any]]:
    """All runs saved under ``output_dir/runs``, sorted by (variant, seed); [] when there are none."""
    folder = Path(output_dir) / RUNS_DIR
    runs = [json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))] if folder.is_dir() else []
    return sorted(runs, key=lambda r: (r["variant"], r["seed"]))


def summarize(runs: Iterable[dict[str, Any]], columns: Sequence[Column], order: Sequence[str] = ()) -> pd.DataFrame:
    """Mean, sample std (ddof=1; NaN for one seed), Student-t 95% interval (``low``, ``high``: NaN for one
    seed; :func:`probattn.metrics.significance.mean_interval`) and count over seeds, per variant and column.

    Returns a DataFrame indexed by variant (in ``order`` first, then the rest alphabetically) with a column
    MultiIndex ``(metric key, "mean" | "std" | "n" | "low" | "high")``. Missing or non-finite values are left
    out of the statistics, not counted as zero.
    """
    from probattn.metrics.significance import mean_interval

    rows = [{"variant": r["variant"], **{c.key: r["metrics"].get(c.key, math.nan) for c in columns}} for r in runs]
    if not rows:
        raise ValueError("runs: nothing to summarize; no run has finished yet")
    frame = pd.DataFrame(rows).set_index("variant").astype(float)
    frame = frame.where(frame.map(math.isfinite))
    summary = frame.groupby(level="variant").agg(["mean", "std", "count"]).rename(columns={"count": "n"}, level=1)
    for c in columns:
        bounds = {v: mean_interval(g.dropna().to_numpy())[1:] if g.notna().any() else (math.nan, math.nan)
                  for v, g in frame[c.key].groupby(level="variant")}
        summary[(c.key, "low")] = [bounds[v][0] for v in summary.index]
        summary[(c.key, "high")] = [bounds[v][1] for v in summary.index]
    known = [v for v in order if v in summary.index]
    return summary.loc[known + sorted(set(summary.index) - set(known))]


def best_per_column(summary: pd.DataFrame, columns: Sequence[Column]) -> dict[str, list[str]]:
    """For each column, the variants whose mean (rounded to the shown digits) is the best; [] if none is finite.

    Descriptive only: a best mean is no evidence of a difference (tables call differences through the paired
    test of :mod:`probattn.experiments.verdict` and mark nothing as best).
    """
    best: dict[str, list[str]] = {}
    for c in columns:
        means = summary[(c.key, "mean")].dropna().round(c.digits)
        if means.empty:
            best[c.key] = []
            continue
        target = means.max() if c.higher_is_better else means.min()
        best[c.key] = [v for v, m in means.items() if m == target]
    return best


def _cell(mean: float, low: float, high: float, digits: int) -> str:
    if not math.isfinite(mean):
        return "n/a"
    if not (math.isfinite(low) and math.isfinite(high)):
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} [{low:.{digits}f}, {high:.{digits}f}]"


def format_table(summary: pd.DataFrame, columns: Sequence[Column],
                 extra: dict[str, dict[str, str]] | None = None) -> str:
    """A Markdown table: one row per variant, ``mean [95% interval over seeds]`` cells (the mean alone for one
    seed). Nothing is bolded: a higher mean is no evidence of a difference.

    Arrows in the header say which way is better (↑ higher, ↓ lower); ``n`` is the number of seeds.
    ``extra``: more columns, ``{header: {variant: text}}`` (e.g. the paired test against softmax); empty for
    the variants it does not name.
    """
    extra = extra or {}
    header = ["variant", "n", *[f"{c.label} {'↑' if c.higher_is_better else '↓'}" for c in columns], *extra]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for variant, row in summary.iterrows():
        seeds = int(max(row[(c.key, "n")] for c in columns))
        cells = [str(variant), str(seeds)]
        cells += [_cell(row[(c.key, "mean")], row[(c.key, "low")], row[(c.key, "high")], c.digits) for c in columns]
        cells += [texts.get(str(variant), "") for texts in extra.values()]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def summary_records(summary: pd.DataFrame, columns: Sequence[Column]) -> dict[str, dict[str, dict[str, float]]]:
    """``{variant: {metric: {"mean", "std", "low", "high", "n"}}}`` with NaN as None, for JSON."""

    def clean(x: float) -> float | None:
        return float(x) if math.isfinite(x) else None

    return {
        str(v): {c.key: {s: clean(row[(c.key, s)]) for s in ("mean", "std", "low", "high", "n")} for c in columns}
        for v, row in summary.iterrows()
    }
