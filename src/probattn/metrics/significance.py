"""Statistics that decide whether a variant differs from a baseline: intervals over seeds and a paired bootstrap.

Every experiment table in probattn calls a difference only through :func:`paired_bootstrap`; ties are ties.

The paired bootstrap resamples *both* sources of noise at once: seeds (training randomness) and test
examples (which examples happened to be in the test set). Scores are paired: ``baseline[s, n]`` and
``variant[s, n]`` are the per-example scores (e.g. 1/0 correctness, or minus the log-loss) of the two models
trained with seed ``s`` on example ``n``. Each resample draws ``S`` seeds and ``N`` examples with replacement
and takes the mean difference; the two-sided p-value is twice the smaller tail of the resampled differences
around zero (percentile bootstrap test, as in Koehn 2004 for MT, extended hierarchically over seeds).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

__all__ = ["PairedComparison", "bootstrap_interval", "holm", "mean_interval", "paired_bootstrap", "paired_t_test"]

VERDICTS = ("better", "worse", "no difference")


@dataclass(frozen=True)
class PairedComparison:
    """``variant`` minus ``baseline``.

    Attributes:
        difference: mean per-example difference over all seeds and examples (variant - baseline).
        low, high: ``1 - alpha`` percentile bootstrap interval of that difference.
        p_value: two-sided bootstrap p-value for "no difference".
        verdict: ``"better"`` / ``"worse"`` (for the variant, honouring ``higher_is_better``) when
            ``p_value < alpha``, else ``"no difference"``.
    """

    difference: float
    low: float
    high: float
    p_value: float
    verdict: str


def _as_scores(name: str, scores: object) -> np.ndarray:
    array = np.asarray(scores, dtype=np.float64)
    if array.ndim == 1:
        array = array[None, :]
    if array.ndim != 2 or array.shape[0] < 1 or array.shape[1] < 1:
        raise ValueError(f"{name} must be per-example scores of shape (seeds, examples) or (examples,), "
                         f"got shape {np.shape(scores)}")
    if not np.isfinite(array).all():
        raise ValueError(f"{name} contains NaN or infinite scores; drop or fix those examples first")
    return array


def paired_bootstrap(
    baseline: object,
    variant: object,
    *,
    higher_is_better: bool = True,
    n_resamples: int = 10_000,
    alpha: float = 0.05,
    seed: int = 0,
) -> PairedComparison:
    """Paired bootstrap over seeds and examples: is ``variant`` different from ``baseline``?

    Args:
        baseline, variant: per-example scores ``(S, N)`` (or ``(N,)`` for one seed), paired by seed and
            example: row ``s`` of both comes from seed ``s``, column ``n`` from test example ``n``.
        higher_is_better: whether a larger score is better (accuracy: True; loss: False).
        n_resamples: bootstrap resamples (>= 100).
        alpha: significance level; also sets the ``1 - alpha`` interval.
        seed: seed of the resampling (results are reproducible).

    Returns:
        :class:`PairedComparison`.
    """
    a = _as_scores("baseline", baseline)
    b = _as_scores("variant", variant)
    if a.shape != b.shape:
        raise ValueError(f"baseline and variant must be paired (same (seeds, examples) shape), got {a.shape} "
                         f"and {b.shape}")
    if isinstance(n_resamples, bool) or not isinstance(n_resamples, int) or n_resamples < 100:
        raise ValueError(f"n_resamples must be an integer >= 100, got {n_resamples!r}")
    if not 0.0 < float(alpha) < 1.0:
        raise ValueError(f"alpha must lie in (0, 1), got {alpha!r}")
    diff = b - a
    seeds, examples = diff.shape
    rng = np.random.default_rng(seed)
    stats = np.empty(n_resamples)
    chunk = max(1, min(n_resamples, 20_000_000 // max(examples, 1)))  # bounded memory: chunk x N counts
    for start in range(0, n_resamples, chunk):
        size = min(chunk, n_resamples - start)
        # multinomial counts are the same as drawing indices with replacement, without an (R, N) gather
        example_counts = rng.multinomial(examples, np.full(examples, 1.0 / examples), size=size)  # (R, N)
        seed_counts = rng.multinomial(seeds, np.full(seeds, 1.0 / seeds), size=size)  # (R, S)
        stats[start:start + size] = np.einsum("rs,sn,rn->r", seed_counts, diff, example_counts) / (seeds * examples)
    observed = float(diff.mean())
    low, high = np.quantile(stats, [alpha / 2, 1 - alpha / 2])
    below = (np.count_nonzero(stats <= 0) + 1) / (n_resamples + 1)
    above = (np.count_nonzero(stats >= 0) + 1) / (n_resamples + 1)
    p_value = float(min(1.0, 2 * min(below, above)))
    if p_value < alpha and observed != 0:
        verdict = "better" if (observed > 0) == higher_is_better else "worse"
    else:
        verdict = "no difference"
    return PairedComparison(difference=observed, low=float(low), high=float(high), p_value=p_value, verdict=verdict)


def mean_interval(values: object, confidence: float = 0.95) -> tuple[float, float, float]:
    """Mean over seeds and its Student-t interval: ``(mean, low, high)``.

    One value gives ``(v, nan, nan)``: an interval needs at least two seeds. Non-finite values are an error.
    """
    array = np.asarray(values, dtype=np.float64).ravel()
    if array.size == 0:
        raise ValueError("values is empty; need at least one seed's value")
    if not np.isfinite(array).all():
        raise ValueError(f"values contains NaN or infinite entries: {array.tolist()}")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must lie in (0, 1), got {confidence!r}")
    mean = float(array.mean())
    if array.size < 2:
        return mean, math.nan, math.nan
    from scipy.stats import t  # scipy comes with the experiments' extra (scikit-learn)

    half = float(t.ppf(0.5 + confidence / 2, array.size - 1) * array.std(ddof=1) / math.sqrt(array.size))
    return mean, mean - half, mean + half


def _resampled_means(scores: np.ndarray, n_resamples: int, rng: np.random.Generator) -> np.ndarray:
    """Means of ``n_resamples`` hierarchical resamples of ``scores (S, N)``: S seeds and N examples, with replacement."""
    seeds, examples = scores.shape
    stats = np.empty(n_resamples)
    chunk = max(1, min(n_resamples, 20_000_000 // max(examples, 1)))
    for start in range(0, n_resamples, chunk):
        size = min(chunk, n_resamples - start)
        example_counts = rng.multinomial(examples, np.full(examples, 1.0 / examples), size=size)
        seed_counts = rng.multinomial(seeds, np.full(seeds, 1.0 / seeds), size=size)
        stats[start:start + size] = np.einsum("rs,sn,rn->r", seed_counts, scores, example_counts) / (seeds * examples)
    return stats


def bootstrap_interval(scores: object, *, confidence: float = 0.95, n_resamples: int = 2000, seed: int = 0,
                       bounds: tuple[float, float] = (-math.inf, math.inf)) -> tuple[float, float, float]:
    """Mean of per-example scores ``(S, N)`` (seeds x examples) and its percentile bootstrap interval,
    resampling seeds and examples together: ``(mean, low, high)``.

    A percentile interval of resampled means never leaves the range of the scores, so it stays inside the
    quantity's range (accuracy in [0, 1], NLL >= 0); ``bounds`` clips it once more.
    """
    array = _as_scores("scores", scores)
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must lie in (0, 1), got {confidence!r}")
    stats = _resampled_means(array, n_resamples, np.random.default_rng(seed))
    low, high = np.quantile(stats, [(1 - confidence) / 2, (1 + confidence) / 2])
    lo, hi = bounds
    return float(array.mean()), float(min(max(low, lo), hi)), float(min(max(high, lo), hi))


def paired_t_test(differences: object, confidence: float = 0.95) -> tuple[float, float, float, float]:
    """Paired t-test of per-unit differences (variant - baseline, one per seed or (seed, fold)):
    ``(mean, low, high, two-sided p)``; NaN interval and p for fewer than two values, p = 1 when all differences
    are 0."""
    array = np.asarray(differences, dtype=np.float64).ravel()
    mean, low, high = mean_interval(array, confidence)
    if array.size < 2:
        return mean, low, high, math.nan
    std = array.std(ddof=1)
    if std == 0:
        return mean, mean, mean, (1.0 if mean == 0 else 0.0)
    from scipy.stats import t

    statistic = mean / (std / math.sqrt(array.size))
    return mean, low, high, float(2 * t.sf(abs(statistic), array.size - 1))


def holm(p_values: object) -> list[float]:
    """Holm's step-down adjustment of a family of p-values (controls the family-wise error rate).

    NaN entries (no test) stay NaN and do not count in the family. Adjusted values are monotone in the raw
    ones and at most 1.
    """
    p = np.asarray(p_values, dtype=np.float64).ravel()
    out = np.full(p.shape, np.nan)
    finite = np.flatnonzero(np.isfinite(p))
    if finite.size == 0:
        return out.tolist()
    if ((p[finite] < 0) | (p[finite] > 1)).any():
        raise ValueError(f"p-values must lie in [0, 1], got {p[finite].tolist()}")
    order = finite[np.argsort(p[finite], kind="stable")]
    m = order.size
    running = 0.0
    for rank, index in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[index]))
        out[index] = running
    return out.tolist()
