"""An MCAN-style co-attention network for visual question answering (Yu et al. 2019, "Deep Modular Co-Attention
Networks"), small enough to train on a CPU, with every attention a :class:`probattn.nn.MultiheadAttention`.

Pieces (MCAN's encoder–decoder layout; post-norm residual blocks ``LayerNorm(x + dropout(f(x)))``):

* **image grid features**: a small CNN trained jointly (stride-2 3×3 convolutions + ReLU, as many as take the
  64 × 64 image to a ``grid × grid`` map), normalized per image over all its cells and channels (mean 0,
  variance 1, no affine parameters; cells keep their relative strength): :func:`add_feature_noise` adds ``N(0, σ²)`` here (the
  alignment paper's noisy-feature test), then a linear map to ``embed_dim`` plus a learned cell position;
* **question encoder**: word embeddings + learned positions, ``layers`` self-attention blocks (SA + FFN);
* **image decoder**: ``layers`` blocks of image self-attention, question-guided attention (image cells query the
  encoded question; MCAN's GA) and FFN;
* **attentional reduction** (MCAN's AttFlat) of each modality: ``glimpses`` learned queries attend over the
  question tokens / image cells (a :class:`~probattn.nn.MultiheadAttention` too, so the variants change it; with
  one query a column normalization would make it uniform, hence ``glimpses >= 2`` for the column-normalized
  schemes), flattened and projected to ``2 · embed_dim``;
* **fusion and classifier**: ``LayerNorm(question + image)`` → linear → answer logits.

Masks: padded question tokens are keys of the question self-attention, the guided attention and the question
reduction; ``key_padding_mask`` removes them from all three (and, in the self-attention, from the column
statistics as queries), so they receive no attention and the answer does not depend on them. Every pattern is
padding only, hence block-complete (:func:`probattn.masks.is_block_complete`): the column-normalized schemes
(``doubly``, ``hybrid``, ``sinkhorn``) are allowed in every layer.

Shapes: ``images`` uint8 ``(M, 3, 64, 64)`` (or float in [0, 1]); ``questions`` long ``(B, L)`` with 0 = padding;
``image_index`` long ``(B,)`` picks each question's image (default: question ``b`` is about image ``b``, M = B);
logits ``(B, num_answers)``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from probattn.functional import COLUMN_NORMALIZED, NORMALIZATIONS
from probattn.nn import MultiheadAttention

__all__ = [
    "ATTENTION_TYPES",
    "BASELINE_KINDS",
    "VQABaseline",
    "VQAConfig",
    "VQAOutput",
    "VQATransformer",
    "add_feature_noise",
    "image_grid",
]

# the attention applications of the model, in the order a forward pass runs them
ATTENTION_TYPES = ("question_self", "image_self", "guided", "question_reduce", "image_reduce")
BASELINE_KINDS = ("question", "image+question")


@dataclass(frozen=True)
class VQAConfig:
    """Sizes and options of :class:`VQATransformer` (defaults: a small CPU model; MCAN-small is
    ``embed_dim=512, num_heads=8, ffn_dim=2048, layers=6`` on 14 × 14 / 100-box features)."""

    vocab_size: int
    num_answers: int
    embed_dim: int = 64
    num_heads: int = 4
    ffn_dim: int = 128
    layers: int = 2
    grid: int = 8
    cnn_channels: int = 32
    glimpses: int = 2
    dropout: float = 0.1
    max_question_length: int = 16
    image_size: int = 64
    normalization: str = "softmax"
    hybrid_alpha: float = 0.5
    sinkhorn_iters: int = 3

    def __post_init__(self) -> None:
        for name in ("vocab_size", "num_answers", "embed_dim", "num_heads", "ffn_dim", "layers", "grid",
                     "cnn_channels", "glimpses", "max_question_length", "image_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if self.embed_dim % self.num_heads:
            raise ValueError(f"embed_dim={self.embed_dim} must be divisible by num_heads={self.num_heads}")
        steps = math.log2(self.image_size / self.grid) if self.image_size >= self.grid else -1
        if steps < 1 or steps != int(steps):
            raise ValueError(f"grid={self.grid} must be image_size={self.image_size} divided by a power of two "
                             "(at least one stride-2 convolution), e.g. 4, 8 or 16 for 64 x 64 images")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must lie in [0, 1), got {self.dropout!r}")
        if self.normalization not in NORMALIZATIONS:
            raise ValueError(f"normalization must be one of {NORMALIZATIONS}, got {self.normalization!r}")
        if self.normalization in COLUMN_NORMALIZED and self.glimpses < 2:
            raise ValueError(f"normalization={self.normalization!r} with glimpses=1: a column normalization over a "
                             "single query makes the attentional reduction uniform; use glimpses >= 2")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def conv_layers(self) -> int:
        return round(math.log2(self.image_size / self.grid))


@dataclass
class VQAOutput:
    """``logits (B, num_answers)``; with ``return_attention``: per type in :data:`ATTENTION_TYPES`, one
    ``(B, H, Lq, Lk)`` weight tensor per application (``question_self``, ``image_self``, ``guided``: one per
    layer), and ``question_valid (B, L)``."""

    logits: Tensor
    attentions: dict[str, list[Tensor]] = field(default_factory=dict)
    question_valid: Tensor | None = None


def add_feature_noise(features: Tensor, sigma: float, *, generator: torch.Generator | None = None) -> Tensor:
    """``features + ε`` with ``ε ~ N(0, σ²)`` i.i.d. per entry (the noisy-feature test); ``features`` for σ = 0.

    With a seeded ``generator`` the same call gives the same noise, so every model of a study sees the same
    corrupted features. Raises ValueError for a negative or non-finite ``sigma``.
    """
    if not (isinstance(sigma, (int, float)) and math.isfinite(sigma) and sigma >= 0):
        raise ValueError(f"noise sigma must be a finite number >= 0, got {sigma!r}")
    if sigma == 0:
        return features
    noise = torch.randn(features.shape, generator=generator, dtype=features.dtype, device="cpu")
    return features + sigma * noise.to(features.device)


def image_grid(images: Tensor) -> Tensor:
    """uint8 ``(M, 3, H, W)`` → float in [0, 1]; a float tensor is checked to lie in [0, 1] and passed through."""
    if images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"images must be (M, 3, H, W), got shape {tuple(images.shape)}")
    if images.dtype == torch.uint8:
        return images.float() / 255.0
    if not images.is_floating_point():
        raise TypeError(f"images must be uint8 or float in [0, 1], got {images.dtype}")
    return images


class _CNN(nn.Module):
    """Stride-2 3×3 convolutions + ReLU from 3 channels to ``channels``: ``(M, 3, S, S) → (M, grid², channels)``."""

    def __init__(self, layers: int, channels: int) -> None:
        super().__init__()
        widths = [3] + [max(8, channels >> (layers - 1 - i)) for i in range(layers)]
        self.convs = nn.ModuleList(nn.Conv2d(widths[i], widths[i + 1], 3, stride=2, padding=1) for i in range(layers))
        for conv in self.convs:  # He initialization: activations keep their scale through the ReLUs
            nn.init.kaiming_normal_(conv.weight, nonlinearity="relu")
            nn.init.zeros_(conv.bias)

    def forward(self, x: Tensor) -> Tensor:
        x = 2.0 * x - 1.0  # [0, 1] -> [-1, 1]
        for conv in self.convs:
            x = F.relu(conv(x))
        return x.flatten(2).transpose(1, 2)


def _normalize_grid(cells: Tensor) -> Tensor:
    """Each image's grid ``(M, cells, C)`` to mean 0 and variance 1 over all its cells and channels (a layer norm
    over the whole grid, no affine part): cells keep their relative strength, and noise of standard deviation σ
    is σ times the features' own spread."""
    return F.layer_norm(cells, cells.shape[-2:])


