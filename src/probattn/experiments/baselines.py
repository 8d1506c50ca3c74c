"""Simple baselines that every ``probattn compare`` table carries, computed in the same run on the same splits.

* ``majority class``: always the most frequent training label, with the training label frequencies as its
  probabilities;
* ``bag of words + LR``: TF-IDF of word 1-2-grams (min count 2) and scikit-learn logistic regression;
* ``frozen MiniLM + LR``: all-MiniLM-L6-v2 mean-pooled token states (the same cached states the default
  model attends over) and logistic regression.

The logistic regressions pick ``C`` from (0.1, 1, 10) on the validation split. Each baseline is one
deterministic fit, so its rows have no interval over seeds. Every baseline returns the runner's record shape
(``sets``: ``test`` / ``ood`` metrics and per-example scores; ``reliability``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from probattn.data import DataSplits, TextClassificationData
from probattn.metrics.calibration import measure_probabilities

__all__ = ["BASELINES", "majority", "measure_probabilities", "run_baselines"]

C_GRID = (0.1, 1.0, 10.0)


def _record(predict: Callable[[TextClassificationData], np.ndarray], test: TextClassificationData,
            ood: TextClassificationData | None) -> dict[str, Any]:
    """The runner's record shape: ``sets`` ``test`` (and ``ood``) with metrics and per-example scores."""
    record: dict[str, Any] = {"sets": {}, "reliability": {}}
    for name, key, data in (("test", "in_domain", test), ("ood", "ood", ood)):
        if data is None:
            continue
        measured = measure_probabilities(predict(data), data.labels)
        record["sets"][name] = {"metrics": measured["metrics"], "scores": measured["scores"]}
        record["reliability"][key] = measured["reliability"]
    return record


def majority(splits: DataSplits, ood: TextClassificationData | None) -> dict[str, Any]:
    """Always the training set's most frequent label, with its label frequencies as probabilities."""
    freq = np.bincount(splits.train.labels, minlength=splits.train.num_labels) / len(splits.train)
    return _record(lambda data: np.tile(freq, (len(data), 1)), splits.test, ood)


def _logistic(train_x, train_y, val_x, val_y):
    from sklearn.linear_model import LogisticRegression

    best = None
    for c in C_GRID:
        model = LogisticRegression(C=c, max_iter=2000).fit(train_x, train_y)
        score = model.score(val_x, val_y)
        if best is None or score > best[0]:
            best = (score, model)
    return best[1]


def bag_of_words(splits: DataSplits, ood: TextClassificationData | None) -> dict[str, Any]:
    """TF-IDF word 1-2-grams + logistic regression (``C`` chosen on validation)."""
    from sklearn.feature_extraction.text import TfidfVectorizer

    vectorizer = TfidfVectorizer(ngram_range=(1, 2), min_df=2, sublinear_tf=True)
    train_x = vectorizer.fit_transform(splits.train.texts)
    model = _logistic(train_x, splits.train.labels, vectorizer.transform(splits.validation.texts),
                      splits.validation.labels)
    return _record(lambda data: model.predict_proba(vectorizer.transform(data.texts)), splits.test, ood)


def frozen_minilm(splits: DataSplits, ood: TextClassificationData | None, *, max_length: int,
                  log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Mean-pooled frozen MiniLM token states (cached, see :mod:`probattn.hf.states`) + logistic regression."""
    from probattn.hf.states import STORE

    def features(data: TextClassificationData) -> np.ndarray:
        encoded = STORE.encode(data.texts, data.text_pairs, max_length=max_length, log=log)
        return STORE.mean_pooled(encoded).numpy()

    model = _logistic(features(splits.train), splits.train.labels, features(splits.validation),
                      splits.validation.labels)
    return _record(lambda data: model.predict_proba(features(data)), splits.test, ood)


BASELINES = ("majority class", "bag of words + LR", "frozen MiniLM + LR")


def run_baselines(splits: DataSplits, ood: TextClassificationData | None, *, minilm: bool, max_length: int,
                  log: Callable[[str], None] | None = None) -> dict[str, dict[str, Any]]:
    """``{baseline name: record}``; ``frozen MiniLM + LR`` only when ``minilm`` (it needs the MiniLM states)."""
    out = {"majority class": majority(splits, ood), "bag of words + LR": bag_of_words(splits, ood)}
    if minilm:
        out["frozen MiniLM + LR"] = frozen_minilm(splits, ood, max_length=max_length, log=log)
    return out
