"""Run a converted Hugging Face model over texts and stream every diagnostics statistic, layer by layer.

Attention weights come from ``output_attentions=True``; per-head queries and keys reach a probe set as
``module.probattn_probe`` on each attention layer (see :mod:`probattn.nn.hooks`); per-head outputs are read
where the heads are concatenated: the input of the layer's output projection (``o_proj`` / ``out_proj`` /
``c_proj`` / ``out_lin``) when the attention module owns one, otherwise the module's own output
(BERT-style ``*SelfAttention``). Nothing but fixed-size running statistics is kept across batches. Per-head
parameter cosines are read from the query/key/value projections where they are separate linear layers.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from probattn.metrics import (
    AttentionStatistics,
    CalibrationAccumulator,
    CalibrationResult,
    head_js_divergence,
    parameter_cosine_similarity,
)
from probattn.nn.hooks import PROBE_ATTR

__all__ = ["Diagnosis", "attached_probes", "collect", "parameter_cosines"]

TOKEN_EXAMPLES = 8  # examples kept for the token-level view
HEAD_DISTANCE_EXAMPLES = 4  # examples of the first batch used for the all-layer head distances
OUTPUT_PROJECTIONS = ("o_proj", "out_proj", "c_proj", "out_lin")
QKV_PROJECTIONS = (("query", "key", "value"), ("q_proj", "k_proj", "v_proj"), ("q_lin", "k_lin", "v_lin"))


def parameter_cosines(module: nn.Module, heads: int) -> dict[str, float]:
    """Mean pairwise cosine between heads' projection parameters (the repulsive authors' GraphWriter measure).

    For separate ``nn.Linear`` query / key / value projections (``query``/``key``/``value``, ``q_proj``/...,
    ``q_lin``/...): each head's rows of the weight (and bias) form its vector; grouped key/value projections
    use their own head count. Returns ``{}`` for fused or other layouts (e.g. GPT-2's ``c_attn``).
    """
    for names in QKV_PROJECTIONS:
        layers = [getattr(module, name, None) for name in names]
        if not all(isinstance(layer, nn.Linear) for layer in layers):
            continue
        head_dim = layers[0].out_features // heads
        out = {}
        for kind, layer in zip(("query", "key", "value"), layers):
            n = layer.out_features // head_dim
            if n < 2 or n * head_dim != layer.out_features:
                return {}
            params = layer.weight.detach().reshape(n, -1)
            if layer.bias is not None:
                params = torch.cat([params, layer.bias.detach().reshape(n, head_dim)], dim=1)
            out[kind] = float(parameter_cosine_similarity(params.double()))
        return out
    return {}


@dataclass
class Diagnosis:
    """What :func:`collect` measured for one model.

    ``layers[i]`` is :meth:`AttentionStatistics.summary` of attention layer ``i`` (its ``causal`` entry says whether
    the causal-aware normalizations were used). ``example_attention[i]`` is the first example's per-head map in
    layer ``i``, ``(H, N, N)`` over its real tokens ``example_tokens``; ``example_maps[i]`` its head mean ``(N, N)``.
    ``token_examples`` holds the tokens of the first few examples and ``token_mass[i][e]`` the per-head normalized
    incoming mass ``(H, N_e)`` of example ``e`` in layer ``i`` (token-level views), ``token_sinks[i][e]`` which of
    those keys are sinks (:func:`probattn.metrics.attention_sinks`). ``head_distance`` is the
    Jensen–Shannon divergence (bits) between every pair of heads of all layers, ``(ΣH, ΣH)`` over the first batch
    (heads ordered layer by layer), None for a single head. ``embeddings (examples, D)``: the mean of the last
    hidden state over real tokens, None when the model returns no hidden state. ``calibration`` is None when it
    could not be measured, with the reason in ``calibration_note``.
    """

    label: str
    layers: list[dict]
    example_maps: list[np.ndarray]
    example_tokens: list[str]
    examples: int
    seconds: float
    calibration: CalibrationResult | None = None
    calibration_note: str = ""
    layer_names: list[str] = field(default_factory=list)
    example_attention: list[np.ndarray] = field(default_factory=list)
    token_examples: list[list[str]] = field(default_factory=list)
    token_mass: list[list[np.ndarray]] = field(default_factory=list)
    token_sinks: list[list[np.ndarray]] = field(default_factory=list)
    head_distance: np.ndarray | None = None
    embeddings: np.ndarray | None = None
    normalization: str = "softmax"


class _LayerProbe:
    """Receives one layer's q/k (``observe``) and head outputs (forward hooks) into its statistics."""

    def __init__(self, owner: _Collector, causal: bool = False) -> None:
        self.owner = owner
        self.causal = causal
        self.stats: AttentionStatistics | None = None

    def statistics(self, heads: int) -> AttentionStatistics:
        if self.stats is None:
            self.stats = AttentionStatistics(heads, causal=self.causal, token_examples=TOKEN_EXAMPLES,
                                             pairwise_examples=self.owner.pairwise_examples)
        return self.stats

    def observe(self, q: Tensor, k: Tensor, *, query_valid: Tensor | None, key_valid: Tensor | None) -> None:
        self.statistics(q.shape[1]).update_qk(q, k, query_valid=query_valid, key_valid=key_valid)

    def head_outputs(self, concatenated: Tensor) -> None:
        """``concatenated (B, L, H·Dv)``, the heads side by side before the output projection."""
        if self.stats is None or concatenated.dim() != 3 or concatenated.shape[-1] % self.stats.heads:
            return  # no q/k seen yet (layer not probed) or not a per-head layout: nothing to attribute
        b, n, width = concatenated.shape
        valid = self.owner.valid
        if valid is not None and tuple(valid.shape) != (b, n):
            valid = None
        outputs = concatenated.reshape(b, n, self.stats.heads, width // self.stats.heads)
        self.stats.update_head_outputs(outputs, valid=valid)


@contextlib.contextmanager
def attached_probes(modules: Sequence[nn.Module], probes: Sequence[object]) -> Iterator[None]:
    """Set ``probes[i]`` as ``modules[i].probattn_probe`` (see :mod:`probattn.nn.hooks`) for the ``with`` block.

    On exit every module gets back the probe it had before (a user's own), or none.
    """
    if len(modules) != len(probes):
        raise ValueError(f"modules has {len(modules)} entries but probes has {len(probes)}; give one probe per module")
    previous = [getattr(module, PROBE_ATTR, None) for module in modules]
    try:
        for module, probe in zip(modules, probes):
            setattr(module, PROBE_ATTR, probe)
        yield
    finally:
        for module, before in zip(modules, previous):
            if before is not None:
                setattr(module, PROBE_ATTR, before)
            elif getattr(module, PROBE_ATTR, None) is not None:
                delattr(module, PROBE_ATTR)


class _Collector:
    """Probes and head-output hooks on every attention layer of ``model``; ``attached()`` installs them for a
    ``with`` block and restores what was there. ``weights`` receives per-layer attention maps of models that do not
    return them (probattn's own :class:`probattn.nn.MultiheadAttention` inside ``torch.nn`` layers)."""

    def __init__(self, model: nn.Module, pairwise_examples: int | None = None) -> None:
        self.valid: Tensor | None = None
        self.pairwise_examples = pairwise_examples
        self.hf = _is_hf(model)
        if self.hf:
            from probattn.hf import attention_modules  # needs transformers; importing this module does not

            self.modules = attention_modules(model)
        else:
            from probattn.nn import MultiheadAttention

            self.modules = [(n, m) for n, m in model.named_modules() if isinstance(m, MultiheadAttention)]
        if not self.modules:
            raise ValueError(f"{type(model).__name__} has no attention layer that probattn can observe (convert a "
                             "Hugging Face model with probattn.hf.convert; probattn models need "
                             "probattn.nn.MultiheadAttention)")
        self.probes = [_LayerProbe(self, causal=bool(getattr(m, "is_causal", False))) for _, m in self.modules]
        self.weights: list[Tensor | None] = [None] * len(self.modules)

    @contextlib.contextmanager
    def attached(self) -> Iterator[None]:
        handles = []
        try:
            for i, ((_, module), probe) in enumerate(zip(self.modules, self.probes)):
                projection = next((getattr(module, name) for name in OUTPUT_PROJECTIONS
                                   if isinstance(getattr(module, name, None), nn.Linear)), None)
                if projection is not None:
                    handles.append(projection.register_forward_pre_hook(_pre_hook(probe)))
                else:
                    handles.append(module.register_forward_hook(_post_hook(probe)))
                if not self.hf:  # torch-style attention: ask for per-head weights and keep them
                    handles.append(module.register_forward_pre_hook(_want_weights, with_kwargs=True))
                    handles.append(module.register_forward_hook(_keep_weights(self, i)))
            with attached_probes([module for _, module in self.modules], self.probes):
                yield
        finally:
            for handle in handles:
                handle.remove()


def _is_hf(model: nn.Module) -> bool:
    return hasattr(getattr(model, "config", None), "model_type")


def _want_weights(_module, args, kwargs):
    return args, {**kwargs, "need_weights": True, "average_attn_weights": False}


def _keep_weights(collector: _Collector, index: int) -> Callable:
    def hook(_module, _inputs, output):
        collector.weights[index] = output[1] if isinstance(output, tuple) and len(output) > 1 else None
    return hook


def _pre_hook(probe: _LayerProbe) -> Callable:
    def hook(_module, inputs):
        if inputs and isinstance(inputs[0], Tensor):
            probe.head_outputs(inputs[0])
    return hook


def _post_hook(probe: _LayerProbe) -> Callable:
    def hook(_module, _inputs, output):
        first = output[0] if isinstance(output, tuple) else output
        if isinstance(first, Tensor):
            probe.head_outputs(first)
    return hook


class _Texts:
    """Tokenizes text for one model and turns ids back into token strings: a Hugging Face tokenizer, or the
    :class:`probattn.training.modeling.Encoder` of a ``probattn train`` model."""

    def __init__(self, tokenizer, max_length: int) -> None:
        if tokenizer is None:
            raise ValueError("the model directory holds no tokenizer; diagnose needs one to read text")
        self.tokenizer, self.max_length = tokenizer, max_length
        self.vocabulary = getattr(getattr(tokenizer, "tokenize", None), "vocabulary", None)  # a word-level Encoder
        self.encoder = hasattr(tokenizer, "state") and hasattr(tokenizer, "tokenize")

    def __call__(self, texts: list[str], device) -> tuple[dict[str, Tensor], Tensor]:
        if self.encoder:
            encoded = self.tokenizer(texts)
            valid = encoded.attention_mask.to(torch.bool)
            width = int(valid.sum(1).max())
            batch = {"input_ids": encoded.input_ids[:, :width], "attention_mask": valid[:, :width]}
        else:
            batch = dict(self.tokenizer(texts, padding=True, truncation=True, max_length=self.max_length,
                                        return_tensors="pt"))
        batch = {k: v.to(device) for k, v in batch.items()}
        return batch, batch["attention_mask"].to(torch.bool)

    def tokens(self, ids: list[int]) -> list[str]:
        if self.vocabulary is not None:
            return [self.vocabulary[i] if 0 <= i < len(self.vocabulary) else f"#{i}" for i in ids]
        # a probattn train model over frozen MiniLM states reads its input ids (store rows) back as tokens itself
        convert = getattr(getattr(self.tokenizer, "tokenize", None), "convert_ids_to_tokens", None)
        return (convert or self.tokenizer.convert_ids_to_tokens)(ids)


def _forward(model: nn.Module, collector: _Collector, batch: dict[str, Tensor]) -> tuple[list[Tensor], object]:
    """``(attention maps per observed layer, model output)`` of one batch."""
    if not collector.hf:
        collector.weights = [None] * len(collector.modules)
        out = model(**batch)
        if any(w is None or w.dim() != 4 for w in collector.weights):
            raise ValueError(f"{type(model).__name__}: its attention layers returned no per-head weights")
        return list(collector.weights), out
    extra = {}
    if getattr(model.config, "is_encoder_decoder", False):
        extra["decoder_input_ids"] = batch["input_ids"]  # the text itself on both sides (teacher forcing)
        extra["decoder_attention_mask"] = batch["attention_mask"]
    out = model(**batch, **extra, output_attentions=True, output_hidden_states=True)
    if getattr(model.config, "is_encoder_decoder", False):
        attentions = _encoder_decoder_maps(collector, out)
    else:
        attentions = list(getattr(out, "attentions", None) or ())
    if len(attentions) != len(collector.probes):
        raise ValueError(f"{type(model).__name__} returned {len(attentions)} attention maps for "
                         f"{len(collector.probes)} attention layers; diagnose needs output_attentions=True to work")
    return attentions, out


def _encoder_decoder_maps(collector: _Collector, out) -> list[Tensor]:
    """Match an encoder–decoder's encoder / decoder / cross attention maps to the observed layers, by name."""
    queues = {"encoder": list(out.encoder_attentions or ()), "decoder": list(out.decoder_attentions or ()),
              "cross": list(out.cross_attentions or ())}
    maps = []
    for name, module in collector.modules:
        lowered = name.lower()
        if getattr(module, "is_cross_attention", False) or any(
                part in lowered for part in ("encoder_attn", "crossattention", "encdecattention", "cross_attn")):
            kind = "cross"
        elif "decoder" in lowered:
            kind = "decoder"
        else:
            kind = "encoder"
        if not queues[kind]:
            return []
        maps.append(queues[kind].pop(0))
    return maps


def _pooled(out, valid: Tensor) -> Tensor | None:
    """Mean of the last hidden state over real tokens ``(B, D)``, or None."""
    hidden = getattr(out, "last_hidden_state", None)
    if hidden is None:
        states = getattr(out, "decoder_hidden_states", None) or getattr(out, "hidden_states", None)
        hidden = states[-1] if states else None
    if hidden is None or hidden.dim() != 3 or tuple(hidden.shape[:2]) != tuple(valid.shape):
        return None
    weights = valid.unsqueeze(-1).to(hidden.dtype)
    return ((hidden * weights).sum(1) / weights.sum(1).clamp_min(1.0)).float().cpu()


def _head_distance(attentions: list[Tensor], valid: Tensor) -> np.ndarray | None:
    """Jensen–Shannon divergence between all heads of all layers, over the first examples of a batch."""
    n = valid.shape[1]
    maps = [w[:HEAD_DISTANCE_EXAMPLES].float() for w in attentions if tuple(w.shape[-2:]) == (n, n)]
    if len(maps) != len(attentions) or sum(w.shape[1] for w in maps) < 2:
        return None
    stacked = torch.cat(maps, dim=1)  # (B, ΣH, L, L)
    return head_js_divergence(stacked, query_valid=valid[:HEAD_DISTANCE_EXAMPLES]).mean(0).numpy()


def _calibration_note(model: nn.Module, logits: Tensor | None) -> str:
    if logits is None:
        return (f"{type(model).__name__} has no classification head (no logits); diagnose a fine-tuned classifier "
                "to measure calibration")
    if logits.dim() != 2:
        return (f"{type(model).__name__} returns per-token logits {tuple(logits.shape)} (a language model), not "
                "class scores; calibration needs a sequence classifier")
    return ""


def collect(
    model: nn.Module,
    tokenizer,
    texts: Sequence[str],
    *,
    labels: Sequence[int] | None = None,
    label: str = "model",
    batch_size: int = 16,
    max_length: int = 128,
    device: str | torch.device = "cpu",
    progress: bool = True,
    no_labels_reason: str = "the data has no labels",
    pairwise_examples: int | None = None,
) -> Diagnosis:
    """Run ``model`` over ``texts`` and measure every diagnostics statistic, layer by layer.

    Args:
        model, tokenizer: a Hugging Face model converted by :func:`probattn.hf.convert` and its tokenizer (e.g.
            from :func:`probattn.hf.load_model`), or a ``probattn train`` model and its encoder (from
            :func:`probattn.training.modeling.load_trained`). Decoders (causal attention layers) get the
            causal-aware normalizations; encoder–decoders read the text on both sides.
        texts: the inputs, tokenized in batches of ``batch_size`` (truncated to ``max_length`` tokens).
        labels: class ids in the model's label space, for calibration when the model returns class logits
            ``(B, C)``; per-token logits (language models) are not class scores and are skipped with a note.
        label: name of this run in reports.
        no_labels_reason: what the report says about calibration when ``labels`` is None.
        pairwise_examples: measure the costly pairwise statistics (head similarity, Lin, q/k MMD²) on the first
            that many examples only (None = all; see :class:`probattn.metrics.AttentionStatistics`).
    """
    if not texts:
        raise ValueError("texts is empty; give at least one example")
    if batch_size < 1 or max_length < 2:
        raise ValueError(f"batch_size must be >= 1 and max_length >= 2, got {batch_size} and {max_length}")
    if labels is not None and len(labels) != len(texts):
        raise ValueError(f"labels has {len(labels)} entries but texts has {len(texts)}")
    reader = _Texts(tokenizer, max_length)
    model = model.to(device).eval()
    collector = _Collector(model, pairwise_examples)
    calibration = CalibrationAccumulator() if labels is not None else None
    note: str | None = None
    token_examples: list[list[str]] = []
    pooled: list[Tensor] = []
    head_distance = None
    start = time.perf_counter()
    with collector.attached(), torch.no_grad():
        batches = range(0, len(texts), batch_size)
        for begin in tqdm(batches, desc=f"diagnose {label}", unit="batch", disable=not progress):
            batch, valid = reader(list(texts[begin : begin + batch_size]), device)
            collector.valid = valid
            attentions, out = _forward(model, collector, batch)
            for probe, weights in zip(collector.probes, attentions):
                same_shape = tuple(weights.shape[-2:]) == (valid.shape[1],) * 2
                probe.statistics(weights.shape[1]).update_weights(
                    weights, query_valid=valid if same_shape else None, key_valid=valid if same_shape else None)
            for row in range(min(len(valid), TOKEN_EXAMPLES - len(token_examples))):
                token_examples.append(reader.tokens(batch["input_ids"][row][valid[row]].tolist()))
            if head_distance is None and begin == 0:
                head_distance = _head_distance(attentions, valid)
            logits = out if isinstance(out, Tensor) else getattr(out, "logits", None)
            if note is None:
                note = _calibration_note(model, logits)
            if calibration is not None and not note:
                target = torch.as_tensor(labels[begin : begin + batch_size])
                calibration.update(torch.softmax(logits.float(), dim=-1), target)
            embedding = None if isinstance(out, Tensor) else _pooled(out, valid)
            if embedding is not None:
                pooled.append(embedding)
    seconds = time.perf_counter() - start
    layers = [p.stats.summary() for p in collector.probes]
    for layer, (_, module) in zip(layers, collector.modules):
        cosines = parameter_cosines(module, layer["heads"])
        if cosines:
            layer["parameter_cosine"] = cosines
    per_head = [p.stats.example_map.numpy() for p in collector.probes]
    result = Diagnosis(
        label=label, layers=layers, example_maps=[m.mean(0) for m in per_head], example_tokens=token_examples[0],
        examples=len(texts), seconds=seconds, layer_names=[n for n, _ in collector.modules],
        example_attention=per_head, token_examples=token_examples,
        token_mass=[[m.numpy() for m in p.stats.token_mass] for p in collector.probes], head_distance=head_distance,
        token_sinks=[[m.numpy() for m in p.stats.token_sinks] for p in collector.probes],
        embeddings=torch.cat(pooled).numpy() if len(pooled) * batch_size >= len(texts) and pooled else None,
        normalization=_normalization(model, collector),
    )
    if note:
        result.calibration_note = note
    elif labels is None:
        result.calibration_note = no_labels_reason
    else:
        result.calibration = calibration.result()
    return result


def _normalization(model: nn.Module, collector: _Collector) -> str:
    """The attention normalization ``model`` runs (``"softmax"`` unless probattn converted it otherwise)."""
    if not collector.hf:
        return str(getattr(collector.modules[0][1], "normalization", "softmax"))
    settings = getattr(getattr(model, "config", None), "probattn", None)
    if isinstance(settings, dict):
        return str(settings.get("normalization", "softmax"))
    return "softmax"
