"""Per-layer attention diagnostics of a trained classifier, for ``probattn compare``.

A probe on every attention layer (``module.probattn_probe``, see :mod:`probattn.nn.hooks`) receives the
layer's per-head queries ``q (B, H, Lq, d)`` and keys ``k (B, H_kv, Lk, d)``, recomputes the layer's weights
with :func:`probattn.functional.attention` under the layer's own normalization, and feeds both to
:class:`probattn.metrics.AttentionStatistics`. Works for :class:`probattn.nn.MultiheadAttention` layers
(the tiny encoder) and for Hugging Face models converted by :func:`probattn.hf.convert` (MiniLM).

Per layer it reports (:func:`layer_metrics`):

* ``head_diversity``: mean pairwise Jensen–Shannon divergence between the heads' attention rows, in bits
  (``1 - mean_attention_similarity``; 0 = identical heads, 1 = disjoint);
* ``explained_away`` / ``explained_away_0.1``: fraction of real keys whose normalized incoming mass
  ``m~_j = (Σ_i A_ij)·N_k/N_q`` is below 0.01 / 0.1 of the fair share (mean over heads);
* ``kq_alignment``: squared RBF-kernel MMD between each head's query cloud and key cloud (mean over heads);
* ``below_bound``: fraction of real keys (over heads and examples) with ``m~_j < 1/N_q``: the bound that
  doubly-normalized attention guarantees (0 for it, up to float64 rounding);
* ``lin_redundancy``: Lin et al.'s ``‖A Aᵀ − I‖_F`` with ``A`` the heads' rows for one query (mean).

The self-attentive classifier (Lin et al. 2017) has no query/key layer; its ``r`` hops are treated as ``r``
heads with one query each (``A (B, r, 1, L)``), so the same numbers describe hop diversity
(:func:`hop_statistics`); ``kq_alignment`` is then not measured (NaN).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor, nn

from probattn.data import Encoded
from probattn.functional import attention
from probattn.metrics import AttentionStatistics, incoming_mass
from probattn.nn import MultiheadAttention
from probattn.report.collect import attached_probes

__all__ = ["StatisticsProbe", "attention_layers", "collect_layer_statistics", "hop_statistics", "layer_metrics"]

EXPLAINED_AWAY_THRESHOLD = 0.01
BOUND_TOLERANCE = 1e-6  # float64 recomputed weights: a key counts as below 1/N_q of its fair share past this


def _settings(module: nn.Module) -> tuple[str, Any, int]:
    """``(normalization, hybrid_alpha, sinkhorn_iters)`` that ``module`` attends with."""
    if isinstance(module, MultiheadAttention):
        return module.normalization, module.current_hybrid_alpha(), module.sinkhorn_iters
    from probattn.hf.attention import HYBRID_ATTR, SETTINGS_ATTR, LayerSettings

    settings = getattr(module, SETTINGS_ATTR, LayerSettings())
    alpha = getattr(module, HYBRID_ATTR)() if settings.hybrid_alpha == "learned" else settings.hybrid_alpha
    return settings.normalization, alpha, settings.sinkhorn_iters


def attention_layers(model: nn.Module) -> list[nn.Module]:
    """The attention layers of ``model`` that call ``observe_qk``, in model order."""
    layers = [m for m in model.modules() if isinstance(m, MultiheadAttention)]
    if not layers:
        try:
            from probattn.hf import attention_modules
        except ModuleNotFoundError:  # transformers is not installed: no Hugging Face layers either
            return []
        layers = [m for _, m in attention_modules(model)]
    return layers


class StatisticsProbe:
    """Accumulates one layer's statistics from the q/k it observes (weights recomputed in float64);
    ``thresholds``: the explained-away thresholds (see :class:`probattn.metrics.AttentionStatistics`)."""

    def __init__(self, module: nn.Module, thresholds: tuple[float, ...] = (0.1, EXPLAINED_AWAY_THRESHOLD),
                 pairwise_examples: int | None = None) -> None:
        self.module = module
        self.thresholds, self.pairwise_examples = thresholds, pairwise_examples
        self.stats: AttentionStatistics | None = None
        self.below, self.keys = 0, 0  # keys under the doubly-normalized bound m~_j >= 1 / N_q, and all keys

    def observe(self, q: Tensor, k: Tensor, *, query_valid: Tensor | None, key_valid: Tensor | None) -> None:
        if self.stats is None:
            self.stats = AttentionStatistics(q.shape[1], thresholds=self.thresholds,
                                             pairwise_examples=self.pairwise_examples)
        # The layer reports which keys and (in self-attention) which queries are real, even when it was fed a
        # float padding mask; the weights are recomputed as the layer computed them and only real tokens count.
        normalization, alpha, iters = _settings(self.module)
        q64, k64 = q.to(torch.float64), k.to(torch.float64)
        _, weights = attention(q64, k64, k64, normalization=normalization, hybrid_alpha=alpha,
                               sinkhorn_iters=iters, key_padding_mask=key_valid,
                               query_padding_mask=query_valid, return_weights=True)
        self.stats.update_weights(weights, query_valid=query_valid, key_valid=key_valid)
        mass = incoming_mass(weights, query_valid=query_valid, key_valid=key_valid)  # (B, H, Lk)
        queries = (query_valid.sum(-1) if query_valid is not None
                   else torch.full((q.shape[0],), q.shape[2], device=q.device)).to(torch.float64)
        keys = (key_valid if key_valid is not None else torch.ones(mass.shape[0], mass.shape[-1], dtype=torch.bool,
                                                                     device=mass.device))[:, None, :].expand_as(mass)
        self.below += int(((mass * queries[:, None, None] < 1 - BOUND_TOLERANCE) & keys).sum())
        self.keys += int(keys.sum())
        self.stats.update_qk(q64, k64, query_valid=query_valid, key_valid=key_valid)


def _batches(model: nn.Module, encoded: Encoded, batch_size: int, max_examples: int) -> Iterator[tuple[Tensor, Tensor]]:
    """``(input_ids, valid)`` of the first ``max_examples`` inputs in batches, cut to each batch's longest, on the
    model's device, with the model in eval mode (its mode restored afterwards)."""
    from probattn.training.modeling import batch_inputs

    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        n = min(max_examples, encoded.input_ids.shape[0])
        for start in range(0, n, batch_size):
            yield batch_inputs(encoded, slice(start, min(start + batch_size, n)), device)
    finally:
        model.train(was_training)


