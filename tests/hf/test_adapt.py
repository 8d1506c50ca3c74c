"""adapt(): distilling a converted model back toward the original raises the held-out cosine."""

from __future__ import annotations

import copy
import json
import warnings
from importlib import resources
from pathlib import Path

import pytest
import torch

pytest.importorskip("transformers")
import transformers

from probattn.hf import adapt, convert, sentence_cosine, sentence_embeddings

pytestmark = pytest.mark.hf

SAMPLE = Path(str(resources.files("probattn") / "data" / "samples" / "rt_sample.csv"))


@pytest.fixture(scope="module")
def texts_and_tokenizer(tmp_path_factory):
    rows = [line.rsplit(",", 1)[0].strip('"') for line in SAMPLE.read_text().splitlines()[1:]]
    words = sorted({w for row in rows for w in row.lower().split()})[:300]
    vocab = tmp_path_factory.mktemp("tok") / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words]) + "\n")
    return rows, transformers.BertTokenizerFast(vocab_file=str(vocab))


def _pair(normalization: str):
    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=305, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                     intermediate_size=64, max_position_embeddings=64, initializer_range=1.0)
    reference = transformers.BertModel(config).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        model = convert(copy.deepcopy(reference), normalization=normalization)
    return model, reference


def test_adapt_raises_the_held_out_cosine(texts_and_tokenizer):
    texts, tokenizer = texts_and_tokenizer
    train, held = texts[:150], texts[150:]
    model, reference = _pair("doubly")
    before = sentence_cosine(model, reference, tokenizer, held)
    frozen = {k: v.clone() for k, v in reference.state_dict().items()}
    result = adapt(model, reference, train, tokenizer=tokenizer, steps=40, batch_size=16, lr=3e-3, max_length=32)
    after = sentence_cosine(model, reference, tokenizer, held)
    assert result.steps == 40 and len(result.losses) == 40
    assert sum(result.losses[-5:]) < 0.5 * sum(result.losses[:5])
    assert after > before + 0.03, (before, after)
    assert all(torch.equal(v, reference.state_dict()[k]) for k, v in frozen.items())  # the teacher never moves
    assert not model.training


def test_sentence_embeddings_mean_pool_real_tokens(texts_and_tokenizer):
    texts, tokenizer = texts_and_tokenizer
    _, reference = _pair("softmax")
    pair = sentence_embeddings(reference, tokenizer, [texts[0], texts[1]])
    alone = sentence_embeddings(reference, tokenizer, [texts[1]])
    batch = tokenizer([texts[1]], return_tensors="pt")
    with torch.no_grad():
        want = reference(**batch).last_hidden_state.mean(1)  # one unpadded sentence: every token is real
    torch.testing.assert_close(alone, want)
    torch.testing.assert_close(pair[1:], alone, atol=1e-5, rtol=1e-5)  # padding in the batch changes nothing


@pytest.mark.parametrize(("options", "error", "match"), [
    ({"texts": "one string"}, TypeError, "texts must be a non-empty list"),
    ({"texts": ["ok", ""]}, ValueError, r"texts\[1\]"),
    ({"steps": 0}, ValueError, "steps must be a positive integer"),
    ({"lr": 0.0}, ValueError, "lr must be"),
    ({"time_budget": -1}, ValueError, "time_budget"),
    ({"pooled_weight": -1.0}, ValueError, "pooled_weight"),
])
def test_bad_arguments(texts_and_tokenizer, options, error, match):
    texts, tokenizer = texts_and_tokenizer
    model, reference = _pair("doubly")
    kwargs = {"texts": texts[:4], **options}
    with pytest.raises(error, match=match):
        adapt(model, reference, kwargs.pop("texts"), tokenizer=tokenizer, **kwargs)
    with pytest.raises(ValueError, match="same object"):
        adapt(model, model, texts[:4], tokenizer=tokenizer)


def test_adapt_command_writes_a_loadable_model(texts_and_tokenizer, tmp_path, capsys):
    from probattn.cli import main
    from probattn.hf import load

    texts, tokenizer = texts_and_tokenizer
    _, reference = _pair("softmax")
    model_dir = tmp_path / "bert"
    reference.save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    data = tmp_path / "sentences.txt"
    data.write_text("\n".join(texts[:60]) + "\n")
    code = main(["adapt", "--model", str(model_dir), "--data", str(data), "--held-out", "10", "--steps", "3",
                 "--batch-size", "4", "--max-length", "16", "--output", str(tmp_path / "out")])
    out = capsys.readouterr().out
    assert code == 0
    assert "held-out cosine to the original before adapting" in out and "after 3 steps" in out
    report = json.loads((tmp_path / "out" / "adapt.json").read_text())
    assert report["steps"] == 3 and report["normalization"] == "doubly" and report["held_out"] == 10
    loaded = load(tmp_path / "out")
    assert loaded.config.probattn["normalization"] == "doubly"
    before = {p.name: p.read_bytes() for p in model_dir.iterdir()}
    for extra in ([], ["--overwrite"]):  # adapting a model into its own folder would replace its files
        code = main(["adapt", "--model", str(model_dir), "--data", str(data), "--held-out", "10", "--steps", "1",
                     "--output", str(model_dir), *extra])
        err = capsys.readouterr().err
        assert code == 2 and str(model_dir) in err and ("--overwrite" in err or "not probattn's" in err)
    assert {p.name: p.read_bytes() for p in model_dir.iterdir()} == before
    code = main(["adapt", "--model", str(model_dir), "--data", str(data), "--held-out", "60"])
    assert code == 2 and "--held-out 60 must leave some to train" in capsys.readouterr().err
