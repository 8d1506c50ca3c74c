"""``adapt(model, reference, texts)``: distil a converted model back toward the original's hidden states.

Pretrained weights were trained for softmax attention. After ``convert(model, normalization="doubly")`` the
same weights give different hidden states (all-MiniLM-L6-v2: sentence embeddings at cosine 0.50 to the
original on 400 held-out Rotten Tomatoes sentences). ``adapt`` trains the converted model on unlabeled text
so that every layer's hidden states match the original model's (the "teacher", run in eval mode without
gradients):

    loss = mean over layers l of  sum_real_tokens ||h_l - h_l^ref||^2 / sum_real_tokens ||h_l^ref||^2
           + pooled_weight * mean over sentences (1 - cos(mean-pooled h_L, mean-pooled h_L^ref))

(the embedding output, layer 0, is shared and left out; ``h_L`` is the last layer). Only the converted model's parameters move.
:func:`sentence_cosine` measures the result on held-out text: the cosine between the two models' mean-pooled
sentence embeddings (how sentence-transformers pools all-MiniLM-L6-v2).
"""

from __future__ import annotations

import math
import numbers
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["AdaptResult", "adapt", "sentence_cosine", "sentence_embeddings"]


@dataclass
class AdaptResult:
    """What :func:`adapt` did: ``losses[i]`` is the distillation loss of step ``i``; ``cpu_seconds`` the process
    CPU time spent (all threads), ``wall_seconds`` the elapsed time."""

    steps: int
    losses: list[float] = field(default_factory=list)
    cpu_seconds: float = 0.0
    wall_seconds: float = 0.0


def _check_texts(name: str, texts: object) -> list[str]:
    if isinstance(texts, str) or not isinstance(texts, Sequence) or not texts:
        raise TypeError(f"{name} must be a non-empty list of strings, got {type(texts).__name__}")
    bad = next((i for i, t in enumerate(texts) if not isinstance(t, str) or not t.strip()), None)
    if bad is not None:
        raise ValueError(f"{name}[{bad}] is not a non-empty string: {texts[bad]!r}")
    return list(texts)


