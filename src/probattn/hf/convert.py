"""``convert(model, ...)``: switch a Hugging Face transformer to probattn's attention, in place.

What convert does, in order (nothing is changed when a check fails):

1. checks the options and that the model family routes attention through transformers' ``AttentionInterface``
   (DeBERTa, GPT-J, BLOOM, ... do not: they would silently keep their own attention);
2. refuses column-normalized schemes (``"doubly"``, ``"hybrid"``, ``"sinkhorn"``) on causal attention (a
   module with ``is_causal``, or one whose caller passes ``is_causal=True`` with a causal mask, as CLIP's text
   tower does) and on the cross-attention of a decoder: a key's column sum runs over all queries, future
   ones included;
3. registers :func:`probattn.hf.attention.probattn_attention` and its mask function, switches the model to
   it and verifies that ``model.config._attn_implementation`` took the new value;
4. stores a :class:`~probattn.hf.attention.LayerSettings` on each attention module (softmax on the layers
   not selected), attaches learned hybrid weights and alignment regularizers as submodules (so that
   ``save_pretrained`` writes them) and records everything in ``model.config.probattn`` (so that
   :func:`probattn.hf.load` rebuilds them) and ``config.attn_implementation = "probattn"`` (so that a plain
   ``from_pretrained`` of the saved directory either runs the same attention or raises, never silently
   comes back as the original model);
5. warns when the normalization changed: pretrained weights were trained for softmax, see
   :func:`probattn.hf.adapt`.
"""

from __future__ import annotations

import functools
import inspect
import json
import numbers
import warnings
from collections.abc import Iterable
from typing import Any

from torch import nn
from transformers import PreTrainedModel

from probattn.alignment import AlignmentRegularizer, attach_alignment
from probattn.functional import COLUMN_NORMALIZED, NORMALIZATIONS, check_hybrid_alpha
from probattn.hf.attention import (
    ATTENTION_NAME,
    CONFIG_KEY,
    HYBRID_ATTR,
    SETTINGS_ATTR,
    SOFTMAX,
    HybridWeight,
    LayerSettings,
    check_saved_settings,
    register,
)
from probattn.nn.hooks import REGULARIZER_ATTR
from probattn.repulsive import PRESETS, Projection, RepulsiveHeads, register_adapter
from probattn.repulsive.adapters import is_linear, linear_projection

SUPPORTED_FAMILIES = (
    "BERT, RoBERTa, XLM-R, DistilBERT, ALBERT, ELECTRA, ModernBERT, GPT-2, ViT, DeiT, DINOv2, CLIP, "
    "Llama, Mistral, Qwen2/3, Phi-3 and the other families whose attention layers call "
    "transformers' ALL_ATTENTION_FUNCTIONS"
)

__all__ = ["CONFIG_KEY", "attention_modules", "check_saved_settings", "convert", "repulsive_heads"]


@functools.cache
def _passes_is_causal(cls: type) -> bool:
    """Whether ``cls.forward`` calls its layers with ``is_causal=True`` (CLIP's text transformer does; its
    attention modules themselves say ``is_causal=False``)."""
    try:
        source = inspect.getsource(cls.forward)
    except (OSError, TypeError):
        return False
    return "is_causal=True" in source


@functools.cache
def _routes_through_interface(cls: type) -> bool:
    try:
        source = inspect.getsource(cls.forward)
    except (OSError, TypeError):
        return False
    return "ALL_ATTENTION_FUNCTIONS" in source


def attention_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """``(name, module)`` of every attention layer that calls the registered attention function, in model order.

    ``convert(..., layers=[i, ...])`` indexes this list (for a single stack of layers: the layer number).
    """
    return [(name, m) for name, m in model.named_modules() if _routes_through_interface(type(m))]


def _family(model: PreTrainedModel) -> str:
    return f"{type(model).__name__} (model_type {getattr(model.config, 'model_type', '?')!r})"


def _unsupported(model: PreTrainedModel) -> ValueError:
    return ValueError(
        f"{_family(model)} does not route its attention through transformers' AttentionInterface, so "
        f"probattn.hf.convert cannot switch it. Supported: {SUPPORTED_FAMILIES}. For other models build the "
        "attention from probattn.nn.MultiheadAttention."
    )


def _num_heads(model: PreTrainedModel, module: nn.Module) -> int:
    for owner, attr in ((module, "num_heads"), (module, "num_attention_heads"), (module, "n_heads"),
                        (getattr(module, "config", None), "num_attention_heads"), (model.config, "num_attention_heads")):
        value = getattr(owner, attr, None)
        if isinstance(value, int) and value > 0:
            return value
    raise ValueError(f"cannot tell the number of heads of {type(module).__name__}; hybrid_alpha='learned' needs it")


