import json
import math

import pytest

pd = pytest.importorskip("pandas")

from probattn.experiments import results  # noqa: E402
from probattn.experiments.results import Column  # noqa: E402

COLUMNS = [Column("acc", "accuracy", True), Column("ece", "ECE", False)]


def _run(variant, seed, acc, ece):
    return {"variant": variant, "seed": seed, "metrics": {"acc": acc, "ece": ece}}


def test_mean_std_over_seeds_by_hand():
    runs = [_run("a", 0, 0.5, 0.1), _run("a", 1, 0.7, 0.3), _run("b", 0, 0.9, 0.15)]
    s = results.summarize(runs, COLUMNS, order=["b", "a"])
    assert list(s.index) == ["b", "a"]
    assert s.loc["a", ("acc", "mean")] == pytest.approx(0.6)
    assert s.loc["a", ("acc", "std")] == pytest.approx(math.sqrt(0.02))  # sample std of 0.5, 0.7
    assert math.isnan(s.loc["b", ("acc", "std")]) and s.loc["b", ("acc", "n")] == 1
    assert results.best_per_column(s, COLUMNS) == {"acc": ["b"], "ece": ["b"]}


def test_non_finite_values_are_left_out_not_zeroed():
    s = results.summarize([_run("a", 0, 0.5, math.nan), _run("a", 1, 0.7, 0.2)], COLUMNS)
    assert s.loc["a", ("ece", "mean")] == pytest.approx(0.2) and s.loc["a", ("ece", "n")] == 1


def test_table_shows_intervals_and_bolds_nothing():
    runs = [_run("a", 0, 0.8, 0.1), _run("a", 1, 0.9, 0.1), _run("b", 0, 0.8, 0.3)]
    table = results.format_table(results.summarize(runs, COLUMNS), COLUMNS, extra={"vs a": {"b": "no difference"}})
    lines = table.splitlines()
    assert lines[0] == "| variant | n | accuracy ↑ | ECE ↓ | vs a |"
    # mean 0.85, sample std 0.0707, t(0.975, 1) = 12.706: half-width 12.706 * 0.0707 / sqrt(2) = 0.635
    assert lines[2] == "| a | 2 | 0.850 [0.215, 1.485] | 0.100 [0.100, 0.100] |  |"
    assert lines[3] == "| b | 1 | 0.800 | 0.300 | no difference |"
    assert "**" not in table


def test_save_and_load_round_trip_atomically(tmp_path):
    results.save_run(tmp_path, _run("b", 1, 0.5, 0.1))
    results.save_run(tmp_path, _run("a", 2, 0.6, 0.2))
    assert [r["variant"] for r in results.load_runs(tmp_path)] == ["a", "b"]
    assert results.run_path(tmp_path, "b", 1).exists()
    assert not list((tmp_path / "runs").glob(".*"))  # no temporary file left behind
    records = results.summary_records(results.summarize(results.load_runs(tmp_path), COLUMNS), COLUMNS)
    assert json.loads(json.dumps(records))["a"]["acc"] == {"mean": 0.6, "std": None, "low": None, "high": None,
                                                           "n": 1.0}


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="metrics"):
        results.save_run("x", {"variant": "a", "seed": 0})
    with pytest.raises(ValueError, match="no run has finished"):
        results.summarize([], COLUMNS)
    assert results.load_runs("/nonexistent/folder") == []
