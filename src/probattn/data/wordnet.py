"""The WordNet 3.0 noun graph (Debian ``wordnet-base``): 82,115 synsets, 84,427 hypernym edges, 26 classes.

Read from ``/usr/share/wordnet/data.noun`` (WordNet database format, ``man 5 wndb``)::

    offset lex_filenum ss_type w_cnt(hex) [word lex_id]... p_cnt [symbol offset pos source/target]... | gloss

* node = synset, text = its gloss, label = its lexicographer file (``noun.Tops`` .. ``noun.time``, 26 classes);
* edge = hypernym (``@``) or instance hypernym (``@i``) pointer to a noun: ``source = synset, target = hypernym``.
  Pointers to synsets absent from the file (only in a partial file such as the shipped sample) are dropped.

:func:`gloss_features` turns the glosses into dense node features (TF-IDF + truncated SVD, scikit-learn) and
:func:`node_split` draws the fixed random split. ``samples/wordnet_sample.noun`` is a 200-synset excerpt (the
hypernym chains of 40 random synsets, hypernym pointers only, glosses cut to 100 characters) for tests.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

__all__ = ["DEFAULT_PATH", "LEXNAMES", "SAMPLE_PATH", "WordNetGraph", "gloss_features", "load_wordnet_nouns",
           "node_split"]

DEFAULT_PATH = Path("/usr/share/wordnet/data.noun")
SAMPLE_PATH = Path(__file__).parent / "samples" / "wordnet_sample.noun"
LEXNAMES: tuple[str, ...] = tuple(f"noun.{name}" for name in [
    "Tops", "act", "animal", "artifact", "attribute", "body", "cognition", "communication", "event", "feeling",
    "food", "group", "location", "motive", "object", "person", "phenomenon", "plant", "possession", "process",
    "quantity", "relation", "shape", "state", "substance", "time"])
_FIRST_NOUN_FILE = 3  # lex_filenum 03 = noun.Tops


@dataclass(frozen=True)
class WordNetGraph:
    """``offsets[i]``, ``words[i]`` (first lemma), ``glosses[i]`` and ``labels[i]`` (index into ``LEXNAMES``) of
    node ``i``; ``edge_index (2, E)`` int64, row 0 = synset, row 1 = its hypernym."""

    offsets: list[int]
    words: list[str]
    glosses: list[str]
    labels: Tensor
    edge_index: Tensor

    @property
    def num_nodes(self) -> int:
        return len(self.offsets)


def _resolve(path: str | os.PathLike | None) -> Path:
    chosen = Path(path if path is not None else os.environ.get("PROBATTN_WORDNET", DEFAULT_PATH))
    if chosen.is_dir():
        chosen = chosen / "data.noun"
    if not chosen.is_file():
        raise FileNotFoundError(
            f"WordNet noun database not found at {chosen}: install the Debian package wordnet-base "
            "(apt-get install wordnet-base), or pass path= (or set PROBATTN_WORDNET) to a data.noun file or its folder"
        )
    return chosen


def load_wordnet_nouns(path: str | os.PathLike | None = None) -> WordNetGraph:
    """Parse ``data.noun`` (default ``/usr/share/wordnet/data.noun``, or ``$PROBATTN_WORDNET``) into a graph."""
    file = _resolve(path)
    offsets, words, glosses, labels, pointers = [], [], [], [], []
    with file.open(encoding="utf-8", errors="replace") as handle:
        for number, line in enumerate(handle, 1):
            if line.startswith("  "):  # licence header
                continue
            head, _, gloss = line.partition(" | ")
            fields = head.split()
            try:
                count = int(fields[3], 16)
                p_at = 4 + 2 * count
                p_cnt = int(fields[p_at])
                label = int(fields[1]) - _FIRST_NOUN_FILE
                ptrs = [fields[p_at + 1 + 4 * i: p_at + 5 + 4 * i] for i in range(p_cnt)]
            except (IndexError, ValueError) as exc:
                raise ValueError(f"{file}:{number}: not a WordNet data.noun line ({exc})") from None
            if not 0 <= label < len(LEXNAMES) or fields[2] != "n":
                raise ValueError(f"{file}:{number}: not a noun synset of noun.Tops..noun.time")
            offsets.append(int(fields[0]))
            words.append(fields[4])
            glosses.append(gloss.strip())
            labels.append(label)
            pointers.append([int(p[1]) for p in ptrs if p[0] in ("@", "@i") and p[2] == "n"])
    if not offsets:
        raise ValueError(f"{file}: no synsets found")
    position = {offset: i for i, offset in enumerate(offsets)}
    edges = [(i, position[t]) for i, targets in enumerate(pointers) for t in targets if t in position]
    edge_index = torch.tensor(edges, dtype=torch.long).t().reshape(2, -1)
    return WordNetGraph(offsets, words, glosses, torch.tensor(labels, dtype=torch.long), edge_index)


def gloss_features(glosses: list[str], *, dim: int = 128, seed: int = 0) -> Tensor:
    """``(N, dim)`` float32 node features: TF-IDF of the glosses (English stop words dropped, sublinear tf,
    words seen in at least 2 glosses), reduced by truncated SVD, each row scaled to length ``sqrt(dim)`` (mean square 1 per feature).

    Needs scikit-learn (``pip install probattn[data]``). ``dim`` is capped at the vocabulary size - 1.
    """
    try:
        from sklearn.decomposition import TruncatedSVD
        from sklearn.feature_extraction.text import TfidfVectorizer
    except ModuleNotFoundError as exc:  # pragma: no cover - depends on the environment
        raise ModuleNotFoundError("gloss_features needs scikit-learn: pip install 'probattn[data]'",
                                  name="sklearn") from exc
    if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
        raise ValueError(f"dim must be a positive integer, got {dim!r}")
    tfidf = TfidfVectorizer(stop_words="english", sublinear_tf=True, min_df=2 if len(glosses) > 1000 else 1)
    matrix = tfidf.fit_transform(glosses)
    dim = min(dim, matrix.shape[1] - 1)
    reduced = TruncatedSVD(dim, random_state=seed).fit_transform(matrix)
    features = torch.from_numpy(reduced).float()
    return features * (dim ** 0.5 / features.norm(dim=1, keepdim=True).clamp_min(1e-12))


def node_split(num_nodes: int, *, fractions: tuple[float, float, float] = (0.6, 0.2, 0.2),
               seed: int = 0) -> dict[str, Tensor]:
    """A fixed random split of the nodes: ``{"train", "val", "test"}`` sorted index tensors (disjoint, covering)."""
    if len(fractions) != 3 or any(f < 0 for f in fractions) or abs(sum(fractions) - 1.0) > 1e-9:
        raise ValueError(f"fractions must be three non-negative numbers summing to 1, got {fractions!r}")
    order = torch.randperm(num_nodes, generator=torch.Generator().manual_seed(seed))
    n_train, n_val = round(fractions[0] * num_nodes), round(fractions[1] * num_nodes)
    parts = order[:n_train], order[n_train:n_train + n_val], order[n_train + n_val:]
    return {name: part.sort().values for name, part in zip(("train", "val", "test"), parts)}
