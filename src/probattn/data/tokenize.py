"""A word-level tokenizer whose vocabulary is built from the training texts (for models trained from scratch).

Text is lower-cased and cut into words (``[a-z0-9]+`` with an optional ``'s``-style suffix) and single
punctuation marks. Ids 0..3 are ``[PAD] [UNK] [CLS] [SEP]``; an encoded example is
``[CLS] a [SEP]`` or, for a pair, ``[CLS] a [SEP] b [SEP]``, cut to ``max_length`` tokens.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["Encoded", "WordTokenizer"]

SPECIALS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]")
PAD, UNK, CLS, SEP = range(4)
_WORD = re.compile(r"[a-z0-9]+(?:'[a-z]+)?|[^\sa-z0-9]")


@dataclass(frozen=True)
class Encoded:
    """``input_ids`` long ``(N, L)`` padded with 0, ``attention_mask`` bool ``(N, L)`` (True = real token), and
    ``truncated`` = how many of the N examples were longer than ``max_length`` and were cut."""

    input_ids: Tensor
    attention_mask: Tensor
    truncated: int


class WordTokenizer:
    """Word-level vocabulary: ``WordTokenizer.build(texts)`` then ``tokenizer(texts, pairs, max_length=...)``."""

    def __init__(self, vocabulary: Sequence[str]):
        if tuple(vocabulary[:4]) != SPECIALS:
            raise ValueError(f"vocabulary must start with the special tokens {SPECIALS}")
        self.vocabulary = list(vocabulary)
        self._index = {word: i for i, word in enumerate(self.vocabulary)}

    @staticmethod
    def words(text: str) -> list[str]:
        return _WORD.findall(text.lower())

    @classmethod
    def build(cls, texts: Sequence[str], *, max_size: int = 20000, min_count: int = 1) -> WordTokenizer:
        """The ``max_size`` most frequent words (ties broken alphabetically) seen at least ``min_count`` times."""
        counts = Counter(word for text in texts for word in cls.words(text))
        ranked = sorted((w for w, c in counts.items() if c >= min_count), key=lambda w: (-counts[w], w))
        return cls(list(SPECIALS) + ranked[: max(0, max_size - len(SPECIALS))])

    def __len__(self) -> int:
        return len(self.vocabulary)

    def ids(self, text: str) -> list[int]:
        return [self._index.get(word, UNK) for word in self.words(text)]

    def __call__(self, texts: Sequence[str], pairs: Sequence[str] | None = None, *, max_length: int) -> Encoded:
        if max_length < 3:
            raise ValueError(f"max_length must be at least 3 (room for [CLS] x [SEP]), got {max_length}")
        rows, truncated = [], 0
        for i, text in enumerate(texts):
            row = [CLS, *self.ids(text), SEP]
            if pairs is not None:
                row += [*self.ids(pairs[i]), SEP]
            if len(row) > max_length:
                truncated += 1
                row = row[:max_length]
            rows.append(row)
        length = max((len(r) for r in rows), default=1)
        input_ids = torch.zeros(len(rows), length, dtype=torch.long)
        for i, row in enumerate(rows):
            input_ids[i, : len(row)] = torch.tensor(row)
        return Encoded(input_ids, input_ids != PAD, truncated)

    def state_dict(self) -> dict:
        return {"kind": "word", "vocabulary": self.vocabulary}

    @classmethod
    def from_state_dict(cls, state: dict) -> WordTokenizer:
        return cls(state["vocabulary"])
