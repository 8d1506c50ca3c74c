"""A subword (BPE) vocabulary trained offline with the ``tokenizers`` library, saved as tokenizer JSON.

:func:`train_bpe` learns one joint vocabulary from the training texts of both languages (shared embeddings,
as in the repulsive paper's ``--share-all-embeddings`` runs). Text is NFC-normalized and split at spaces
with a SentencePiece-style ``▁`` word marker, so :meth:`SubwordTokenizer.decode` restores the spacing.
Ids 0..3 are ``<pad> <unk> <s> </s>``. The file format is the ``tokenizers`` JSON (no pickle).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

__all__ = ["BOS", "EOS", "PAD", "SPECIALS", "UNK", "SubwordTokenizer", "train_bpe"]

SPECIALS = ("<pad>", "<unk>", "<s>", "</s>")
PAD, UNK, BOS, EOS = range(4)


def _tokenizers():
    try:
        import tokenizers
    except ModuleNotFoundError as exc:
        raise ModuleNotFoundError("the subword vocabulary needs the 'tokenizers' package: pip install "
                                  "'probattn[nmt]'", name="tokenizers") from exc
    return tokenizers


class SubwordTokenizer:
    """Wraps a ``tokenizers.Tokenizer`` whose first ids are :data:`SPECIALS`.

    ``encode(texts)`` -> lists of ids without ``<s>``/``</s>`` (the model adds them); ``decode(ids)`` drops
    the special ids and joins the pieces back into text.
    """

    def __init__(self, tokenizer) -> None:
        for i, token in enumerate(SPECIALS):
            if tokenizer.token_to_id(token) != i:
                raise ValueError(f"the tokenizer must map {token!r} to id {i} (SPECIALS = {SPECIALS})")
        self.tokenizer = tokenizer

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.get_vocab_size()

    def encode(self, texts: Sequence[str]) -> list[list[int]]:
        if isinstance(texts, str):
            raise TypeError("texts must be a sequence of strings, not one string; wrap it in a list")
        return [e.ids for e in self.tokenizer.encode_batch(list(texts), add_special_tokens=False)]

    def decode(self, ids: Sequence[Sequence[int]]) -> list[str]:
        return self.tokenizer.decode_batch([list(map(int, row)) for row in ids], skip_special_tokens=True)

    def to_json(self) -> str:
        return self.tokenizer.to_str()

    @classmethod
    def from_json(cls, text: str) -> SubwordTokenizer:
        return cls(_tokenizers().Tokenizer.from_str(text))

    def save(self, path: str | Path) -> Path:
        """Atomically write the tokenizer JSON."""
        from probattn.io import atomic_write

        data = self.to_json().encode()
        return atomic_write(path, lambda handle: handle.write(data))

    @classmethod
    def load(cls, path: str | Path) -> SubwordTokenizer:
        return cls.from_json(Path(path).read_text(encoding="utf-8"))


def train_bpe(texts: Iterable[str], *, vocab_size: int = 8000, min_frequency: int = 2) -> SubwordTokenizer:
    """Learn a BPE vocabulary of up to ``vocab_size`` ids (specials included) from ``texts``."""
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or vocab_size <= len(SPECIALS):
        raise ValueError(f"vocab_size must be an integer > {len(SPECIALS)}, got {vocab_size!r}")
    tk = _tokenizers()
    tokenizer = tk.Tokenizer(tk.models.BPE(unk_token="<unk>"))
    tokenizer.normalizer = tk.normalizers.NFC()
    tokenizer.pre_tokenizer = tk.pre_tokenizers.Sequence([
        tk.pre_tokenizers.Metaspace(), tk.pre_tokenizers.Punctuation(behavior="isolated")])
    tokenizer.decoder = tk.decoders.Metaspace()
    trainer = tk.trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency,
                                     special_tokens=list(SPECIALS), show_progress=False)
    tokenizer.train_from_iterator(texts, trainer=trainer)
    return SubwordTokenizer(tokenizer)
