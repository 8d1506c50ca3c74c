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
    parameter_cosine_similarity,
)
from probattn.nn.hooks import PROBE_ATTR

__all__ = ["Diagnosis", "attached_probes", "collect", "parameter_cosines"]

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

    ``layers[i]`` is :meth:`AttentionStatistics.summary` of attention layer ``i``; ``example_maps[i]`` the first
    example's map in that layer, averaged over heads ``(N, N)`` (real tokens ``example_tokens``);
    ``calibration`` is None when it could not be measured, with the reason in ``calibration_note``.
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


class _LayerProbe:
    """Receives one layer's q/k (``observe``) and head outputs (forward hooks) into its statistics."""

    def __init__(self, owner: _Collector) -> None:
        self.owner = owner
        self.stats: AttentionStatistics | None = None

    def statistics(self, heads: int) -> AttentionStatistics:
        if self.stats is None:
            self.stats = AttentionStatistics(heads)
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
    ``with`` block and restores what was there."""

    def __init__(self, model: nn.Module) -> None:
        from probattn.hf import attention_modules  # needs transformers; importing this module does not

        self.valid: Tensor | None = None
        self.modules = attention_modules(model)
        if not self.modules:
            raise ValueError(f"{type(model).__name__} has no attention layer that probattn can observe; convert it "
                             "with probattn.hf.convert first")
        self.probes = [_LayerProbe(self) for _ in self.modules]

    @contextlib.contextmanager
    def attached(self) -> Iterator[None]:
        handles = []
        try:
            for (_, module), probe in zip(self.modules, self.probes):
                projection = next((getattr(module, name) for name in OUTPUT_PROJECTIONS
                                   if isinstance(getattr(module, name, None), nn.Linear)), None)
                if projection is not None:
                    handles.append(projection.register_forward_pre_hook(_pre_hook(probe)))
                else:
                    handles.append(module.register_forward_hook(_post_hook(probe)))
            with attached_probes([module for _, module in self.modules], self.probes):
                yield
        finally:
            for handle in handles:
                handle.remove()


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
) -> Diagnosis:
    """Run ``model`` (a Hugging Face model converted by :func:`probattn.hf.convert`) over ``texts``.

    Args:
        model, tokenizer: e.g. from :func:`probattn.hf.load_model`.
        texts: the inputs, tokenized in batches of ``batch_size`` (truncated to ``max_length`` tokens).
        labels: class ids in the model's label space, for calibration when the model returns ``logits``.
        label: name of this run in reports.
        no_labels_reason: what the report says about calibration when ``labels`` is None.
    """
    if tokenizer is None:
        raise ValueError("the model directory holds no tokenizer; diagnose needs one to read text")
    if not texts:
        raise ValueError("texts is empty; give at least one example")
    if batch_size < 1 or max_length < 2:
        raise ValueError(f"batch_size must be >= 1 and max_length >= 2, got {batch_size} and {max_length}")
    if labels is not None and len(labels) != len(texts):
        raise ValueError(f"labels has {len(labels)} entries but texts has {len(texts)}")
    model = model.to(device).eval()
    collector = _Collector(model)
    calibration = CalibrationAccumulator() if labels is not None else None
    has_logits = None
    example_tokens: list[str] = []
    start = time.perf_counter()
    with collector.attached():
        batches = range(0, len(texts), batch_size)
        for begin in tqdm(batches, desc=f"diagnose {label}", unit="batch", disable=not progress):
            batch = tokenizer(list(texts[begin : begin + batch_size]), padding=True, truncation=True,
                              max_length=max_length, return_tensors="pt").to(device)
            valid = batch["attention_mask"].to(torch.bool)
            collector.valid = valid
            with torch.no_grad():
                out = model(**batch, output_attentions=True)
            attentions = getattr(out, "attentions", None)
            if not attentions or len(attentions) != len(collector.probes):
                raise ValueError(
                    f"{type(model).__name__} returned {len(attentions or ())} attention maps for "
                    f"{len(collector.probes)} attention layers; diagnose needs output_attentions=True to work"
                )
            for probe, weights in zip(collector.probes, attentions):
                same_shape = tuple(weights.shape[-2:]) == (valid.shape[1],) * 2
                stats = probe.statistics(weights.shape[1])
                stats.update_weights(weights, query_valid=valid if same_shape else None,
                                     key_valid=valid if same_shape else None)
            if not example_tokens:
                example_tokens = tokenizer.convert_ids_to_tokens(batch["input_ids"][0][valid[0]].tolist())
            logits = getattr(out, "logits", None)
            has_logits = logits is not None if has_logits is None else has_logits
            if calibration is not None and logits is not None:
                target = torch.as_tensor(labels[begin : begin + batch_size])
                calibration.update(torch.softmax(logits.float(), dim=-1), target)
    seconds = time.perf_counter() - start
    layers = [p.stats.summary() for p in collector.probes]
    for layer, (_, module) in zip(layers, collector.modules):
        cosines = parameter_cosines(module, layer["heads"])
        if cosines:
            layer["parameter_cosine"] = cosines
    maps = [p.stats.example_map.mean(0).numpy() for p in collector.probes]
    result = Diagnosis(label=label, layers=layers, example_maps=maps, example_tokens=example_tokens,
                       examples=len(texts), seconds=seconds, layer_names=[n for n, _ in collector.modules])
    if not has_logits:
        result.calibration_note = (f"{type(model).__name__} has no classification head (no logits); diagnose a "
                                   "fine-tuned classifier to measure calibration")
    elif labels is None:
        result.calibration_note = no_labels_reason
    else:
        result.calibration = calibration.result()
    return result
