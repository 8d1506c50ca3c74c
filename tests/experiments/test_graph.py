"""``probattn experiment graph`` end to end on the shipped WordNet sample (a few epochs)."""

from __future__ import annotations

import json

import pytest

from probattn.cli import main

# 0.2.0 (commit 6649000): `probattn experiment graph --sample --epochs 10 --seeds 0 1 2 --features 16 --hidden 8
# --heads 2 --threads 1`: mean test accuracy / ECE / NLL / edges explained away / head diversity per variant, and
# the paired differences against softmax (accuracy, NLL). Its p-values came from 2,000 resamples (now 10,000).
RELEASED = {
    "softmax": (0.27499999999999997, 0.14113657623529435, 2.75677226583163, 0.0, 0.030384806916117668),
    "doubly": (0.2583333333333333, 0.1356091164673368, 2.764076272646586, 0.00044091709423810244, 0.014899261916677157),
    "hybrid": (0.2583333333333333, 0.13430919454743465, 2.7585197130839028, 0.0, 0.017100023105740547),
    "repulsive": (0.26666666666666666, 0.14936379970361788, 2.7567489554484688, 0.0, 0.034669323513905205),
    "alignment": (0.25000000000000006, 0.11755951438099145, 2.7480323016643524, 0.0, 0.0356666042159001),
    "mlp": (0.2833333333333334, 0.19830902141208454, 2.919175694386164, None, None),
}
RELEASED_DIFFERENCES = {"doubly": (-0.016666666666666666, 0.007304050000000021),
                        "alignment": (-0.025, -0.008739924999999987), "mlp": (0.008333333333333333, 0.16240346666666666)}
SMALL = ["--sample", "--seeds", "0", "1", "2", "--features", "16", "--hidden", "8", "--heads", "2", "--threads", "1",
         "--workers", "1", "--no-progress"]


def test_a_small_configuration_gives_the_released_table(tmp_path, capsys):
    out = tmp_path / "graph"
    assert main(["experiment", "graph", *SMALL, "--epochs", "10", "--eval-every", "0", "--output", str(out)]) == 0
    result = json.loads((out / "results.json").read_text())
    test, attention = result["summary"]["Test nodes"], result["summary"]["Attention on all edges (mean over layers "
                                                                            "and heads)"]
    for variant, (accuracy, ece, nll, away, diversity) in RELEASED.items():
        for got, want in ((test[variant]["accuracy"]["mean"], accuracy), (test[variant]["ece"]["mean"], ece),
                          (test[variant]["nll"]["mean"], nll)):
            assert got == pytest.approx(want, rel=1e-6)
        if away is not None:
            assert attention[variant]["explained_away"]["mean"] == pytest.approx(away, abs=1e-12)
            assert attention[variant]["head_diversity"]["mean"] == pytest.approx(diversity, rel=1e-6)
    tests = {(t["variant"], t["metric"]): t for t in result["tests"]["Test nodes"]}
    for variant, (accuracy, nll) in RELEASED_DIFFERENCES.items():
        assert tests[(variant, "accuracy")]["difference"] == pytest.approx(accuracy)
        assert tests[(variant, "nll")]["difference"] == pytest.approx(nll, abs=1e-6)
    assert "majority class (baseline)" in test and test["softmax"]["ece"]["low"] >= 0
    text = (out / "results.md").read_text()
    assert "**" not in text.split("## Test nodes")[1]  # no bold: differences are called by the paired test only
    assert (out / "summary.png").is_file()
    # --resume trains nothing new
    assert main(["experiment", "graph", *SMALL, "--epochs", "10", "--eval-every", "0", "--output", str(out),
                 "--resume"]) == 0
    assert "18 of 18 runs finished before" in capsys.readouterr().err


def test_model_selection_stops_early_and_reports_epochs(tmp_path):
    out = tmp_path / "graph"
    assert main(["experiment", "graph", *SMALL, "--seeds", "0", "--variants", "softmax", "doubly", "--epochs", "60",
                 "--patience", "3", "--output", str(out)]) == 0
    runs = json.loads((out / "results.json").read_text())["runs"]
    for r in runs:
        assert r["selection"]["evaluations"] == r["epochs"] and 1 <= r["selection"]["best_step"] <= r["epochs"]
        assert r["epochs"] == 60 or r["epochs"] - r["selection"]["best_step"] == 3


@pytest.mark.parametrize(("argv", "message"), [
    (["--hidden", "10"], "--hidden (10) must be divisible by --heads (4)"),
    (["--variants", "doubly"], "--variants must include softmax"),
    (["--epochs", "0"], "--epochs must be >= 1"),
])
def test_bad_options_are_named(tmp_path, capsys, argv, message):
    assert main(["experiment", "graph", "--sample", "--output", str(tmp_path), *argv]) == 2
    assert message in capsys.readouterr().err


def test_a_folder_holding_other_files_is_refused_before_any_work(tmp_path, capsys):
    (tmp_path / "thesis.tex").write_text("mine")
    assert main(["experiment", "graph", "--sample", "--output", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "holds 1 file(s) that probattn did not write (thesis.tex)" in err and "--overwrite" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["thesis.tex"]
