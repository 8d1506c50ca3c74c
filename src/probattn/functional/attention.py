"""``attention(q, k, v, *, normalization=...)``: the one functional entry point.

Validates every argument (errors name the argument), builds the :class:`~probattn.masks.MaskSpec`, refuses
column-normalized schemes on causal problems, and dispatches:

* ``"softmax"``  -> ``scaled_dot_product_attention`` (or a dense path when weights are requested);
* ``"doubly"``, ``"hybrid"``, ``"sinkhorn"`` -> dense materialized scores (``impl="dense"``), the
  key-block streaming path of :mod:`probattn.functional.streaming` (``impl="chunked"``) or PyTorch's fused
  kernels, FlashAttention on CUDA (``impl="sdpa"``, :mod:`probattn.functional.fused`; ``"auto"`` on CUDA).

Scores, log-normalizers and softmaxes are computed in float32 for float16/bfloat16 inputs (float64 stays
float64); the output has the inputs' dtype.
"""

from __future__ import annotations

import math
import numbers
import warnings

import torch
import torch.nn.functional as F
from torch import Tensor

from probattn.functional.doubly import doubly_weights, hybrid_weights
from probattn.functional.fused import fused_normalized_attention, range_refusal
from probattn.functional.sinkhorn import sinkhorn_weights
from probattn.functional.softmax import sdpa_attention, softmax_weights
from probattn.functional.streaming import chunked_attention, prefer_chunked
from probattn.masks import (
    MASKED_AT_OR_BELOW,
    MaskSpec,
    build_mask_spec,
    check_column_normalizable,
    padding_factors,
)

NORMALIZATIONS: tuple[str, ...] = ("softmax", "doubly", "hybrid", "sinkhorn")
COLUMN_NORMALIZED: frozenset[str] = frozenset({"doubly", "hybrid", "sinkhorn"})
IMPLS: tuple[str, ...] = ("auto", "dense", "chunked", "sdpa")

__all__ = ["COLUMN_NORMALIZED", "IMPLS", "NORMALIZATIONS", "attention", "check_hybrid_alpha"]


def _check_qkv(q: object, k: object, v: object) -> tuple[int, int, int, int, int, int]:
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dim() != 4:
            raise ValueError(
                f"{name} must be 4-D (batch, heads, length, head_dim), got shape {tuple(t.shape)}; "
                "for (batch, length, heads, head_dim) tensors pass x.transpose(1, 2)"
            )
        if not t.is_floating_point():
            raise TypeError(f"{name} must be a floating-point tensor, got {t.dtype}")
        if t.numel() == 0:
            raise ValueError(f"{name} is empty (shape {tuple(t.shape)}); every dimension must be at least 1")
    assert isinstance(q, Tensor) and isinstance(k, Tensor) and isinstance(v, Tensor)
    check_same_dtype_and_device(q, k, v)
    batch, heads, q_len, dim = q.shape
    if k.shape[0] != batch or v.shape[0] != batch:
        raise ValueError(f"batch sizes differ: q {q.shape[0]}, k {k.shape[0]}, v {v.shape[0]}")
    kv_heads, k_len = k.shape[1], k.shape[2]
    if v.shape[1] != kv_heads or v.shape[2] != k_len:
        raise ValueError(
            f"k and v must agree on (heads, length): k {tuple(k.shape[1:3])} vs v {tuple(v.shape[1:3])}"
        )
    if k.shape[3] != dim:
        raise ValueError(f"q and k must share head_dim: q {dim} vs k {k.shape[3]}")
    if heads % kv_heads != 0:
        raise ValueError(
            f"the number of query heads ({heads}) must be a multiple of the number of key/value heads "
            f"({kv_heads}) for grouped-query attention"
        )
    return batch, heads, q_len, k_len, kv_heads, dim


_ALPHA_NAN = ("hybrid_alpha is NaN; a learned weight (sigmoid of a logit) gets there when its logit diverged: "
              "lower the learning rate, clip gradients, or restart from an earlier checkpoint")


