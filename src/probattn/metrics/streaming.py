"""Streaming accumulators: run every metric over a data set batch by batch without keeping attention maps.

:class:`AttentionStatistics` collects, for one attention layer, everything ``probattn diagnose`` reports;
memory is fixed (a few ``(H, H)`` matrices, one histogram, one example map) whatever the data size.
:class:`MomentAccumulator` keeps the first two moments of feature vectors, enough for linear CKA.
"""

from __future__ import annotations

import torch
from torch import Tensor

from probattn.metrics._validity import validity
from probattn.metrics.alignment import qk_alignment
from probattn.metrics.diversity import head_cka_from_covariance, head_js_divergence, lin_redundancy
from probattn.metrics.entropy import attention_entropy
from probattn.metrics.explaining_away import (
    SINK_THRESHOLD,
    attention_sinks,
    explained_away_fraction,
    incoming_mass,
    min_incoming_mass,
)

__all__ = ["AttentionStatistics", "MomentAccumulator"]


def _at_least_float32(x: Tensor) -> Tensor:
    """Compute in the input's precision (float32 or float64), half precision upcast; sums are kept in float64."""
    x = x.detach()
    return x if x.dtype in (torch.float32, torch.float64) else x.to(torch.float32)


class MomentAccumulator:
    """Running ``Σ z`` and ``Σ z zᵀ`` of feature rows ``z (N, D)``, in float64; :meth:`covariance` centres them."""

    def __init__(self, dim: int) -> None:
        self.dim = dim
        self.n = 0
        self.sum = torch.zeros(dim, dtype=torch.float64)
        self.outer = torch.zeros(dim, dim, dtype=torch.float64)

    def update(self, z: Tensor) -> None:
        """Add rows ``z (N, D)``."""
        if z.dim() != 2 or z.shape[1] != self.dim:
            raise ValueError(f"features must be (N, {self.dim}), got {tuple(z.shape)}")
        z = z.detach().to(device="cpu", dtype=torch.float64)
        self.n += z.shape[0]
        self.sum += z.sum(0)
        self.outer += z.T @ z

    def covariance(self) -> Tensor:
        """Centred covariance ``(D, D)`` = ``Σ z zᵀ / N − μ μᵀ``; needs at least 2 rows."""
        if self.n < 2:
            raise ValueError("need at least 2 feature rows for a covariance")
        mean = self.sum / self.n
        return self.outer / self.n - torch.outer(mean, mean)


