"""The answer of ``probattn compare``: paired comparisons against softmax and one verdict per paper claim.

Two kinds of evidence, both from :mod:`probattn.metrics.significance`:

* accuracy: :func:`paired_bootstrap` over per-example correctness ``(seeds, examples)`` of the variant and of
  softmax (same seeds, same test examples): "better" / "worse" only when p < 0.05, else "no difference";
* per-run quantities (ECE, head diversity, explained away, key/query distance): the per-seed differences
  variant − softmax (paired by seed) and their Student-t 95% interval (:func:`mean_interval`).

A claim is **reproduced** when the evidence points the claimed way (bootstrap verdict, or an interval wholly
on the claimed side of 0), **not reproduced** when it points the other way, and **inconclusive at this
scale** otherwise (the interval holds 0).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from probattn.metrics.significance import mean_interval, paired_bootstrap

__all__ = ["CLAIMS", "Claim", "accuracy_comparison", "format_verdicts", "seed_difference", "verdicts"]

REPRODUCED, NOT_REPRODUCED, INCONCLUSIVE = "reproduced", "not reproduced", "inconclusive at this scale"


@dataclass(frozen=True)
class Claim:
    """A paper's claim about ``variant`` versus softmax: ``metric`` goes ``up`` or ``down``."""

    variant: str
    what: str
    metric: str  # "accuracy_id", "accuracy_ood" (paired bootstrap) or a run metric key (seed interval)
    direction: str  # "up" | "down"


CLAIMS = (
    Claim("doubly", "explained-away tokens (m̃<0.1) down", "explained_away_0.1", "down"),
    Claim("doubly", "accuracy in domain up", "accuracy_id", "up"),
    Claim("repulsive", "head diversity up", "head_diversity", "up"),
    Claim("repulsive", "accuracy in domain up", "accuracy_id", "up"),
    Claim("repulsive", "calibration: ECE in domain down", "ece_id", "down"),
    Claim("alignment", "key/query distance (MMD²) down", "kq_alignment", "down"),
    Claim("alignment", "ECE in domain down", "ece_id", "down"),
    Claim("alignment", "ECE out of domain down", "ece_ood", "down"),
)


def _paired_runs(runs: Sequence[dict[str, Any]], variant: str, baseline: str = "softmax"):
    by_seed = {(r["variant"], r["seed"]): r for r in runs}
    seeds = sorted(s for v, s in by_seed if v == variant and (baseline, s) in by_seed)
    return [(by_seed[(baseline, s)], by_seed[(variant, s)]) for s in seeds]


def accuracy_comparison(runs: Sequence[dict[str, Any]], variant: str, split: str) -> dict[str, Any] | None:
    """Paired bootstrap of per-example correctness, ``variant`` − softmax on ``split`` (``"id"``/``"ood"``).

    None when the two share no seed with per-example results.
    """
    pairs = [(a, b) for a, b in _paired_runs(runs, variant) if f"correct_{split}" in a and f"correct_{split}" in b]
    if not pairs:
        return None
    base = np.array([a[f"correct_{split}"] for a, _ in pairs], dtype=float)
    other = np.array([b[f"correct_{split}"] for _, b in pairs], dtype=float)
    result = paired_bootstrap(base, other, higher_is_better=True)
    return {"difference": result.difference, "low": result.low, "high": result.high, "p_value": result.p_value,
            "verdict": result.verdict, "seeds": len(pairs)}


def seed_difference(runs: Sequence[dict[str, Any]], variant: str, metric: str) -> dict[str, Any] | None:
    """Mean and 95% t-interval of the per-seed difference ``variant − softmax`` of a run metric."""
    diffs = [b["metrics"][metric] - a["metrics"][metric] for a, b in _paired_runs(runs, variant)
             if math.isfinite(a["metrics"].get(metric, math.nan)) and math.isfinite(b["metrics"].get(metric, math.nan))]
    if not diffs:
        return None
    mean, low, high = mean_interval(diffs)
    return {"difference": mean, "low": low, "high": high, "seeds": len(diffs)}


def _judge(claim: Claim, evidence: dict[str, Any]) -> str:
    sign = 1 if claim.direction == "up" else -1
    if "verdict" in evidence:
        if evidence["verdict"] == "no difference":
            return INCONCLUSIVE
        return REPRODUCED if (evidence["verdict"] == "better") == (sign > 0) else NOT_REPRODUCED
    low, high = evidence["low"], evidence["high"]
    if not (math.isfinite(low) and math.isfinite(high)):
        return INCONCLUSIVE  # one seed: no interval
    if sign * low > 0 and sign * high > 0:
        return REPRODUCED
    if sign * low < 0 and sign * high < 0:
        return NOT_REPRODUCED
    return INCONCLUSIVE


def verdicts(runs: Sequence[dict[str, Any]], claims: Sequence[Claim] = CLAIMS) -> list[dict[str, Any]]:
    """One record per claim: ``variant``, ``claim``, ``evidence`` (difference, low, high[, p_value]), ``verdict``.

    Claims whose variant (or softmax) was not run get ``verdict = "not run"``.
    """
    out = []
    for claim in claims:
        if claim.metric in ("accuracy_id", "accuracy_ood"):
            evidence = accuracy_comparison(runs, claim.variant, claim.metric.split("_")[1])
        else:
            evidence = seed_difference(runs, claim.variant, claim.metric)
        ran = {r["variant"] for r in runs}
        verdict = _judge(claim, evidence) if evidence is not None else (
            "not measured" if {claim.variant, "softmax"} <= ran else "not run")
        out.append({"variant": claim.variant, "claim": claim.what, "metric": claim.metric, "evidence": evidence,
                    "verdict": verdict})
    return out


def format_verdicts(records: Sequence[dict[str, Any]]) -> list[str]:
    """Markdown bullet lines: ``- **variant**: claim: Δ = +0.012 [−0.004, +0.027] (p = 0.14) → inconclusive``.

    Claims whose variant (or softmax) was not run are left out; with none left, one line says so.
    """
    lines = []
    for r in records:
        e = r["evidence"]
        if e is None:
            if r["verdict"] == "not measured":
                lines.append(f"- **{r['variant']}**: {r['claim']}: not measured in this run (no such data or layer)")
            continue
        digits = 4 if r["metric"] == "kq_alignment" else 3
        interval = (f"[{e['low']:+.{digits}f}, {e['high']:+.{digits}f}]" if math.isfinite(e["low"])
                    else "[no interval: one seed]")
        test = (f"paired bootstrap p = {e['p_value']:.3f}" if "p_value" in e else "t-interval over seeds")
        lines.append(f"- **{r['variant']}**: {r['claim']}: Δ vs softmax = {e['difference']:+.{digits}f} {interval} "
                     f"({test}, {e['seeds']} seeds) → **{r['verdict']}**")
    return lines or ["- No paper claim applies: run softmax and at least one of doubly, repulsive, alignment."]
