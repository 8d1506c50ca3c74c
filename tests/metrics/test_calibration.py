"""Calibration: a constructed set whose ECE, MCE, NLL and Brier are known in closed form."""

import math

import pytest
import torch

from probattn.metrics import CalibrationAccumulator, calibration


def _constructed():
    # 10 predictions at confidence 0.9 (8 correct) and 10 at confidence 0.6 (3 correct), 2 classes
    probs = torch.tensor([[0.9, 0.1]] * 10 + [[0.6, 0.4]] * 10, dtype=torch.float64)
    labels = torch.tensor([0] * 8 + [1] * 2 + [0] * 3 + [1] * 7)
    return probs, labels


def test_constructed_set_known_answer():
    probs, labels = _constructed()
    res = calibration(probs, labels)
    # bin of 0.9: |0.8 - 0.9| = 0.1; bin of 0.6: |0.3 - 0.6| = 0.3; equal weights
    assert res.ece == pytest.approx(0.5 * 0.1 + 0.5 * 0.3)
    assert res.mce == pytest.approx(0.3)
    nll = -(8 * math.log(0.9) + 2 * math.log(0.1) + 3 * math.log(0.6) + 7 * math.log(0.4)) / 20
    assert res.nll == pytest.approx(nll)
    brier = (8 * 2 * 0.1**2 + 2 * 2 * 0.9**2 + 3 * 2 * 0.4**2 + 7 * 2 * 0.6**2) / 20
    assert res.brier == pytest.approx(brier)
    assert res.accuracy == pytest.approx(11 / 20)
    assert len(res.bin_edges) == 16 and sum(res.bin_count) == 20
    filled = [i for i, c in enumerate(res.bin_count) if c]
    assert filled == [8, 13]  # 0.6 in (8/15, 9/15], 0.9 in (13/15, 14/15]
    assert res.bin_accuracy[13] == pytest.approx(0.8) and res.bin_confidence[8] == pytest.approx(0.6)


def test_perfectly_calibrated_and_streaming():
    probs, labels = _constructed()
    acc = CalibrationAccumulator(n_bins=15)
    acc.update(probs[:7], labels[:7])
    acc.update(probs[7:], labels[7:])
    streamed, whole = acc.result(), calibration(probs, labels)
    assert streamed.bin_count == whole.bin_count
    for name in ("ece", "mce", "nll", "brier", "accuracy"):
        assert getattr(streamed, name) == pytest.approx(getattr(whole, name))
    one_hot_right = torch.eye(3, dtype=torch.float64)
    assert calibration(one_hot_right, torch.arange(3)).ece == 0.0


def test_bad_input():
    probs, labels = _constructed()
    with pytest.raises(ValueError, match="softmax"):
        calibration(probs * 3 - 1, labels)
    with pytest.raises(ValueError, match="labels"):
        calibration(probs, labels + 5)
    with pytest.raises(TypeError, match="labels"):
        calibration(probs, labels.double())
    with pytest.raises(ValueError, match="no predictions"):
        CalibrationAccumulator().result()
    with pytest.raises(ValueError, match="n_bins"):
        CalibrationAccumulator(0)


def test_measure_probabilities_reports_ece_with_10_and_15_bins_hand_checked():
    from probattn.metrics.calibration import measure_probabilities

    # confidences 0.52 (right) and 0.58 (wrong): one 10-bin bin [0.5, 0.6) -> |0.5 - 0.55| = 0.05;
    # 15 bins split them at 0.5333 -> (0.48 + 0.58) / 2 = 0.53
    found = measure_probabilities([[0.48, 0.52], [0.42, 0.58]], [1, 0])["metrics"]
    assert found["ece10"] == pytest.approx(0.05, abs=1e-6)
    assert found["ece"] == pytest.approx(0.53, abs=1e-6)