class _FeedForward(nn.Module):
    def __init__(self, c: VQAConfig) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(c.embed_dim, c.ffn_dim), nn.Linear(c.ffn_dim, c.embed_dim)
        self.dropout = c.dropout

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(F.dropout(F.relu(self.fc1(x)), self.dropout, self.training))


def _attention(c: VQAConfig) -> MultiheadAttention:
    return MultiheadAttention(c.embed_dim, c.num_heads, batch_first=True, normalization=c.normalization,
                              hybrid_alpha=c.hybrid_alpha, sinkhorn_iters=c.sinkhorn_iters)


class _Block(nn.Module):
    """``LayerNorm(x + dropout(f(x)))``."""

    def __init__(self, c: VQAConfig) -> None:
        super().__init__()
        self.norm, self.dropout = nn.LayerNorm(c.embed_dim), c.dropout

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        return self.norm(x + F.dropout(y, self.dropout, self.training))


class SelfAttentionLayer(nn.Module):
    """MCAN's SA unit: self-attention + FFN."""

    def __init__(self, c: VQAConfig) -> None:
        super().__init__()
        self.attn, self.ffn = _attention(c), _FeedForward(c)
        self.attn_block, self.ffn_block = _Block(c), _Block(c)

    def forward(self, x: Tensor, pad: Tensor | None, weights: list | None) -> Tensor:
        a, w = self.attn(x, x, x, key_padding_mask=pad, need_weights=weights is not None, average_attn_weights=False)
        if weights is not None:
            weights.append(w)
        x = self.attn_block(x, a)
        return self.ffn_block(x, self.ffn(x))


