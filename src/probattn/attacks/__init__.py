"""Adversarial text attacks on any classifier: TextAttack's PWWS and DeepWordBug recipes, run offline.

``Attack(pwws(), classifier).attack_many(texts, labels)`` -> one :class:`AttackResult` per example
(succeeded / failed / skipped, words changed, model queries); :func:`summarize` counts them. A classifier
is any ``texts -> (N, C) probabilities``; :mod:`probattn.attacks.classifiers` wraps trained probattn runs,
Hugging Face sequence-classification folders and scikit-learn pipelines. ``probattn attack`` is the command.
"""

from probattn.attacks.core import (
    STATUSES,
    Attack,
    AttackResult,
    AttackSummary,
    Classifier,
    MaxEditDistance,
    Recipe,
    RepeatModification,
    StopwordModification,
    summarize,
)
from probattn.attacks.deepwordbug import deepwordbug
from probattn.attacks.pwws import pwws

RECIPES = {"pwws": pwws, "deepwordbug": deepwordbug}

__all__ = ["RECIPES", "STATUSES", "Attack", "AttackResult", "AttackSummary", "Classifier", "MaxEditDistance",
           "Recipe", "RepeatModification", "StopwordModification", "deepwordbug", "pwws", "summarize"]
