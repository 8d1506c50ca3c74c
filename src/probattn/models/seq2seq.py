"""A Transformer encoder–decoder (fairseq's ``transformer``) built from probattn's attention.

Every attention is a :class:`probattn.nn.MultiheadAttention`: encoder self-attention, causal decoder
self-attention and decoder cross-attention (encoder–decoder attention), so :class:`probattn.repulsive.RepulsiveHeads`
finds all ``3 × (encoder_layers + 2 × decoder_layers)`` Q/K/V particle sets (54 for 6+6 layers, the repulsive
paper's layout) and :func:`probattn.alignment.attach_alignment` can regularize any of them.

``normalization`` (``"softmax" | "doubly" | "hybrid" | "sinkhorn"``) applies to the **encoder self-attention only**.
Both decoder attentions are always softmax: a column normalization over the decoder's queries mixes every
target position into every other one's weights, so position ``t`` would see the tokens after ``t`` (the
functional layer refuses it for causal masks; cross-attention has no causal mask, so the decoder layers check
it themselves and raise a ``ValueError``).

Layer layout as fairseq: post-norm by default (``normalize_before=False``), pre-norm with a final LayerNorm when
True; scaled token embeddings plus sinusoidal positions; ReLU feed-forward; one embedding matrix shared by
the encoder, the decoder and the output projection (a joint vocabulary). Decoding: :meth:`Seq2SeqTransformer.greedy`
and :meth:`Seq2SeqTransformer.beam_search` (length penalty ``score / length**lenpen``), both incremental (each
decoder layer caches the projected keys and values of the earlier positions, and the cross-attention keys and
values of the source once, so a step costs one position).

Shapes: ``src (B, S)`` and ``tgt (B, T)`` token ids; validity masks ``(B, S)`` / ``(B, T)`` bool with
True = real token (default: ``ids != pad_id``); logits ``(B, T, V)``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from probattn.functional import NORMALIZATIONS, attention
from probattn.nn import MultiheadAttention

__all__ = [
    "ATTENTION_TYPES",
    "Seq2SeqConfig",
    "Seq2SeqOutput",
    "Seq2SeqTransformer",
    "attention_modules",
    "collate",
    "label_smoothed_loss",
    "paper_particle_sets",
]

ATTENTION_TYPES = ("encoder_self", "decoder_self", "cross")


def _decoder_error(where: str, normalization: str) -> ValueError:
    return ValueError(
        f"{where}={normalization!r}: column normalization over the decoder's queries lets target position t see "
        f"the tokens after t (it leaks the future, and it cannot decode incrementally); the decoder's self- and "
        f"cross-attention must be 'softmax'. Use normalization={normalization!r} for the encoder self-attention only.")


def dataclass_from_dict(cls: type, values: dict[str, Any]) -> Any:
    """``cls(**values)`` for a dataclass, with a clear error naming unknown keys (a saved or user config)."""
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"unknown {cls.__name__} options {unknown}; known: {sorted(known)}")
    return cls(**values)


@dataclass(frozen=True)
class Seq2SeqConfig:
    """Sizes and options of :class:`Seq2SeqTransformer` (defaults: a small CPU model; the IWSLT model of the
    repulsive paper is ``embed_dim=512, ffn_dim=1024, num_heads=4, encoder_layers=6, decoder_layers=6``)."""

    vocab_size: int
    embed_dim: int = 256
    num_heads: int = 4
    ffn_dim: int = 1024
    encoder_layers: int = 3
    decoder_layers: int = 3
    dropout: float = 0.1
    attention_dropout: float = 0.0
    activation_dropout: float = 0.0
    normalize_before: bool = False
    max_positions: int = 256
    normalization: str = "softmax"
    hybrid_alpha: float = 0.5
    sinkhorn_iters: int = 3
    decoder_normalization: str = "softmax"
    pad_id: int = 0
    bos_id: int = 2
    eos_id: int = 3

    def __post_init__(self) -> None:
        for name in ("vocab_size", "embed_dim", "num_heads", "ffn_dim", "encoder_layers", "decoder_layers",
                     "max_positions"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if self.embed_dim % self.num_heads:
            raise ValueError(f"embed_dim={self.embed_dim} must be divisible by num_heads={self.num_heads}")
        for name in ("dropout", "attention_dropout", "activation_dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"{name} must lie in [0, 1), got {getattr(self, name)!r}")
        if self.normalization not in NORMALIZATIONS:
            raise ValueError(f"normalization must be one of {NORMALIZATIONS}, got {self.normalization!r}")
        if self.decoder_normalization != "softmax":
            raise _decoder_error("decoder_normalization", self.decoder_normalization)
        ids = {"pad_id": self.pad_id, "bos_id": self.bos_id, "eos_id": self.eos_id}
        if len(set(ids.values())) != 3 or not all(0 <= v < self.vocab_size for v in ids.values()):
            raise ValueError(f"pad_id, bos_id and eos_id must be distinct ids in [0, vocab_size), got {ids}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> Seq2SeqConfig:
        return dataclass_from_dict(cls, values)


@dataclass
class Seq2SeqOutput:
    """``logits (B, T, V)``; with ``return_attention``: per type, one ``(B, H, Lq, Lk)`` weight tensor per layer."""

    logits: Tensor
    attentions: dict[str, list[Tensor]] = field(default_factory=dict)


def _sinusoids(length: int, dim: int) -> Tensor:
    position = torch.arange(length, dtype=torch.float32)[:, None]
    rates = torch.exp(-math.log(10000.0) * torch.arange(0, dim // 2, dtype=torch.float32) / max(1, dim // 2 - 1))
    table = torch.zeros(length, dim)
    table[:, : dim // 2] = torch.sin(position * rates)
    table[:, dim // 2 : 2 * (dim // 2)] = torch.cos(position * rates)
    return table


class _FeedForward(nn.Module):
    def __init__(self, c: Seq2SeqConfig) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(c.embed_dim, c.ffn_dim), nn.Linear(c.ffn_dim, c.embed_dim)
        for linear in (self.fc1, self.fc2):
            nn.init.xavier_uniform_(linear.weight)
            nn.init.zeros_(linear.bias)
        self.activation_dropout = c.activation_dropout

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(F.dropout(F.relu(self.fc1(x)), self.activation_dropout, self.training))


class _Sublayer(nn.Module):
    """Residual wrapper: ``x + dropout(f(norm(x)))`` (pre-norm) or ``norm(x + dropout(f(x)))`` (post-norm)."""

    def __init__(self, c: Seq2SeqConfig) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(c.embed_dim)
        self.pre, self.dropout = c.normalize_before, c.dropout

    def enter(self, x: Tensor) -> Tensor:
        return self.norm(x) if self.pre else x

    def leave(self, residual: Tensor, y: Tensor) -> Tensor:
        out = residual + F.dropout(y, self.dropout, self.training)
        return out if self.pre else self.norm(out)


def _attention(c: Seq2SeqConfig, normalization: str = "softmax") -> MultiheadAttention:
    return MultiheadAttention(c.embed_dim, c.num_heads, dropout=c.attention_dropout, batch_first=True,
                              normalization=normalization, hybrid_alpha=c.hybrid_alpha,
                              sinkhorn_iters=c.sinkhorn_iters)


class EncoderLayer(nn.Module):
    def __init__(self, c: Seq2SeqConfig) -> None:
        super().__init__()
        self.self_attn = _attention(c, c.normalization)
        self.attn_block, self.ffn_block, self.ffn = _Sublayer(c), _Sublayer(c), _FeedForward(c)

    def forward(self, x: Tensor, pad: Tensor | None, weights: list | None = None) -> Tensor:
        h = self.attn_block.enter(x)
        h, w = self.self_attn(h, h, h, key_padding_mask=pad, need_weights=weights is not None,
                              average_attn_weights=False)
        if weights is not None:
            weights.append(w)
        x = self.attn_block.leave(x, h)
        return self.ffn_block.leave(x, self.ffn(self.ffn_block.enter(x)))


class DecoderLayer(nn.Module):
    def __init__(self, c: Seq2SeqConfig) -> None:
        super().__init__()
        self.self_attn, self.cross_attn = _attention(c), _attention(c)
        self.self_block, self.cross_block, self.ffn_block = _Sublayer(c), _Sublayer(c), _Sublayer(c)
        self.ffn = _FeedForward(c)

    def _check(self) -> None:
        for name in ("self_attn", "cross_attn"):
            normalization = getattr(self, name).normalization
            if normalization != "softmax":
                raise _decoder_error(f"decoder {name}.normalization", normalization)

    def forward(self, x: Tensor, memory: Tensor, src_pad: Tensor | None, tgt_pad: Tensor | None, *,
                weights: dict[str, list] | None = None) -> Tensor:
        """Teacher-forced: ``x (B, T, E)`` with causal self-attention over the target positions."""
        self._check()
        need = weights is not None
        h = self.self_block.enter(x)
        a, w_self = self.self_attn(h, h, h, key_padding_mask=tgt_pad, is_causal=True, need_weights=need,
                                   average_attn_weights=False)
        x = self.self_block.leave(x, a)
        h = self.cross_block.enter(x)
        a, w_cross = self.cross_attn(h, memory, memory, key_padding_mask=src_pad, need_weights=need,
                                     average_attn_weights=False)
        x = self.cross_block.leave(x, a)
        if weights is not None:
            weights["decoder_self"].append(w_self)
            weights["cross"].append(w_cross)
        return self.ffn_block.leave(x, self.ffn(self.ffn_block.enter(x)))

    def start(self, memory: Tensor) -> dict[str, Tensor | None]:
        """The decoding cache: cross-attention keys/values of ``memory`` projected once, no past positions."""
        self._check()
        return {"cross_k": _heads(self.cross_attn, memory, 1), "cross_v": _heads(self.cross_attn, memory, 2),
                "k": None, "v": None}

    def step(self, x: Tensor, cache: dict[str, Tensor | None], src_valid: Tensor) -> Tensor:
        """One new position ``x (N, 1, E)`` attending to the cached projected keys/values of the earlier
        positions (appended to ``cache``) and to the source; the same computation as :meth:`forward` there."""
        h = self.self_block.enter(x)
        k, v = _heads(self.self_attn, h, 1), _heads(self.self_attn, h, 2)
        cache["k"] = k if cache["k"] is None else torch.cat([cache["k"], k], dim=2)
        cache["v"] = v if cache["v"] is None else torch.cat([cache["v"], v], dim=2)
        a = attention(_heads(self.self_attn, h, 0), cache["k"], cache["v"])
        x = self.self_block.leave(x, self.self_attn.out_proj(_merge(a)))
        h = self.cross_block.enter(x)
        a = attention(_heads(self.cross_attn, h, 0), cache["cross_k"], cache["cross_v"],
                      key_padding_mask=None if bool(src_valid.all()) else src_valid)
        x = self.cross_block.leave(x, self.cross_attn.out_proj(_merge(a)))
        return self.ffn_block.leave(x, self.ffn(self.ffn_block.enter(x)))


def _heads(module: MultiheadAttention, x: Tensor, part: int) -> Tensor:
    """Projection ``part`` (0 = query, 1 = key, 2 = value) of ``x (N, L, E)`` as ``(N, H, L, d)``, with the
    module's fused ``in_proj_weight`` / ``in_proj_bias`` (the decoding path: no hooks, no dropout)."""
    e, h = module.embed_dim, module.num_heads
    bias = None if module.in_proj_bias is None else module.in_proj_bias[part * e:(part + 1) * e]
    y = F.linear(x, module.in_proj_weight[part * e:(part + 1) * e], bias)
    return y.view(x.shape[0], x.shape[1], h, e // h).transpose(1, 2)


def _merge(x: Tensor) -> Tensor:
    """``(N, H, L, d) -> (N, L, H·d)``."""
    n, h, length, d = x.shape
    return x.transpose(1, 2).reshape(n, length, h * d)


class _Stack(nn.Module):
    def __init__(self, layers: list[nn.Module], c: Seq2SeqConfig) -> None:
        super().__init__()
        self.layers = nn.ModuleList(layers)
        self.final_norm = nn.LayerNorm(c.embed_dim) if c.normalize_before else None


class Seq2SeqTransformer(nn.Module):
    """Transformer encoder–decoder (module doc). ``Seq2SeqTransformer(Seq2SeqConfig(vocab_size=8000))``."""

    def __init__(self, config: Seq2SeqConfig) -> None:
        super().__init__()
        if not isinstance(config, Seq2SeqConfig):
            raise TypeError(f"config must be a Seq2SeqConfig, got {type(config).__name__}")
        c = self.config = config
        self.embed = nn.Embedding(c.vocab_size, c.embed_dim, padding_idx=c.pad_id)
        nn.init.normal_(self.embed.weight, mean=0.0, std=c.embed_dim ** -0.5)
        with torch.no_grad():
            self.embed.weight[c.pad_id].zero_()
        self.register_buffer("positions", _sinusoids(c.max_positions, c.embed_dim), persistent=False)
        self.encoder = _Stack([EncoderLayer(c) for _ in range(c.encoder_layers)], c)
        self.decoder = _Stack([DecoderLayer(c) for _ in range(c.decoder_layers)], c)

    # -- pieces ----------------------------------------------------------------------------------------------
    def _embed(self, ids: Tensor, offset: int = 0) -> Tensor:
        length = ids.shape[1]
        if offset + length > self.config.max_positions:
            raise ValueError(f"sequence of {offset + length} tokens is longer than max_positions="
                             f"{self.config.max_positions}; cut the inputs or build the model with a larger one")
        x = self.embed(ids) * math.sqrt(self.config.embed_dim) + self.positions[offset:offset + length]
        return F.dropout(x, self.config.dropout, self.training)

    def _valid(self, ids: Tensor, valid: Tensor | None, name: str) -> Tensor:
        if not isinstance(ids, Tensor) or ids.dim() != 2 or ids.dtype not in (torch.long, torch.int):
            raise ValueError(f"{name} must be a (batch, length) integer tensor of token ids, got "
                             f"{getattr(ids, 'dtype', type(ids).__name__)} {tuple(getattr(ids, 'shape', ()))}")
        if valid is None:
            return ids != self.config.pad_id
        if valid.dtype != torch.bool or valid.shape != ids.shape:
            raise ValueError(f"{name} validity mask must be bool with shape {tuple(ids.shape)} (True = real token), "
                             f"got {valid.dtype} {tuple(valid.shape)}")
        return valid

    @staticmethod
    def _pad_mask(valid: Tensor) -> Tensor | None:
        """``nn.MultiheadAttention``'s key_padding_mask convention (True = padding), None when nothing is padded."""
        return None if bool(valid.all()) else ~valid

    def _logits(self, x: Tensor) -> Tensor:
        if self.decoder.final_norm is not None:
            x = self.decoder.final_norm(x)
        return F.linear(x, self.embed.weight)

    def encode(self, src: Tensor, src_valid: Tensor | None = None,
               weights: list | None = None) -> tuple[Tensor, Tensor]:
        """``(memory (B, S, E), src_valid (B, S))``."""
        src_valid = self._valid(src, src_valid, "src")
        pad = self._pad_mask(src_valid)
        x = self._embed(src)
        for layer in self.encoder.layers:
            x = layer(x, pad, weights)
        if self.encoder.final_norm is not None:
            x = self.encoder.final_norm(x)
        return x, src_valid

    def decode(self, tgt_in: Tensor, memory: Tensor, src_valid: Tensor, tgt_valid: Tensor | None = None,
               weights: dict[str, list] | None = None) -> Tensor:
        """Teacher-forced logits ``(B, T, V)`` for the decoder inputs ``tgt_in`` (``<s>`` + target[:-1])."""
        tgt_valid = self._valid(tgt_in, tgt_valid, "tgt_in")
        x, src_pad, tgt_pad = self._embed(tgt_in), self._pad_mask(src_valid), self._pad_mask(tgt_valid)
        for layer in self.decoder.layers:
            x = layer(x, memory, src_pad, tgt_pad, weights=weights)
        return self._logits(x)

    def forward(self, src: Tensor, tgt_in: Tensor, *, src_valid: Tensor | None = None,
                tgt_valid: Tensor | None = None, return_attention: bool = False) -> Seq2SeqOutput:
        """Teacher-forced logits; with ``return_attention`` also every layer's ``(B, H, Lq, Lk)`` weights."""
        weights: dict[str, list] | None = {t: [] for t in ATTENTION_TYPES} if return_attention else None
        memory, src_valid = self.encode(src, src_valid, weights["encoder_self"] if weights is not None else None)
        logits = self.decode(tgt_in, memory, src_valid, tgt_valid, weights)
        return Seq2SeqOutput(logits, weights or {})

    # -- decoding --------------------------------------------------------------------------------------------
    def _limits(self, src_valid: Tensor, max_len_a: float, max_len_b: int) -> Tensor:
        """Per sentence, the most tokens to generate (``</s>`` included): ``a * source length + b``, capped."""
        lengths = src_valid.sum(-1).to(torch.float64)
        return (max_len_a * lengths + max_len_b).floor().long().clamp(1, self.config.max_positions - 1)

    def _step(self, last: Tensor, position: int, caches: list[dict], src_valid: Tensor) -> Tensor:
        """Log-probabilities ``(N, V)`` of the next token after ``last (N,)`` at ``position``; extends ``caches``."""
        x = self._embed(last[:, None], offset=position)
        for layer, cache in zip(self.decoder.layers, caches):
            x = layer.step(x, cache, src_valid)
        logits = self._logits(x[:, 0])
        logp = F.log_softmax(logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits, dim=-1)
        logp[:, [self.config.pad_id, self.config.bos_id]] = -math.inf
        return logp

    def _force_eos(self, logp: Tensor, rows: Tensor) -> None:
        """At the length limit only ``</s>`` may follow (keeping its log-probability, as fairseq does)."""
        if bool(rows.any()):
            keep = logp[rows, self.config.eos_id].clone()
            logp[rows] = -math.inf
            logp[rows, self.config.eos_id] = keep

    @torch.no_grad()
    def greedy(self, src: Tensor, *, src_valid: Tensor | None = None, max_len_a: float = 1.5,
               max_len_b: int = 10) -> list[list[int]]:
        """Greedy decoding; the generated ids of each sentence, without ``<s>``/``</s>``."""
        memory, src_valid = self.encode(src, src_valid)
        limits = self._limits(src_valid, max_len_a, max_len_b)
        n, eos = src.shape[0], self.config.eos_id
        last = torch.full((n,), self.config.bos_id, dtype=torch.long, device=src.device)
        done = torch.zeros(n, dtype=torch.bool, device=src.device)
        out: list[list[int]] = [[] for _ in range(n)]
        caches = [layer.start(memory) for layer in self.decoder.layers]
        for t in range(int(limits.max())):
            logp = self._step(last, t, caches, src_valid)
            self._force_eos(logp, limits <= t + 1)
            last = logp.argmax(-1)
            for i in (~done & (last != eos)).nonzero().flatten().tolist():
                out[i].append(int(last[i]))
            done |= last == eos
            if bool(done.all()):
                break
        return out

    @torch.no_grad()
    def beam_search(self, src: Tensor, *, beam: int = 5, lenpen: float = 1.0, src_valid: Tensor | None = None,
                    max_len_a: float = 1.5, max_len_b: int = 10) -> list[list[int]]:
        """Beam search (fairseq's rule: a sentence is done once ``beam`` hypotheses ended with ``</s>``; the
        best by ``sum log p / length**lenpen``, length counting ``</s>``). ``beam=1`` is greedy decoding."""
        if isinstance(beam, bool) or not isinstance(beam, int) or beam < 1:
            raise ValueError(f"beam must be a positive integer, got {beam!r}")
        memory, src_valid = self.encode(src, src_valid)
        limits = self._limits(src_valid, max_len_a, max_len_b)
        b, k, eos, device = src.shape[0], beam, self.config.eos_id, src.device
        # the beams of a sentence share its source: the cross-attention cache never needs reordering
        caches = [layer.start(memory.repeat_interleave(k, dim=0)) for layer in self.decoder.layers]
        beam_valid = src_valid.repeat_interleave(k, dim=0)
        scores = torch.full((b, k), -math.inf, device=device)
        scores[:, 0] = 0.0
        tokens = torch.full((b * k, 1), self.config.bos_id, dtype=torch.long, device=device)
        finished: list[list[tuple[float, list[int]]]] = [[] for _ in range(b)]
        done = [False] * b
        for t in range(int(limits.max())):
            logp = self._step(tokens[:, -1], t, caches, beam_valid)
            vocab = logp.shape[1]
            self._force_eos(logp, (limits <= t + 1).repeat_interleave(k))
            candidates = (scores.reshape(-1, 1) + logp).reshape(b, k * vocab)
            top_scores, top_index = candidates.topk(2 * k, dim=1)
            top_beam, top_token = top_index // vocab, top_index % vocab
            is_eos = top_token == eos
            for i, j in (is_eos[:, :k] & torch.isfinite(top_scores[:, :k])).nonzero().tolist():
                if not done[i]:
                    row = i * k + int(top_beam[i, j])
                    finished[i].append((float(top_scores[i, j]) / (t + 1) ** lenpen, tokens[row, 1:].tolist()))
            for i in range(b):
                done[i] = done[i] or len(finished[i]) >= k
            if all(done):
                break
            # continue with the k best candidates that do not end the sentence (at most k of the 2k end it)
            order = (is_eos.long() * 2 * k + torch.arange(2 * k, device=device)).argsort(dim=1)[:, :k]
            scores = top_scores.gather(1, order)
            rows = (torch.arange(b, device=device)[:, None] * k + top_beam.gather(1, order)).flatten()
            tokens = torch.cat([tokens[rows], top_token.gather(1, order).reshape(-1, 1)], dim=1)
            for cache in caches:
                cache["k"], cache["v"] = cache["k"][rows], cache["v"][rows]
        return [max(f, key=lambda h: h[0])[1] if f else [] for f in finished]


def label_smoothed_loss(logits: Tensor, target: Tensor, *, pad_id: int, label_smoothing: float = 0.1
                        ) -> tuple[Tensor, Tensor, int]:
    """``(loss_sum, nll_sum, tokens)`` over the non-pad target tokens; ``loss = (1-ε)·nll + ε·mean_v(-log p_v)``
    (fairseq's label-smoothed cross entropy; ``nll_sum`` is detached). One log-softmax serves both."""
    if not 0.0 <= label_smoothing < 1.0:
        raise ValueError(f"label_smoothing must lie in [0, 1), got {label_smoothing!r}")
    gold = target.reshape(-1)
    keep = gold != pad_id
    logp = F.log_softmax(logits.reshape(-1, logits.shape[-1])[keep].float(), dim=-1)
    nll = -logp.gather(1, gold[keep, None]).squeeze(1)
    loss = (1.0 - label_smoothing) * nll.sum() - label_smoothing * logp.mean(dim=-1).sum()
    return loss, nll.detach().sum(), int(keep.sum())


def collate(sources: Sequence[Sequence[int]], targets: Sequence[Sequence[int]] | None = None, *,
            pad_id: int = 0, bos_id: int = 2, eos_id: int = 3, device: torch.device | str | None = None
            ) -> dict[str, Tensor]:
    """Pad token-id lists into a batch: ``src`` (ids + ``</s>``), and with targets ``tgt_in`` (``<s>`` + ids)
    and ``tgt_out`` (ids + ``</s>``), all ``(B, L)`` long padded with ``pad_id``."""

    def pad(rows: list[list[int]]) -> Tensor:
        out = torch.full((len(rows), max(map(len, rows))), pad_id, dtype=torch.long)
        for i, row in enumerate(rows):
            out[i, : len(row)] = torch.tensor(row, dtype=torch.long)
        return out.to(device)

    batch = {"src": pad([[*s, eos_id] for s in sources])}
    if targets is not None:
        if len(targets) != len(sources):
            raise ValueError(f"targets has {len(targets)} rows but sources has {len(sources)}")
        batch["tgt_in"] = pad([[bos_id, *t] for t in targets])
        batch["tgt_out"] = pad([[*t, eos_id] for t in targets])
    return batch


def attention_modules(model: Seq2SeqTransformer) -> dict[str, list[tuple[str, MultiheadAttention]]]:
    """``{"encoder_self" | "decoder_self" | "cross": [(qualified name, module), ...]}`` in layer order."""
    names = {id(m): n for n, m in model.named_modules()}
    return {
        "encoder_self": [(names[id(layer.self_attn)], layer.self_attn) for layer in model.encoder.layers],
        "decoder_self": [(names[id(layer.self_attn)], layer.self_attn) for layer in model.decoder.layers],
        "cross": [(names[id(layer.cross_attn)], layer.cross_attn) for layer in model.decoder.layers],
    }


def paper_particle_sets(model: Seq2SeqTransformer) -> list[str]:
    """The repulsive paper's particle sets for ``model`` (fairseq NMT, repulsive.md §3.3): Q, K and V of every
    encoder self-, decoder self- and cross-attention, each a set of ``num_heads`` particles, in module order.
    ``RepulsiveHeads(model).particle_sets`` are exactly these (54 for 6+6 layers)."""
    order = {n: i for i, (n, _) in enumerate(model.named_modules())}
    modules = sorted((n for group in attention_modules(model).values() for n, _ in group), key=order.__getitem__)
    return [f"{name}.{role}" for name in modules for role in "qkv"]
