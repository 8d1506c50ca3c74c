import math

import numpy as np
import pytest

from probattn.metrics.significance import mean_interval, paired_bootstrap


def test_a_known_difference_is_detected():
    rng = np.random.default_rng(1)
    base = (rng.random((3, 800)) < 0.70).astype(float)
    better = (rng.random((3, 800)) < 0.80).astype(float)
    result = paired_bootstrap(base, better, n_resamples=2000)
    assert result.verdict == "better"
    assert result.p_value < 0.01
    assert result.low > 0 and result.high > result.low
    assert result.difference == pytest.approx(better.mean() - base.mean())
    worse = paired_bootstrap(better, base, n_resamples=2000)
    assert worse.verdict == "worse" and worse.difference < 0
    # for a loss, a lower score is better
    assert paired_bootstrap(base, better, higher_is_better=False, n_resamples=2000).verdict == "worse"


def test_identical_runs_are_no_difference():
    rng = np.random.default_rng(2)
    scores = (rng.random((3, 300)) < 0.7).astype(float)
    result = paired_bootstrap(scores, scores.copy(), n_resamples=500)
    assert result.verdict == "no difference"
    assert result.p_value == 1.0 and result.difference == 0.0


def test_false_positive_rate_under_the_null_is_near_alpha():
    rng = np.random.default_rng(3)
    hits = 0
    trials = 200
    for _ in range(trials):
        a = (rng.random((3, 200)) < 0.7).astype(float)
        b = (rng.random((3, 200)) < 0.7).astype(float)
        hits += paired_bootstrap(a, b, n_resamples=400, seed=int(rng.integers(1 << 30))).verdict != "no difference"
    assert hits / trials < 0.12  # nominal 0.05; a test that ignored the noise would flag far more


def test_interval_matches_a_plain_index_resampling_bootstrap():
    rng = np.random.default_rng(4)
    a = rng.normal(size=(4, 150))
    b = a + 0.1 + rng.normal(scale=0.5, size=(4, 150))
    fast = paired_bootstrap(a, b, n_resamples=4000, seed=5)
    slow_rng = np.random.default_rng(6)
    stats = []
    for _ in range(4000):  # independent reference: draw indices, gather, average
        s = slow_rng.integers(0, 4, size=4)
        n = slow_rng.integers(0, 150, size=150)
        stats.append((b - a)[s][:, n].mean())
    low, high = np.quantile(stats, [0.025, 0.975])
    assert fast.low == pytest.approx(low, abs=0.02)
    assert fast.high == pytest.approx(high, abs=0.02)


def test_one_seed_vector_is_accepted():
    result = paired_bootstrap([1, 0, 1, 1] * 50, [1, 1, 1, 1] * 50, n_resamples=500)
    assert result.verdict == "better"


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"baseline": np.zeros((2, 5)), "variant": np.zeros((3, 5))}, "must be paired"),
        ({"baseline": [[math.nan]], "variant": [[0.0]]}, "baseline contains NaN"),
        ({"baseline": np.zeros((2, 2, 2)), "variant": np.zeros((2, 2, 2))}, "baseline must be per-example"),
        ({"baseline": [1.0], "variant": [1.0], "n_resamples": 10}, "n_resamples must be"),
        ({"baseline": [1.0], "variant": [1.0], "alpha": 1.5}, "alpha must lie"),
    ],
)
def test_bad_input_is_named(kwargs, match):
    with pytest.raises(ValueError, match=match):
        paired_bootstrap(**kwargs)


def test_mean_interval_is_the_student_t_interval():
    mean, low, high = mean_interval([0.70, 0.72, 0.74])
    half = 4.302652729911275 * 0.02 / math.sqrt(3)  # t_{0.975, 2} * sd / sqrt(n), by hand
    assert mean == pytest.approx(0.72)
    assert (low, high) == pytest.approx((0.72 - half, 0.72 + half))
    one = mean_interval([0.5])
    assert one[0] == 0.5 and math.isnan(one[1]) and math.isnan(one[2])
    with pytest.raises(ValueError, match="values contains NaN"):
        mean_interval([0.5, math.nan])


def test_holm_against_the_step_down_definition():
    from probattn.metrics import holm

    p = [0.04, 0.001, 0.03, 0.2]
    # sorted 0.001, 0.03, 0.04, 0.2 -> 4*0.001, max(., 3*0.03), max(., 2*0.04), max(., 1*0.2)
    assert holm(p) == pytest.approx([0.09, 0.004, 0.09, 0.2])
    with pytest.raises(ValueError, match="p-values must lie in"):
        holm([1.5])


def test_paired_t_test_matches_scipy():
    from scipy.stats import ttest_1samp

    from probattn.metrics import paired_t_test

    d = [0.3, -0.1, 0.5, 0.2]
    mean, low, high, p = paired_t_test(d)
    assert p == pytest.approx(ttest_1samp(d, 0).pvalue) and low < mean < high
    assert paired_t_test([0.0, 0.0, 0.0])[3] == 1.0


def test_bootstrap_interval_stays_in_the_range_of_the_scores():
    from probattn.metrics import bootstrap_interval

    scores = np.zeros((2, 50))
    scores[:, :2] = 1
    mean, low, high = bootstrap_interval(scores, bounds=(0, 1))
    assert mean == pytest.approx(0.04) and 0 <= low <= mean <= high <= 1
