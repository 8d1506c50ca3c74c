"""Aggregation of finished runs: mean ± std over seeds, best per column, and the files that hold them.

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
    """Write ``obj`` as JSON to ``path`` atomically (:func:`probattn.training.checkpoint.write_json`)."""
    from probattn.training.checkpoint import write_json as atomic_json  # (imports torch: only when writing)

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
    """Mean, sample std (ddof=1; NaN for one seed) and count over seeds, per variant and column.

    Returns a DataFrame indexed by variant (in ``order`` first, then the rest alphabetically) with a column
    MultiIndex ``(metric key, "mean" | "std" | "n")``. Missing or non-finite values are left out of the
    statistics, not counted as zero.
    """
    rows = [{"variant": r["variant"], **{c.key: r["metrics"].get(c.key, math.nan) for c in columns}} for r in runs]
    if not rows:
        raise ValueError("runs: nothing to summarize; no run has finished yet")
    frame = pd.DataFrame(rows).set_index("variant").astype(float)
    frame = frame.where(frame.map(math.isfinite))
    summary = frame.groupby(level="variant").agg(["mean", "std", "count"]).rename(columns={"count": "n"}, level=1)
    known = [v for v in order if v in summary.index]
    return summary.loc[known + sorted(set(summary.index) - set(known))]


def best_per_column(summary: pd.DataFrame, columns: Sequence[Column]) -> dict[str, list[str]]:
    """For each column, the variants whose mean (rounded to the shown digits) is the best; [] if none is finite."""
    best: dict[str, list[str]] = {}
    for c in columns:
        means = summary[(c.key, "mean")].dropna().round(c.digits)
        if means.empty:
            best[c.key] = []
            continue
        target = means.max() if c.higher_is_better else means.min()
        best[c.key] = [v for v, m in means.items() if m == target]
    return best


def _cell(mean: float, std: float, digits: int) -> str:
    if not math.isfinite(mean):
        return "n/a"
    return f"{mean:.{digits}f}" if not math.isfinite(std) else f"{mean:.{digits}f} ± {std:.{digits}f}"


def format_table(summary: pd.DataFrame, columns: Sequence[Column]) -> str:
    """A Markdown table: one row per variant, ``mean ± std`` cells, the best per column in **bold**.

    Arrows in the header say which way is better (↑ higher, ↓ lower); ``n`` is the number of seeds.
    """
    best = best_per_column(summary, columns)
    header = ["variant", "n", *[f"{c.label} {'↑' if c.higher_is_better else '↓'}" for c in columns]]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for variant, row in summary.iterrows():
        seeds = int(max(row[(c.key, "n")] for c in columns))
        cells = [str(variant), str(seeds)]
        for c in columns:
            text = _cell(row[(c.key, "mean")], row[(c.key, "std")], c.digits)
            cells.append(f"**{text}**" if variant in best[c.key] else text)
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def summary_records(summary: pd.DataFrame, columns: Sequence[Column]) -> dict[str, dict[str, dict[str, float]]]:
    """``{variant: {metric: {"mean", "std", "n"}}}`` with NaN as None, for JSON."""

    def clean(x: float) -> float | None:
        return float(x) if math.isfinite(x) else None

    return {
        str(v): {c.key: {s: clean(row[(c.key, s)]) for s in ("mean", "std", "n")} for c in columns}
        for v, row in summary.iterrows()
    }
