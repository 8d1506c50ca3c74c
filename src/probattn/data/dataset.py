"""The in-memory labelled text set every loader returns, and the seeded splits.

A :class:`TextClassificationData` holds ``N`` texts (optionally ``N`` second texts for sentence pairs), ``N``
integer labels in ``[0, C)`` and the ``C`` label names (label id ``i`` means ``label_names[i]``).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["DataSplits", "TextClassificationData", "split_by_group", "split_random"]

DEFAULT_FRACTIONS = (0.7, 0.1, 0.2)


@dataclass(frozen=True)
class TextClassificationData:
    """Labelled texts: ``texts[i]`` (and ``text_pairs[i]``) has label id ``labels[i]`` = ``label_names[...]``.

    ``groups[i]`` (optional) is what must not be split across train/validation/test (e.g. the movie).
    """

    texts: list[str]
    labels: list[int]
    label_names: tuple[str, ...]
    text_pairs: list[str] | None = None
    groups: list[str] | None = None
    name: str = ""

    def __post_init__(self) -> None:
        n = len(self.texts)
        if len(self.labels) != n:
            raise ValueError(f"labels has {len(self.labels)} entries but texts has {n}; give one label per text")
        for field_name in ("text_pairs", "groups"):
            values = getattr(self, field_name)
            if values is not None and len(values) != n:
                raise ValueError(f"{field_name} has {len(values)} entries but texts has {n}")
        bad = [y for y in self.labels if not 0 <= y < len(self.label_names)]
        if bad:
            raise ValueError(f"label id {bad[0]} is outside [0, {len(self.label_names)}) = the label_names range")

    def __len__(self) -> int:
        return len(self.texts)

    @property
    def num_labels(self) -> int:
        return len(self.label_names)

    def subset(self, indices: Sequence[int], name: str | None = None) -> TextClassificationData:
        """The examples at ``indices`` (in that order), same label names."""
        pick = lambda values: None if values is None else [values[i] for i in indices]  # noqa: E731
        return TextClassificationData(
            texts=pick(self.texts), labels=pick(self.labels), label_names=self.label_names,
            text_pairs=pick(self.text_pairs), groups=pick(self.groups), name=self.name if name is None else name,
        )

    def label_counts(self) -> dict[str, int]:
        counts = Counter(self.labels)
        return {name: counts.get(i, 0) for i, name in enumerate(self.label_names)}


@dataclass(frozen=True)
class DataSplits:
    """train / validation / test sets that share ``label_names``."""

    train: TextClassificationData
    validation: TextClassificationData
    test: TextClassificationData

    @property
    def label_names(self) -> tuple[str, ...]:
        return self.train.label_names


def _cut(n: int, fractions: Sequence[float]) -> tuple[int, int]:
    if len(fractions) != 3 or any(f <= 0 for f in fractions) or abs(sum(fractions) - 1) > 1e-6:
        raise ValueError(f"fractions must be three positive numbers summing to 1 (train, validation, test); "
                         f"got {tuple(fractions)}")
    first = round(n * fractions[0])
    second = first + round(n * fractions[1])
    return first, second


def split_random(data: TextClassificationData, *, seed: int,
                 fractions: Sequence[float] = DEFAULT_FRACTIONS) -> DataSplits:
    """Shuffle the examples with ``numpy.random.default_rng(seed)`` and cut them 70/10/20 (``fractions``)."""
    if len(data) < 10:
        raise ValueError(f"{data.name or 'the data'} has only {len(data)} examples; at least 10 are needed to "
                         f"split it into train/validation/test")
    order = np.random.default_rng(seed).permutation(len(data)).tolist()
    a, b = _cut(len(data), fractions)
    return DataSplits(data.subset(order[:a], f"{data.name}:train"),
                      data.subset(order[a:b], f"{data.name}:validation"),
                      data.subset(order[b:], f"{data.name}:test"))


def split_by_group(data: TextClassificationData, *, seed: int,
                   fractions: Sequence[float] = DEFAULT_FRACTIONS) -> DataSplits:
    """Split so that every group (``data.groups``) lands in exactly one split.

    The sorted distinct groups are shuffled with ``numpy.random.default_rng(seed)`` and cut by ``fractions``
    of the groups, so the example fractions are close to, not exactly, ``fractions``.
    """
    if data.groups is None:
        raise ValueError("split_by_group needs data.groups (e.g. the movie of each review)")
    names = sorted(set(data.groups))
    if len(names) < 3:
        raise ValueError(f"need at least 3 groups to split by group, got {len(names)}")
    order = np.random.default_rng(seed).permutation(len(names))
    a, b = _cut(len(names), fractions)
    which = {names[g]: (0 if rank < a else 1 if rank < b else 2) for rank, g in enumerate(order.tolist())}
    parts: list[list[int]] = [[], [], []]
    for i, group in enumerate(data.groups):
        parts[which[group]].append(i)
    return DataSplits(*(data.subset(idx, f"{data.name}:{split}")
                        for idx, split in zip(parts, ("train", "validation", "test"))))
