"""Build the model and text encoder a :class:`TrainConfig` names; save and reload a trained one.

Every model is called as ``model(input_ids=(B, L) long, attention_mask=(B, L)) -> logits (B, C)`` (or an
output object with ``.logits``), and every encoder as ``encode(texts, pairs=None) -> Encoded``.
"""

from __future__ import annotations

import functools
import json
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from probattn.data import Encoded, TextClassificationData, WordTokenizer
from probattn.training.config import TrainConfig

__all__ = ["Encoder", "adapt_converted", "build_model", "forward_logits", "inference_state_dict", "load_trained"]

MINILM_MAX_LENGTH = 512


@dataclass
class Encoder:
    """``encode(texts, pairs=None) -> Encoded`` cut to ``max_length`` tokens; ``state`` rebuilds it."""

    tokenize: Callable[..., Encoded]
    max_length: int
    state: dict[str, Any]
    hf_tokenizer: Any = None  # the Hugging Face tokenizer behind ``tokenize`` (pretrained models only)

    def __call__(self, texts: Sequence[str], pairs: Sequence[str] | None = None) -> Encoded:
        return self.tokenize(list(texts), None if pairs is None else list(pairs), max_length=self.max_length)


def _hf_tokenize(tokenizer) -> Callable[..., Encoded]:
    def tokenize(texts: list[str], pairs: list[str] | None, *, max_length: int) -> Encoded:
        from probattn.hf.pretrained import token_counts

        lengths = token_counts(tokenizer, texts, pairs)
        batch = tokenizer(texts, pairs, truncation=True, max_length=max_length, padding=True, return_tensors="pt")
        return Encoded(batch["input_ids"], batch["attention_mask"].bool(), sum(n > max_length for n in lengths))

    return tokenize


def _tiny(config: TrainConfig, num_labels: int, vocab_size: int) -> nn.Module:
    from probattn.models.tiny import TinyEncoderClassifier, TinyEncoderConfig

    return TinyEncoderClassifier(TinyEncoderConfig(
        vocab_size=vocab_size, num_labels=num_labels, max_length=config.max_length, embed_dim=config.embed_dim,
        num_heads=config.num_heads, num_layers=config.num_layers, ff_dim=2 * config.embed_dim,
        dropout=config.dropout, normalization=config.normalization, hybrid_alpha=config.hybrid_alpha,
        sinkhorn_iters=config.sinkhorn_iters,
    ))


def _minilm(config: TrainConfig, num_labels: int) -> tuple[nn.Module, Any]:
    if config.max_length > MINILM_MAX_LENGTH:
        raise ValueError(f"--max-length {config.max_length}: minilm takes at most {MINILM_MAX_LENGTH} tokens")
    from probattn.hf import load_pretrained

    alignment = {"variant": config.alignment, "weight": config.alignment_weight} if config.alignment else None
    model, tokenizer = load_pretrained("minilm", task="classification", num_labels=num_labels,
                                       normalization=config.normalization, hybrid_alpha=config.hybrid_alpha,
                                       sinkhorn_iters=config.sinkhorn_iters, alignment=alignment)
    return model.train(), tokenizer


def _hf_directory(config: TrainConfig, num_labels: int) -> tuple[nn.Module, Any]:
    """A local Hugging Face model directory with a fresh sequence-classification head, converted."""
    from probattn.hf import convert, load_model

    model, tokenizer = load_model(config.model, task="classification", num_labels=num_labels,
                                  trust_remote_code=config.trust_remote_code)
    if tokenizer is None:
        raise ValueError(f"--model {config.model}: the directory holds no tokenizer (tokenizer.json / vocab.txt); "
                         "probattn train needs one to encode the texts")
    limit = getattr(model.config, "max_position_embeddings", None)
    if isinstance(limit, int) and config.max_length > limit:
        raise ValueError(f"--max-length {config.max_length}: {config.model} takes at most {limit} tokens")
    alignment = {"variant": config.alignment, "weight": config.alignment_weight} if config.alignment else None
    convert(model, normalization=config.normalization, hybrid_alpha=config.hybrid_alpha,
            sinkhorn_iters=config.sinkhorn_iters, alignment=alignment)
    return model.train(), tokenizer