def check_same_dtype_and_device(q: Tensor, k: Tensor, v: Tensor) -> None:
    """``q``, ``k`` and ``v`` share one dtype and one device (errors name them)."""
    if not (q.dtype == k.dtype == v.dtype):
        raise TypeError(f"q, k and v must share a dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    if not (q.device == k.device == v.device):
        raise ValueError(f"q, k and v must be on one device, got {q.device}, {k.device}, {v.device}")


def check_hybrid_alpha(hybrid_alpha: object, heads: int) -> float | Tensor:
    """Validate ``hybrid_alpha``: a number in [0, 1], or a tensor of such values broadcastable per head.

    Accepted tensor shapes: ``()``, ``(H,)`` or 4-D broadcastable to ``(B, H, 1, 1)``. Returns the float or
    the tensor reshaped for broadcasting against ``(B, H, Lq, Lk)``.
    """
    if isinstance(hybrid_alpha, bool) or not isinstance(hybrid_alpha, (numbers.Real, Tensor)):
        raise TypeError(f"hybrid_alpha must be a float in [0, 1] or a tensor, got {type(hybrid_alpha).__name__}")
    if isinstance(hybrid_alpha, Tensor):
        a = hybrid_alpha
        if not a.is_floating_point():
            raise TypeError(f"hybrid_alpha tensor must be floating point, got {a.dtype}")
        if a.dim() == 1 and a.shape[0] == heads:
            a = a.view(1, heads, 1, 1)
        elif a.dim() == 0 or (a.dim() == 1 and a.shape[0] == 1):
            a = a.reshape(())
        elif not (a.dim() == 4 and a.shape[1] in (1, heads) and a.shape[2] == 1 and a.shape[3] == 1):
            raise ValueError(
                f"hybrid_alpha tensor must have shape (), ({heads},) or (B|1, {heads}|1, 1, 1), got {tuple(a.shape)}"
            )
        with torch.no_grad():
            has_nan, out_of_range = torch.stack([torch.isnan(a).any(), ((a < 0) | (a > 1)).any()]).tolist()
        if has_nan:
            raise ValueError(_ALPHA_NAN)
        if out_of_range:
            raise ValueError("hybrid_alpha values must lie in [0, 1] (use torch.sigmoid for a learned weight)")
        return a
    value = float(hybrid_alpha)
    if math.isnan(value):
        raise ValueError(_ALPHA_NAN)
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"hybrid_alpha must lie in [0, 1], got {value}")
    return value


def _check_options(normalization: object, dropout_p: object, scale: object, sinkhorn_iters: object, impl: object,
                   return_weights: object) -> None:
    if normalization not in NORMALIZATIONS:
        raise ValueError(f"normalization must be one of {', '.join(map(repr, NORMALIZATIONS))}; got {normalization!r}")
    if isinstance(dropout_p, bool) or not isinstance(dropout_p, numbers.Real) or not 0.0 <= float(dropout_p) < 1.0:
        raise ValueError(f"dropout_p must be a float in [0, 1), got {dropout_p!r}")
    if scale is not None and (
        isinstance(scale, bool) or not isinstance(scale, numbers.Real) or not math.isfinite(float(scale))
    ):
        raise ValueError(f"scale must be a finite number or None (1/sqrt(head_dim)), got {scale!r}")
    if isinstance(sinkhorn_iters, bool) or not isinstance(sinkhorn_iters, numbers.Integral) or sinkhorn_iters < 1:
        raise ValueError(f"sinkhorn_iters must be an integer >= 1 (1 == 'doubly'), got {sinkhorn_iters!r}")
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {', '.join(map(repr, IMPLS))}; got {impl!r}")
    if not isinstance(return_weights, bool):
        raise TypeError(f"return_weights must be a bool, got {type(return_weights).__name__}")


def _expand_kv(x: Tensor, groups: int) -> Tensor:
    """``(B, H_kv, L, D) -> (B, H_kv * groups, L, D)``: query head h reads key/value head h // groups."""
    if groups == 1:
        return x
    b, h, length, d = x.shape
    return x[:, :, None].expand(b, h, groups, length, d).reshape(b, h * groups, length, d)


def _all_finite(t: Tensor) -> bool:
    """One read pass, no temporary of ``t``'s size: NaN propagates to both extremes and +-inf shows in one.

    Under ``torch.compile`` the check is skipped (a data-dependent branch breaks the graph); eager runs check.
    """
    if torch.compiler.is_compiling():
        return True
    low, high = torch.aminmax(t)
    return bool(torch.isfinite(low) & torch.isfinite(high))


