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

__all__ = ["PairedComparison", "mean_interval", "paired_bootstrap"]

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
