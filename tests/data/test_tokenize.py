"""WordTokenizer: hand-checked ids, truncation count, pairs, round trip."""

from __future__ import annotations

import torch

from probattn.data import WordTokenizer


def test_vocabulary_order_and_encoding():
    tok = WordTokenizer.build(["the film, the plot", "a film"])
    # counts: the 2, film 2, ',' 1, a 1, plot 1 -> ties alphabetical after frequency
    assert tok.vocabulary == ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "film", "the", ",", "a", "plot"]
    enc = tok(["The film!", "a plot, the end of it"], max_length=6)
    assert enc.input_ids.tolist() == [[2, 5, 4, 1, 3, 0], [2, 7, 8, 6, 5, 1]]
    assert enc.attention_mask.tolist() == [[True] * 5 + [False], [True] * 6]
    assert enc.truncated == 1


def test_pairs_and_state_round_trip():
    tok = WordTokenizer.build(["a b"])
    enc = tok(["a"], ["b"], max_length=10)
    assert enc.input_ids.tolist() == [[2, tok.ids("a")[0], 3, tok.ids("b")[0], 3]]
    again = WordTokenizer.from_state_dict(tok.state_dict())
    assert torch.equal(again(["a b c"], max_length=8).input_ids, tok(["a b c"], max_length=8).input_ids)


def test_words_keep_contractions():
    assert WordTokenizer.words("It's GREAT -- isn't it?") == ["it's", "great", "-", "-", "isn't", "it", "?"]
