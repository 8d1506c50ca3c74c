import math

import pytest

pytest.importorskip("scipy")

from probattn.experiments.verdict import CLAIMS, Claim, format_verdicts, seed_difference, verdicts


def _run(variant, seed, correct, **metrics):
    return {"variant": variant, "seed": seed, "correct_id": correct, "metrics": metrics}


def test_claims_are_judged_by_direction_and_evidence():
    n = 400
    runs = []
    for seed in range(3):
        base = [1] * (n // 2) + [0] * (n // 2)
        runs.append(_run("softmax", seed, base, head_diversity=0.50, ece_id=0.05, **{"explained_away_0.1": 0.0}))
        # doubly: same predictions (accuracy tie), explained away 0.02 + seed-dependent noise above softmax's
        runs.append(_run("doubly", seed, base, **{"explained_away_0.1": 0.02 + 0.001 * seed}))
        # repulsive: right on 100 more examples in every seed (clearly better), more diverse heads
        runs.append(_run("repulsive", seed, [1] * (n // 2 + 100) + [0] * (n // 2 - 100),
                         head_diversity=0.80 + 0.01 * seed, ece_id=0.05 + 0.02 * (seed - 1)))
    records = {(r["variant"], r["metric"]): r for r in verdicts(runs)}
    assert records[("doubly", "explained_away_0.1")]["verdict"] == "not reproduced"  # it went up, claim is down
    assert records[("doubly", "accuracy_id")]["verdict"] == "inconclusive at this scale"  # identical predictions
    assert records[("doubly", "accuracy_id")]["evidence"]["difference"] == 0.0
    assert records[("repulsive", "accuracy_id")]["verdict"] == "reproduced"
    assert records[("repulsive", "accuracy_id")]["evidence"]["difference"] == pytest.approx(100 / n)
    assert records[("repulsive", "head_diversity")]["verdict"] == "reproduced"
    # ECE differences -0.02, 0, +0.02 over seeds: the interval holds 0
    assert records[("repulsive", "ece_id")]["verdict"] == "inconclusive at this scale"
    assert records[("alignment", "kq_alignment")]["verdict"] == "not run"
    lines = format_verdicts(verdicts(runs))
    assert len(lines) == sum(c.variant in ("doubly", "repulsive") for c in CLAIMS)  # alignment was not run
    assert any("→ **reproduced**" in line and "head diversity up" in line for line in lines)


def test_seed_difference_is_paired_by_seed_by_hand():
    runs = [_run("softmax", 0, [1], ece_id=0.10), _run("softmax", 1, [1], ece_id=0.20),
            _run("alignment", 0, [1], ece_id=0.07), _run("alignment", 1, [1], ece_id=0.15),
            _run("alignment", 2, [1], ece_id=0.0)]  # seed 2 has no softmax partner: left out
    result = seed_difference(runs, "alignment", "ece_id")
    # differences -0.03 and -0.05: mean -0.04, std 0.01414, t(0.975, 1) = 12.706 -> half-width 0.127
    assert result["seeds"] == 2 and result["difference"] == pytest.approx(-0.04)
    assert result["low"] == pytest.approx(-0.04 - 12.7062 * 0.014142 / math.sqrt(2), abs=1e-4)
    verdict = verdicts(runs, [Claim("alignment", "ECE down", "ece_id", "down")])[0]
    assert verdict["verdict"] == "inconclusive at this scale"
