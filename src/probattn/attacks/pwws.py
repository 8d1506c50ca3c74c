"""PWWS (Ren et al. 2019, "Generating Natural Language Adversarial Examples through Probability Weighted Word
Saliency"), as TextAttack's ``PWWSRen2019`` recipe builds it, without TextAttack (see docs/attacks.md: its
import runs ``nltk.download`` and it pulls in flair, bert-score, language_tool_python, ...).

* transformation: WordNet synonyms of the word (:mod:`probattn.attacks.wordnet`, read from ``wordnet-base``);
* constraints: a word already changed is not changed again; stopwords are never changed;
* search: greedy over the words in order of ``softmax(S)_i * ΔP*_i``, where ``S_i`` is the word's saliency
  (the drop of ``p(true label)`` when the word is replaced by ``[UNK]``; any constant shift of ``S`` leaves the
  softmax unchanged) and ``ΔP*_i`` is the largest drop of ``p(true label)`` any one synonym swap of that word
  achieves on the original text (the paper's definition; TextAttack multiplies by ``1 - p(true label)`` after
  the swap instead, which differs from it by the constant ``1 - p(true label | original)``). At each word the
  best swap on the current text is kept when it lowers ``p(true label)``; the attack stops at the first
  misclassification. The paper's named-entity swaps are left out, as in TextAttack.
"""

from __future__ import annotations

import random
from collections.abc import Callable

from probattn.attacks.core import Recipe

__all__ = ["pwws"]


def pwws(synonyms: Callable[[str], tuple[str, ...]] | None = None) -> Recipe:
    """The PWWS recipe; ``synonyms(word)`` defaults to WordNet (:func:`probattn.attacks.wordnet.synonyms`)."""
    if synonyms is None:
        from probattn.attacks.wordnet import synonyms as wordnet_synonyms

        synonyms = wordnet_synonyms

    def transformation(word: str, rng: random.Random) -> tuple[str, ...]:
        return synonyms(word)

    return Recipe("pwws", transformation, ranking="weighted-saliency")