class GuidedLayer(nn.Module):
    """MCAN's SGA unit: image self-attention, question-guided attention (image cells query the question), FFN."""

    def __init__(self, c: VQAConfig) -> None:
        super().__init__()
        self.self_attn, self.guided_attn, self.ffn = _attention(c), _attention(c), _FeedForward(c)
        self.self_block, self.guided_block, self.ffn_block = _Block(c), _Block(c), _Block(c)

    def forward(self, y: Tensor, x: Tensor, x_pad: Tensor | None, weights: dict[str, list] | None) -> Tensor:
        need = weights is not None
        a, w_self = self.self_attn(y, y, y, need_weights=need, average_attn_weights=False)
        y = self.self_block(y, a)
        a, w_guided = self.guided_attn(y, x, x, key_padding_mask=x_pad, need_weights=need, average_attn_weights=False)
        y = self.guided_block(y, a)
        if weights is not None:
            weights["image_self"].append(w_self)
            weights["guided"].append(w_guided)
        return self.ffn_block(y, self.ffn(y))


class AttentionalReduction(nn.Module):
    """MCAN's AttFlat as attention: ``glimpses`` learned queries attend over ``x (B, L, E)``; the ``glimpses``
    outputs are concatenated and projected to ``out_dim``: ``(B, out_dim)``."""

    def __init__(self, c: VQAConfig, out_dim: int) -> None:
        super().__init__()
        self.queries = nn.Parameter(torch.randn(c.glimpses, c.embed_dim) * c.embed_dim ** -0.5)
        self.attn = _attention(c)
        self.merge = nn.Linear(c.glimpses * c.embed_dim, out_dim)

    def forward(self, x: Tensor, pad: Tensor | None, weights: list | None) -> Tensor:
        q = self.queries.unsqueeze(0).expand(x.shape[0], -1, -1)
        out, w = self.attn(q, x, x, key_padding_mask=pad, need_weights=weights is not None,
                           average_attn_weights=False)
        if weights is not None:
            weights.append(w)
        return self.merge(out.flatten(1))


def _check_inputs(images: Tensor, questions: Tensor, image_index: Tensor | None,
                  max_length: int) -> tuple[Tensor, Tensor]:
    if not isinstance(questions, Tensor) or questions.dim() != 2 or questions.dtype not in (torch.long, torch.int):
        raise ValueError(f"questions must be a (batch, length) integer tensor of token ids (0 = padding), got "
                         f"{getattr(questions, 'dtype', type(questions).__name__)} "
                         f"{tuple(getattr(questions, 'shape', ()))}")
    if questions.shape[1] > max_length:
        raise ValueError(f"questions have {questions.shape[1]} tokens, more than max_question_length={max_length}; "
                         "cut them or build the model with a larger max_question_length")
    valid = questions != 0
    if not bool(valid.any(-1).all()):
        raise ValueError("a question has no real token (all padding); drop empty questions")
    if image_index is None:
        if images.shape[0] != questions.shape[0]:
            raise ValueError(f"{images.shape[0]} images for {questions.shape[0]} questions: pass image_index (B,) "
                             "to say which image each question is about")
        image_index = torch.arange(questions.shape[0], device=questions.device)
    elif image_index.shape != (questions.shape[0],) or bool(((image_index < 0) | (image_index >= images.shape[0])).any()):
        raise ValueError(f"image_index must be ({questions.shape[0]},) with entries in [0, {images.shape[0]})")
    return valid, image_index


