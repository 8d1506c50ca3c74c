"""The verse-aligned Bible (RV1909 -> WEB): cleaning, alignment, the book split, the sample, the full export."""

from __future__ import annotations

import pytest

from probattn.data import bible
from probattn.data.bible import (
    TEST_BOOKS,
    VALIDATION_BOOKS,
    ParallelText,
    align_verses,
    clean_osis,
    load_bible,
    load_bible_sample,
    parse_imp,
    split_by_book,
    sword_available,
)

# Genesis 1:1 of engWEB2015eb exactly as mod2imp prints it (a footnote between two words)
WEB_GENESIS_1_1 = (
    '<w lemma="strong:H0430">In</w> <w lemma="strong:H0853">the</w> <w lemma="strong:H7225">beginning</w>, '
    '<w lemma="strong:H0430">God</w><note placement="foot"><reference type="annotateRef">1:1 </reference>The Hebrew '
    'word rendered “God” is “אֱלֹהִ֑ים” (Elohim).</note><w lemma="strong:H1254">created</w> '
    '<w lemma="strong:H0853">the</w> <w lemma="strong:H8064">heavens</w> <w lemma="strong:H0430">and</w> '
    '<w lemma="strong:H0853">the</w> <w lemma="strong:H0776">earth</w>.'
)


def test_clean_osis_drops_notes_and_titles_and_keeps_word_text():
    assert clean_osis(WEB_GENESIS_1_1) == "In the beginning, God created the heavens and the earth."
    assert clean_osis('<title type="psalm">A Psalm\nof David.</title> ¶ <w>Yahweh</w>  is\n my shepherd') == \
        "Yahweh is my shepherd"
    assert clean_osis('<div sID="x" type="x-p"/>') == ""


def test_parse_imp_skips_headings_and_verse_zero_and_joins_lines():
    raw = ("$$$[ Module Heading ]\n\n$$$Genesis 0:0\n<title>Genesis</title>\n$$$Genesis 1:0\n<chapter n=\"1\"/>\n"
           "$$$Genesis 1:1\n<w>In the</w>\n<w>beginning</w>\n$$$I Peter 5:7\ncasting all\n")
    assert parse_imp(raw) == {"Genesis 1:1": "In the beginning", "I Peter 5:7": "casting all"}


def test_align_verses_keeps_shared_nonempty_pairs_of_similar_length():
    source = {"Ruth 1:1": "Y aconteció", "Ruth 1:2": "", "Ruth 1:3": "uno", "Ruth 1:4": "x" * 10, "Ruth 1:5": "solo"}
    target = {"Ruth 1:1": "It happened", "Ruth 1:2": "Empty source", "Ruth 1:3": "a much longer English verse",
              "Ruth 1:4": "y" * 20}
    aligned = align_verses(source, target)
    # 1:2 empty, 1:3 ratio 4/28 < 1/2, 1:5 missing in target; 1:4 is (10+1)/(20+1) > 1/2
    assert aligned.refs == ["Ruth 1:1", "Ruth 1:4"]
    assert aligned.sources == ["Y aconteció", "x" * 10] and aligned.targets == ["It happened", "y" * 20]


def test_sample_splits_by_book():
    sample = load_bible_sample()
    assert len(sample) == 200 and all(sample.sources) and all(sample.targets)
    splits = split_by_book(sample)
    assert (len(splits.train), len(splits.validation), len(splits.test)) == (160, 20, 20)
    assert set(splits.validation.books) == set(VALIDATION_BOOKS)
    assert set(splits.test.books) == set(TEST_BOOKS)
    assert not set(splits.train.books) & (set(VALIDATION_BOOKS) | set(TEST_BOOKS))


def test_split_errors_name_the_books():
    sample = load_bible_sample()
    with pytest.raises(ValueError, match=r"books \['Ruth'\] are in both"):
        split_by_book(sample, validation_books=["Ruth"], test_books=["Ruth", "Jonah"])
    with pytest.raises(ValueError, match=r"books \['Tobit'\] are not in the corpus"):
        split_by_book(sample, test_books=["Tobit"])
    with pytest.raises(ValueError, match="one entry per pair"):
        ParallelText(["a"], ["b", "c"], ["Ruth 1:1"])


def test_missing_sword_names_the_apt_get_line(monkeypatch, tmp_path):
    monkeypatch.setattr(bible.shutil, "which", lambda name: None)
    assert not sword_available()
    with pytest.raises(FileNotFoundError, match="apt-get install -y libsword-utils sword-text-web sword-text-sparv"):
        load_bible(cache=tmp_path)


@pytest.mark.data
@pytest.mark.skipif(not sword_available(), reason="needs the Debian SWORD packages: apt-get install -y "
                    "libsword-utils sword-text-web sword-text-sparv")
def test_full_export_counts_split_and_cache(tmp_path, monkeypatch):
    corpus = load_bible(cache=tmp_path)
    assert len(corpus) == 31002 and len(set(corpus.books)) == 66
    assert corpus.refs[0] == "Genesis 1:1"
    assert corpus.sources[0] == "EN el principio crió Dios los cielos y la tierra."
    assert corpus.targets[0] == "In the beginning, God created the heavens and the earth."
    splits = split_by_book(corpus)
    assert (len(splits.train), len(splits.validation), len(splits.test)) == (30388, 189, 425)
    # the shipped sample is an exact cut of the export
    exported = dict(zip(corpus.refs, zip(corpus.sources, corpus.targets)))
    sample = load_bible_sample()
    assert all(exported[r] == (s, t) for r, s, t in zip(sample.refs, sample.sources, sample.targets))
    # the second load reads the JSON cache and never runs mod2imp
    monkeypatch.setattr(bible, "export_module", lambda module: pytest.fail("export ran despite the cache"))
    assert load_bible(cache=tmp_path) == corpus