def _select(modules: list[tuple[str, nn.Module]], layers: int | Iterable[int] | None) -> list[int]:
    count = len(modules)
    if layers is None:
        return list(range(count))
    items = [layers] if isinstance(layers, numbers.Integral) else layers
    if isinstance(items, (str, bytes)) or not isinstance(items, Iterable):
        raise TypeError(f"layers must be None, an int or a list of ints, got {type(layers).__name__}")
    chosen = set()
    for i in items:
        if isinstance(i, bool) or not isinstance(i, numbers.Integral):
            raise TypeError(f"layers must hold ints, got {i!r}")
        if not -count <= i < count:
            raise ValueError(f"layers holds {i}, but the model has {count} attention layers (valid: {-count}..{count - 1})")
        chosen.add(int(i) % count)
    if not chosen:
        raise ValueError("layers is empty; pass None to convert every attention layer")
    return sorted(chosen)


def _check_hybrid(normalization: str, hybrid_alpha: object) -> float | str | None:
    """The validated hybrid weight; None unless ``normalization == "hybrid"`` (as probattn.nn ignores it then)."""
    if hybrid_alpha is None:
        return 0.5 if normalization == "hybrid" else None
    if isinstance(hybrid_alpha, str):
        if hybrid_alpha != "learned":
            raise ValueError(f"hybrid_alpha must be a float in [0, 1] or 'learned', got {hybrid_alpha!r}")
        alpha: float | str = "learned"
    else:
        alpha = float(check_hybrid_alpha(hybrid_alpha, 1))
    return alpha if normalization == "hybrid" else None


def _check_json(name: str, value: Any) -> Any:
    try:
        json.dumps(value)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"{name} must be a name or a dict of plain values (saved in config.json): {exc}") from None
    return value


def _is_cross_attention(name: str) -> bool:
    lowered = name.lower()
    return "cross" in lowered or "encoder_attn" in lowered or "encdec" in lowered


def _causal_callers(model: nn.Module) -> list[str]:
    """Names of the modules whose forward passes ``is_causal=True`` down to their attention layers."""
    return [name for name, m in model.named_modules() if name and _passes_is_causal(type(m))]


def _check_causality(model: PreTrainedModel, normalization: str, modules: list[tuple[str, nn.Module]],
                     selected: list[int]) -> None:
    if normalization not in COLUMN_NORMALIZED:
        return
    decoder = any(getattr(m, "is_causal", False) for _, m in modules) or bool(getattr(model.config, "is_decoder", False))
    callers = _causal_callers(model)
    for i in selected:
        name, module = modules[i]
        caller = next((c for c in callers if name.startswith(f"{c}.")), None)
        if caller is not None:
            raise ValueError(
                f"normalization={normalization!r} cannot be used on {_family(model)}: its attention layer {name!r} "
                f"is called by {caller!r} ({type(model.get_submodule(caller)).__name__}) with is_causal=True and a "
                "causal mask (a text tower that reads left to right), and normalizing each key's column over all "
                "queries would leak the future. Use normalization='softmax' there, or restrict layers= to the "
                "non-causal layers (e.g. the vision tower)."
            )
        if getattr(module, "sliding_window", None) is not None and not getattr(module, "is_causal", False):
            raise ValueError(
                f"normalization={normalization!r} cannot be used on {_family(model)}: its attention layer {name!r} "
                f"attends within a sliding window of {module.sliding_window} tokens, and normalizing each key's "
                "column over the queries that see it would let query i read tokens outside its window through "
                "those queries (see docs/attention.md: only block-complete masks are accepted). Use "
                "normalization='softmax' there, or restrict layers= to the global-attention layers."
            )
        if getattr(module, "is_causal", False) or (decoder and _is_cross_attention(name)):
            raise ValueError(
                f"normalization={normalization!r} cannot be used on {_family(model)}: its attention layer "
                f"{name!r} is causal (a decoder), and normalizing each key's column over all queries would leak "
                "the future. Use normalization='softmax' (alignment and repulsive work with it), or restrict "
                "layers= to non-causal layers."
            )


def _head_dim(model: PreTrainedModel, module: nn.Module) -> int:
    for attr in ("head_dim", "attention_head_size"):
        value = getattr(module, attr, None)
        if isinstance(value, int) and value > 0:
            return value
    return int(model.config.hidden_size) // _num_heads(model, module)