@torch.no_grad()
def collect_layer_statistics(model: nn.Module, encoded: Encoded, *, batch_size: int = 64,
                             max_examples: int = 256) -> list[dict[str, Any]]:
    """Run ``model`` (eval mode) over the first ``max_examples`` encoded inputs; one summary per layer.

    Each summary is :meth:`probattn.metrics.AttentionStatistics.summary`. The probes are attached with
    :func:`probattn.report.collect.attached_probes` (a user's own probes are restored afterwards).
    """
    from probattn.training.modeling import forward_logits

    layers = attention_layers(model)
    if not layers:
        from probattn.models.self_attentive import SelfAttentiveClassifier

        if isinstance(model, SelfAttentiveClassifier):
            return hop_statistics(model, encoded, batch_size=batch_size, max_examples=max_examples)
        raise ValueError(f"{type(model).__name__} has no probattn attention layer to diagnose")
    probes = [StatisticsProbe(m) for m in layers]
    with attached_probes(layers, probes):
        for ids, valid in _batches(model, encoded, batch_size, max_examples):
            forward_logits(model, ids, valid)
    return [{**p.stats.summary(), "below_bound": p.below / p.keys} if p.stats is not None else {} for p in probes]


@torch.no_grad()
def hop_statistics(model: nn.Module, encoded: Encoded, *, batch_size: int = 64,
                   max_examples: int = 256) -> list[dict[str, Any]]:
    """Statistics of a self-attentive classifier's hop attention ``A (B, r, L)`` as one layer of ``r`` heads."""
    stats: AttentionStatistics | None = None
    for ids, valid in _batches(model, encoded, batch_size, max_examples):
        hops = model(ids, valid).attention
        stats = stats or AttentionStatistics(hops.shape[1], thresholds=(0.1, EXPLAINED_AWAY_THRESHOLD))
        stats.update_weights(hops[:, :, None, :].to(torch.float64), key_valid=valid)
    return [stats.summary()] if stats is not None else [{}]


def layer_metrics(summary: dict[str, Any]) -> dict[str, float]:
    """``head_diversity``, ``explained_away`` (τ = 0.01), ``explained_away_0.1``, ``kq_alignment``,
    ``lin_redundancy`` of one layer summary.

    NaN for what was not measured.
    """

    def mean(values: Any) -> float:
        return float(torch.tensor(values, dtype=torch.float64).mean()) if values else math.nan

    similarity = summary.get("mean_attention_similarity")
    return {
        "head_diversity": 1.0 - similarity if similarity is not None else math.nan,
        "explained_away": mean(summary.get(f"explained_away_{EXPLAINED_AWAY_THRESHOLD:g}")),
        "explained_away_0.1": mean(summary.get("explained_away_0.1")),
        "kq_alignment": mean(summary.get("qk_mmd2")),
        "lin_redundancy": float(summary.get("lin_redundancy", math.nan)),
        "below_bound": float(summary.get("below_bound", math.nan)),
    }