class VQATransformer(nn.Module):
    """The co-attention network of the module doc: ``VQATransformer(VQAConfig(vocab_size=30, num_answers=13))``."""

    def __init__(self, config: VQAConfig) -> None:
        super().__init__()
        if not isinstance(config, VQAConfig):
            raise TypeError(f"config must be a VQAConfig, got {type(config).__name__}")
        c = self.config = config
        self.cnn = _CNN(c.conv_layers, c.cnn_channels)
        feature_dim = self.cnn.convs[-1].out_channels
        self.image_proj = nn.Linear(feature_dim, c.embed_dim)
        self.cell_positions = nn.Parameter(torch.randn(c.grid * c.grid, c.embed_dim) * 0.02)
        self.embed = nn.Embedding(c.vocab_size, c.embed_dim, padding_idx=0)
        self.word_positions = nn.Parameter(torch.randn(c.max_question_length, c.embed_dim) * 0.02)
        self.encoder = nn.ModuleList(SelfAttentionLayer(c) for _ in range(c.layers))
        self.decoder = nn.ModuleList(GuidedLayer(c) for _ in range(c.layers))
        self.question_reduce = AttentionalReduction(c, 2 * c.embed_dim)
        self.image_reduce = AttentionalReduction(c, 2 * c.embed_dim)
        self.fusion_norm = nn.LayerNorm(2 * c.embed_dim)
        self.classifier = nn.Linear(2 * c.embed_dim, c.num_answers)

    def grid_features(self, images: Tensor) -> Tensor:
        """The normalized CNN grid ``(M, grid², C)`` (each image: mean 0, variance 1), where the noise goes."""
        return _normalize_grid(self.cnn(image_grid(images)))

    def forward(self, images: Tensor, questions: Tensor, image_index: Tensor | None = None, *,
                noise_std: float = 0.0, noise_generator: torch.Generator | None = None,
                return_attention: bool = False) -> VQAOutput:
        """Answer logits; ``noise_std`` > 0 adds ``N(0, noise_std²)`` to the grid features (:func:`add_feature_noise`)."""
        c = self.config
        valid, image_index = _check_inputs(images, questions, image_index, c.max_question_length)
        pad = None if bool(valid.all()) else ~valid  # torch convention: True = padding
        features = add_feature_noise(self.grid_features(images), noise_std, generator=noise_generator)
        y = self.image_proj(features)[image_index] + self.cell_positions
        x = self.embed(questions) + self.word_positions[: questions.shape[1]]
        x, y = F.dropout(x, c.dropout, self.training), F.dropout(y, c.dropout, self.training)
        weights: dict[str, list] | None = {t: [] for t in ATTENTION_TYPES} if return_attention else None
        for layer in self.encoder:
            x = layer(x, pad, None if weights is None else weights["question_self"])
        for layer in self.decoder:
            y = layer(y, x, pad, weights)
        fused = self.question_reduce(x, pad, None if weights is None else weights["question_reduce"]) + \
            self.image_reduce(y, None, None if weights is None else weights["image_reduce"])
        logits = self.classifier(self.fusion_norm(fused))
        return VQAOutput(logits=logits, attentions=weights or {}, question_valid=valid)

    def attention_modules(self) -> dict[str, list[tuple[str, MultiheadAttention]]]:
        """``{type: [(qualified name, module), ...]}`` for :data:`ATTENTION_TYPES`, in layer order."""
        names = {id(m): n for n, m in self.named_modules()}
        pick = lambda modules: [(names[id(m)], m) for m in modules]  # noqa: E731
        return {
            "question_self": pick(layer.attn for layer in self.encoder),
            "image_self": pick(layer.self_attn for layer in self.decoder),
            "guided": pick(layer.guided_attn for layer in self.decoder),
            "question_reduce": pick([self.question_reduce.attn]),
            "image_reduce": pick([self.image_reduce.attn]),
        }


class VQABaseline(nn.Module):
    """The attention-free baselines: ``"question"`` (bag of words → MLP: the answer prior given the question
    alone) and ``"image+question"`` (the same CNN's features average-pooled over the grid, concatenated with the
    bag of words → MLP). Same call as :class:`VQATransformer` (``return_attention`` gives no weights)."""

    def __init__(self, config: VQAConfig, kind: str) -> None:
        super().__init__()
        if kind not in BASELINE_KINDS:
            raise ValueError(f"kind must be one of {BASELINE_KINDS}, got {kind!r}")
        c = self.config = config
        self.kind = kind
        self.cnn = _CNN(c.conv_layers, c.cnn_channels) if kind == "image+question" else None
        image_dim = self.cnn.convs[-1].out_channels if self.cnn is not None else 0
        hidden = 2 * c.embed_dim
        self.mlp = nn.Sequential(nn.Linear(c.vocab_size + image_dim, hidden), nn.ReLU(), nn.Dropout(c.dropout),
                                 nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, c.num_answers))

    def forward(self, images: Tensor, questions: Tensor, image_index: Tensor | None = None, *,
                noise_std: float = 0.0, noise_generator: torch.Generator | None = None,
                return_attention: bool = False) -> VQAOutput:
        valid, image_index = _check_inputs(images, questions, image_index, self.config.max_question_length)
        words = torch.zeros(questions.shape[0], self.config.vocab_size, device=questions.device)
        words.scatter_add_(1, questions, valid.float())
        parts = [words.clamp_max(1.0)]
        if self.cnn is not None:
            cells = _normalize_grid(self.cnn(image_grid(images)))
            cells = add_feature_noise(cells, noise_std, generator=noise_generator)
            parts.append(cells.mean(1)[image_index])
        return VQAOutput(logits=self.mlp(torch.cat(parts, dim=-1)), question_valid=valid)