def _max_abs(name: str, t: Tensor) -> float:
    """``max |t|`` after checking that ``t`` is finite (one read pass, one sync)."""
    low, high = torch.stack(torch.aminmax(t)).tolist()
    if not (math.isfinite(low) and math.isfinite(high)):
        raise ValueError(f"{name} contains NaN or infinite values; attention inputs must be finite")
    return max(-low, high)


def _check_ranges(q: Tensor, k: Tensor, v: Tensor, spec: MaskSpec, scale: float, normalization: str) -> float | None:
    """Finite inputs, and scores / bias that the computing dtype holds with room to spare; the score bound.

    The same bound decides for every path (dense, chunked, forward and backward): ``|scale * q.k| <= |scale| * D
    * max|q| * max|k|`` must stay below ``finfo(compute).max / 2**16`` (float32: 5.2e33), so no score,
    log-normalizer or gradient product overflows anywhere. Skipped under ``torch.compile`` (data-dependent).

    Returns the bound on ``|score|`` (None under ``torch.compile``).
    """
    if torch.compiler.is_compiling():
        return None
    q_max, k_max = _max_abs("q", q), _max_abs("k", k)
    _max_abs("v", v)
    compute = torch.float64 if q.dtype == torch.float64 else torch.float32
    bound = abs(scale) * q.shape[-1] * q_max * k_max
    limit = torch.finfo(compute).max / 2**16
    if bound > limit:
        raise ValueError(
            f"the q·k scores may overflow: |scale| * head_dim * max|q| * max|k| = {bound:.3g} exceeds {limit:.3g} "
            f"({compute}); scale down q or k, or pass a smaller scale="
        )
    bias_dtype = q.dtype if normalization == "softmax" else compute
    if spec.bias_absmax > torch.finfo(bias_dtype).max / 2:
        raise ValueError(
            f"attn_mask holds finite values up to {spec.bias_absmax:.3g} in magnitude, more than {bias_dtype} holds "
            f"safely ({torch.finfo(bias_dtype).max / 2:.3g}); pass a smaller bias, or -inf / a bool mask to block pairs"
        )
    return bound


def _checked_output(out: Tensor) -> Tensor:
    """The output, or a clear error instead of a non-finite one (the inputs were finite: scores overflowed)."""
    if not _all_finite(out):
        raise ValueError(f"the attention output is not finite: the q·k scores overflowed in {out.dtype} or wider "
                         "(scale down q or k, or pass a smaller scale=)")
    return out


def attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    normalization: str = "softmax",
    attn_mask: Tensor | None = None,
    key_padding_mask: Tensor | None = None,
    query_padding_mask: Tensor | None = None,
    is_causal: bool = False,
    scale: float | None = None,
    dropout_p: float = 0.0,
    hybrid_alpha: float | Tensor = 0.5,
    sinkhorn_iters: int = 3,
    return_weights: bool = False,
    impl: str = "auto",
) -> Tensor | tuple[Tensor, Tensor]:
    """Multi-head attention with a choice of normalization.

    Args:
        q: ``(B, H, Lq, D)`` queries.
        k: ``(B, H_kv, Lk, D)`` keys; ``H % H_kv == 0`` (grouped-query heads: query head ``h`` uses key
            head ``h // (H // H_kv)``).
        v: ``(B, H_kv, Lk, Dv)`` values.
        normalization: ``"softmax"`` (rows), ``"doubly"`` (queries, then keys), ``"hybrid"``
            (``alpha * softmax + (1 - alpha) * doubly``) or ``"sinkhorn"`` (``sinkhorn_iters`` column-then-row
            iterations; 1 == doubly).
        attn_mask: bool (True = may attend) or float additive, broadcastable to ``(B, H, Lq, Lk)``.
        key_padding_mask: ``(B, Lk)`` bool, True = real key (padded keys receive exactly zero attention).
        query_padding_mask: ``(B, Lq)`` bool, True = real query (padded queries take part in no column
            statistic and output zeros). For self-attention pass the same mask as ``key_padding_mask``.
        is_causal: query ``i`` may attend to keys ``j <= i`` only. Only valid with ``"softmax"``.
        scale: score scale, default ``1 / sqrt(D)``.
        dropout_p: dropout on the attention weights (apply only in training).
        hybrid_alpha: weight of softmax in ``"hybrid"``: float in [0, 1] or tensor ``(H,)`` / ``(B|1, H, 1, 1)``.
        sinkhorn_iters: iterations for ``"sinkhorn"`` (>= 1).
        return_weights: also return the ``(B, H, Lq, Lk)`` attention weights (after dropout); this
            materializes the weights.
        impl: ``"dense"`` (materialized scores), ``"chunked"`` (key-block streaming, memory linear in the
            sequence length), ``"sdpa"`` (PyTorch's fused attention kernels, FlashAttention on CUDA; memory
            linear; padding-shaped masks only, see :mod:`probattn.functional.fused`) or ``"auto"``: on CUDA
            ``"sdpa"`` where it can run; else chunked from a measured number of scores ``B * H * Lq * Lk`` on
            (``2**17``-``2**21``, by head dim and torch thread count: see
            :func:`probattn.functional.streaming.prefer_chunked`) when neither ``return_weights`` nor
            ``dropout_p > 0`` is asked, else dense. Ignored for ``"softmax"``.

    Returns:
        ``out (B, H, Lq, Dv)``, or ``(out, weights)`` when ``return_weights``. Queries with no allowed key
        output zeros.

    Raises:
        TypeError, ValueError: for bad arguments (the message names the argument); ValueError when a
        column-normalized scheme meets a mask that is not block-complete (causal, sliding window, sparse:
        see :func:`probattn.masks.check_column_normalizable`).
    """
    batch, heads, q_len, k_len, kv_heads, dim = _check_qkv(q, k, v)
    _check_options(normalization, dropout_p, scale, sinkhorn_iters, impl, return_weights)
    alpha = check_hybrid_alpha(hybrid_alpha, heads) if normalization == "hybrid" else 0.0
    spec = build_mask_spec(
        batch=batch, heads=heads, q_len=q_len, k_len=k_len, device=q.device, attn_mask=attn_mask,
        key_padding_mask=key_padding_mask, query_padding_mask=query_padding_mask, is_causal=is_causal,
    )
    if normalization in COLUMN_NORMALIZED:
        check_column_normalizable(spec, normalization)  # padding alone costs nothing here
        if spec.bias_is_per_key():
            warnings.warn(
                f"attn_mask's finite entries depend on the key only (the same for every query): "
                f"normalization={normalization!r} cancels such a bias exactly, so it has no effect. To exclude keys "
                f"use key_padding_mask, a bool mask, -inf or entries <= {MASKED_AT_OR_BELOW:g}",
                UserWarning, stacklevel=2,
            )
        if q_len == 1:
            warnings.warn(
                f"normalization={normalization!r} with a single query gives uniform attention over the keys "
                "(mean pooling); use 'softmax' for single-query pooling", UserWarning, stacklevel=2,
            )
    scale = float(scale) if scale is not None else 1.0 / math.sqrt(dim)
    _check_ranges(q, k, v, spec, scale, normalization)
    dropout_p = float(dropout_p)

    if normalization == "softmax" and not return_weights:
        causal_only = is_causal and attn_mask is None and spec.key_valid is None and spec.query_valid is None
        out = sdpa_attention(q, k, v, spec, scale=scale, dropout_p=dropout_p, causal_only=causal_only)
        return _checked_output(out)

    groups = heads // kv_heads
    if normalization != "softmax" and (impl == "sdpa" or (impl == "auto" and q.device.type == "cuda")):
        factors, refusal = _fused_plan(q, k, spec, scale, return_weights, dropout_p, normalization,
                                       int(sinkhorn_iters))
        if impl == "sdpa" and refusal is not None:
            raise ValueError(f"impl='sdpa' cannot run this call: {refusal}")
        if factors is not None:
            out = fused_normalized_attention(
                q, _expand_kv(k, groups), _expand_kv(v, groups), query_valid=factors[0], key_valid=factors[1],
                scale=scale, normalization=normalization, hybrid_alpha=alpha, sinkhorn_iters=int(sinkhorn_iters),
            )
            return _checked_output(out)
    # impl="auto": the key-block slab path where it is measured faster (many scores), and only when neither the
    # weights nor dropout (which need the materialized weights) are asked for
    auto_chunked = impl == "auto" and not return_weights and dropout_p == 0 and prefer_chunked(
        batch, heads, q_len, k_len, head_dim=dim, threads=torch.get_num_threads())
    if normalization != "softmax" and (impl == "chunked" or auto_chunked):
        if return_weights:
            raise ValueError("return_weights=True materializes the weights; use impl='dense' (or 'auto') for them")
        if dropout_p > 0:
            raise ValueError("dropout_p > 0 is not supported by impl='chunked'; use impl='dense'")
        out = chunked_attention(
            q, _expand_kv(k, groups), _expand_kv(v, groups), spec, scale=scale, normalization=normalization,
            hybrid_alpha=alpha, sinkhorn_iters=int(sinkhorn_iters),
        )
        return _checked_output(out)
    result = _dense_attention(q, _expand_kv(k, groups), _expand_kv(v, groups), spec, normalization=normalization,
                              scale=scale, dropout_p=dropout_p, alpha=alpha, sinkhorn_iters=int(sinkhorn_iters),
                              return_weights=return_weights)
    _checked_output(result[0] if return_weights else result)
    return result