def _positive_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def _encode(tokenizer: Any, texts: list[str], max_length: int, device: torch.device) -> dict[str, Tensor]:
    batch = tokenizer(texts, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
    return {k: v.to(device) for k, v in batch.items() if k in ("input_ids", "attention_mask", "token_type_ids")}


def _hidden(model: nn.Module, batch: dict[str, Tensor]) -> tuple[Tensor, ...]:
    out = model(**batch, output_hidden_states=True)
    if getattr(out, "hidden_states", None) is None:
        raise ValueError(f"{type(model).__name__} returns no hidden_states; adapt needs an encoder that does "
                         "(AutoModel, not a task head)")
    return out.hidden_states


def sentence_embeddings(model: nn.Module, tokenizer: Any, texts: Sequence[str], *, batch_size: int = 64,
                        max_length: int = 128) -> Tensor:
    """Mean-pooled last hidden states over real tokens, ``(len(texts), hidden)`` float32, in eval mode."""
    texts = _check_texts("texts", texts)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    chunks = []
    with torch.no_grad():
        for start in range(0, len(texts), batch_size):
            batch = _encode(tokenizer, texts[start:start + batch_size], max_length, device)
            hidden = model(**batch).last_hidden_state.float()
            real = batch["attention_mask"].unsqueeze(-1).float()
            chunks.append((hidden * real).sum(1) / real.sum(1))
    model.train(was_training)
    return torch.cat(chunks)


def sentence_cosine(model: nn.Module, reference: nn.Module, tokenizer: Any, texts: Sequence[str],
                    **options: Any) -> float:
    """Mean cosine between ``model``'s and ``reference``'s mean-pooled sentence embeddings of ``texts``."""
    a = sentence_embeddings(model, tokenizer, texts, **options)
    b = sentence_embeddings(reference, tokenizer, texts, **options)
    return float(nn.functional.cosine_similarity(a, b, dim=-1).mean())


def adapt(
    model: nn.Module,
    reference: nn.Module,
    texts: Sequence[str],
    *,
    tokenizer: Any,
    steps: int = 300,
    batch_size: int = 16,
    lr: float = 3e-4,
    max_length: int = 64,
    seed: int = 0,
    pooled_weight: float = 0.0,
    time_budget: float | None = None,
    log: Callable[[int, float], None] | None = None,
) -> AdaptResult:
    """Distil ``model`` (converted) toward ``reference`` (the original) on unlabeled ``texts``, in place.

    Args:
        model: the converted Hugging Face encoder (e.g. ``convert(AutoModel..., normalization="doubly")``);
            trained with AdamW, left in eval mode.
        reference: the original model (same tokenizer and number of layers); only read.
        texts: unlabeled sentences; batches of ``batch_size`` are drawn at random (with ``seed``).
        tokenizer: a Hugging Face tokenizer for both models; sequences are cut at ``max_length`` tokens.
        steps: optimizer steps (at most; ``time_budget`` seconds of CPU time may stop it earlier).
        lr: AdamW learning rate (weight decay 0; constant).
        pooled_weight: weight of the sentence-embedding term (cosine of mean-pooled last hidden states).
        log: called as ``log(step, loss)`` every 25 steps and at the end.

    Returns:
        :class:`AdaptResult` with the per-step losses and the CPU / wall time spent.
    """
    texts = _check_texts("texts", texts)
    steps, batch_size, max_length = (_positive_int(n, v) for n, v in
                                     (("steps", steps), ("batch_size", batch_size), ("max_length", max_length)))
    if not isinstance(lr, numbers.Real) or isinstance(lr, bool) or not 0 < float(lr) < 1:
        raise ValueError(f"lr must be a float in (0, 1), got {lr!r}")
    if isinstance(pooled_weight, bool) or not isinstance(pooled_weight, numbers.Real) or pooled_weight < 0:
        raise ValueError(f"pooled_weight must be a number >= 0, got {pooled_weight!r}")
    if time_budget is not None and (not isinstance(time_budget, numbers.Real) or time_budget <= 0):
        raise ValueError(f"time_budget must be a positive number of CPU seconds or None, got {time_budget!r}")
    if model is reference:
        raise ValueError("model and reference are the same object; pass a copy of the original as reference")
    device = next(model.parameters()).device
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=float(lr), weight_decay=0.0)
    reference.eval()
    model.train()
    result = AdaptResult(steps=0)
    cpu0, wall0 = time.process_time(), time.perf_counter()
    for step in range(steps):
        index = torch.randint(len(texts), (batch_size,), generator=generator).tolist()
        batch = _encode(tokenizer, [texts[i] for i in index], max_length, device)
        real = batch["attention_mask"].bool()
        with torch.no_grad():
            want = _hidden(reference, batch)[1:]
        got = _hidden(model, batch)[1:]
        if len(got) != len(want):
            raise ValueError(f"model has {len(got)} layers but reference has {len(want)}; adapt distils layer by "
                             "layer and needs the same architecture")
        loss = sum(((g - w)[real].float().square().sum() / w[real].float().square().sum().clamp_min(1e-12))
                   for g, w in zip(got, want)) / len(got)
        if pooled_weight:
            real_f = real.unsqueeze(-1).float()
            pooled = [(h.float() * real_f).sum(1) / real_f.sum(1) for h in (got[-1], want[-1])]
            loss = loss + pooled_weight * (1 - nn.functional.cosine_similarity(*pooled, dim=-1)).mean()
        value = float(loss.detach())
        if not math.isfinite(value):  # before the step: the weights stay as they were
            raise FloatingPointError(f"adapt: the distillation loss became {value} at step {step}; lower lr")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        result.losses.append(value)
        result.steps = step + 1
        if log is not None and (step % 25 == 0 or step == steps - 1):
            log(step, value)
        if time_budget is not None and time.process_time() - cpu0 >= time_budget:
            break
    result.cpu_seconds = time.process_time() - cpu0
    result.wall_seconds = time.perf_counter() - wall0
    model.eval()
    return result
