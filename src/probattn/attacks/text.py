"""Words of a text as TextAttack sees them, and the edits an attack makes to them.

A word is a run of letters, digits, ``_``, ``'``, ``-``, ``*`` or ``@`` with the punctuation ``'-_*@`` stripped
from its ends (TextAttack's ``words_from_text``): ``"don't"`` and ``"well-made"`` are one word each, the quotes
around ``'great'`` are not part of it. :class:`Text` keeps each word's character span, so replacing word ``i``
rewrites exactly that span and leaves all other characters (spaces, punctuation) as they were.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

__all__ = ["STOPWORDS", "Text", "is_one_word", "levenshtein"]

_WORD = re.compile(r"[\w'\-*@]+")
_EDGE = "'-_*@"

# NLTK's English stopword list (179 words, nltk_data corpora/stopwords/english), which TextAttack's
# StopwordModification uses; written out here so that no corpus has to be downloaded.
_STOPWORDS_TEXT = """
i me my myself we our ours ourselves you you're you've you'll you'd your yours yourself yourselves he him his
himself she she's her hers herself it it's its itself they them their theirs themselves what which who whom this
that that'll these those am is are was were be been being have has had having do does did doing a an the and but
if or because as until while of at by for with about against between into through during before after above below
to from up down in out on off over under again further then once here there when where why how all any both each
few more most other some such no nor not only own same so than too very s t can will just don don't should
should've now d ll m o re ve y ain aren aren't couldn couldn't didn didn't doesn doesn't hadn hadn't hasn hasn't
haven haven't isn isn't ma mightn mightn't mustn mustn't needn needn't shan shan't shouldn shouldn't wasn wasn't
weren weren't won won't wouldn wouldn't
"""
STOPWORDS: frozenset[str] = frozenset(_STOPWORDS_TEXT.split())


def _spans(text: str) -> tuple[tuple[int, int], ...]:
    spans = []
    for match in _WORD.finditer(text):
        start, end = match.span()
        while start < end and text[start] in _EDGE:
            start += 1
        while end > start and text[end - 1] in _EDGE:
            end -= 1
        if start < end:
            spans.append((start, end))
    return tuple(spans)


@dataclass(frozen=True)
class Text:
    """A text, its words and the indices of the words an attack has changed (``changed``)."""

    text: str
    changed: frozenset[int] = frozenset()
    spans: tuple[tuple[int, int], ...] = field(default=(), compare=False, repr=False)

    def __post_init__(self) -> None:
        if not isinstance(self.text, str):
            raise TypeError(f"text must be a str, got {type(self.text).__name__}")
        if not self.spans:
            object.__setattr__(self, "spans", _spans(self.text))

    @property
    def words(self) -> list[str]:
        return [self.text[a:b] for a, b in self.spans]

    def __len__(self) -> int:
        return len(self.spans)

    def replace(self, index: int, word: str) -> Text:
        """This text with word ``index`` replaced by ``word`` (one word: no spaces); marks ``index`` changed."""
        if not 0 <= index < len(self.spans):
            raise IndexError(f"word index {index} out of range for a text of {len(self.spans)} words")
        if not is_one_word(word):
            raise ValueError(f"replacement {word!r} is not exactly one word (letters, digits, inner '-_*@)")
        a, b = self.spans[index]
        new = self.text[:a] + word + self.text[b:]
        shift = len(word) - (b - a)
        spans = (*self.spans[:index], (a, a + len(word)),
                 *((s + shift, e + shift) for s, e in self.spans[index + 1:]))
        return Text(new, self.changed | {index}, spans)

    def mask(self, index: int, token: str) -> str:
        """The text with word ``index`` replaced by ``token`` (for word-importance ranking; not an edit)."""
        a, b = self.spans[index]
        return self.text[:a] + token + self.text[b:]

    def words_range(self, start: int, stop: int) -> str:
        """The text from word ``start`` to word ``stop - 1`` inclusive (``""`` when empty)."""
        if start >= stop or start >= len(self.spans):
            return ""
        return self.text[self.spans[start][0]:self.spans[min(stop, len(self.spans)) - 1][1]]


def is_one_word(word: str) -> bool:
    """Whether ``word`` is exactly one word of :class:`Text` (TextAttack's ``is_one_word``, stricter on the ends)."""
    return bool(word) and _spans(word) == ((0, len(word)),)


def levenshtein(a: str, b: str) -> int:
    """Character edit distance (insertions, deletions, substitutions each cost 1)."""
    if len(a) < len(b):
        a, b = b, a
    previous = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        current = [i]
        for j, cb in enumerate(b, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (ca != cb)))
        previous = current
    return previous[-1]
