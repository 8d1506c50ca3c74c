"""Verse-aligned Bible, Spanish Reina-Valera 1909 -> English World English Bible: a real parallel corpus.

Source: the Debian SWORD packages (public domain texts; nothing is downloaded)::

    apt-get install -y libsword-utils sword-text-web sword-text-sparv

``mod2imp spaRV1909eb`` and ``mod2imp engWEB2015eb`` print every entry as ``$$$Book C:V`` followed by OSIS
markup. Cleaning (:func:`clean_osis`): footnotes and titles are dropped with their text, every other tag is
removed (its text kept), ``¶`` is removed and white space collapsed. Alignment (:func:`align_verses`): the
verses whose reference exists in both modules with non-empty text (31,077), minus the pairs whose character
lengths differ by more than 2x either way (75: versification differences such as Psalm superscriptions
counted as verse 1, and the WEB glossary appended to Revelation 22:21), leaving 31,002 pairs in 66 books.

The split is **by book** (:data:`VALIDATION_BOOKS`, :data:`TEST_BOOKS`): no verse of a validation or test book
is ever seen in training. Validation: Ruth, Philippians (189 pairs); test: Esther, Jonah, James, I Peter
(426 pairs): narrative, prophetic narrative and two epistles; every other book trains (30,387 pairs).

The export is cached as JSON (written atomically) in ``$PROBATTN_CACHE/bible`` (default
``~/.cache/probattn/bible``). :func:`load_bible_sample` reads the 200 short pairs shipped with probattn
(``probattn/data/samples/bible_es_en_sample.tsv``) for tests and examples.
"""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

__all__ = [
    "INSTALL",
    "SOURCE_MODULE",
    "TARGET_MODULE",
    "TEST_BOOKS",
    "VALIDATION_BOOKS",
    "ParallelSplits",
    "ParallelText",
    "align_verses",
    "bible_splits",
    "cache_dir",
    "clean_osis",
    "export_module",
    "load_bible",
    "load_bible_sample",
    "parse_imp",
    "split_by_book",
    "sword_available",
]

SOURCE_MODULE, TARGET_MODULE = "spaRV1909eb", "engWEB2015eb"
INSTALL = "apt-get install -y libsword-utils sword-text-web sword-text-sparv"
VALIDATION_BOOKS: tuple[str, ...] = ("Ruth", "Philippians")
TEST_BOOKS: tuple[str, ...] = ("Esther", "Jonah", "James", "I Peter")
MAX_LENGTH_RATIO = 2.0
CACHE_FORMAT = 1
SAMPLE = "bible_es_en_sample.tsv"

_REF = re.compile(r"^(?P<book>.+) (?P<chapter>\d+):(?P<verse>\d+)$")
_DROPPED = re.compile(r"<note\b.*?</note>|<title\b.*?</title>", flags=re.S)
_TAG = re.compile(r"<[^>]+>")
_SPACE = re.compile(r"\s+")


@dataclass(frozen=True)
class ParallelText:
    """``sources[i]`` (Spanish) translates to ``targets[i]`` (English); ``refs[i]`` is ``"Book C:V"``."""

    sources: list[str]
    targets: list[str]
    refs: list[str]
    name: str = ""

    def __post_init__(self) -> None:
        if not len(self.sources) == len(self.targets) == len(self.refs):
            raise ValueError(f"sources, targets and refs must have one entry per pair, got {len(self.sources)}, "
                             f"{len(self.targets)} and {len(self.refs)}")

    def __len__(self) -> int:
        return len(self.sources)

    @property
    def books(self) -> list[str]:
        """The book of every pair (``refs`` without chapter and verse)."""
        return [book_of(r) for r in self.refs]

    def subset(self, indices: Sequence[int], name: str | None = None) -> ParallelText:
        return ParallelText([self.sources[i] for i in indices], [self.targets[i] for i in indices],
                            [self.refs[i] for i in indices], self.name if name is None else name)

    def head(self, n: int | None) -> ParallelText:
        """The first ``n`` pairs (all of them for None)."""
        return self if n is None or n >= len(self) else self.subset(range(n), f"{self.name}[:{n}]")


@dataclass(frozen=True)
class ParallelSplits:
    train: ParallelText
    validation: ParallelText
    test: ParallelText


def book_of(ref: str) -> str:
    match = _REF.match(ref)
    if match is None:
        raise ValueError(f"ref {ref!r} is not of the form 'Book C:V'")
    return match.group("book")


def clean_osis(markup: str) -> str:
    """Plain text of one verse's OSIS markup: notes and titles dropped, tags removed, ``¶`` removed, spaces collapsed."""
    text = _TAG.sub("", _DROPPED.sub(" ", markup)).replace("¶", "")
    return _SPACE.sub(" ", text).strip()


def parse_imp(raw: str) -> dict[str, str]:
    """``{"Book C:V": cleaned text}`` from ``mod2imp`` output; headings and ``C:0`` entries are skipped."""
    entries: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in raw.splitlines():
        if line.startswith("$$$"):
            ref = line[3:].strip()
            match = _REF.match(ref)
            current = entries.setdefault(ref, []) if match and match.group("verse") != "0" else None
        elif current is not None:
            current.append(line)
    return {ref: clean_osis(" ".join(lines)) for ref, lines in entries.items()}


def sword_available() -> bool:
    """Whether ``mod2imp`` and both SWORD modules are installed."""
    if shutil.which("mod2imp") is None:
        return False
    root = Path(os.environ.get("SWORD_PATH", "/usr/share/sword")) / "modules" / "texts" / "ztext"
    return all((root / m.lower()).is_dir() or (root / m).is_dir() for m in (SOURCE_MODULE, TARGET_MODULE))