def adapt_converted(model: nn.Module, encode: Encoder, config: TrainConfig,
                    texts: Sequence[str]) -> dict[str, Any]:
    """``--adapt-steps``: distil the converted pretrained ``model`` (from :func:`build_model`, on its device)
    toward the original encoder (loaded again: softmax, no task head) on ``texts``, layer by layer, for
    ``config.adapt_steps`` steps (:func:`probattn.hf.adapt` with its defaults: batch 16, lr 3e-4), before
    fine-tuning. Leaves the model in training mode; returns steps, first and last loss and CPU seconds."""
    from probattn.hf import adapt, load_model, load_pretrained

    if encode.hf_tokenizer is None or config.normalization == "softmax":
        raise ValueError(f"--adapt-steps {config.adapt_steps}: needs a converted pretrained encoder (--model minilm "
                         "or a Hugging Face directory, --normalization doubly, hybrid or sinkhorn)")
    tokenizer = encode.hf_tokenizer
    if config.model == "minilm":
        reference, _ = load_pretrained("minilm", task="encoder")
    else:
        reference, _ = load_model(config.model, task="encoder", trust_remote_code=config.trust_remote_code)
    device = next(model.parameters()).device
    result = adapt(model, reference.to(device), list(texts), tokenizer=tokenizer, steps=config.adapt_steps,
                   max_length=config.max_length, seed=config.seed)
    model.train()
    return {"steps": result.steps, "first_loss": result.losses[0], "last_loss": result.losses[-1],
            "cpu_seconds": result.cpu_seconds}


def build_model(config: TrainConfig, train: TextClassificationData,
                tokenizer_state: dict[str, Any] | None = None) -> tuple[nn.Module, Encoder]:
    """A fresh model for ``config.model`` with ``train.num_labels`` outputs (alignment regularizers attached
    when ``config.alignment``), and its encoder.

    The word vocabulary of ``tiny`` / ``self-attentive`` is built from ``train`` (or restored from
    ``tokenizer_state``). ``config.adapt_steps`` is not applied here (a reload must not distil again): see
    :func:`adapt_converted`.
    """
    if config.model in ("tiny", "self-attentive"):
        words = (WordTokenizer.from_state_dict(tokenizer_state) if tokenizer_state
                 else WordTokenizer.build(train.texts + (train.text_pairs or [])))
    if config.model == "tiny":
        model = _tiny(config, train.num_labels, len(words))
        if config.alignment:
            from probattn.alignment import attach_alignment

            attach_alignment(model, config.alignment, weight=config.alignment_weight)
        return model, Encoder(words, config.max_length, words.state_dict())
    if config.model == "self-attentive":
        from probattn.models.self_attentive import SelfAttentiveClassifier

        if config.normalization != "softmax" or config.alignment:
            raise ValueError("--model self-attentive has no query/key attention: --normalization must be softmax "
                             "and --alignment off (use --repulsive, which acts on its hops)")
        model = SelfAttentiveClassifier(len(words), train.num_labels, embed_dim=config.embed_dim,
                                        hidden=config.embed_dim, attention_hops=config.num_heads,
                                        attention_unit=config.embed_dim, mlp_hidden=2 * config.embed_dim,
                                        dropout=config.dropout)
        return model, Encoder(words, config.max_length, words.state_dict())
    if config.model == "minilm-states":
        return _minilm_states(config, train.num_labels)
    if config.model == "minilm":
        model, tokenizer = _minilm(config, train.num_labels)
        return model, Encoder(_hf_tokenize(tokenizer), config.max_length, {"kind": "minilm"}, tokenizer)
    model, tokenizer = _hf_directory(config, train.num_labels)
    return model, Encoder(_hf_tokenize(tokenizer), config.max_length, {"kind": "hf", "path": config.model}, tokenizer)