def _fused_plan(
    q: Tensor, k: Tensor, spec: MaskSpec, scale: float, return_weights: bool, dropout_p: float, normalization: str,
    sinkhorn_iters: int,
) -> tuple[tuple[Tensor | None, Tensor | None] | None, str | None]:
    """``(padding factors, None)`` when the fused-kernel path can run this call, else ``(None, why not)``."""
    if q.device.type not in ("cpu", "cuda"):
        return None, f"it runs on CPU and CUDA tensors, not {q.device.type}; use impl='chunked'"
    if q.device.type == "cuda" and q.dtype == torch.float64:
        return None, "float64 on CUDA has no fused kernel; use float32 or impl='chunked'"
    if return_weights:
        return None, "return_weights=True materializes the weights; use impl='dense' (or 'auto') for them"
    if dropout_p > 0:
        return None, "dropout_p > 0 is not supported; use impl='dense'"
    if scale <= 0:
        return None, f"scale must be > 0, got {scale}; use impl='chunked'"
    factors = padding_factors(spec)
    if factors is None:
        return None, ("it takes padding-shaped masks only (key_padding_mask / query_padding_mask, or an attn_mask "
                      "that is their product); this mask has a bias or a block pattern: use impl='chunked'")
    refusal = range_refusal(q, k, scale=scale, normalization=normalization, sinkhorn_iters=sinkhorn_iters)
    return (None, refusal) if refusal is not None else (factors, None)


def _dense_attention(q: Tensor, k: Tensor, v: Tensor, spec: MaskSpec, *, normalization: str, scale: float,
                     dropout_p: float, alpha: float | Tensor, sinkhorn_iters: int,
                     return_weights: bool) -> Tensor | tuple[Tensor, Tensor]:
    """Materialized path: scores ``(B, H, Lq, Lk)`` in float32 (float64 stays float64)."""
    compute = torch.float64 if q.dtype == torch.float64 else torch.float32
    scores = torch.matmul(q.to(compute), (k.to(compute) * scale).transpose(-1, -2))  # as the chunked path
    if spec.bias is not None:
        scores = scores + spec.bias.to(compute)
    if normalization == "softmax":
        weights = softmax_weights(scores, spec)
    elif normalization == "doubly":
        weights = doubly_weights(scores, spec)
    elif normalization == "hybrid":
        weights = hybrid_weights(scores, spec, alpha.to(compute) if isinstance(alpha, Tensor) else alpha)
    else:
        weights = sinkhorn_weights(scores, spec, sinkhorn_iters)
    if dropout_p > 0:
        weights = F.dropout(weights, p=dropout_p)
    out = torch.matmul(weights, v.to(compute)).to(q.dtype)
    return (out, weights.to(q.dtype)) if return_weights else out