def export_module(module: str) -> dict[str, str]:
    """The cleaned verses of one SWORD module (runs ``mod2imp``); a clear error when SWORD is missing."""
    if shutil.which("mod2imp") is None:
        raise FileNotFoundError(f"mod2imp is not installed; the Bible corpus comes from Debian packages: {INSTALL}")
    result = subprocess.run(["mod2imp", module], capture_output=True, text=True, check=False)
    verses = parse_imp(result.stdout) if result.returncode == 0 else {}
    if not verses:
        raise FileNotFoundError(f"mod2imp {module} printed no verses (exit status {result.returncode}: "
                                f"{result.stderr.strip()[:200]}); install the module: {INSTALL}")
    return verses


def align_verses(source: dict[str, str], target: dict[str, str], *,
                 max_length_ratio: float = MAX_LENGTH_RATIO) -> ParallelText:
    """Pairs of the references present in both (in ``source`` order) with non-empty text on both sides and
    character lengths within ``max_length_ratio`` of each other (``(len+1)`` ratio, both directions)."""
    sources, targets, refs = [], [], []
    for ref, src in source.items():
        tgt = target.get(ref, "")
        if src and tgt and 1 / max_length_ratio <= (len(src) + 1) / (len(tgt) + 1) <= max_length_ratio:
            sources.append(src)
            targets.append(tgt)
            refs.append(ref)
    return ParallelText(sources, targets, refs, name="bible-es-en")


def cache_dir() -> Path:
    """``$PROBATTN_CACHE`` or ``$XDG_CACHE_HOME/probattn`` (default ``~/.cache/probattn``)."""
    root = os.environ.get("PROBATTN_CACHE") or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / \
        "probattn"
    return Path(root)


def _write_cache(path: Path, corpus: ParallelText) -> None:
    from probattn.io import write_json

    write_json(path, {"format": CACHE_FORMAT, "source_module": SOURCE_MODULE, "target_module": TARGET_MODULE,
                      "max_length_ratio": MAX_LENGTH_RATIO,
                      "pairs": [list(p) for p in zip(corpus.refs, corpus.sources, corpus.targets)]})


def _read_cache(path: Path) -> ParallelText | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("format") != CACHE_FORMAT or \
            data.get("max_length_ratio") != MAX_LENGTH_RATIO:
        return None
    refs, sources, targets = (list(column) for column in zip(*data["pairs"]))
    return ParallelText(sources, targets, refs, name="bible-es-en")


def load_bible(*, cache: str | Path | None = None, refresh: bool = False) -> ParallelText:
    """All aligned pairs (module doc), from the JSON cache or exported with ``mod2imp`` and cached.

    Args:
        cache: cache folder (default :func:`cache_dir` ``/ "bible"``).
        refresh: export again even if a cache exists.
    Raises:
        FileNotFoundError: the SWORD packages are not installed (the message gives the apt-get line).
    """
    path = Path(cache) if cache is not None else cache_dir() / "bible"
    path = path / f"{SOURCE_MODULE}-{TARGET_MODULE}.json"
    if not refresh and path.is_file():
        cached = _read_cache(path)
        if cached is not None:
            return cached
    corpus = align_verses(export_module(SOURCE_MODULE), export_module(TARGET_MODULE))
    _write_cache(path, corpus)
    return corpus


def split_by_book(corpus: ParallelText, *, validation_books: Sequence[str] = VALIDATION_BOOKS,
                  test_books: Sequence[str] = TEST_BOOKS) -> ParallelSplits:
    """Validation and test = the pairs of the named books; train = every other book (no book in two splits)."""
    validation_books, test_books = tuple(validation_books), tuple(test_books)
    overlap = set(validation_books) & set(test_books)
    if overlap:
        raise ValueError(f"books {sorted(overlap)} are in both validation_books and test_books")
    books = corpus.books
    known = set(books)
    missing = [b for b in validation_books + test_books if b not in known]
    if missing:
        raise ValueError(f"books {missing} are not in the corpus {corpus.name!r}; its books are {sorted(known)}")
    held_out = set(validation_books) | set(test_books)
    pick = lambda names: [i for i, b in enumerate(books) if b in names]  # noqa: E731
    return ParallelSplits(
        train=corpus.subset([i for i, b in enumerate(books) if b not in held_out], f"{corpus.name}:train"),
        validation=corpus.subset(pick(set(validation_books)), f"{corpus.name}:validation"),
        test=corpus.subset(pick(set(test_books)), f"{corpus.name}:test"),
    )


def bible_splits(*, cache: str | Path | None = None) -> ParallelSplits:
    """:func:`load_bible` split by book (:data:`VALIDATION_BOOKS`, :data:`TEST_BOOKS`)."""
    return split_by_book(load_bible(cache=cache))


def load_bible_sample() -> ParallelText:
    """The 200 short aligned pairs shipped with probattn (cut from :func:`load_bible`'s output): 160 from
    training books, 20 from the validation books and 20 from the test books, so they split by book too."""
    with resources.files("probattn.data").joinpath("samples", SAMPLE).open(encoding="utf-8", newline="") as handle:
        rows = list(csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE))
    if not rows or rows[0] != ["ref", "source", "target"]:
        raise ValueError(f"{SAMPLE}: expected a header 'ref<TAB>source<TAB>target'")
    refs, sources, targets = (list(column) for column in zip(*rows[1:]))
    return ParallelText(sources, targets, refs, name="bible-es-en-sample")