def _minilm_states(config: TrainConfig, num_labels: int) -> tuple[nn.Module, Encoder]:
    """Fresh probattn layers over frozen, disk-cached MiniLM token states (:mod:`probattn.hf.states`)."""
    if config.max_length > MINILM_MAX_LENGTH:
        raise ValueError(f"--max-length {config.max_length}: minilm takes at most {MINILM_MAX_LENGTH} tokens")
    from probattn.hf.states import HIDDEN, STORE
    from probattn.models.states import StatesEncoderClassifier

    model = StatesEncoderClassifier(STORE.lookup, input_dim=HIDDEN, num_labels=num_labels,
                                    embed_dim=config.embed_dim, num_heads=config.num_heads,
                                    num_layers=config.num_layers, ff_dim=2 * config.embed_dim,
                                    dropout=config.dropout, normalization=config.normalization,
                                    hybrid_alpha=config.hybrid_alpha, sinkhorn_iters=config.sinkhorn_iters)
    if config.alignment:
        from probattn.alignment import attach_alignment

        attach_alignment(model, config.alignment, weight=config.alignment_weight)

    def tokenize(texts: list[str], pairs: list[str] | None, *, max_length: int) -> Encoded:
        return STORE.encode(texts, pairs, max_length=max_length)

    @functools.cache
    def minilm_tokenizer() -> Any:
        from probattn.hf.pretrained import load_tokenizer

        return load_tokenizer("minilm")

    def convert_ids_to_tokens(rows: Sequence[int]) -> list[str]:  # input ids are store rows: read them as tokens
        ids = STORE.token_ids(torch.as_tensor(list(rows), dtype=torch.long)).tolist()
        return minilm_tokenizer().convert_ids_to_tokens(ids)

    tokenize.convert_ids_to_tokens = convert_ids_to_tokens  # type: ignore[attr-defined]
    return model, Encoder(tokenize, config.max_length, {"kind": "minilm-states"})


def batch_inputs(encoded: Encoded, rows: slice | Sequence[int],
                 device: torch.device | str | None = None) -> tuple[Tensor, Tensor]:
    """``(input_ids, attention_mask)`` of ``encoded``'s ``rows``, cut to the batch's longest input (the columns that
    are padding in every row are dropped), on ``device``."""
    mask = encoded.attention_mask[rows]
    width = int(mask.sum(1).max())
    return encoded.input_ids[rows, :width].to(device), mask[:, :width].to(device)


