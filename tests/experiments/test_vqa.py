"""``probattn experiment vqa``: the reduced configuration on the shipped easy-VQA sample (CI, seconds)."""

from __future__ import annotations

import argparse
import json

import pytest
import torch

pytest.importorskip("matplotlib")
pytest.importorskip("PIL")

from probattn.experiments import runner, vqa

VARIANTS = ("softmax", "doubly", "hybrid", "repulsive", "alignment")


def _args(output, *extra):
    parser = argparse.ArgumentParser()
    vqa.add_arguments(parser)
    return parser.parse_args(["--sample", "--max-steps", "4", "--eval-every", "2", "--embed-dim", "16", "--heads",
                              "2", "--layers", "1", "--cnn-channels", "8", "--diagnostic-examples", "32",
                              "--noise", "1", "--noise-sweep", "1", "4", "--variants", *VARIANTS, "--seeds", "0", "1", "2",
                              "--output", str(output), "--workers", "1", "--threads", "1", "--no-progress", *extra])


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    output = tmp_path_factory.mktemp("vqa") / "out"
    result = runner.run_study(vqa.STUDY, _args(output), command="probattn experiment vqa --sample")
    return output, result


def test_reduced_study_writes_every_table_verdict_and_figure(study):
    output, result = study
    assert sorted(p.name for p in (output / "runs").iterdir()) == sorted(
        f"{v}-seed{s}.json" for v in VARIANTS for s in (0, 1, 2))
    text = (output / "results.md").read_text()
    for heading in ("## Verdict", "## Test set", "## Noisy test set", "## Accuracy per question type",
                    "## Attention (mean over layers", "## Noise sweep", "## Attention per layer",
                    "## Time per training step"):
        assert heading in text
    for baseline in ("most frequent answer", "question only", "image + question, no attention"):
        assert f"{baseline}" in text
    for figure in ("summary.png", "accuracy_vs_noise.png", "examples.png"):
        assert (output / figure).is_file() and f"]({figure})" in text
    claims = {(c["variant"], c["claim"]): c for c in result["verdict"]["claims"]}
    bound = claims[("doubly", "no image cell below 1/N_q of its fair share (the guaranteed bound)")]
    assert bound["verdict"] == "reproduced" and bound["worst"] == 0.0
    assert {v for v, _ in claims} == {"alignment", "doubly", "hybrid", "repulsive"}


def test_runs_measure_clean_noisy_sweep_and_layers(study):
    output, _ = study
    record = json.loads((output / "runs" / "softmax-seed0.json").read_text())
    prepared = vqa.prepare_data(True)
    n = len(prepared["test"]["answers"])
    for name in ("test", "noisy"):
        scores = record["sets"][name]["scores"]
        assert len(scores["correct"]) == len(scores["pavpu"]) == len(scores["nll"]) == n
        metrics = record["sets"][name]["metrics"]
        assert metrics["accuracy"] == pytest.approx(sum(scores["correct"]) / n)
        assert {f"accuracy_{t}" for t in ("yes/no", "color", "shape")} <= set(metrics)
    assert {"accuracy@1", "accuracy@4", "pavpu@1", "pavpu@4", "cpu_ms_per_step"} <= set(record["metrics"])
    assert record["metrics"]["accuracy@1"] == record["sets"]["noisy"]["metrics"]["accuracy"]  # --noise 1 is in the sweep
    layers = {k.split("/", 1)[1] for k in record["metrics"] if k.startswith("head_diversity/")}
    assert layers == {"question_self.0", "image_self.0", "guided.0", "question_reduce.0", "image_reduce.0"}
    assert len(record["examples"]) == 4 and len(record["examples"][0]["image_map"]) == 16
    baselines = json.loads((output / "baselines.json").read_text())["data"]["all"]
    frequent = baselines["most frequent answer"]["sets"]
    assert frequent["test"]["metrics"] == frequent["noisy"]["metrics"]  # no image, no noise effect


def test_noisy_predictions_use_the_same_noise_for_every_model():
    prepared = vqa.prepare_data(True)
    options = vqa.STUDY.options(_args("unused"))
    torch.manual_seed(0)
    from probattn.models.vqa import VQATransformer

    model = VQATransformer(vqa._config(prepared, options))
    test = prepared["test"]
    clean = vqa.predict(model, test)
    noisy = vqa.predict(model, test, sigma=2.0)
    assert not torch.allclose(clean, noisy)
    torch.testing.assert_close(noisy, vqa.predict(model, test, sigma=2.0))  # the fixed noise seed
    assert not torch.allclose(noisy, vqa.predict(model, test, sigma=2.0, noise_seed=1))


def test_resume_skips_finished_runs_and_bad_options(study, tmp_path):
    output, _ = study
    before = (output / "runs" / "doubly-seed1.json").read_text()
    runner.run_study(vqa.STUDY, _args(output, "--resume"), command="probattn experiment vqa --sample")
    assert (output / "runs" / "doubly-seed1.json").read_text() == before
    with pytest.raises(ValueError, match="--noise and every --noise-sweep value must be > 0"):
        runner.run_study(vqa.STUDY, _args(tmp_path / "x", "--noise", "0"))
    with pytest.raises(ValueError, match=r"--grid 6: choose 4, 8 or 16"):
        runner.run_study(vqa.STUDY, _args(tmp_path / "y", "--grid", "6"))
