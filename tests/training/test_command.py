"""`probattn train` end to end on a user's file, and one clear error (exit status 2) per bad input."""

from __future__ import annotations

import json

import pytest

from probattn.cli import main

FAST = ["--preset", "tiny", "--embed-dim", "8", "--num-heads", "2", "--num-layers", "1", "--max-length", "16",
        "--batch-size", "8", "--max-steps", "2", "--no-progress"]


def run(argv, capsys):
    code = main(["train", *argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_train_on_own_csv_with_string_labels(tmp_path, sample_csv, capsys):
    lines = sample_csv.read_text().splitlines()
    own = tmp_path / "reviews.csv"
    own.write_text("\n".join(["review,sentiment"] + [line.rsplit(",", 1)[0] + ("," + ("good" if line.endswith("1")
                                                                                         else "bad"))
                                                     for line in lines[1:]]) + "\n")
    config = tmp_path / "run.yaml"
    config.write_text(f"data: {own}\ntext_column: review\nlabel_column: sentiment\nlr: 0.002\n")
    code, out, err = run(["--config", str(config), "--output", str(tmp_path / "out"), *FAST], capsys)
    assert code == 0, err
    assert "validation: accuracy" in out and "test: accuracy" in out
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert metrics["data"]["label_names"] == ["bad", "good"]
    assert json.loads((tmp_path / "out" / "config.json").read_text())["lr"] == 0.002
    results = (tmp_path / "out" / "results.md").read_text()
    assert "| test |" in results and (tmp_path / "out" / "reliability.png").stat().st_size > 0


def test_many_epochs_on_a_tiny_set_are_warned_about(sample_csv, capsys):
    # 100 steps of 32 examples = 3,200 examples = 23 passes over the 140 training rows
    code, _, err = run(["--data", str(sample_csv), "--text-column", "text", "--label-column", "label",
                        *FAST[:-5], "--batch-size", "32", "--max-steps", "100", "--no-progress"], capsys)
    assert code == 0
    assert "probattn train: a budget of 100 steps of 32 on 140 training examples is 23 epochs" in err
    assert "--eval-every" in err  # says how to keep the best checkpoint


def test_help_shows_every_default(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "(default minilm)" in text and "--max-steps" in text and "default 200; preset minilm 300" in text
    assert "(default softmax)" in text and "(default rotten_tomatoes)" in text and "(default None)" in text


@pytest.mark.parametrize(("content", "message"), [
    ("text,y\na,1\nb,0\n", "--label-column 'label' is not a column of the file; its columns are: text, y"),
    ("", "the file is empty"),
    ("text,label\n" + "a,1\n" * 12, "single class"),
    ("text,label\na,1\nb,0.25\n", "must hold class labels (integers or strings) but has float values"),
    ("text,label\na,1\nb,0,7\n", "could not read it as CSV"),
    ("text,label\na,1\n,0\n", "--text-column 'text' is empty or missing in row 2"),
])
def test_malformed_files_get_their_own_error(tmp_path, capsys, content, message):
    path = tmp_path / "bad.csv"
    path.write_text(content)
    code, _, err = run(["--data", str(path), "--text-column", "text", "--label-column", "label", *FAST], capsys)
    assert code == 2
    assert message in err and "Traceback" not in err
    assert err.count("\n") == 1  # one line


def test_bad_options(tmp_path, capsys, sample_csv):
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--learning-rate", "1"])
    assert exit_info.value.code == 2
    assert "unrecognized arguments: --learning-rate" in capsys.readouterr().err
    code, _, err = run(["--normalization", "softmaxx"], capsys)
    assert code == 2 and "--normalization 'softmaxx': choose one of softmax, doubly, hybrid, sinkhorn" in err
    code, _, err = run(["--data", str(sample_csv), "--text-column", "text", "--label-column", "label",
                        "--ood", str(tmp_path / "missing.csv"), *FAST], capsys)
    assert code == 2 and "--ood" in err and "no such file" in err


def test_non_finite_is_one_line_not_a_traceback(sample_csv, capsys):
    code, _, err = run(["--data", str(sample_csv), "--text-column", "text", "--label-column", "label",
                        "--lr", "1e30", "--max-grad-norm", "0", *FAST[:-3], "--max-steps", "3", "--no-progress"],
                       capsys)
    assert code == 2 and "step 2:" in err and "Traceback" not in err


def test_sentence_pairs(tmp_path, sample_csv, capsys):
    lines = sample_csv.read_text().splitlines()[1:]
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("\n".join(json.dumps({"a": line.rsplit(",", 1)[0], "b": lines[i - 1].rsplit(",", 1)[0],
                                           "same": int(line[-1] == lines[i - 1][-1])})
                               for i, line in enumerate(lines)) + "\n")
    code, out, err = run(["--data", str(pairs), "--text-column", "a", "--text-pair-column", "b", "--label-column",
                          "same", *FAST], capsys)
    assert code == 0, err
    assert "test: accuracy" in out


@pytest.mark.hf
def test_train_a_local_hugging_face_directory(tmp_path, sample_csv, capsys):
    transformers = pytest.importorskip("transformers")
    words = sorted({w for line in sample_csv.read_text().lower().splitlines()[1:] for w in line.split()[:-1]})[:200]
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words]) + "\n")
    model_dir = tmp_path / "my-bert"
    transformers.BertTokenizerFast(vocab_file=str(vocab)).save_pretrained(model_dir)
    config = transformers.BertConfig(vocab_size=205, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                     intermediate_size=32, max_position_embeddings=32)
    transformers.BertModel(config).save_pretrained(model_dir)
    argv = ["--model", str(model_dir), "--normalization", "doubly", "--data", str(sample_csv), "--text-column", "text",
            "--label-column", "label", "--max-length", "16", "--batch-size", "8", "--max-steps", "2", "--no-progress",
            "--output", str(tmp_path / "out")]
    with pytest.warns(UserWarning, match="changes the attention of pretrained weights"):
        code, out, err = run(argv, capsys)
    assert code == 0, err
    assert "test: accuracy" in out
    assert json.loads((tmp_path / "out" / "config.json").read_text())["model"] == str(model_dir)
    code, _, err = run(["--model", str(tmp_path / "nowhere"), *FAST], capsys)
    assert code == 2 and "or a local Hugging Face model directory (with config.json)" in err


def test_train_reaches_what_it_reports_from_below_the_experiments():
    """`train` and the study runner share the metrics and figures it reports; training does not import experiments."""
    import inspect

    import probattn.training.command as command

    assert "probattn.experiments" not in inspect.getsource(command)
