"""PWWS / DeepWordBug on hand-checked sentences against a toy word-weight classifier."""

import math

import numpy as np
import pytest

from probattn.attacks import (
    Attack,
    AttackResult,
    MaxEditDistance,
    Recipe,
    RepeatModification,
    StopwordModification,
    deepwordbug,
    pwws,
    summarize,
)
from probattn.attacks.text import Text


def lexicon(weights: dict[str, float], bias: float = 0.0, log: list | None = None):
    """p(positive) = sigmoid(bias + sum of the weights of the (lower-case) words)."""

    def classify(texts):
        if log is not None:
            log.extend(texts)
        z = np.array([bias + sum(weights.get(w.lower(), 0.0) for w in Text(t).words) for t in texts])
        p = 1 / (1 + np.exp(-z))
        return np.stack([1 - p, p], axis=1)

    return classify


SYNONYMS = {"good": ("fine", "nice", "bad"), "movie": ("film",), "not": ("non",), "the": ("a",), "is": ("be",)}


def table(word):
    return SYNONYMS.get(word, ())


def test_pwws_finds_the_flipping_synonym_and_counts_queries():
    asked = []
    classifier = lexicon({"good": 3, "fine": 2, "nice": 1, "bad": -3}, bias=-1, log=asked)
    result = Attack(pwws(table), classifier).attack("a good movie", 1)
    assert result.status == "succeeded"
    assert result.perturbed_text == "a bad movie"
    assert result.changed_indices == (1,) and result.words_changed == 1 and result.num_words == 3
    assert result.original_prediction == 1 and result.perturbed_prediction == 0
    assert result.original_confidence == pytest.approx(1 / (1 + math.exp(-2)))
    # hand count: original, 2 masked ("a [UNK] movie", "a good [UNK]"), 3 swaps of good, 1 of movie;
    # the search re-asks the 3 swaps of good, answered from the cache
    assert result.queries == 7
    assert len(asked) == 7 and len(set(asked)) == 7


def test_stopwords_are_never_modified():
    seen = []

    def spy(word):
        seen.append(word)
        return table(word)

    classifier = lexicon({"not": 4, "non": -10, "a": -10, "be": -10, "bad": -1}, bias=0)
    result = Attack(pwws(spy), classifier).attack("the movie is not bad", 1)
    assert result.status == "failed"
    assert not set(seen) & {"the", "is", "not"}
    assert result.perturbed_text.split()[0::2] == ["the", "is", "bad"]
    assert {"the", "is", "not"} <= set(result.perturbed_text.split())


def test_a_changed_word_is_not_changed_again():
    text = Text("a good movie").replace(1, "fine")
    assert not RepeatModification().allows(text, 1) and RepeatModification().allows(text, 2)
    assert not StopwordModification().allows(text, 0)
    attack = Attack(pwws(table), lexicon({}))
    import random

    assert attack._candidates(text, Text("a good movie"), 1, random.Random(0)) == []
    assert [c.text for c in attack._candidates(text, Text("a good movie"), 2, random.Random(0))] == ["a fine film"]


def test_skipped_when_already_wrong_and_failed_when_nothing_flips():
    classifier = lexicon({"good": 3}, bias=-1)
    skipped = Attack(pwws(table), classifier).attack("a good movie", 0)
    assert skipped.status == "skipped" and skipped.queries == 1 and skipped.perturbed_text == "a good movie"
    failed = Attack(pwws(table), lexicon({"movie": 5, "film": 5})).attack("a good movie", 1)
    assert failed.status == "failed" and failed.perturbed_prediction == 1


def test_query_budget_stops_the_attack():
    classifier = lexicon({"good": 3, "fine": 2, "nice": 1, "bad": -3}, bias=-1)
    result = Attack(pwws(table), classifier, query_budget=3).attack("a good movie", 1)
    assert result.status == "failed" and result.queries == 3


def test_summarize_counts_hand_made_results():
    def make(status, changed=0, words=4, queries=10):
        return AttackResult(status, 1, "t", "t", 1, 0 if status == "succeeded" else 1, 0.9, 0.4, changed, words,
                            queries)

    summary = summarize([make("succeeded", 1), make("succeeded", 2), make("failed", queries=20),
                         make("skipped", queries=1)])
    assert (summary.total, summary.attacked, summary.skipped, summary.succeeded, summary.failed) == (4, 3, 1, 2, 1)
    assert summary.failed_share == pytest.approx(1 / 3) and summary.success_rate == pytest.approx(2 / 3)
    assert summary.accuracy == pytest.approx(3 / 4) and summary.accuracy_under_attack == pytest.approx(1 / 4)
    assert summary.words_changed == pytest.approx(1.5) and summary.perturbed_word_share == pytest.approx(1.5 / 4)
    assert summary.queries == pytest.approx(40 / 3)
    assert math.isnan(summarize([make("skipped")]).failed_share)
    with pytest.raises(ValueError, match="unknown attack status"):
        summarize([make("maximized")])
    assert AttackResult.from_dict(make("failed").to_dict()) == make("failed")


def test_deepwordbug_edits_characters_of_the_salient_word():
    classifier = lexicon({"good": 3, "movie": 0.1}, bias=-1)
    result = Attack(deepwordbug(), classifier, seed=1).attack("a good movie", 1)
    assert result.status == "succeeded" and result.changed_indices == (1,)
    word = Text(result.perturbed_text).words[1]
    assert word != "good" and abs(len(word) - 4) <= 1
    # combined score: "good" (+3 to the head and tail scores) is tried before "movie"
    attack = Attack(deepwordbug(), classifier)
    original = Text("a good movie")
    assert attack._rank(original, _goal(classifier), None, None)[0] == 1
    assert Attack(deepwordbug("unk"), classifier)._rank(original, _goal(classifier), None, None)[0] == 1


def _goal(classifier):
    from probattn.attacks.core import _Goal

    return _Goal(classifier, 1, None, 64)


def test_deepwordbug_respects_the_edit_distance():
    classifier = lexicon({"good": 3}, bias=-1)
    recipe = Recipe("swap only", lambda w, rng: [w[1] + w[0] + w[2:]], post=(MaxEditDistance(1),))
    assert Attack(recipe, classifier).attack("a good movie", 1).status == "failed"  # "ogod" is 2 edits away
    recipe2 = Recipe("swap only", lambda w, rng: [w[1] + w[0] + w[2:]], post=(MaxEditDistance(2),))
    assert Attack(recipe2, classifier).attack("a good movie", 1).perturbed_text == "a ogod movie"
    with pytest.raises(ValueError, match="max_edit_distance"):
        deepwordbug(max_edit_distance=0)


def test_bad_classifier_output_is_named():
    with pytest.raises(ValueError, match="finite probabilities"):
        Attack(pwws(table), lambda texts: np.ones((len(texts), 2))).attack("a good movie", 1)
    with pytest.raises(ValueError, match="ranking must be"):
        Recipe("x", lambda w, r: [], ranking="gradient")


def test_pwws_with_wordnet_flips_a_one_word_classifier():
    from probattn.attacks.wordnet import DEFAULT_DIRECTORY, synonyms

    if not (DEFAULT_DIRECTORY / "index.noun").is_file():
        pytest.skip("needs the Debian package wordnet-base")
    result = Attack(pwws(), lexicon({"good": 3}, bias=-1)).attack("a good movie", 1)
    assert result.status == "succeeded" and result.changed_indices == (1,)
    assert Text(result.perturbed_text).words[1] in synonyms("good")
