"""Doubly-normalized, hybrid and Sinkhorn attention from PyTorch's fused attention kernels (``impl="sdpa"``).

Doubly-normalized attention is row-softmax attention with a per-key bias ``-c_j``, where ``c_j`` is the
log-sum-exp of key ``j``'s column over the queries (:mod:`probattn.functional.doubly`). Every statistic is
therefore the row log-sum-exp of *some* attention problem, which the fused kernels already compute:

* ``c = LSE_i(S_ij)``: one kernel call with the roles swapped (keys attend to queries);
* ``out = softmax_j(S_ij - c_j) V``: one kernel call with the bias ``-c_j`` riding inside the scores;
* Sinkhorn: ``n - 1`` more pairs of such passes; hybrid: one more plain softmax pass.

The kernels take no per-key bias, so it travels in extra head dimensions (zero-padded to a multiple of 8)::

    q' = [q, 1, 1, 1, 1, 0 ...]      k' = [k, f_j, b1_j / scale, b2_j / scale, b3_j / scale, 0 ...]

``scale * q'.k' = scale * q.k + scale * f_j + b_j`` as the kernel accumulates it (float32; float64 for float64
inputs): ``f_j`` is 0 for a real key and ``-G / scale`` for an excluded one, and the bias is split by successive
rounding into three numbers of the input dtype (bfloat16 keeps 24 bits, as float32).
Gradients: the output pass uses the public :func:`torch.nn.functional.scaled_dot_product_attention` (its own
fused backward); each log-sum-exp is an autograd Function whose backward is one more fused pass with the roles
swapped again. Nothing of size ``(Lq, Lk)`` is stored: memory is linear in the sequence length.

The range in which this is exact (docs/attention.md, "the fused path's range"; :func:`max_score_bound`).
With ``S`` a bound on ``|scale * q.k|`` (:func:`score_bound`: ``scale * max||q|| * max||k||``) and ``n`` column
passes, every entry and bias any kernel sees, forward and backward, lies within ``R = (2n + 1)(S + log(Lq + Lk))``
(each column or row half-step widens the potentials' range by at most ``S + log L``). Then

1. exclusion: an excluded key or query lands ``G`` (:func:`excluded_gap`: ``min(finfo(float32).max / 2**8,
   scale * finfo(dtype).max / 4)``) lower; its weight relative to the row's largest entry is at most
   ``exp(2R - G)``, exactly 0 in the computing dtype when ``G >= 2R + 105`` (float64: 746);
2. representation: ``R / scale <= finfo(dtype).max / 4`` (the bias parts are numbers of the input dtype);
3. precision: each pass rounds its scores and biases on its own, so exponents are off by about ``u * R``; the
   output error, at most ``0.082 u R max|v|`` measured (``benchmarks/fused_precision.py``), is kept within half
   the dtype's tolerance (:data:`TOLERANCE`) with the constant 0.25.

:func:`range_refusal` checks ``S`` on every call (one pass over q and k, one sync); ``attention(impl="sdpa")``
raises outside the range, ``impl="auto"`` takes the chunked or dense path. Inside it the backward stays finite
(``exp(m_j + bias_j) = sum_i P_ij`` is bounded by the row count; the pooled values are scaled by a power of two
before the cast to the input dtype).

Kernels (all return the row log-sum-exp): FlashAttention-2 on CUDA for float16/bfloat16, the memory-efficient
kernel on CUDA for float32, PyTorch's flash kernel on the CPU (every float dtype, float64 included, which
``gradcheck`` uses). Only padding-shaped masks (:func:`probattn.masks.padding_factors`) travel this way; other
masks take the chunked or dense path.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "BIAS_PARTS", "EXTRA_DIMS", "TOLERANCE", "column_passes", "excluded_gap", "fused_normalized_attention",
    "max_score_bound", "range_refusal", "row_logsumexp", "score_bound", "widened_head_dim",
]

EXTRA_DIMS = 4  # the exclusion flag and the three parts of the bias
BIAS_PARTS = 3


def widened_head_dim(head_dim: int, value_dim: int) -> int:
    """Head dimension of the widened tensors: room for the extra dimensions, a multiple of 8 (kernel alignment)."""
    return (max(head_dim + EXTRA_DIMS, value_dim) + 7) // 8 * 8


def _exclusion_value(dtype: torch.dtype, scale: float) -> float:
    """``f`` of an excluded key, as ``dtype`` holds it: ``scale * |f| = min(finfo(compute).max / 2**8,
    scale * finfo(dtype).max / 4)`` (rounded toward zero), far below every score the range check admits."""
    compute_max = torch.finfo(_compute_dtype(dtype)).max
    f = min(compute_max / 2**8 / scale, torch.finfo(dtype).max / 4)
    held = torch.tensor(f, dtype=torch.float64).to(dtype).item()
    if held > f:  # rounded up: step one representable number down
        held = torch.nextafter(torch.tensor(held, dtype=dtype), torch.tensor(0.0, dtype=dtype)).item()
    return -held


def excluded_gap(dtype: torch.dtype, scale: float) -> float:
    """How far below the scores an excluded key lands (``G = scale * |f|``): 1.3e36 for float32 and bfloat16
    at every usual scale, ``scale * 16376`` in float16 (2047 at ``D = 64``)."""
    return scale * -_exclusion_value(dtype, scale)


def _underflow_margin(dtype: torch.dtype) -> float:
    """``-log`` of the smallest positive number of the computing dtype, rounded up: ``exp(-margin)`` is 0 there
    (float32: 105, float64: 746)."""
    info = torch.finfo(_compute_dtype(dtype))
    return math.ceil(-math.log(info.smallest_normal * info.eps)) + 1


def column_passes(normalization: str, sinkhorn_iters: int) -> int:
    """Column log-sum-exp passes the fused path makes: ``sinkhorn_iters`` for ``"sinkhorn"``, else 1."""
    return sinkhorn_iters if normalization == "sinkhorn" else 1


# Output tolerance, relative to max|v|, that the fused path keeps inside its range: the tolerance the fuzz harness
# (tests/functional/test_fuzz.py) holds every path to, per input dtype.
TOLERANCE: dict[torch.dtype, float] = {torch.float64: 1e-9, torch.float32: 2e-4, torch.float16: 3e-2,
                                       torch.bfloat16: 6e-2}
# Output error per unit of ``u * R * max|v|`` (``u`` the computing dtype's unit roundoff, ``R`` below), beyond 8 ulps
# of the input dtype: at most 0.082 measured over 3 x 400 random cases (float64/float32/bfloat16, D = 1..64,
# |q|,|k| = 0.1..1e4, scale = 1e-3..1e3, padding on both axes, doubly/hybrid/sinkhorn 2 and 4); the range uses 0.25.
ROUNDING_CONSTANT = 0.25


def max_score_bound(dtype: torch.dtype, scale: float, q_len: int, k_len: int, passes: int) -> float:
    """The largest score bound ``S`` (``|scale * q.k| <= S``) for which the fused path is exact; <= 0: none.

    Derivation (``docs/attention.md``, "the fused path's range"): every entry a kernel sees (a score plus a
    key or query bias ``-c_j`` / ``u_i`` / ``-lse_i``, forward and backward) and every bias lies within
    ``R = (2 * passes + 1) * (S + log(Lq + Lk))`` (each column or row half-step widens the potentials' range by
    at most ``S + log L``). Three conditions bound ``R``:

    * exclusion: an excluded key or query lands ``G`` = :func:`excluded_gap` lower, so its weight relative to
      the row's largest entry is at most ``exp(2R - G)``: exactly 0 in the computing dtype when
      ``2R + margin <= G`` (:func:`_underflow_margin`; no padding leak at all);
    * representation: the bias travels as ``bias / scale`` in the input dtype: ``R / scale <= finfo.max / 4``;
    * precision: each pass rounds its scores and biases to the computing dtype on its own (unlike the dense
      path, which subtracts ``c_j`` from the very numbers it was computed from), so an entry's exponent is off
      by about ``u * R``; the output error is ``<= ROUNDING_CONSTANT * u * R * max|v|``, kept within half of
      :data:`TOLERANCE`.
    """
    gap = excluded_gap(dtype, scale)
    compute = _compute_dtype(dtype)
    unit_roundoff = torch.finfo(compute).eps / 2
    r_max = min((gap - _underflow_margin(dtype)) / 2, scale * torch.finfo(dtype).max / 4,
                TOLERANCE[dtype] / 2 / (ROUNDING_CONSTANT * unit_roundoff))
    return r_max / (2 * passes + 1) - math.log(q_len + k_len)


def score_bound(q: Tensor, k: Tensor, scale: float) -> float:
    """``scale * max ||q_i|| * max ||k_j||`` (Cauchy-Schwarz bound on ``|scale * q.k|``): one pass, one sync.

    The norms are taken in float64 (float32's sum of squares overflows from norms of ~1e19 on).
    """
    norms = torch.stack([torch.linalg.vector_norm(q, dim=-1, dtype=torch.float64).amax(),
                         torch.linalg.vector_norm(k, dim=-1, dtype=torch.float64).amax()]).tolist()
    return abs(scale) * norms[0] * norms[1]


def range_refusal(q: Tensor, k: Tensor, *, scale: float, normalization: str, sinkhorn_iters: int) -> str | None:
    """None when the fused path is exact for these inputs (:func:`max_score_bound`), else why not.

    ``q (B, H, Lq, D)``, ``k (B, H_kv, Lk, D)``. Under ``torch.compile`` (no data-dependent branch) the range is
    not checked and only float16 (whose range is small) is refused.
    """
    passes = column_passes(normalization, sinkhorn_iters)
    limit = max_score_bound(q.dtype, scale, q.shape[-2], k.shape[-2], passes)
    if torch.compiler.is_compiling():
        if q.dtype == torch.float16:
            return "float16 under torch.compile (the score range is unknown); use bfloat16 or impl='chunked'"
        return None
    bound = score_bound(q, k, scale)
    if bound <= limit:
        return None
    return (f"its scores may reach {bound:.3g} (scale * max||q|| * max||k||), beyond {max(limit, 0.0):.3g}, the "
            f"bound up to which the fused path is exact in {q.dtype} at scale={scale:.3g} with {passes} column "
            "pass(es) (the padding exclusion and the key bias ride in the extra head dimensions; see "
            "docs/attention.md, 'the fused path's range'); use impl='chunked' (impl='auto' does), "
            + ("bfloat16 instead of float16, " if q.dtype == torch.float16 else "") + "or scale down q or k")


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _widen_query(x: Tensor, width: int) -> Tensor:
    """``(B, H, L, D) -> (B, H, L, width)``: ``[x, 1, 1, 1, 1, 0 ...]``."""
    b, h, length, d = x.shape
    return torch.cat([x, x.new_ones(b, h, length, EXTRA_DIMS), x.new_zeros(b, h, length, width - d - EXTRA_DIMS)], -1)


def _widen_key(x: Tensor, bias: Tensor | None, valid: Tensor | None, scale: float, width: int) -> Tensor:
    """``(B, H, L, D) -> (B, H, L, width)``: ``[x, f, bias_1 / scale, bias_2 / scale, bias_3 / scale, 0 ...]``.

    ``bias`` ``(B|1, H|1, L)`` in the compute dtype (differentiable) or None; ``valid`` ``(B|1, H|1, L)`` bool
    or None (False = excluded: weight exactly 0). ``bias / scale`` is split by successive rounding into
    :data:`BIAS_PARTS` numbers of ``x``'s dtype whose sum the kernel accumulates in float32: relative error
    ``2**-(3 p)`` for a ``p``-bit significand (bfloat16: ``2**-24``, as float32 itself).
    """
    b, h, length, d = x.shape
    shape = (b, h, length, 1)
    if valid is None:
        flag = x.new_zeros(shape)
    else:
        flag = (~valid).to(x.dtype).mul(_exclusion_value(x.dtype, scale)).unsqueeze(-1).expand(shape)
    if bias is None:
        parts = [x.new_zeros(shape)] * BIAS_PARTS
    else:
        rest = (bias / scale).unsqueeze(-1).expand(shape)
        parts = []
        for _ in range(BIAS_PARTS):
            part = rest.to(x.dtype)
            parts.append(part)
            rest = rest - part.to(rest.dtype)
    return torch.cat([x, flag, *parts, x.new_zeros(b, h, length, width - d - EXTRA_DIMS)], -1)


def _power_of_two_above(x: Tensor) -> Tensor:
    """``2**ceil(log2(max|x|))`` per ``(B, H)`` slice, shape ``(B, H, 1, 1)``; 1 where ``x`` is all zero."""
    top = x.abs().amax(dim=(-2, -1), keepdim=True)
    return torch.where(top > 0, torch.exp2(torch.ceil(torch.log2(top))), torch.ones((), dtype=x.dtype,
                                                                                     device=x.device))


def _pad_values(v: Tensor, width: int) -> Tensor:
    return v if v.shape[-1] == width else F.pad(v, (0, width - v.shape[-1]))


def _kernel(q: Tensor, k: Tensor, v: Tensor, scale: float) -> tuple[Tensor, Tensor]:
    """One fused attention call without autograd: ``(out (B, H, Lq, W), row log-sum-exp (B, H, Lq))``."""
    if q.device.type == "cuda":
        if q.dtype in (torch.float16, torch.bfloat16) and q.shape[-1] <= 256:
            res = torch.ops.aten._scaled_dot_product_flash_attention(q, k, v, 0.0, False, False, scale=scale)
            return res[0], res[1]
        res = torch.ops.aten._scaled_dot_product_efficient_attention(q, k, v, None, True, 0.0, False, scale=scale)
        return res[0], res[1][..., : q.shape[-2]]
    if q.device.type == "cpu":
        out, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(q, k, v, 0.0, False, scale=scale)
        return out, lse
    raise ValueError(f"the fused path runs on CPU and CUDA tensors, not {q.device.type}")


class _RowLogSumExp(torch.autograd.Function):
    """``l_i = LSE_{j valid}(scale * a_i.b_j + bias_j)`` ``(B, H, La)``; 0 where no ``j`` is valid."""

    @staticmethod
    def forward(ctx, a: Tensor, b: Tensor, bias: Tensor | None, valid: Tensor | None,  # type: ignore[override]
                scale: float) -> Tensor:
        d, compute = a.shape[-1], _compute_dtype(a.dtype)
        width = widened_head_dim(d, d)
        b_wide = _widen_key(b, bias, valid, scale, width)
        out, lse = _kernel(_widen_query(a, width), b_wide, b_wide, scale)
        lse = lse.to(compute)
        if valid is not None:
            lse = torch.where(valid.any(dim=-1, keepdim=True), lse, torch.zeros((), dtype=compute, device=a.device))
        ctx.scale, ctx.width, ctx.has_bias = scale, width, bias is not None
        ctx.save_for_backward(a, b, bias if bias is not None else lse.new_empty(0), valid if valid is not None else
                              lse.new_empty(0, dtype=torch.bool), out[..., :d].contiguous(), lse)
        ctx.has_valid = valid is not None
        return lse

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        a, b, bias, valid, pooled_b, lse = ctx.saved_tensors
        scale, width, d = ctx.scale, ctx.width, a.shape[-1]
        compute = grad.dtype
        if ctx.has_valid:  # rows with no valid column are 0 by definition: no gradient
            grad = grad.masked_fill(~valid.any(dim=-1, keepdim=True), 0.0)
        weighted = grad * scale
        grad_a = grad_b = grad_bias = None
        if ctx.needs_input_grad[0]:  # sum_j P_ij b_j was pooled in the forward pass
            grad_a = (weighted.unsqueeze(-1) * pooled_b.to(compute)).to(a.dtype)
        if ctx.needs_input_grad[1] or ctx.needs_input_grad[2]:
            # sum_i P_ij [g_i scale a_i, g_i] = exp(bias_j + m_j) * softmax_i(S_ij - l_i) [...]: the roles swapped.
            # Each group of value columns is divided by a power of two of its largest magnitude so that the cast
            # to the input dtype cannot overflow (exact: the kernel is linear in the values).
            parts = [weighted.unsqueeze(-1) * a.to(compute), grad.unsqueeze(-1)]
            steps = [_power_of_two_above(p) for p in parts]
            values = torch.cat([p / s for p, s in zip(parts, steps)], -1).to(a.dtype)
            out, m = _kernel(_widen_query(b, width), _widen_key(a, -lse, None, scale, width),
                             _pad_values(values, width), scale)
            log_factor = m.to(compute) + bias if ctx.has_bias else m.to(compute)
            # sum_i P_ij <= La exactly (P_ij <= 1): the bound keeps exp finite where float32 rounding of huge
            # scores would push it past (the error is then that of the scores themselves)
            factor = torch.exp(log_factor.clamp(max=math.log(a.shape[-2])))
            if ctx.has_valid:
                factor = factor.masked_fill(~valid, 0.0)
            pooled = out[..., : d + 1].to(compute) * factor.unsqueeze(-1)
            pooled = torch.cat([pooled[..., :d] * steps[0], pooled[..., d:] * steps[1]], -1)
            grad_b = pooled[..., :d].to(b.dtype) if ctx.needs_input_grad[1] else None
            if ctx.needs_input_grad[2]:
                grad_bias = pooled[..., d]
                if bias.shape != grad_bias.shape:  # a bias broadcast over batch or heads
                    grad_bias = grad_bias.sum_to_size(bias.shape)
        return grad_a, grad_b, grad_bias, None, None


def row_logsumexp(a: Tensor, b: Tensor, bias: Tensor | None = None, valid: Tensor | None = None, *,
                  scale: float) -> Tensor:
    """Differentiable ``LSE_j(scale * a_i.b_j + bias_j)`` over the valid ``j``, from one fused kernel call.

    Args:
        a: ``(B, H, La, D)``; b: ``(B, H, Lb, D)`` (same dtype and device).
        bias: ``(B|1, H|1, Lb)`` float32 (float64 for float64 inputs), or None.
        valid: ``(B|1, H|1, Lb)`` bool, True = ``j`` takes part; None = all.
        scale: score scale, > 0.

    Returns:
        ``(B, H, La)`` in float32 (float64 for float64 inputs); 0 where no ``j`` is valid.
    """
    return _RowLogSumExp.apply(a, b, bias, valid, scale)


def fused_normalized_attention(q: Tensor, k: Tensor, v: Tensor, *, query_valid: Tensor | None,
                               key_valid: Tensor | None, scale: float, normalization: str,
                               hybrid_alpha: float | Tensor = 0.5, sinkhorn_iters: int = 1) -> Tensor:
    """``doubly`` / ``hybrid`` / ``sinkhorn`` attention from fused kernels; memory linear in the length.

    Args:
        q: ``(B, H, Lq, D)``; k: ``(B, H, Lk, D)``; v: ``(B, H, Lk, Dv)`` (grouped-query heads already expanded).
        query_valid: ``(B|1, H|1, Lq)`` bool (True = real query) or None; key_valid: ``(B|1, H|1, Lk)`` or None.
            A batch element with no valid key must have no valid query (:func:`probattn.masks.padding_factors`).
        scale: score scale, > 0.
        normalization: ``"doubly"``, ``"hybrid"`` or ``"sinkhorn"``.
        hybrid_alpha: weight of softmax in ``"hybrid"`` (float, or tensor broadcastable to ``(B, H, 1, 1)``).
        sinkhorn_iters: column-then-row iterations for ``"sinkhorn"`` (1 == doubly).

    Returns:
        ``(B, H, Lq, Dv)`` in the inputs' dtype; invalid queries output zeros.
    """
    if not (scale > 0 and math.isfinite(scale)):
        raise ValueError(f"scale must be a positive finite number for the fused path, got {scale!r}")
    d, dv = q.shape[-1], v.shape[-1]
    width = widened_head_dim(d, dv)
    c = row_logsumexp(k, q, None, query_valid, scale=scale)  # column step
    for _ in range(sinkhorn_iters - 1 if normalization == "sinkhorn" else 0):
        u = -row_logsumexp(q, k, -c, key_valid, scale=scale)  # row step
        c = row_logsumexp(k, q, u, query_valid, scale=scale)  # column step on the row-normalized plan
    q_wide, v_wide = _widen_query(q, width), _pad_values(v, width)
    out = F.scaled_dot_product_attention(q_wide, _widen_key(k, -c, key_valid, scale, width), v_wide,
                                         scale=scale)[..., :dv]
    if normalization == "hybrid":
        soft = F.scaled_dot_product_attention(q_wide, _widen_key(k, None, key_valid, scale, width), v_wide,
                                              scale=scale)[..., :dv]
        alpha = hybrid_alpha.to(soft.dtype) if isinstance(hybrid_alpha, Tensor) else hybrid_alpha
        out = alpha * soft + (1 - alpha) * out
    if query_valid is not None:
        out = out.masked_fill(~query_valid.unsqueeze(-1), 0.0)
    return out
