"""Seeded splits: disjoint, complete, reproducible; group splits never share a group."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from probattn.data import TextClassificationData, split_by_group, split_random


def make(n: int, groups: int | None = None) -> TextClassificationData:
    return TextClassificationData(texts=[f"t{i}" for i in range(n)], labels=[i % 2 for i in range(n)],
                                  label_names=("a", "b"),
                                  groups=None if groups is None else [f"g{i % groups}" for i in range(n)])


@settings(max_examples=30, deadline=None)
@given(n=st.integers(10, 300), seed=st.integers(0, 10**6))
def test_random_split_is_a_partition(n, seed):
    splits = split_random(make(n), seed=seed)
    parts = [splits.train.texts, splits.validation.texts, splits.test.texts]
    assert sorted(t for p in parts for t in p) == sorted(make(n).texts)
    assert len(splits.train) == round(0.7 * n)
    assert split_random(make(n), seed=seed).test.texts == splits.test.texts


@settings(max_examples=30, deadline=None)
@given(n=st.integers(30, 300), groups=st.integers(3, 30), seed=st.integers(0, 10**6))
def test_group_split_keeps_groups_together(n, groups, seed):
    splits = split_by_group(make(n, groups), seed=seed)
    seen = [set(s.groups) for s in (splits.train, splits.validation, splits.test)]
    assert not (seen[0] & seen[1] or seen[0] & seen[2] or seen[1] & seen[2])
    assert sum(map(len, (splits.train, splits.validation, splits.test))) == n


def test_split_errors():
    with pytest.raises(ValueError, match="at least 10"):
        split_random(make(5), seed=0)
    with pytest.raises(ValueError, match="fractions must be three positive numbers"):
        split_random(make(20), seed=0, fractions=(0.5, 0.5, 0.5))
    with pytest.raises(ValueError, match=r"needs data\.groups"):
        split_by_group(make(20), seed=0)


def test_data_checks_labels():
    with pytest.raises(ValueError, match="outside"):
        TextClassificationData(texts=["a"], labels=[2], label_names=("x", "y"))
    with pytest.raises(ValueError, match="one label per text"):
        TextClassificationData(texts=["a", "b"], labels=[0], label_names=("x", "y"))