def forward_logits(model: nn.Module, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
    """``(B, C)`` logits of any supported model."""
    out = model(input_ids=input_ids, attention_mask=attention_mask)
    return out if isinstance(out, Tensor) else out.logits


def inference_state_dict(model: nn.Module) -> dict[str, Tensor]:
    """The model's state (on CPU) without alignment auxiliary networks (they are unused at inference)."""
    from probattn.alignment import strip_alignment_state

    return {k: v.detach().cpu() for k, v in strip_alignment_state(model.state_dict()).items()}


def load_trained(path: str | Path, *, trust_remote_code: bool = False) -> tuple[nn.Module, Encoder, tuple[str, ...]]:
    """``(model in eval mode, encoder, label_names)`` from a run directory (or its ``model.json`` /
    ``model.safetensors``). Nothing is unpickled (a legacy ``model.pt`` is refused with a
    :class:`~probattn.training.checkpoint.CheckpointError`), and the model must be the finished model of one run:
    ``metrics.json`` (written last) records the run id and the sha256 of ``model.safetensors`` and ``model.json``;
    a missing record (a run killed while it replaced an earlier one), another run's files or a changed file
    (labels, vocabulary, options in ``model.json``; flipped bits in the weights) is a ``CheckpointError`` naming
    the file. A model saved by probattn 0.2 (no record) loads with a warning that ``model.json`` is unchecked.

    A run that fine-tuned a Hugging Face folder rebuilds the model from that folder: one whose config names its
    own Python classes (``auto_map``) is refused unless ``trust_remote_code`` (what the run was trained with is
    not reused: the decision is the caller's, each time)."""
    from safetensors import SafetensorError
    from safetensors.torch import load as safetensors_load

    from probattn.io import sha256_bytes
    from probattn.training.checkpoint import CheckpointError, read_verified
    from probattn.training.outputs import LEGACY_MODEL, METRICS, MODEL, MODEL_INFO

    path = Path(path)
    folder = path if path.is_dir() else path.parent
    legacy = path if path.is_file() and path.name not in (MODEL, MODEL_INFO) else None
    if path.is_dir() and not (path / MODEL_INFO).is_file() and (path / LEGACY_MODEL).is_file():
        legacy = path / LEGACY_MODEL
    if legacy is not None:
        raise CheckpointError(f"{legacy} is not a probattn model in the safe format ({MODEL} + {MODEL_INFO}); "
                              f"probattn never unpickles files, which can run arbitrary code. Train the model "
                              f"again with this probattn (it writes {MODEL} and {MODEL_INFO})")
    info_file = folder / MODEL_INFO
    if not info_file.is_file():
        raise FileNotFoundError(f"{info_file}: no saved model (a finished `probattn train --output DIR` writes one)")
    again = "train the model again or restore the folder from a backup"
    if not (folder / METRICS).is_file():
        raise CheckpointError(f"saved model {folder} is not a finished run: {METRICS}, which `probattn train` "
                              f"writes last, is missing, so {MODEL} / {MODEL_INFO} may be left from an earlier run "
                              f"(a run stopped while it replaced them with --overwrite); {again}")
    try:
        record = json.loads((folder / METRICS).read_text()).get("run")
        if record is not None and not (isinstance(record.get("sha256"), dict) and record.get("id")):
            raise ValueError(f"'run' in {METRICS} has no id or sha256")
    except (OSError, ValueError, AttributeError) as exc:
        raise CheckpointError(f"saved model {folder}: {METRICS} is unreadable ({type(exc).__name__}: {exc}); "
                              f"{again}") from exc
    try:
        info_bytes = info_file.read_bytes()
        if record is None:
            warnings.warn(f"saved model {folder} was written by probattn 0.2: {MODEL_INFO} (labels, vocabulary, "
                          f"options) is not covered by a digest and is used unchecked; train it again to get a "
                          f"verified model", UserWarning, stacklevel=2)
        elif (found := sha256_bytes(info_bytes)) != record["sha256"].get(MODEL_INFO):
            raise CheckpointError(
                f"saved model {folder} is not the model its run finished with: {info_file} has sha256 "
                f"{found[:12]}..., not the {str(record['sha256'].get(MODEL_INFO))[:12]}... recorded in {METRICS} "
                f"(an edited {MODEL_INFO}: labels, vocabulary or options changed, or one left by another run)")
        info = json.loads(info_bytes)
        if record is not None and info.get("run_id") != record["id"]:
            raise CheckpointError(f"saved model {folder}: {info_file} belongs to run {info.get('run_id')}, but "
                                  f"{METRICS} to run {record['id']}")
        weights = read_verified(folder / MODEL, info["sha256"][MODEL], what="saved model")
        if record is not None:
            read_verified(folder / MODEL, str(record["sha256"].get(MODEL)), what="saved model")
        state_dict = safetensors_load(weights)
        config = TrainConfig.from_dict(info["config"], source=str(info_file)).replace(
            alignment=None, trust_remote_code=trust_remote_code)  # inference
        labels = tuple(info["label_names"])
        tokenizer_state = info["tokenizer"]
    except CheckpointError as exc:
        raise CheckpointError(f"{exc}; {again}") from exc
    except (ValueError, KeyError, TypeError, SafetensorError) as exc:
        raise CheckpointError(f"saved model {folder} is unreadable ({type(exc).__name__}: {exc}); train it "
                              f"again") from exc
    placeholder = TextClassificationData(texts=[], labels=[], label_names=labels)
    model, encoder = build_model(config, placeholder, tokenizer_state=tokenizer_state)
    model.load_state_dict(state_dict)
    return model.eval(), encoder, labels
