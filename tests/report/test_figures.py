"""Figures that a reader must be able to read: sizes and layout."""

import struct

import pytest

pytest.importorskip("matplotlib")

from probattn.metrics.calibration import measure_probabilities
from probattn.report.figures import reliability_figure


def _png_size(path) -> tuple[int, int]:
    with open(path, "rb") as handle:
        head = handle.read(24)
    return struct.unpack(">II", head[16:24])


def test_one_model_gets_its_splits_side_by_side_not_a_strip(tmp_path):
    bins = measure_probabilities([[0.8, 0.2], [0.3, 0.7], [0.6, 0.4]], [0, 1, 1])["reliability"]
    run = {"variant": "run", "reliability": {"validation": bins, "test": bins, "ood": bins}}
    path = reliability_figure([run], ["run"], {k: k for k in run["reliability"]}, tmp_path / "r.png")
    width, height = _png_size(path)
    assert width >= 900 and height >= 300 and width > 2 * height  # 0.2.0: 192 x 576 px
