"""DeepWordBug (Gao et al. 2018, "Black-box Generation of Adversarial Text Sequences to Evade Deep Learning
Classifiers"), as TextAttack's ``DeepWordBugGao2018`` recipe builds it (with all four transformations), without
TextAttack (see docs/attacks.md).

* transformation: four character edits of a word, one random position each (TextAttack's ``random_one``):
  swap two neighbouring characters, substitute a character, delete a character, insert a character (random
  ASCII letters); words of one character are left alone;
* constraints: a word already changed is not changed again; stopwords are never changed; the whole text
  stays within 30 character edits (Levenshtein) of the original (the paper's ε = 30);
* search: greedy over the words in order of a DeepWordBug score: ``"combined"`` (default; the paper's
  combined score, temporal head + λ · temporal tail, λ = 1) or ``"unk"`` (the replace-one score, which is what
  TextAttack's recipe uses through ``GreedyWordSwapWIR("unk")``). At each word the best edit on the current
  text is kept when it lowers ``p(true label)``; the attack stops at the first misclassification.
"""

from __future__ import annotations

import random
import string
from typing import Literal

from probattn.attacks.core import MaxEditDistance, Recipe

__all__ = ["character_edits", "deepwordbug"]

LETTERS = string.ascii_letters


def character_edits(word: str, rng: random.Random) -> list[str]:
    """Swap, substitute, delete, insert: one random position each (``[]`` for words of length <= 1)."""
    if len(word) <= 1:
        return []
    out = []
    i = rng.randrange(0, len(word) - 1)
    out.append(word[:i] + word[i + 1] + word[i] + word[i + 2:])  # neighbouring swap
    i = rng.randrange(0, len(word))
    out.append(word[:i] + rng.choice(LETTERS) + word[i + 1:])  # substitution
    i = rng.randrange(0, len(word))
    out.append(word[:i] + word[i + 1:])  # deletion
    i = rng.randrange(0, len(word))
    out.append(word[:i] + rng.choice(LETTERS) + word[i:])  # insertion
    return out


def deepwordbug(ranking: Literal["combined", "unk"] = "combined", max_edit_distance: int = 30) -> Recipe:
    """The DeepWordBug recipe (module doc)."""
    if ranking not in ("combined", "unk"):
        raise ValueError(f"ranking must be 'combined' or 'unk' (replace-one), got {ranking!r}")
    if isinstance(max_edit_distance, bool) or not isinstance(max_edit_distance, int) or max_edit_distance < 1:
        raise ValueError(f"max_edit_distance must be a positive int, got {max_edit_distance!r}")
    return Recipe("deepwordbug", character_edits, post=(MaxEditDistance(max_edit_distance),), ranking=ranking)
