"""``probattn experiment graph`` end to end on the shipped WordNet sample (a few epochs)."""

from __future__ import annotations

import json

import pytest

from probattn.cli import main


def test_graph_experiment_on_the_sample(tmp_path, capsys):
    out = tmp_path / "graph"
    code = main(["experiment", "graph", "--sample", "--epochs", "3", "--seeds", "0", "1", "--features", "16",
                 "--hidden", "8", "--heads", "2", "--threads", "1", "--resamples", "200", "--output", str(out)])
    assert code == 0
    text = (out / "results.md").read_text()
    for row in ("| softmax | 2 |", "| doubly | 2 |", "| hybrid | 2 |", "| repulsive | 2 |", "| alignment | 2 |",
                "| mlp (no graph, baseline) | 2 |", "| majority class (baseline) |"):
        assert row in text
    assert "**" not in text  # no bold: differences are called by the paired test only
    summary = json.loads((out / "results.json").read_text())
    assert set(summary["paired_vs_softmax"]) == {"doubly", "hybrid", "repulsive", "alignment", "mlp"}
    verdicts = {c["correct"]["verdict"] for c in summary["paired_vs_softmax"].values()}
    assert verdicts <= {"better", "worse", "no difference"}
    assert summary["nodes"] == 203 and summary["edges"] == 418 and summary["test_nodes"] == 40
    run = json.loads((out / "runs" / "doubly-seed1.json").read_text())
    assert len(run["scores"]["correct"]) == 40 and 0 <= run["metrics"]["explained_away"] <= 1
    assert (out / "accuracy.png").is_file() and (out / "explained_away.png").is_file()
    # --resume trains nothing new
    assert main(["experiment", "graph", "--sample", "--epochs", "3", "--seeds", "0", "1", "--features", "16",
                 "--hidden", "8", "--heads", "2", "--threads", "1", "--resamples", "200", "--output", str(out),
                 "--resume"]) == 0
    assert " seed " not in capsys.readouterr().out.split("# Graph attention")[-1].split("\n")[0]


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
