"""Predictive entropy and PAvPU against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch

from probattn.metrics import PAVPU_THRESHOLD, certainty_matches, pavpu, predictive_entropy

# entropies (nats), by hand: 0.3944, 1.0889, 0.6390, ln 3 = 1.0986
PROBS = torch.tensor([[0.9, 0.05, 0.05],   # label 0: accurate, H = 0.3944 < ln 2: certain
                      [0.4, 0.3, 0.3],     # label 0: accurate, H = 1.0889: uncertain
                      [0.1, 0.8, 0.1],     # label 0: wrong,    H = 0.6390 < ln 2: certain
                      [1 / 3, 1 / 3, 1 / 3]])  # label 2: wrong (first maximum is 0), H = ln 3: uncertain
LABELS = torch.tensor([0, 0, 0, 2])


def test_predictive_entropy_by_hand():
    expected = torch.tensor([-(0.9 * math.log(0.9) + 0.1 * math.log(0.05)),
                             -(0.4 * math.log(0.4) + 0.6 * math.log(0.3)),
                             -(0.2 * math.log(0.1) + 0.8 * math.log(0.8)), math.log(3)], dtype=torch.float64)
    torch.testing.assert_close(predictive_entropy(PROBS), expected, rtol=0, atol=1e-6)
    torch.testing.assert_close(expected, torch.tensor([0.3944, 1.0889, 0.6390, 1.0986], dtype=torch.float64),
                               rtol=0, atol=1e-4)
    assert predictive_entropy(torch.tensor([[1.0, 0.0]])).item() == 0.0  # 0 ln 0 = 0, no NaN


def test_pavpu_by_hand():
    result = pavpu(PROBS, LABELS)
    assert result.threshold == PAVPU_THRESHOLD == math.log(2)
    counts = (result.accurate_certain, result.accurate_uncertain, result.inaccurate_certain,
              result.inaccurate_uncertain)
    assert counts == (1, 1, 1, 1) and result.pavpu == 0.5 and result.count == 4
    lower = pavpu(PROBS, LABELS, threshold=0.5)  # now example 3 (H = 0.639) is uncertain: (1 + 2) / 4
    assert (lower.inaccurate_certain, lower.inaccurate_uncertain, lower.pavpu) == (0, 2, 0.75)
    assert certainty_matches(PROBS, LABELS).tolist() == [True, False, False, True]
    assert certainty_matches(PROBS, LABELS, threshold=0.5).double().mean().item() == 0.75


def test_pavpu_errors():
    with pytest.raises(ValueError, match="threshold must be a positive number of nats"):
        pavpu(PROBS, LABELS, threshold=0.0)
    with pytest.raises(ValueError, match="pass softmax"):
        pavpu(PROBS * 3, LABELS)
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 3\)"):
        pavpu(PROBS, torch.tensor([0, 0, 0, 3]))
    with pytest.raises(ValueError, match=r"labels must be integer class indices of shape \(4,\)"):
        pavpu(PROBS, LABELS.float())
    with pytest.raises(ValueError, match="PAvPU needs at least one prediction"):
        pavpu(torch.zeros(0, 3), torch.zeros(0, dtype=torch.long))
