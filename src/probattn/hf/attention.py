"""The attention function probattn registers with Hugging Face transformers.

transformers (>= 5) calls ``fn(module, query, key, value, attention_mask, scaling=, dropout=, **kwargs)`` from
every attention layer of a model whose ``config._attn_implementation`` names ``fn``:

* ``query (B, H, Lq, d)``, ``key (B, H_kv, Lk, d)``, ``value (B, H_kv, Lk, d_v)``: projected per-head states
  (after rotary embeddings), unscaled; ``H_kv < H`` for grouped-query models.
* ``attention_mask``: what the mask function registered under the same name returns. probattn registers
  ``transformers.masking_utils.sdpa_mask`` (without it transformers silently passes ``None`` and padding and
  causality are lost): bool ``(B, 1, Lq, Lk)``, True = may attend, or ``None`` when nothing needs masking
  (causality then comes from ``module.is_causal``).
* returns ``(out (B, Lq, H, d_v), weights (B, H, Lq, Lk) or None)``.

Names registered (all with the ``sdpa`` mask function), usable as
``from_pretrained(path, attn_implementation=NAME)`` after ``import probattn.hf``:

* ``"probattn"``: the per-layer settings :func:`probattn.hf.convert` stores on each attention module
  (``module.probattn_settings``); a module without them reads ``module.config.probattn`` (a model saved after
  ``convert`` and reloaded with plain ``from_pretrained``) and raises when those settings need
  :func:`probattn.hf.load` (per-layer choice, learned hybrid weights, alignment networks); without either it
  runs plain softmax.
* ``"probattn_doubly"``, ``"probattn_hybrid"``, ``"probattn_sinkhorn"``: that normalization on every layer
  (``hybrid_alpha`` / ``sinkhorn_iters`` from ``config.probattn`` when it names the same normalization, else
  0.5 / 3), unless ``convert`` stored settings on the module.

The work goes to :func:`probattn.functional.attention`, the mask reading to :mod:`probattn.masks`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from transformers import AttentionInterface, AttentionMaskInterface
from transformers.masking_utils import sdpa_mask

from probattn.functional import COLUMN_NORMALIZED, NORMALIZATIONS, attention
from probattn.masks import add_bias, build_mask_spec, from_hf_attention_mask
from probattn.nn.hooks import is_observed, observe_qk

try:  # transformers' output-capturing hooks (GPT-2 collects weights there); imported once, read every forward
    from transformers.utils.output_capturing import _active_collector
except ImportError:  # pragma: no cover - other transformers versions
    _active_collector = None

ATTENTION_NAME = "probattn"
# attn_implementation name -> the normalization it forces (None: the settings convert stored)
NAMES: dict[str, str | None] = {
    ATTENTION_NAME: None,
    "probattn_doubly": "doubly",
    "probattn_hybrid": "hybrid",
    "probattn_sinkhorn": "sinkhorn",
}
SETTINGS_ATTR = "probattn_settings"
CONFIG_KEY = "probattn"  # the entry of config.json that holds convert's settings
MAX_SINKHORN_ITERS = 10_000  # a saved setting above this is a damaged file, not a choice (each is one pass)
HYBRID_ATTR = "probattn_hybrid"

__all__ = ["ATTENTION_NAME", "NAMES", "HybridWeight", "LayerSettings", "check_saved_settings", "probattn_attention",
           "record_implementation", "register"]


@dataclass(frozen=True)
class LayerSettings:
    """How one attention module normalizes its scores.

    ``hybrid_alpha`` is the softmax weight of ``"hybrid"`` (a float in [0, 1]), or ``"learned"``: then the
    module holds a :class:`HybridWeight` submodule ``probattn_hybrid`` with one logit per head.
    """

    normalization: str = "softmax"
    hybrid_alpha: float | str = 0.5
    sinkhorn_iters: int = 3


SOFTMAX = LayerSettings()


class HybridWeight(nn.Module):
    """Learned per-head softmax weight of the hybrid scheme: ``alpha = sigmoid(logit)``, ``logit (H,)`` starts at 0."""

    def __init__(self, num_heads: int) -> None:
        super().__init__()
        self.logit = nn.Parameter(torch.zeros(num_heads))

    def forward(self) -> Tensor:
        """``alpha (H,)`` in (0, 1)."""
        return torch.sigmoid(self.logit)


def check_saved_settings(settings: object, source: str) -> dict[str, Any]:
    """Check a saved ``config.probattn`` entry (what :func:`probattn.hf.convert` writes); returns it unchanged.

    Raises ``ValueError`` naming ``source`` (the file) and the field for a value convert would not have
    written: an unknown normalization, ``hybrid_alpha`` outside [0, 1] (or not a number / ``"learned"``),
    ``sinkhorn_iters`` that is not an integer in ``1..MAX_SINKHORN_ITERS`` (``2.7`` is refused, never
    truncated), ``layers`` that is not a list of integers.
    """
    if not isinstance(settings, dict):
        raise ValueError(f"{source}: field {CONFIG_KEY!r} must be a JSON object (what probattn.hf.convert "
                         f"writes), got {type(settings).__name__}; the file is damaged")

    def bad(field: str, what: str) -> ValueError:
        return ValueError(f"{source}: field {CONFIG_KEY}.{field} = {settings[field]!r}: {what}; the file is "
                          "damaged or was edited by hand (convert the model again)")

    normalization = settings.get("normalization", "softmax")
    if normalization not in NORMALIZATIONS:
        raise bad("normalization", f"must be one of {', '.join(map(repr, NORMALIZATIONS))}")
    if "hybrid_alpha" in settings:
        alpha = settings["hybrid_alpha"]
        if not (alpha is None or alpha == "learned" or (
                isinstance(alpha, (int, float)) and not isinstance(alpha, bool) and 0.0 <= alpha <= 1.0)):
            raise bad("hybrid_alpha", "must be a number in [0, 1], 'learned' or null")
    if "sinkhorn_iters" in settings:
        iters = settings["sinkhorn_iters"]
        if isinstance(iters, bool) or not isinstance(iters, int) or not 1 <= iters <= MAX_SINKHORN_ITERS:
            raise bad("sinkhorn_iters", f"must be an integer in 1..{MAX_SINKHORN_ITERS}")
    layers = settings.get("layers")
    if layers is not None and not (isinstance(layers, list) and all(
            isinstance(i, int) and not isinstance(i, bool) for i in layers)):
        raise bad("layers", "must be null or a list of integers")
    return settings


# keyword -> why probattn refuses it (each changes the scores in a way the core does not model)
_UNSUPPORTED = {
    "softcap": "tanh soft-capping of the scores (Gemma-2 style)",
    "s_aux": "attention sinks",
    "sinks": "attention sinks",
    "cu_seq_lens_q": "packed variable-length sequences",
    "cu_seq_lens_k": "packed variable-length sequences",
    "cache": "a paged KV cache",
}


def _check_kwargs(kwargs: dict, attention_mask: object, k_len: int) -> None:
    for name, what in _UNSUPPORTED.items():
        if kwargs.get(name) is not None:
            raise ValueError(
                f"this model passes {name}= ({what}) to its attention function; probattn's Hugging Face "
                f"attention does not support it. Use a model family without {what}, or keep this model's "
                "attention implementation ('sdpa' / 'eager')."
            )
    window = kwargs.get("sliding_window")
    if window is not None and attention_mask is None and k_len > int(window):
        raise ValueError(
            f"sliding_window={window} without a mask for {k_len} keys: the window would be ignored. Build the "
            "model through probattn.hf.convert, which registers the mask function that encodes the window."
        )
    if attention_mask is not None and not isinstance(attention_mask, Tensor):
        raise TypeError(
            f"attention_mask must be a tensor or None, got {type(attention_mask).__name__}; probattn registers "
            "the 'sdpa' mask function, so a block mask or other object means the model bypassed it"
        )


def _needs_load(cfg: dict) -> bool:
    """Whether saved settings are more than one normalization on every layer (then only probattn.hf.load can
    rebuild them: per-layer choice, learned hybrid weights, alignment networks)."""
    return cfg.get("layers") is not None or cfg.get("hybrid_alpha") == "learned" or cfg.get("alignment") is not None


def _check_saved(cfg: object) -> None:
    check_saved_settings(cfg, "config.json of this model (config.probattn)")


def _settings(module: nn.Module, forced: str | None) -> tuple[str, float | str, int]:
    """``(normalization, hybrid_alpha, sinkhorn_iters)`` of ``module`` under an attn_implementation name."""
    settings = getattr(module, SETTINGS_ATTR, None)
    if settings is not None:
        return settings.normalization, settings.hybrid_alpha, settings.sinkhorn_iters
    cfg = getattr(getattr(module, "config", None), "probattn", None)
    if cfg is not None:  # read from a saved config.json: a hand-edited 2.7 must not become 2
        _check_saved(cfg)
    cfg = cfg if isinstance(cfg, dict) else {}
    if forced is None:
        if not cfg:
            return "softmax", 0.5, 3
        if _needs_load(cfg):
            raise ValueError(
                "this model was saved after probattn.hf.convert with per-layer settings, learned hybrid weights "
                "or alignment networks (config.probattn), which transformers' from_pretrained does not rebuild; "
                "load it with probattn.hf.load(path)"
            )
        forced = cfg.get("normalization", "softmax")
    same = cfg.get("normalization") == forced
    alpha = cfg.get("hybrid_alpha") if same and cfg.get("hybrid_alpha") is not None else 0.5
    iters = cfg.get("sinkhorn_iters", 3) if same else 3
    return forced, alpha, iters


def _check_not_causal(module: nn.Module, normalization: str, is_causal: bool) -> None:
    if normalization not in COLUMN_NORMALIZED:
        return
    if is_causal or getattr(module, "is_causal", False) or getattr(module, "is_decoder", False) \
            or getattr(module, "is_cross_attention", False):
        raise ValueError(
            f"normalization={normalization!r} on the causal or decoder attention layer {type(module).__name__}: a "
            "key's column sum runs over all queries, future ones included. Load the model with "
            "attn_implementation='probattn' and call probattn.hf.convert(model, normalization=..., layers=...) "
            "on its encoder layers only, or use normalization='softmax'."
        )


def _weights_requested(kwargs: dict) -> bool:
    """Whether the caller collects attention weights (``output_attentions=True``).

    Some models (GPT-2) do not forward ``output_attentions`` to the attention function; their weights are
    collected by transformers' output-capturing hooks, whose active collector says what is being recorded.
    """
    if kwargs.get("output_attentions"):
        return True
    # dynamo cannot trace ContextVar.get: compiled models return weights only for output_attentions=True
    if _active_collector is None or torch.compiler.is_compiling():
        return False
    collected = _active_collector.get()
    return bool(collected) and ("attentions" in collected or "cross_attentions" in collected)


def probattn_attention(
    module: nn.Module,
    query: Tensor,
    key: Tensor,
    value: Tensor,
    attention_mask: Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    *,
    _forced: str | None = None,
    **kwargs,
) -> tuple[Tensor, Tensor | None]:
    """Attention for a Hugging Face layer with the normalization stored on ``module`` (see module docstring).

    ``position_bias`` (T5: ``(B|1, H, Lq, Lk)`` additive, per query-key pair) is added to the scores before
    the normalization, as T5's own attention does. Also passes the per-head ``query`` and ``key`` with their
    validity to :func:`probattn.nn.hooks.observe_qk` (alignment regularizers, diagnostics probes).
    """
    _check_kwargs(kwargs, attention_mask, key.shape[2])
    normalization, hybrid_alpha, sinkhorn_iters = _settings(module, _forced)
    batch, _, q_len, _ = query.shape
    is_causal = kwargs.get("is_causal")
    _check_not_causal(module, normalization, bool(is_causal))
    if is_causal is None:
        is_causal = getattr(module, "is_causal", False)
    # as transformers' sdpa integration: causality comes from the module only when no mask was built
    is_causal = bool(is_causal) and attention_mask is None and q_len > 1
    if is_causal and key.shape[2] > q_len:  # prefill into an empty static cache: the tail keys are unused
        key, value = key[:, :, :q_len], value[:, :, :q_len]
    k_len = key.shape[2]
    attn_mask, query_valid, is_causal = from_hf_attention_mask(
        attention_mask, is_causal=is_causal, batch=batch, q_len=q_len, k_len=k_len
    )
    if is_observed(module):  # key validity costs a pass over the mask: only when a probe or regularizer reads it
        key_valid = None
        if attn_mask is not None:
            spec = build_mask_spec(batch=batch, heads=1, q_len=q_len, k_len=k_len, device=query.device,
                                   attn_mask=attn_mask, query_padding_mask=query_valid)
            seen = spec.column_has_query()  # (B|1, 1, 1, Lk): keys some real query may attend to
            key_valid = None if seen is None else seen.reshape(seen.shape[0], k_len).expand(batch, k_len)
        observe_qk(module, query, key, query_valid=query_valid, key_valid=key_valid)

    position_bias = kwargs.get("position_bias")
    if position_bias is not None:
        attn_mask = add_bias(attn_mask, position_bias[..., -q_len:, :k_len])
    if hybrid_alpha == "learned":
        hybrid_alpha = getattr(module, HYBRID_ATTR)()
    want_weights = _weights_requested(kwargs)
    result = attention(
        query, key, value,
        normalization=normalization,
        attn_mask=attn_mask,
        query_padding_mask=query_valid,
        is_causal=is_causal,
        scale=scaling,
        dropout_p=float(dropout) if module.training else 0.0,
        hybrid_alpha=hybrid_alpha,
        sinkhorn_iters=sinkhorn_iters,
        return_weights=want_weights,
    )
    out, weights = result if want_weights else (result, None)
    return out.transpose(1, 2).contiguous(), weights


def _named(normalization: str):
    def fn(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
        return probattn_attention(module, query, key, value, attention_mask, scaling, dropout,
                                  _forced=normalization, **kwargs)

    fn.__name__ = fn.__qualname__ = f"probattn_{normalization}_attention"
    fn.__doc__ = f"probattn_attention with normalization={normalization!r} unless convert stored settings."
    return fn


_FUNCTIONS = {name: probattn_attention if norm is None else _named(norm) for name, norm in NAMES.items()}


def _forced_settings(config: Any, forced: str) -> dict[str, Any]:
    """What a forced name runs on every layer, written as :func:`probattn.hf.convert` records its settings."""
    cfg = getattr(config, CONFIG_KEY, None)
    cfg = cfg if isinstance(cfg, dict) else {}
    same = cfg.get("normalization") == forced
    alpha = cfg.get("hybrid_alpha") if same and cfg.get("hybrid_alpha") is not None else 0.5
    return {"normalization": forced, "hybrid_alpha": alpha if forced == "hybrid" else None,
            "sinkhorn_iters": cfg.get("sinkhorn_iters", 3) if same else 3, "alignment": None,
            "repulsive": cfg.get("repulsive"), "layers": None}


def record_implementation(model: nn.Module) -> None:
    """Make ``model.config`` say which probattn attention the model runs, so that ``save_pretrained`` (and
    ``Trainer.save_model``) writes it: a plain ``from_pretrained`` of the saved folder then runs the same attention
    (or raises), and :func:`probattn.hf.load` accepts the folder, exactly as after :func:`probattn.hf.convert`.

    * ``"probattn_doubly"`` / ``"_hybrid"`` / ``"_sinkhorn"`` (no settings stored on the modules by convert):
      ``config.probattn`` gets that normalization on every layer and ``config.attn_implementation = "probattn"``;
      the first time, a warning says that pretrained softmax weights now give other outputs (as convert's does);
    * ``"probattn"`` with a ``config.probattn`` entry (a converted model reloaded with ``from_pretrained``):
      ``config.attn_implementation = "probattn"`` again (transformers consumes that key on load, so a second
      ``save_pretrained`` would otherwise write a model that reloads as plain SDPA softmax); without one (it runs
      probattn's softmax), ``normalization="softmax"`` is recorded, without a warning.

    * another name set on a model whose config said ``"probattn"`` (``set_attn_implementation("sdpa")`` after
      convert): ``config.attn_implementation`` becomes that name, so the saved model reloads with it.

    Runs after every transformers model's ``__init__`` and ``set_attn_implementation`` once ``probattn.hf``
    is imported (see :func:`register`); models that never ran a probattn implementation are left alone.
    """
    config = getattr(model, "config", None)
    name = getattr(config, "_attn_implementation", None)
    if not isinstance(name, str):
        return
    if name not in NAMES:
        if config.__dict__.get("attn_implementation") == ATTENTION_NAME:
            config.attn_implementation = name  # switched away from probattn: save what runs now
        return
    forced = NAMES[name]
    if forced is None:
        if isinstance(getattr(config, CONFIG_KEY, None), dict):
            config.attn_implementation = ATTENTION_NAME
            return
        forced = "softmax"  # "probattn" without settings runs probattn's softmax: recorded as such
    if any(hasattr(m, SETTINGS_ATTR) for m in model.modules()):
        return  # convert's per-module settings win over the name; config.probattn already records them
    settings = _forced_settings(config, forced)
    if getattr(config, CONFIG_KEY, None) == settings and config.__dict__.get("attn_implementation") == ATTENTION_NAME:
        return  # already recorded (e.g. the inner model of a task model shares the config)
    config.probattn = settings
    config.attn_implementation = ATTENTION_NAME
    for module in model.modules():  # sub-configs (CLIP towers) are what their attention layers read
        sub = getattr(module, "config", None)
        if sub is not None and sub is not config and hasattr(sub, "to_dict"):
            sub.probattn = settings
    if forced == "softmax":
        return
    import warnings

    warnings.warn(
        f"attn_implementation={name!r} runs {forced} attention on every layer; weights trained for softmax give "
        "other outputs than the original model (MiniLM sentence embeddings: cosine 0.50 for doubly). Fine-tune, or "
        "distil back with probattn.hf.adapt. Recorded in config.probattn: save_pretrained keeps it.",
        UserWarning, stacklevel=3,
    )


def _install_recording() -> None:
    """Wrap ``PreTrainedModel.post_init`` and ``set_attn_implementation`` (once) to call
    :func:`record_implementation` after them."""
    from transformers import PreTrainedModel

    for method in ("post_init", "set_attn_implementation"):
        original = getattr(PreTrainedModel, method)
        if getattr(original, "_probattn_records", False):
            continue

        def wrapper(self, *args, _original=original, **kwargs):
            result = _original(self, *args, **kwargs)
            record_implementation(self)
            return result

        wrapper.__name__, wrapper.__qualname__, wrapper.__doc__ = original.__name__, original.__qualname__, original.__doc__
        wrapper._probattn_records = True  # type: ignore[attr-defined]
        setattr(PreTrainedModel, method, wrapper)


def register() -> str:
    """Register the attention functions and the ``sdpa`` mask function under every name of :data:`NAMES`
    (idempotent; done on ``import probattn.hf``); returns ``"probattn"``, the name ``convert`` switches to.

    Both registrations are process-global in transformers; the mask function must carry the same name, or
    transformers passes ``attention_mask=None`` and padding and causal masks are silently lost. Also makes every
    transformers model record a probattn implementation in its config (:func:`record_implementation`), so that
    what a model ran with is what ``save_pretrained`` writes.
    """
    for name, fn in _FUNCTIONS.items():
        AttentionInterface.register(name, fn)
        AttentionMaskInterface.register(name, sdpa_mask)
    _install_recording()
    return ATTENTION_NAME