def _alignment_options(model: PreTrainedModel, alignment: str | dict, module: nn.Module) -> dict[str, Any]:
    """Keyword arguments of AlignmentRegularizer for ``module`` from a variant name or a dict."""
    if isinstance(alignment, str):
        alignment = {"variant": alignment}
    elif not isinstance(alignment, dict):
        raise TypeError(f"alignment must be a variant name or a dict of AlignmentRegularizer options, got "
                        f"{type(alignment).__name__}")
    return {"head_dim": _head_dim(model, module), "num_heads": _num_heads(model, module), **alignment}


def _repulsive_options(repulsive: str | dict) -> tuple[str | None, dict[str, Any]]:
    """``(preset or None, RepulsiveHeads keyword arguments)`` from a method / preset name or a dict."""
    if isinstance(repulsive, str):
        if repulsive in PRESETS:
            return repulsive, {}
        if repulsive in ("svgd", "spos"):
            return None, {"method": repulsive}
        raise ValueError(f"repulsive must be 'svgd', 'spos', a preset ({', '.join(sorted(PRESETS))}) or a dict "
                         f"of RepulsiveHeads options, got {repulsive!r}")
    if not isinstance(repulsive, dict):
        raise TypeError(f"repulsive must be a name or a dict of RepulsiveHeads options, got {type(repulsive).__name__}")
    options = dict(repulsive)
    preset = options.pop("preset", None)
    if preset is not None and preset not in PRESETS:
        raise ValueError(f"repulsive preset must be one of {', '.join(sorted(PRESETS))}, got {preset!r}")
    for key in ("clip", "max_grad_norm"):
        if key in options:
            raise ValueError(f"repulsive[{key!r}] is set by probattn.hf: the rewrite runs after the Trainer's "
                             "gradient clipping (TrainingArguments.max_grad_norm); remove it")
    return preset, options


def _distilbert_projections(module: nn.Module) -> list[Projection] | None:
    """Repulsive adapter for DistilBERT's attention: ``q_lin`` / ``k_lin`` / ``v_lin`` + ``n_heads``."""
    linears = [getattr(module, name, None) for name in ("q_lin", "k_lin", "v_lin")]
    heads = getattr(module, "n_heads", None)
    if not isinstance(heads, int) or not all(is_linear(m) for m in linears):
        return None
    return [linear_projection(role, m, heads) for role, m in zip("qkv", linears)]


register_adapter("hf_distilbert", _distilbert_projections)


def repulsive_heads(model: PreTrainedModel, repulsive: str | dict | None = None, *,
                    layers: list[int] | None = None) -> RepulsiveHeads | None:
    """The :class:`~probattn.repulsive.RepulsiveHeads` described by ``repulsive`` (default: the converted
    model's ``config.probattn["repulsive"]``), over the converted layers (``layers``: indices into
    :func:`attention_modules`, default ``config.probattn["layers"]``, None = all), with ``clip="after"``: call
    its ``step()`` after gradient clipping, once per optimizer step. None when no repulsion is configured.
    """
    if repulsive is None:
        repulsive = (getattr(model.config, CONFIG_KEY, None) or {}).get("repulsive")
        if repulsive is None:
            return None
    preset, options = _repulsive_options(repulsive)
    if "layers" not in options:
        modules = attention_modules(model)
        chosen = (getattr(model.config, CONFIG_KEY, None) or {}).get("layers") if layers is None else layers
        converted = {id(modules[i][1]) for i in _select(modules, chosen)}
        options["layers"] = lambda name, module: id(module) in converted
    options["clip"] = "after"
    if preset is not None:
        return RepulsiveHeads.from_preset(model, preset, **options)
    return RepulsiveHeads(model, **options)


def _clear(module: nn.Module) -> None:
    for attr in (SETTINGS_ATTR, HYBRID_ATTR, REGULARIZER_ATTR):
        if hasattr(module, attr):
            delattr(module, attr)


