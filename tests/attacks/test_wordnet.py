from pathlib import Path

import pytest

from probattn.attacks.wordnet import DEFAULT_DIRECTORY, WordNetSynonyms

pytestmark = pytest.mark.skipif(not (DEFAULT_DIRECTORY / "index.noun").is_file(),
                                reason="needs the Debian package wordnet-base")


@pytest.fixture(scope="module")
def wordnet():
    return WordNetSynonyms()


def test_synonyms_hand_checked(wordnet):
    # WordNet 3.0: movie.n.01 = {movie, film, picture, moving_picture, moving-picture_show, motion_picture, ...}
    assert {"film", "movie", "picture", "flick"} <= set(wordnet.synonyms("movies"))
    assert "movies" not in wordnet.synonyms("movies")
    assert "run" in wordnet.synonyms("ran")  # verb.exc: ran -> run
    assert {"dull", "tedious"} <= set(wordnet.synonyms("boring"))
    assert wordnet.synonyms("the") == ()
    assert all("_" not in w for w in wordnet.synonyms("good"))


def test_morphy_follows_nltk_rules(wordnet):
    assert wordnet.morphy("churches", "n") == ["church"]
    assert wordnet.morphy("better", "a") == ["better", "good", "well"]  # adj.exc lists both
    assert wordnet.morphy("qwertyuiop", "n") == []


def test_adjective_markers_are_stripped(wordnet):
    # data.adj 00020103: "s 02 outback(a) 0 remote 0"
    assert "outback" in wordnet.synonyms("remote")
    assert all("(" not in w for w in wordnet.synonyms("remote"))


def test_missing_database_names_the_package(tmp_path: Path):
    with pytest.raises(FileNotFoundError, match="wordnet-base"):
        WordNetSynonyms(tmp_path)
