"""WordNet synonyms, read offline from the Debian package ``wordnet-base`` (``/usr/share/wordnet``).

:func:`synonyms` gives what TextAttack's ``WordSwapWordNet`` gives through ``nltk.corpus.wordnet`` (which
needs ``nltk.download("wordnet")``): for every part of speech (noun, verb, adjective with satellites, adverb),
the base forms of the word found by WordNet's morphology (``morphy``: the exception lists ``*.exc``, then the
detachment rules, as nltk applies them), every synset those forms belong to, and the lemma names of those
synsets — without multi-word lemmas (``_``), without the word itself, adjective markers (``(a)``, ``(p)``,
``(ip)``) stripped. The result is sorted (TextAttack's comes from a set, in arbitrary order).

Files (``man 5 wndb``): ``index.<pos>`` (lemma -> synset offsets), ``data.<pos>`` (a synset at byte ``offset``:
its words), ``<pos>.exc`` (irregular forms). Only the index and exception files are read up front (about 2 s);
synsets are read by seeking to their offset, as nltk does. Set ``$PROBATTN_WORDNET`` (or pass ``path=``) to use
another copy of the WordNet 3.0 database folder.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

__all__ = ["DEFAULT_DIRECTORY", "WordNetSynonyms", "synonyms"]

DEFAULT_DIRECTORY = Path("/usr/share/wordnet")
_FILES = {"n": "noun", "v": "verb", "a": "adj", "r": "adv"}
# nltk.corpus.reader.wordnet.WordNetCorpusReader.MORPHOLOGICAL_SUBSTITUTIONS
_SUBSTITUTIONS = {
    "n": [("s", ""), ("ses", "s"), ("ves", "f"), ("xes", "x"), ("zes", "z"), ("ches", "ch"), ("shes", "sh"),
          ("men", "man"), ("ies", "y")],
    "v": [("s", ""), ("ies", "y"), ("es", "e"), ("es", ""), ("ed", "e"), ("ed", ""), ("ing", "e"), ("ing", "")],
    "a": [("er", ""), ("est", ""), ("er", "e"), ("est", "e")],
    "r": [],
}


def _directory(path: str | os.PathLike | None) -> Path:
    chosen = Path(path if path is not None else os.environ.get("PROBATTN_WORDNET", DEFAULT_DIRECTORY))
    if chosen.is_file():
        chosen = chosen.parent
    missing = [f"{kind}.{name}" for name in _FILES.values() for kind in ("index", "data")
               if not (chosen / f"{kind}.{name}").is_file()]
    if missing:
        raise FileNotFoundError(
            f"WordNet database not found in {chosen} (missing {', '.join(missing)}): install the Debian package "
            "wordnet-base (apt-get install wordnet-base), or pass path= (or set PROBATTN_WORDNET) to the folder "
            "holding index.noun, data.noun, ... of WordNet 3.0"
        )
    return chosen


class WordNetSynonyms:
    """Synonym lookup over one WordNet database folder (see the module doc)."""

    def __init__(self, path: str | os.PathLike | None = None) -> None:
        self.directory = _directory(path)
        self.index: dict[str, dict[str, list[int]]] = {pos: {} for pos in _FILES}
        self.exceptions: dict[str, dict[str, list[str]]] = {pos: {} for pos in _FILES}
        for pos, name in _FILES.items():
            with (self.directory / f"index.{name}").open(encoding="utf-8", errors="replace") as handle:
                for number, line in enumerate(handle, 1):
                    if line.startswith(" "):  # licence header
                        continue
                    fields = line.split()
                    try:
                        p_cnt = int(fields[3])
                        synset_cnt = int(fields[2])
                        offsets = [int(x) for x in fields[6 + p_cnt:6 + p_cnt + synset_cnt]]
                    except (IndexError, ValueError):
                        raise ValueError(f"{self.directory / f'index.{name}'}:{number}: not a WordNet index "
                                         "line") from None
                    self.index[pos][fields[0]] = offsets
            exc = self.directory / f"{name}.exc"
            if exc.is_file():
                with exc.open(encoding="utf-8", errors="replace") as handle:
                    for line in handle:
                        fields = line.split()
                        if len(fields) >= 2:
                            self.exceptions[pos][fields[0]] = fields[1:]
        self._synset_words = functools.lru_cache(maxsize=200_000)(self._read_synset)
        self.synonyms = functools.lru_cache(maxsize=100_000)(self._synonyms)  # type: ignore[method-assign]

    def morphy(self, form: str, pos: str) -> list[str]:
        """The base forms of ``form`` (lower case) found in WordNet for ``pos`` (nltk's ``_morphy``)."""
        index = self.index[pos]
        substitutions = _SUBSTITUTIONS[pos]

        def apply_rules(forms: list[str]) -> list[str]:
            return [f[: -len(old)] + new for f in forms for old, new in substitutions if f.endswith(old)]

        def filter_forms(forms: list[str]) -> list[str]:
            seen: list[str] = []
            for f in forms:
                if f in index and f not in seen:
                    seen.append(f)
            return seen

        if form in self.exceptions[pos]:
            return filter_forms([form, *self.exceptions[pos][form]])
        forms = apply_rules([form])
        results = filter_forms([form, *forms])
        if results:
            return results
        while forms:
            forms = apply_rules(forms)
            results = filter_forms(forms)
            if results:
                return results
        return []

    def _read_synset(self, pos: str, offset: int) -> tuple[str, ...]:
        with (self.directory / f"data.{_FILES[pos]}").open("rb") as handle:
            handle.seek(offset)
            line = handle.readline().decode("utf-8", errors="replace")
        fields = line.split()
        if not fields or int(fields[0]) != offset:
            raise ValueError(f"{self.directory / f'data.{_FILES[pos]}'}: no synset at byte {offset} (the index and "
                             "data files are from different WordNet versions)")
        count = int(fields[3], 16)
        words = fields[4:4 + 2 * count:2]
        return tuple(w.split("(", 1)[0] if w.endswith(")") else w for w in words)

    def _synonyms(self, word: str) -> tuple[str, ...]:
        lemma = word.lower()
        found: set[str] = set()
        for pos in _FILES:
            for form in self.morphy(lemma, pos):
                for offset in self.index[pos][form]:
                    found.update(self._synset_words(pos, offset))
        return tuple(sorted(w for w in found if w != word and "_" not in w))


@functools.cache
def _default() -> WordNetSynonyms:
    return WordNetSynonyms()


def synonyms(word: str) -> tuple[str, ...]:
    """The WordNet synonyms of ``word`` (sorted; see the module doc), from the default database."""
    return _default().synonyms(word)
