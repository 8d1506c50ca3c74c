"""The BPE vocabulary (tokenizers): special ids, lossless round trip, JSON save/load."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("tokenizers")

from probattn.data.bible import load_bible_sample
from probattn.data.subword import SPECIALS, SubwordTokenizer, train_bpe


@pytest.fixture(scope="module")
def trained():
    sample = load_bible_sample()
    return sample, train_bpe(sample.sources + sample.targets, vocab_size=400)


def test_round_trip_is_lossless(trained):
    sample, tokenizer = trained
    texts = sample.sources + sample.targets + ["¿Qué es esto? Jehová dijo:", "Yahweh’s word (a new test), “quoted”."]
    ids = tokenizer.encode(texts)
    assert tokenizer.decode(ids) == texts
    assert all(min(row) > 0 and max(row) < tokenizer.vocab_size for row in ids if row)
    assert not any(i in (0, 2, 3) for row in ids for i in row)  # encode adds no <pad>, <s>, </s>
    assert tokenizer.decode([[2, *ids[0], 3, 0, 0]]) == [texts[0]]  # specials are dropped when decoding
    assert 1 in tokenizer.encode(["a character never seen: ⌘"])[0]  # <unk>


def test_save_and_load_are_json(trained, tmp_path):
    _, tokenizer = trained
    path = tokenizer.save(tmp_path / "tokenizer.json")
    data = json.loads(path.read_text())
    assert data["model"]["type"] == "BPE"
    assert [t["content"] for t in data["added_tokens"]] == list(SPECIALS)
    again = SubwordTokenizer.load(path)
    assert again.encode(["Y dijo Dios"]) == tokenizer.encode(["Y dijo Dios"])


def test_errors():
    with pytest.raises(ValueError, match="vocab_size must be an integer > 4"):
        train_bpe(["a b"], vocab_size=4)
    _, tokenizer = load_bible_sample(), train_bpe(["a b c"], vocab_size=30, min_frequency=1)
    with pytest.raises(TypeError, match="not one string"):
        tokenizer.encode("a b")
