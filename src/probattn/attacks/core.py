"""The attack machinery shared by every recipe: goal, constraints, greedy search, results and their counts.

A recipe (TextAttack's word) is a *transformation* (word -> candidate replacement words), *constraints*
(which words may change; which edited texts are allowed) and a *search* (here TextAttack's
``GreedyWordSwapWIR``: rank the words once by importance, then at each word in that order try every candidate
on the current text and keep the best if it lowers the model's probability of the true label; stop at the
first success). The goal is TextAttack's ``UntargetedClassification``: the score of a text is
``1 - p(true label)`` and an attack succeeds when the predicted label is no longer the true one.

Per attacked example (:class:`AttackResult`): ``skipped`` when the model already gets the original wrong (no
attack is run), else ``succeeded`` or ``failed``; the words changed and the model queries (distinct texts sent
to the model, the original included; repeated texts are answered from a cache and not counted, as in
TextAttack). :func:`summarize` gives the counts and the shares a table reports.

A classifier is any callable ``texts (list of N str) -> probabilities (N, C)`` (numpy or torch, rows summing
to 1): see :mod:`probattn.attacks.classifiers` for trained probattn runs, Hugging Face folders and scikit-learn
pipelines.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np

from probattn.attacks.text import STOPWORDS, Text, is_one_word, levenshtein

__all__ = ["RANKINGS", "STATUSES", "Attack", "AttackResult", "AttackSummary", "Classifier", "MaxEditDistance",
           "Recipe", "RepeatModification", "StopwordModification", "summarize"]

Classifier = Callable[[list[str]], Any]
Transformation = Callable[[str, random.Random], Sequence[str]]
STATUSES = ("succeeded", "failed", "skipped")
RANKINGS = ("unk", "weighted-saliency", "combined")
UNK = "[UNK]"


@dataclass(frozen=True)
class RepeatModification:
    """A word already changed is not changed again (TextAttack's ``RepeatModification``)."""

    def allows(self, text: Text, index: int) -> bool:
        return index not in text.changed


@dataclass(frozen=True)
class StopwordModification:
    """Stopwords (NLTK's English list, compared in lower case) are never changed."""

    stopwords: frozenset[str] = STOPWORDS

    def allows(self, text: Text, index: int) -> bool:
        return text.words[index].lower() not in self.stopwords


@dataclass(frozen=True)
class MaxEditDistance:
    """An edited text is kept only within ``limit`` character edits of the original (``LevenshteinEditDistance``)."""

    limit: int = 30

    def accepts(self, original: Text, candidate: Text) -> bool:
        return levenshtein(original.text, candidate.text) <= self.limit


@dataclass(frozen=True)
class Recipe:
    """``transformation(word, rng) -> candidate words``; ``pre`` constraints decide which words may change,
    ``post`` constraints which edited texts are kept; ``ranking`` orders the words for the greedy search:

    * ``"unk"``: the score with the word replaced by ``[UNK]`` (leave-one-out; DeepWordBug's replace-one score);
    * ``"weighted-saliency"`` (PWWS): ``softmax(unk scores)_i * (best swap's drop of p(true label))_i``;
    * ``"combined"`` (DeepWordBug's combined score): temporal head + ``combined_lambda`` * temporal tail score,
      ``p(y | w_1..w_i) - p(y | w_1..w_{i-1})`` and ``p(y | w_i..w_n) - p(y | w_{i+1}..w_n)``.
    """

    name: str
    transformation: Transformation
    pre: tuple[Any, ...] = (RepeatModification(), StopwordModification())
    post: tuple[Any, ...] = ()
    ranking: Literal["unk", "weighted-saliency", "combined"] = "unk"
    combined_lambda: float = 1.0

    def __post_init__(self) -> None:
        if self.ranking not in RANKINGS:
            raise ValueError(f"ranking must be one of {', '.join(RANKINGS)}, got {self.ranking!r}")


@dataclass(frozen=True)
class AttackResult:
    """One attacked example. ``status``: ``"skipped"`` (the original is already misclassified), ``"succeeded"``
    (the perturbed text is misclassified) or ``"failed"``. Confidences are ``p(true label)``."""

    status: str
    label: int
    original_text: str
    perturbed_text: str
    original_prediction: int
    perturbed_prediction: int
    original_confidence: float
    perturbed_confidence: float
    words_changed: int
    num_words: int
    queries: int
    changed_indices: tuple[int, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "changed_indices": list(self.changed_indices)}

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> AttackResult:
        return cls(**{**values, "changed_indices": tuple(values.get("changed_indices", ()))})


@dataclass(frozen=True)
class AttackSummary:
    """Counts over the attacked examples and the shares a table reports (NaN where the count is 0).

    ``failed_share`` = failed / attacked (the share of attacks that fail), ``success_rate`` = succeeded /
    attacked, ``accuracy`` = attacked / total (accuracy before the attack), ``accuracy_under_attack`` =
    failed / total; ``words_changed`` and ``perturbed_word_share`` are means over the successful attacks,
    ``queries`` the mean over the attacked (not skipped) examples.
    """

    total: int
    attacked: int
    skipped: int
    succeeded: int
    failed: int
    failed_share: float
    success_rate: float
    accuracy: float
    accuracy_under_attack: float
    words_changed: float
    perturbed_word_share: float
    queries: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _ratio(a: float, b: float) -> float:
    return a / b if b else math.nan


def summarize(results: Sequence[AttackResult]) -> AttackSummary:
    """Count ``results`` (see :class:`AttackSummary`)."""
    bad = sorted({r.status for r in results} - set(STATUSES))
    if bad:
        raise ValueError(f"unknown attack status {bad}; expected one of {STATUSES}")
    succeeded = [r for r in results if r.status == "succeeded"]
    attacked = [r for r in results if r.status != "skipped"]
    failed = len(attacked) - len(succeeded)
    total = len(results)
    return AttackSummary(
        total=total, attacked=len(attacked), skipped=total - len(attacked), succeeded=len(succeeded), failed=failed,
        failed_share=_ratio(failed, len(attacked)), success_rate=_ratio(len(succeeded), len(attacked)),
        accuracy=_ratio(len(attacked), total), accuracy_under_attack=_ratio(failed, total),
        words_changed=_ratio(sum(r.words_changed for r in succeeded), len(succeeded)),
        perturbed_word_share=_ratio(sum(r.words_changed / max(r.num_words, 1) for r in succeeded), len(succeeded)),
        queries=_ratio(sum(r.queries for r in attacked), len(attacked)),
    )


@dataclass
class _Goal:
    """Untargeted classification with a query count and a cache of the texts already asked."""

    classifier: Classifier
    label: int
    budget: int | None
    batch_size: int
    queries: int = 0
    cache: dict[str, tuple[float, int]] = field(default_factory=dict)

    @property
    def exhausted(self) -> bool:
        return self.budget is not None and self.queries >= self.budget

    def _probabilities(self, texts: list[str]) -> np.ndarray:
        out = []
        for start in range(0, len(texts), self.batch_size):
            chunk = texts[start:start + self.batch_size]
            probs = self.classifier(chunk)
            probs = np.asarray(probs.detach().cpu() if hasattr(probs, "detach") else probs, dtype=np.float64)
            if probs.ndim != 2 or probs.shape[0] != len(chunk) or not np.isfinite(probs).all() \
                    or not np.allclose(probs.sum(1), 1.0, atol=1e-3):
                raise ValueError(f"the classifier must return finite probabilities of shape ({len(chunk)}, "
                                 f"num_labels) with rows summing to 1; got shape {probs.shape}")
            if not 0 <= self.label < probs.shape[1]:
                raise ValueError(f"label {self.label} out of range for a classifier with {probs.shape[1]} labels")
            out.append(probs)
        return np.concatenate(out) if out else np.zeros((0, 0))

    def score(self, texts: Sequence[str]) -> list[tuple[float, int] | None]:
        """``(1 - p(label), predicted label)`` per text; None for texts beyond the query budget."""
        new = [t for t in dict.fromkeys(texts) if t not in self.cache]
        if self.budget is not None:
            new = new[:max(self.budget - self.queries, 0)]
        if new:
            probs = self._probabilities(new)
            self.queries += len(new)
            for text, row in zip(new, probs):
                self.cache[text] = (float(1.0 - row[self.label]), int(row.argmax()))
        return [self.cache.get(t) for t in texts]

    def succeeded(self, entry: tuple[float, int]) -> bool:
        return entry[1] != self.label


def _softmax(x: np.ndarray) -> np.ndarray:
    z = np.exp(x - x.max()) if x.size else x
    return z / z.sum() if x.size else x


class Attack:
    """Run a :class:`Recipe` against a classifier.

    Args:
        recipe: e.g. :func:`probattn.attacks.pwws.pwws` or :func:`probattn.attacks.deepwordbug.deepwordbug`.
        classifier: ``texts -> (N, C) probabilities``.
        query_budget: stop an attack after this many model queries (None: no limit, TextAttack's default).
        batch_size: texts per classifier call.
        seed: the random transformations of example ``i`` draw from ``random.Random(seed * 1_000_003 + i)``.
    """

    def __init__(self, recipe: Recipe, classifier: Classifier, *, query_budget: int | None = None,
                 batch_size: int = 64, seed: int = 0) -> None:
        if not isinstance(recipe, Recipe):
            raise TypeError(f"recipe must be a probattn.attacks.Recipe, got {type(recipe).__name__}")
        if not callable(classifier):
            raise TypeError("classifier must be callable: texts (list of str) -> (N, C) probabilities")
        if query_budget is not None and (isinstance(query_budget, bool) or not isinstance(query_budget, int)
                                         or query_budget < 1):
            raise ValueError(f"query_budget must be a positive int or None, got {query_budget!r}")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        self.recipe, self.classifier = recipe, classifier
        self.query_budget, self.batch_size, self.seed = query_budget, batch_size, seed

    # -- pieces of the search -------------------------------------------------------------------------------
    def _modifiable(self, text: Text) -> list[int]:
        return [i for i in range(len(text)) if all(c.allows(text, i) for c in self.recipe.pre)]

    def _candidates(self, current: Text, original: Text, index: int, rng: random.Random) -> list[Text]:
        if not all(c.allows(current, index) for c in self.recipe.pre):
            return []
        word = current.words[index]
        out, seen = [], set()
        for new in self.recipe.transformation(word, rng):
            if new == word or new in seen or not is_one_word(new):
                continue
            seen.add(new)
            candidate = current.replace(index, new)
            if all(c.accepts(original, candidate) for c in self.recipe.post):
                out.append(candidate)
        return out

    def _rank(self, original: Text, goal: _Goal, base: tuple[float, int], rng: random.Random) -> list[int]:
        indices = self._modifiable(original)
        if not indices:
            return []
        ranking = self.recipe.ranking
        if ranking == "combined":
            n = len(original)
            p = lambda entry: math.nan if entry is None else 1.0 - entry[0]  # noqa: E731
            heads = [p(e) for e in goal.score([original.words_range(0, k) for k in range(n + 1)])]
            tails = [p(e) for e in goal.score([original.words_range(k, n) for k in range(n + 1)])]
            scores = np.array([(heads[i + 1] - heads[i]) + self.recipe.combined_lambda * (tails[i] - tails[i + 1])
                               for i in indices])
        else:
            masked = goal.score([original.mask(i, UNK) for i in indices])
            scores = np.array([math.nan if e is None else e[0] for e in masked])
            if ranking == "weighted-saliency":
                saliency = _softmax(np.nan_to_num(scores, nan=-np.inf) if np.isfinite(scores).any() else
                                    np.zeros_like(scores))
                drops = []
                for i in indices:
                    swaps = [e for e in goal.score([c.text for c in self._candidates(original, original, i, rng)])
                             if e is not None]
                    drops.append(max(e[0] for e in swaps) - base[0] if swaps else 0.0)
                scores = saliency * np.array(drops)
        scores = np.nan_to_num(scores, nan=-np.inf)
        order = sorted(range(len(indices)), key=lambda k: -scores[k])  # stable: ties keep word order
        return [indices[k] for k in order]

    # -- public ---------------------------------------------------------------------------------------------
    def attack(self, text: str, label: int, *, index: int = 0) -> AttackResult:
        """Attack one example (``index`` seeds its random transformations)."""
        if isinstance(label, bool) or not isinstance(label, (int, np.integer)):
            raise TypeError(f"label must be an int, got {type(label).__name__}")
        label = int(label)
        rng = random.Random(self.seed * 1_000_003 + index)
        goal = _Goal(self.classifier, label, self.query_budget, self.batch_size)
        original = Text(text)
        base = goal.score([original.text])[0]
        assert base is not None  # the budget is >= 1
        if goal.succeeded(base):
            return self._result("skipped", label, original, original, base, base, goal)
        current, current_entry = original, base
        for index_ in self._rank(original, goal, base, rng):
            if goal.exhausted:
                break
            candidates = self._candidates(current, original, index_, rng)
            if not candidates:
                continue
            scored = [(e, c) for e, c in zip(goal.score([c.text for c in candidates]), candidates) if e is not None]
            if not scored:
                break
            best_entry, best = max(scored, key=lambda ec: ec[0][0])  # first of equal scores: candidate order
            if best_entry[0] <= current_entry[0]:
                continue  # a swap that does not raise the score is not taken
            current, current_entry = best, best_entry
            if goal.succeeded(current_entry):
                return self._result("succeeded", label, original, current, base, current_entry, goal)
        return self._result("failed", label, original, current, base, current_entry, goal)

    def attack_many(self, texts: Sequence[str], labels: Sequence[int],
                    progress: Callable[[int, AttackResult], None] | None = None) -> list[AttackResult]:
        """Attack every ``(texts[i], labels[i])``; ``progress(i, result)`` after each."""
        if len(texts) != len(labels):
            raise ValueError(f"texts and labels differ in length ({len(texts)} vs {len(labels)})")
        results = []
        for i, (text, label) in enumerate(zip(texts, labels)):
            results.append(self.attack(text, label, index=i))
            if progress is not None:
                progress(i, results[-1])
        return results

    @staticmethod
    def _result(status: str, label: int, original: Text, perturbed: Text, base: tuple[float, int],
                final: tuple[float, int], goal: _Goal) -> AttackResult:
        changed = tuple(sorted(perturbed.changed))
        return AttackResult(status=status, label=label, original_text=original.text, perturbed_text=perturbed.text,
                            original_prediction=base[1], perturbed_prediction=final[1],
                            original_confidence=1.0 - base[0], perturbed_confidence=1.0 - final[0],
                            words_changed=len(changed), num_words=len(original), queries=goal.queries,
                            changed_indices=changed)
