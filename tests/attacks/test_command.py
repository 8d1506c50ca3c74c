"""``probattn attack`` end to end on a tiny probattn run and a tiny Hugging Face classifier folder."""

import json

import pytest

from probattn.attacks.command import attack_indices, label_mapping
from probattn.cli import main
from probattn.training.data import load_splits


def test_attack_indices_are_fixed_and_sorted():
    assert attack_indices(10, None) == list(range(10))
    assert attack_indices(10, 20) == list(range(10))
    picked = attack_indices(100, 5)
    assert picked == attack_indices(100, 5) and picked == sorted(picked) and len(set(picked)) == 5
    with pytest.raises(ValueError, match="--examples"):
        attack_indices(10, 0)


def test_label_mapping_by_name_position_or_error():
    assert label_mapping(("positive", "negative"), ("negative", "positive")) == [1, 0]
    assert label_mapping(("LABEL_0", "LABEL_1"), ("negative", "positive")) == [0, 1]
    with pytest.raises(ValueError, match="do not match"):
        label_mapping(("cat", "dog"), ("negative", "positive"))


def test_attack_a_probattn_run(small_config, tmp_path, capsys):
    run_dir = tmp_path / "run"
    assert main(["train", "--model", "tiny", "--data", small_config.data, "--text-column", "text", "--label-column", "label",
                 "--embed-dim", "16", "--num-heads", "4", "--num-layers", "1", "--max-length", "24",
                 "--batch-size", "8", "--max-steps", "4", "--output", str(run_dir), "--no-progress"]) == 0
    out = tmp_path / "attacks.json"
    assert main(["attack", "--model", str(run_dir), "--examples", "6", "--output", str(out),
                 "--no-progress"]) == 0
    saved = json.loads(out.read_text())
    assert set(saved["attacks"]) == {"pwws", "deepwordbug"}
    for found in saved["attacks"].values():
        s = found["summary"]
        assert s["total"] == 6 and s["attacked"] + s["skipped"] == 6 and s["succeeded"] + s["failed"] == s["attacked"]
        assert len(found["results"]) == 6
    # the texts attacked are the run's own test split (its data file), the same fixed subset
    test = load_splits(small_config).test
    assert [r["original_text"] for r in saved["attacks"]["pwws"]["results"]] == \
        [test.texts[i] for i in saved["indices"]]
    assert "deepwordbug" in capsys.readouterr().out
    assert main(["attack", "--model", str(run_dir), "--output", str(out)]) == 2  # exists: refused, one line
    assert "pass --overwrite" in capsys.readouterr().err


def test_attack_a_hugging_face_folder(sample_csv, tmp_path):
    transformers = pytest.importorskip("transformers")
    import torch

    words = sorted({w for line in sample_csv.read_text().lower().split() for w in [line.strip(".,\"'")] if w})
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words[:300]]) + "\n")
    tokenizer = transformers.BertTokenizerFast(vocab_file=str(vocab))
    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=len(tokenizer), hidden_size=16, num_hidden_layers=1,
                                     num_attention_heads=2, intermediate_size=20, max_position_embeddings=64,
                                     num_labels=2)
    folder = tmp_path / "hf"
    transformers.BertForSequenceClassification(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    out = tmp_path / "hf.json"
    assert main(["attack", "--model", str(folder), "--data", str(sample_csv), "--text-column", "text",
                 "--label-column", "label", "--examples", "3", "--recipes", "deepwordbug", "--max-length", "32",
                 "--output", str(out), "--no-progress"]) == 0
    summary = json.loads(out.read_text())["attacks"]["deepwordbug"]["summary"]
    assert summary["total"] == 3 and summary["attacked"] + summary["skipped"] == 3


def test_not_a_model_folder_is_named(tmp_path):
    from probattn.attacks.classifiers import load_classifier

    with pytest.raises(FileNotFoundError, match=r"neither model\.json"):
        load_classifier(tmp_path)


def test_a_minilm_states_run_is_refused_with_the_reason(tmp_path):
    from probattn.attacks.classifiers import load_classifier

    (tmp_path / "model.json").write_text(json.dumps({"config": {"model": "minilm-states"}}))
    with pytest.raises(ValueError, match="minilm-states run"):
        load_classifier(tmp_path)