class AttentionStatistics:
    """Every diagnostics statistic of one attention layer with ``heads`` heads, accumulated over batches.

    Feed it with :meth:`update_weights` (attention maps), :meth:`update_qk` (per-head queries and keys) and
    :meth:`update_head_outputs` (per-head outputs before the output projection); read :meth:`summary`.
    ``thresholds``: explained-away thresholds ``τ``; ``histogram_range``: ``log10 m̃`` range of the
    incoming-mass histogram (values outside are counted in the first / last bin). ``causal``: the layer's
    queries see only keys ``j ≤ i`` (decoders): incoming mass and entropy use the causal-aware normalizations.
    ``sink_threshold``: keys with ``m̃ ≥`` it are sinks. ``token_examples``: keep the per-head ``m̃`` of the
    first that many examples (``token_mass``, a list of ``(H, N)`` over real keys, and ``token_sinks``, which of
    them are sinks) for token-level views.
    ``pairwise_examples``: compute the costly pairwise statistics (head Jensen–Shannon similarity, Lin, q/k MMD²
    and distance) on the first that many examples only (None = all); the others always use every example.
    """

    def __init__(
        self, heads: int, *, thresholds: tuple[float, ...] = (0.1, 0.01),
        histogram_range: tuple[float, float] = (-4.0, 2.5), histogram_bins: int = 50, causal: bool = False,
        sink_threshold: float = SINK_THRESHOLD, token_examples: int = 0, pairwise_examples: int | None = None,
    ) -> None:
        if heads < 1:
            raise ValueError(f"heads must be >= 1, got {heads}")
        self.heads = heads
        self.causal = causal
        self.pairwise_examples = pairwise_examples
        self.pairwise_seen = 0
        self.sink_threshold = sink_threshold
        self.token_examples = token_examples
        self.token_mass: list[Tensor] = []
        self.token_sinks: list[Tensor] = []
        self.sinks = torch.zeros(heads, dtype=torch.float64)
        self.sink_share = torch.zeros(heads, dtype=torch.float64)
        self.thresholds = tuple(thresholds)
        self.histogram_range = histogram_range
        self.histogram_bins = histogram_bins
        f64 = torch.float64
        self.examples = 0
        self.keys = 0.0  # real keys seen (per head)
        self.below = {t: torch.zeros(heads, dtype=f64) for t in self.thresholds}
        self.min_mass = torch.full((heads,), float("inf"), dtype=f64)
        self.histogram = torch.zeros(histogram_bins, dtype=f64)
        self.entropy_sum = torch.zeros(heads, dtype=f64)
        self.queries = 0.0
        self.entropy_queries = 0.0
        self.js_sum = torch.zeros(heads, heads, dtype=f64)
        self.redundancy_sum = 0.0
        self.qk_examples = 0
        self.mmd_sum = torch.zeros(heads, dtype=f64)
        self.mean_distance_sum = torch.zeros(heads, dtype=f64)
        self.outputs: MomentAccumulator | None = None
        self.example_map: Tensor | None = None  # (H, Nq, Nk) of the first example, real tokens only

    def _check_heads(self, name: str, got: int) -> None:
        if got != self.heads:
            raise ValueError(f"{name} has {got} heads but these statistics were created for {self.heads}")

    def update_weights(
        self, weights: Tensor, *, query_valid: Tensor | None = None, key_valid: Tensor | None = None
    ) -> None:
        """Add attention maps ``weights (B, H, Lq, Lk)``; ``query_valid (B, Lq)``, ``key_valid (B, Lk)``."""
        self._check_heads("weights", weights.shape[1] if weights.dim() == 4 else -1)
        w = _at_least_float32(weights)
        qv, kv = validity(w, query_valid, key_valid)
        b, _, lq, lk = w.shape
        kv_full = torch.ones(b, lk, dtype=torch.bool, device=w.device) if kv is None else kv
        qv_full = torch.ones(b, lq, dtype=torch.bool, device=w.device) if qv is None else qv
        real_rows = qv_full[:, None, :, None] & kv_full[:, None, None, :]
        if not bool(torch.isfinite(w).logical_or(~real_rows).all()):
            raise ValueError("attention weights contain NaN or inf at real tokens; the model's forward pass is not finite")
        w = w.masked_fill(~real_rows, 0.0)  # padded rows / columns may hold garbage
        mass = incoming_mass(w, query_valid=qv, key_valid=kv, causal=self.causal)
        n_k = kv_full.sum(-1).to(torch.float64)  # (B,)
        plain = incoming_mass(w, query_valid=qv, key_valid=kv) if self.causal else None
        sink, sink_frac = attention_sinks(mass, threshold=self.sink_threshold, key_valid=kv, plain_mass=plain)
        self.sinks += (sink_frac.to(torch.float64) * n_k[:, None]).sum(0).cpu()
        absorbed = (w * sink[:, :, None, :]).sum(-1)  # (B, H, Lq): each row's mass on sink keys
        self.sink_share += absorbed.masked_fill(~qv_full[:, None, :], 0.0).to(torch.float64).sum((0, 2)).cpu()
        for e in range(min(b, self.token_examples - len(self.token_mass))):
            self.token_mass.append(mass[e][:, kv_full[e]].to(torch.float32).cpu())
            self.token_sinks.append(sink[e][:, kv_full[e]].cpu())
        for t in self.thresholds:
            frac = explained_away_fraction(mass, threshold=t, key_valid=kv)
            self.below[t] += (frac.to(torch.float64) * n_k[:, None]).sum(0).cpu()
        self.keys += float(n_k.sum())
        self.min_mass = torch.minimum(self.min_mass, min_incoming_mass(mass, key_valid=kv).amin(0).to(torch.float64).cpu())
        logm = mass.clamp_min(1e-30).log10().clamp(*self.histogram_range)
        selected = logm.masked_select(kv_full[:, None, :].expand_as(logm))
        lo, hi = self.histogram_range
        self.histogram += torch.histc(selected, bins=self.histogram_bins, min=lo, max=hi).to(torch.float64).cpu()
        ent = attention_entropy(w, key_valid=kv, normalized=True, causal=self.causal)  # (B, H, Lq)
        # queries that see more than one key (a causal first query has no choice to make)
        sees = kv_full.cumsum(-1) if self.causal and lq == lk else kv_full.sum(-1, keepdim=True).expand(b, lq)
        choosing = qv_full & (sees > 1)
        self.entropy_sum += ent.masked_fill(~choosing[:, None, :], 0.0).to(torch.float64).sum((0, 2)).cpu()
        self.entropy_queries += float(choosing.sum())
        self.queries += float(qv_full.sum())
        take = b if self.pairwise_examples is None else max(0, min(b, self.pairwise_examples - self.pairwise_seen))
        if take:
            part_qv = None if qv is None else qv[:take]
            self.js_sum += head_js_divergence(w[:take], query_valid=part_qv).to(torch.float64).sum(0).cpu()
            self.redundancy_sum += float(lin_redundancy(w[:take], query_valid=part_qv).sum())
            self.pairwise_seen += take
        if self.example_map is None:
            self.example_map = w[0][:, qv_full[0]][:, :, kv_full[0]].to(torch.float32).cpu()
        self.examples += b

    def update_qk(
        self, q: Tensor, k: Tensor, *, query_valid: Tensor | None = None, key_valid: Tensor | None = None
    ) -> None:
        """Add per-head queries ``q (B, H, Lq, d)`` and keys ``k (B, H_kv, Lk, d)`` (projected, unscaled)."""
        if self.pairwise_examples is not None:
            take = max(0, min(q.shape[0], self.pairwise_examples - self.qk_examples))
            if take == 0:
                return
            q, k = q[:take], k[:take]
            query_valid = None if query_valid is None else query_valid[:take]
            key_valid = None if key_valid is None else key_valid[:take]
        self._check_heads("q", q.shape[1] if q.dim() == 4 else -1)
        mmd, dist = qk_alignment(_at_least_float32(q), _at_least_float32(k),
                                 query_valid=query_valid, key_valid=key_valid)
        self.mmd_sum += mmd.to(torch.float64).sum(0).cpu()
        self.mean_distance_sum += dist.to(torch.float64).sum(0).cpu()
        self.qk_examples += q.shape[0]

    def update_head_outputs(self, outputs: Tensor, *, valid: Tensor | None = None) -> None:
        """Add per-head outputs ``outputs (B, L, H, Dv)`` of real tokens (``valid (B, L)``, True = real)."""
        if outputs.dim() != 4:
            raise ValueError(f"outputs must be (batch, length, heads, head_dim), got {tuple(outputs.shape)}")
        self._check_heads("outputs", outputs.shape[2])
        z = outputs.detach().flatten(2)  # (B, L, H*Dv)
        z = z.reshape(-1, z.shape[-1]) if valid is None else z[valid.to(torch.bool)]
        if self.outputs is None:
            self.outputs = MomentAccumulator(z.shape[-1])
        self.outputs.update(z)

    def summary(self) -> dict:
        """JSON-ready dict: per-head lists, ``(H, H)`` matrices as nested lists, layer means (None = not measured)."""
        out: dict = {"heads": self.heads, "examples": self.examples}
        if self.examples:
            for t in self.thresholds:
                out[f"explained_away_{t:g}"] = (self.below[t] / self.keys).tolist()
            out["min_incoming_mass"] = self.min_mass.tolist()
            out["sink_fraction"] = (self.sinks / self.keys).tolist()
            out["sink_share"] = (self.sink_share / self.queries).tolist()
            out["causal"] = self.causal
            out["incoming_mass_histogram"] = {
                "log10_range": list(self.histogram_range), "counts": self.histogram.tolist()
            }
            out["entropy"] = (self.entropy_sum / max(self.entropy_queries, 1.0)).tolist()
            js = self.js_sum / max(self.pairwise_seen, 1)
            out["attention_similarity"] = (1 - js).tolist()
            off = ~torch.eye(self.heads, dtype=torch.bool)
            out["mean_attention_similarity"] = float((1 - js)[off].mean()) if self.heads > 1 else None
            out["lin_redundancy"] = self.redundancy_sum / max(self.pairwise_seen, 1)
            out["pairwise_examples"] = self.pairwise_seen
        if self.qk_examples:
            out["qk_mmd2"] = (self.mmd_sum / self.qk_examples).tolist()
            out["qk_mean_distance"] = (self.mean_distance_sum / self.qk_examples).tolist()
        if self.outputs is not None and self.outputs.n >= 2:
            cka = head_cka_from_covariance(self.outputs.covariance(), self.heads)
            out["output_cka"] = cka.tolist()
            off = ~torch.eye(self.heads, dtype=torch.bool)
            out["mean_output_cka"] = float(cka[off].mean()) if self.heads > 1 else None
        return out