def convert(
    model: PreTrainedModel,
    *,
    normalization: str = "doubly",
    hybrid_alpha: float | str | None = None,
    sinkhorn_iters: int = 3,
    alignment: str | dict | None = None,
    repulsive: str | dict | None = None,
    layers: int | Iterable[int] | None = None,
) -> PreTrainedModel:
    """Switch ``model`` (in place) to probattn attention and return it.

    Args:
        model: a ``transformers.PreTrainedModel`` whose family uses the AttentionInterface.
        normalization: ``"softmax"`` (reproduces the original model), ``"doubly"``, ``"hybrid"`` or
            ``"sinkhorn"``; see :func:`probattn.functional.attention`.
        hybrid_alpha: softmax weight of ``"hybrid"``: a float in [0, 1] (default 0.5) or ``"learned"``
            (per head, ``sigmoid(logit)`` with ``logit`` initialised at 0, trained with the model);
            validated but unused with the other normalizations.
        sinkhorn_iters: iterations of ``"sinkhorn"``.
        alignment: an alignment variant name or a dict of ``AlignmentRegularizer`` keyword arguments; a
            regularizer is attached to each selected layer as ``module.probattn_alignment``.
        repulsive: a repulsive method / preset name or a dict of ``RepulsiveHeads`` keyword arguments;
            recorded in ``config.probattn`` for :class:`probattn.hf.Trainer` (or build
            ``probattn.repulsive.RepulsiveHeads(model, ...)`` yourself).
        layers: indices into :func:`attention_modules` (negative allowed) to change; the other layers keep
            exact softmax. ``None`` = all.

    The settings land in ``model.config.probattn``; ``model.config`` is changed in place (models sharing one
    config object share the switch). Calling convert again replaces the previous settings.

    Raises:
        TypeError, ValueError: bad options (named), an unsupported model family, or a column-normalized
            scheme on causal attention.
    """
    if not isinstance(model, PreTrainedModel):
        raise TypeError(f"model must be a transformers PreTrainedModel, got {type(model).__name__}; for plain "
                        "torch models use probattn.nn.replace_attention")
    if normalization not in NORMALIZATIONS:
        raise ValueError(f"normalization must be one of {', '.join(map(repr, NORMALIZATIONS))}; got {normalization!r}")
    alpha = _check_hybrid(normalization, hybrid_alpha)
    if isinstance(sinkhorn_iters, bool) or not isinstance(sinkhorn_iters, numbers.Integral) or sinkhorn_iters < 1:
        raise ValueError(f"sinkhorn_iters must be an integer >= 1, got {sinkhorn_iters!r}")
    alignment = None if alignment is None else _check_json("alignment", alignment)
    repulsive = None if repulsive is None else _check_json("repulsive", repulsive)

    modules = attention_modules(model)
    if not type(model)._can_set_attn_implementation() or not modules:
        raise _unsupported(model)
    if getattr(model.config, "attn_logit_softcapping", None) is not None:
        raise ValueError(f"{_family(model)} caps its attention scores (attn_logit_softcapping="
                         f"{model.config.attn_logit_softcapping}), which probattn's attention does not support; "
                         f"set config.attn_logit_softcapping = None first if you accept the change")
    selected = _select(modules, layers)
    _check_causality(model, normalization, modules, selected)
    if repulsive is not None:  # validates the options and that the converted layers' heads are found
        repulsive_heads(model, repulsive, layers=selected)
    if alignment is not None:  # fail on bad options before anything changes
        AlignmentRegularizer(**_alignment_options(model, alignment, modules[selected[0]][1]))

    previous = model.config._attn_implementation
    model.set_attn_implementation(register())
    if model.config._attn_implementation != ATTENTION_NAME:
        model.set_attn_implementation(previous)
        raise _unsupported(model)

    settings = LayerSettings(normalization, alpha if alpha is not None else 0.5, int(sinkhorn_iters))
    for _, module in modules:
        _clear(module)
        setattr(module, SETTINGS_ATTR, SOFTMAX)  # explicit: a module without settings reads config.probattn
    for i in selected:
        _, module = modules[i]
        setattr(module, SETTINGS_ATTR, settings)
        if alpha == "learned":
            param = next(module.parameters(), None)
            weight = HybridWeight(_num_heads(model, module))
            if param is not None:
                weight = weight.to(device=param.device, dtype=param.dtype)
            module.add_module(HYBRID_ATTR, weight)
        if alignment is not None:
            attach_alignment(module, predicate=lambda m, target=module: m is target,
                             **_alignment_options(model, alignment, module))
    model.config.probattn = {
        "normalization": normalization,
        "hybrid_alpha": alpha,
        "sinkhorn_iters": int(sinkhorn_iters),
        "alignment": alignment,
        "repulsive": repulsive,
        "layers": None if layers is None else selected,
    }
    for _, module in modules:  # sub-configs (CLIP's text / vision towers) are what their attention layers read
        sub = getattr(module, "config", None)
        if sub is not None and sub is not model.config and hasattr(sub, "to_dict"):
            sub.probattn = model.config.probattn
    # written to config.json: from_pretrained(saved) switches to "probattn", which runs these settings or raises
    # (needs probattn.hf.load) and, without `import probattn.hf`, fails as an unknown attn_implementation
    model.config.attn_implementation = ATTENTION_NAME
    if normalization != "softmax":
        warnings.warn(
            f"convert(normalization={normalization!r}) changes the attention of pretrained weights that were trained "
            "for softmax: outputs move away from the original model (MiniLM sentence embeddings: cosine 0.50 for "
            "doubly). Fine-tune, or distil back with probattn.hf.adapt(model, original, texts) before use.",
            UserWarning, stacklevel=2,
        )
    return model

