import pytest

from probattn.attacks.text import STOPWORDS, Text, is_one_word, levenshtein


def test_words_keep_inner_punctuation_and_drop_edges():
    text = Text("It's a 'great', well-made film!")
    assert text.words == ["It's", "a", "great", "well-made", "film"]


def test_replace_rewrites_only_that_word_and_marks_it():
    text = Text("It's a 'great', well-made film!")
    new = text.replace(2, "fine").replace(4, "movie")
    assert new.text == "It's a 'fine', well-made movie!"
    assert new.changed == {2, 4}
    assert new.words == ["It's", "a", "fine", "well-made", "movie"]
    assert text.changed == frozenset()


def test_replace_refuses_several_words_and_bad_index():
    with pytest.raises(ValueError, match="not exactly one word"):
        Text("a good movie").replace(1, "very good")
    with pytest.raises(IndexError, match="out of range"):
        Text("a good movie").replace(3, "x")


def test_word_ranges_and_mask():
    text = Text("a good, fun movie.")
    assert text.words_range(0, 2) == "a good"
    assert text.words_range(2, 4) == "fun movie"
    assert text.words_range(4, 4) == ""
    assert text.mask(1, "[UNK]") == "a [UNK], fun movie."


def test_levenshtein_hand_checked():
    assert levenshtein("kitten", "sitting") == 3
    assert levenshtein("good", "ogod") == 2
    assert levenshtein("", "abc") == 3


def test_stopwords_are_nltk_english():
    assert len(STOPWORDS) == 179
    assert {"the", "not", "don't", "is"} <= STOPWORDS and "movie" not in STOPWORDS
    assert is_one_word("well-made") and not is_one_word("two words") and not is_one_word("")
