"""Memory-efficient doubly-normalized, hybrid and Sinkhorn attention: the key-block slab algorithm.

The dense paths materialize the ``(Lq, Lk)`` score matrix (and autograd keeps several copies of it for the
backward). This module never does: it loops over **key blocks** ``J`` of ``block_size`` keys and keeps the whole
query axis inside the block, so one slab ``S[:, :, :, J]`` has shape ``(B, H, Lq, block_size)``.

With ``S = scale * q kᵀ + bias`` (pairs that may not attend are ``-inf``):

* a column statistic ``c_j = logsumexp_i (S_ij - rho_i)`` is complete inside the slab that holds column ``j``;
* the row softmax over keys of ``Z = S - c`` is accumulated across slabs with the running-max rescaling of
  FlashAttention (``m``, ``l``, ``acc``), giving ``out = softmax_row(Z) @ v`` and ``rho_i = logsumexp_j Z_ij``.

Doubly-normalized attention is one such pass (``rho = 0`` inside the column statistic): two GEMMs per slab,
as many as softmax attention. Sinkhorn with ``k`` iterations (query axis first, ``k = 1`` is doubly) runs
``k - 1`` extra passes that only refine the potentials ``(c, rho)``. Hybrid ``alpha * softmax + (1 - alpha) *
doubly`` keeps a second row accumulator on ``S`` itself.

The backward recomputes each slab from ``q``, ``k`` and the saved ``O(L)`` potentials (FlashAttention-2's five
GEMMs per slab for doubly and hybrid). For doubly, with ``A = exp(Z - rho)``, ``P = exp(Z)``,
``dP = dO vᵀ`` and ``D_i = <dO_i, O_i>``::

    dZ = A * (dP - D);  g = colsum(dZ);  dS = dZ - P * g
    dv = Aᵀ dO;  dk = scale * dSᵀ q;  dq = scale * dS k

Sinkhorn's backward walks the potentials back (one extra pass per iteration, see ``_SlabAttention.backward``).

Peak extra memory is ``O(B * H * (Lq + Lk) * block_size)`` plus the ``O(B * H * L * D)`` inputs and outputs.
Mask rules (``probattn.masks``): ``spec.allowed`` already folds padding and causality and ``spec.bias`` is a
finite additive bias; both broadcast over ``B``/``H`` and are sliced per key block, never expanded. A padded
query never enters a column statistic; a column with no allowed query gets ``c_j = 0``; a row with no allowed
key outputs zeros and receives zero gradient; nothing ever becomes NaN.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from probattn.masks import MaskSpec

__all__ = ["SLAB_ELEMENTS", "chunked_attention", "default_block_size"]

NORMALIZATIONS = ("doubly", "hybrid", "sinkhorn")

# Target number of elements in one (B, H, Lq, block) slab: 2**20 floats = 4 MiB in float32. The backward
# keeps about four slabs alive, so the transient memory is ~16 MiB whatever the sequence length.
SLAB_ELEMENTS = 2**20
MIN_BLOCK = 16

_NEG_INF = float("-inf")


def default_block_size(batch: int, heads: int, q_len: int, k_len: int) -> int:
    """Keys per slab: as many as fit ``SLAB_ELEMENTS`` for a ``(batch, heads, q_len, block)`` slab.

    At least ``MIN_BLOCK`` (so the GEMMs stay efficient), at most ``k_len``.
    """
    fit = SLAB_ELEMENTS // max(1, batch * heads * q_len)
    return max(1, min(k_len, max(MIN_BLOCK, fit)))


# ----------------------------------------------------------------------------------------------------------
# slab helpers (no autograd inside: they run in the Function's forward/backward)


def _blocks(k_len: int, block: int) -> range:
    return range(0, k_len, block)


def _columns(x: Tensor, j0: int, j1: int) -> Tensor:
    """Key columns ``j0:j1`` of a mask or bias that broadcasts over keys when its last dimension is 1."""
    return x if x.shape[-1] == 1 else x[..., j0:j1]


def _slab(q_scaled: Tensor, k: Tensor, allowed: Tensor | None, bias: Tensor | None, j0: int, j1: int) -> Tensor:
    """Scores ``scale * q k[J]ᵀ + bias[..., J]`` of shape (B, H, Lq, j1 - j0); not-allowed pairs are -inf."""
    s = torch.matmul(q_scaled, k[:, :, j0:j1].transpose(-1, -2))
    if bias is not None:
        s += _columns(bias, j0, j1)
    if allowed is not None:
        s.masked_fill_(~_columns(allowed, j0, j1), _NEG_INF)
    return s


def _column_lse(s: Tensor, rho: Tensor | None) -> Tensor:
    """``c_j = logsumexp_i (S_ij - rho_i)`` as (B, H, 1, Bk); an empty column (all -inf) gets 0.

    Written out (max, one exp pass, sum) because ``torch.logsumexp`` over the query axis is several times
    slower on CPU.
    """
    x = s - rho if rho is not None else s
    top = x.amax(dim=-2, keepdim=True)
    top = top.masked_fill_(top == _NEG_INF, 0.0)
    total = (x.sub_(top) if rho is not None else x - top).exp_().sum(dim=-2, keepdim=True)
    return torch.where(total > 0, top + total.log(), 0.0)


class _OnlineSoftmax:
    """Row softmax over keys accumulated across key blocks (running max ``m``, sum ``l``, ``acc = Σ p v``)."""

    def __init__(self, rows: Tensor, dv: int | None) -> None:
        shape = (*rows.shape[:-1], 1)
        self.m = torch.full(shape, _NEG_INF, dtype=rows.dtype, device=rows.device)
        self.l = torch.zeros(shape, dtype=rows.dtype, device=rows.device)
        self.acc = None if dv is None else rows.new_zeros((*rows.shape[:-1], dv))

    def update(self, z: Tensor, v_block: Tensor | None, *, inplace: bool) -> None:
        """Add the logits ``z`` (B, H, Lq, Bk) of one key block (and its values (B, H, Bk, Dv))."""
        m_new = torch.maximum(self.m, z.amax(dim=-1, keepdim=True))
        m_safe = m_new.masked_fill(m_new == _NEG_INF, 0.0)  # rows with no key so far: exp(-inf - 0) = 0
        p = z.sub_(m_safe).exp_() if inplace else torch.exp(z - m_safe)
        correction = torch.exp(self.m - m_safe)
        self.l = self.l * correction + p.sum(dim=-1, keepdim=True)
        if self.acc is not None:
            self.acc = self.acc * correction + torch.matmul(p, v_block)
        self.m = m_new

    def finish(self) -> tuple[Tensor | None, Tensor]:
        """``(out (B, H, Lq, Dv) or None, lse (B, H, Lq, 1))``; rows without any key give 0 and 0."""
        has_key = self.l > 0
        lse = torch.where(has_key, self.m + torch.log(torch.where(has_key, self.l, 1.0)), 0.0)
        out = None if self.acc is None else torch.where(has_key, self.acc / torch.where(has_key, self.l, 1.0), 0.0)
        return out, lse


# ----------------------------------------------------------------------------------------------------------


class _SlabAttention(torch.autograd.Function):
    """out = alpha * softmax(S) v + (1 - alpha) * sinkhorn_k(S) v, computed over key-block slabs.

    ``doubly`` is ``iters=1, hybrid=False``; ``sinkhorn`` is ``iters=k``; ``hybrid`` is ``iters=1, hybrid=True``.
    Potentials: ``rho^0 = 0``; for t = 1..k: ``c^t = colLSE(S - rho^(t-1))``, ``rho^t = rowLSE(S - c^t)``;
    the output uses ``A = exp(S - c^k - rho^k)``.
    """

    @staticmethod
    def forward(ctx, q, k, v, alpha, allowed, bias, scale, iters, hybrid, block):  # type: ignore[override]
        q_scaled = q * scale
        k_len = k.shape[-2]
        cs: list[Tensor] = []  # c^1..c^k, each (B, H, 1, Lk)
        rhos: list[Tensor] = []  # rho^1..rho^k, each (B, H, Lq, 1)
        rho_prev = None
        for t in range(iters):
            last = t == iters - 1
            rows = _OnlineSoftmax(q, v.shape[-1] if last else None)
            plain = _OnlineSoftmax(q, v.shape[-1]) if (last and hybrid) else None
            c_blocks = []
            for j0 in _blocks(k_len, block):
                j1 = min(j0 + block, k_len)
                s = _slab(q_scaled, k, allowed, bias, j0, j1)
                c = _column_lse(s, rho_prev)
                c_blocks.append(c)
                v_block = v[:, :, j0:j1] if last else None
                if plain is not None:
                    plain.update(s, v_block, inplace=False)
                rows.update(s.sub_(c), v_block, inplace=True)
            out_dbl, rho = rows.finish()
            cs.append(torch.cat(c_blocks, dim=-1) if c_blocks else q.new_zeros((*q.shape[:2], 1, 0)))
            rhos.append(rho)
            rho_prev = rho
        if plain is not None:
            out_soft, rho_soft = plain.finish()
            out = alpha * out_soft + (1 - alpha) * out_dbl
        else:
            out_soft = rho_soft = None
            out = out_dbl
        ctx.save_for_backward(q, k, v, alpha, allowed, bias, out_dbl, out_soft, rho_soft, *cs, *rhos)
        ctx.scale, ctx.iters, ctx.hybrid, ctx.block = scale, iters, hybrid, block
        return out

    @staticmethod
    def backward(ctx, d_out):  # type: ignore[override]
        q, k, v, alpha, allowed, bias, out_dbl, out_soft, rho_soft, *pots = ctx.saved_tensors
        scale, iters, hybrid, block = ctx.scale, ctx.iters, ctx.hybrid, ctx.block
        cs, rhos = pots[:iters], [None, *pots[iters:]]  # c^1..c^k; rho^0 = None (zero), rho^1..rho^k
        q_scaled = q * scale
        k_len = k.shape[-2]
        blocks = [(j0, min(j0 + block, k_len)) for j0 in _blocks(k_len, block)]
        w_dbl = 1 - alpha  # weight of the doubly/Sinkhorn branch in the hybrid
        d_dbl = (d_out * out_dbl).sum(-1, keepdim=True)  # D_i = <dO_i, O_i>
        d_soft = (d_out * out_soft).sum(-1, keepdim=True) if hybrid else None

        def p_of(s: Tensor, t: int, j0: int, j1: int) -> Tensor:  # P^t = exp(S - rho^(t-1) - c^t), new tensor
            x = s - cs[t - 1][..., j0:j1]
            return (x if t == 1 else x.sub_(rhos[t - 1])).exp_()

        def a_of(s: Tensor, t: int, j0: int, j1: int) -> Tensor:  # A^t = exp(S - c^t - rho^t), new tensor
            return (s - cs[t - 1][..., j0:j1]).sub_(rhos[t]).exp_()

        def d_probs(j0: int, j1: int) -> Tensor:  # dP = dO v[J]ᵀ, (B, H, Lq, Bk)
            return torch.matmul(d_out, v[:, :, j0:j1].transpose(-1, -2))

        def output_dz(s: Tensor, dp: Tensor, j0: int, j1: int) -> tuple[Tensor, Tensor]:
            """Consumes ``s`` and ``dp``: (dZ = A^k * (dP - D), A^k) of the output row softmax."""
            a = s.sub_(cs[-1][..., j0:j1]).sub_(rhos[-1]).exp_()
            return dp.sub_(d_dbl).mul_(a), a

        # Sinkhorn adjoint sweep, t = k down to 2: dc^t (complete per slab), drho^(t-1) (summed over slabs).
        dcs: list[Tensor | None] = [None] * (iters + 1)
        drhos: list[Tensor | None] = [None] * (iters + 1)
        for t in range(iters, 1, -1):
            drho_prev = torch.zeros_like(rhos[1])
            dc_blocks = []
            for j0, j1 in blocks:
                s = _slab(q_scaled, k, allowed, bias, j0, j1)
                if t == iters:
                    dc = -output_dz(s.clone(), d_probs(j0, j1), j0, j1)[0].sum(-2, keepdim=True)
                else:
                    dc = -(a_of(s, t, j0, j1) * drhos[t]).sum(-2, keepdim=True)
                dc_blocks.append(dc)
                drho_prev -= torch.matmul(p_of(s, t, j0, j1), dc.transpose(-1, -2))
            dcs[t] = torch.cat(dc_blocks, dim=-1)
            drhos[t - 1] = drho_prev

        # Final sweep: dS = dZ + sum_t P^t * dc^t + sum_(t<k) A^t * drho^t (+ the softmax branch's dZ).
        need_bias = bias is not None and ctx.needs_input_grad[5]
        dq = torch.zeros_like(q)
        dk = torch.empty_like(k)
        dv = torch.empty_like(v)
        d_bias = torch.zeros_like(bias) if need_bias else None
        for j0, j1 in blocks:
            s = _slab(q_scaled, k, allowed, bias, j0, j1)
            stage_terms = None
            if iters > 1:  # every dc^t and drho^t is known except dc^1, which is complete in this slab
                stage_terms = a_of(s, 1, j0, j1).mul_(drhos[1])
                dc1 = -stage_terms.sum(-2, keepdim=True)
                for t in range(1, iters + 1):
                    stage_terms += p_of(s, t, j0, j1).mul_(dc1 if t == 1 else dcs[t][..., j0:j1])
                    if 1 < t < iters:
                        stage_terms += a_of(s, t, j0, j1).mul_(drhos[t])
            dp = d_probs(j0, j1)
            if hybrid:  # softmax branch: A_s = exp(S - rho_s), dZ_s = alpha * A_s * (dP - D_s)
                a_soft = (s - rho_soft).exp_()
                dz_soft = (dp - d_soft).mul_(a_soft).mul_(alpha)
            dz, a = output_dz(s, dp, j0, j1)  # consumes s and dp
            if hybrid:
                dz.mul_(w_dbl)
                mixed = a_soft.mul_(alpha).addcmul_(a, w_dbl)
                dv[:, :, j0:j1] = torch.matmul(mixed.transpose(-1, -2), d_out)
                del mixed, a_soft
            else:
                dz_soft = None
                dv[:, :, j0:j1] = torch.matmul(a.transpose(-1, -2), d_out)
            if stage_terms is None:  # doubly / hybrid: dS = dZ - P * colsum(dZ), P = A * exp(rho)
                ds = dz.addcmul_(a.mul_(rhos[-1].exp()), dz.sum(-2, keepdim=True), value=-1)
            else:
                ds = dz.add_(stage_terms)
            del a, stage_terms
            if dz_soft is not None:
                ds += dz_soft
            dk[:, :, j0:j1] = torch.matmul(ds.transpose(-1, -2), q_scaled)
            dq += torch.matmul(ds, k[:, :, j0:j1])
            if d_bias is not None:
                target = _columns(d_bias, j0, j1)
                target += ds.sum_to_size(target.shape)
        dq.mul_(scale)

        d_alpha = None
        if hybrid and ctx.needs_input_grad[3]:
            d_alpha = (d_out * (out_soft - out_dbl)).sum(dim=(-1, -2), keepdim=True).sum_to_size(alpha.shape)
        return dq, dk, dv, d_alpha, None, d_bias, None, None, None, None


def chunked_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    spec: MaskSpec,
    *,
    scale: float,
    normalization: str,
    hybrid_alpha: float | Tensor = 0.5,
    sinkhorn_iters: int = 3,
    block_size: int | None = None,
) -> Tensor:
    """Doubly-normalized / hybrid / Sinkhorn attention without materializing the ``(Lq, Lk)`` scores.

    Args:
        q: ``(B, H, Lq, D)`` queries; float16/bfloat16 inputs are computed in float32 (float64 stays float64).
        k: ``(B, H, Lk, D)`` keys, already expanded to ``H`` heads.
        v: ``(B, H, Lk, Dv)`` values, already expanded to ``H`` heads.
        spec: the problem's :class:`~probattn.masks.MaskSpec` (``allowed`` / ``bias`` broadcast over B and H).
        scale: multiplies ``q kᵀ`` (usually ``1 / sqrt(D)``).
        normalization: ``"doubly"`` (``A = softmax_row(S - c)``, ``c_j = logsumexp_i S_ij``), ``"hybrid"``
            (``alpha * softmax_row(S) + (1 - alpha) * doubly``) or ``"sinkhorn"`` (``sinkhorn_iters``
            column-then-row normalizations; 1 iteration = doubly).
        hybrid_alpha: weight of the softmax branch, a float in [0, 1] or a tensor broadcastable to
            ``(B, H, 1, 1)`` (differentiable).
        sinkhorn_iters: number of Sinkhorn iterations (>= 1), used by ``"sinkhorn"`` only.
        block_size: keys per slab; ``None`` picks :func:`default_block_size`.

    Returns:
        ``(B, H, Lq, Dv)``, the same as the dense path. Differentiable in ``q``, ``k``, ``v``, a tensor
        ``hybrid_alpha`` and ``spec.bias``. Dropout and attention weights are not available on this path.
    """
    if normalization not in NORMALIZATIONS:
        raise ValueError(
            f"normalization={normalization!r} has no chunked path; choose one of {NORMALIZATIONS} "
            "(softmax attention is already memory-efficient through scaled_dot_product_attention)"
        )
    for name, x in (("q", q), ("k", k), ("v", v)):
        if not isinstance(x, Tensor) or x.dim() != 4:
            raise ValueError(f"{name} must be a 4-D tensor (B, H, L, D), got {getattr(x, 'shape', type(x))}")
        if not x.is_floating_point() or x.dtype != q.dtype:
            raise TypeError(f"q, k and v must share one floating-point dtype, got {name} of dtype {x.dtype}")
    batch, heads, q_len, _ = q.shape
    k_len = k.shape[-2]
    if k.shape[:2] != (batch, heads) or v.shape[:3] != (batch, heads, k_len) or k.shape[-1] != q.shape[-1]:
        raise ValueError(
            f"k and v must be (B, H, Lk, D) / (B, H, Lk, Dv) matching q {tuple(q.shape)} (expand grouped heads "
            f"first), got k {tuple(k.shape)} and v {tuple(v.shape)}"
        )
    if (spec.batch, spec.heads, spec.q_len, spec.k_len) != (batch, heads, q_len, k_len):
        raise ValueError(
            f"spec describes (B, H, Lq, Lk) = {(spec.batch, spec.heads, spec.q_len, spec.k_len)} but the inputs "
            f"are {(batch, heads, q_len, k_len)}; build it with probattn.masks.build_mask_spec for these inputs"
        )
    if isinstance(sinkhorn_iters, bool) or not isinstance(sinkhorn_iters, int) or sinkhorn_iters < 1:
        raise ValueError(f"sinkhorn_iters must be an integer >= 1, got {sinkhorn_iters!r}")
    if block_size is None:
        block_size = default_block_size(batch, heads, q_len, k_len)
    elif isinstance(block_size, bool) or not isinstance(block_size, int) or block_size < 1:
        raise ValueError(f"block_size must be a positive integer or None, got {block_size!r}")
    if not isinstance(scale, (int, float)) or not math.isfinite(scale):
        raise TypeError(f"scale must be a finite float, got {scale!r}")

    hybrid = normalization == "hybrid"
    compute = torch.float64 if q.dtype == torch.float64 else torch.float32  # statistics never in half precision
    if isinstance(hybrid_alpha, Tensor):
        alpha = hybrid_alpha.to(compute)
        try:
            fits = alpha.dim() <= 4 and torch.broadcast_shapes(alpha.shape, (batch, heads, 1, 1)) == (batch, heads, 1, 1)
        except RuntimeError:
            fits = False
        if not fits:
            raise ValueError(
                f"hybrid_alpha of shape {tuple(hybrid_alpha.shape)} must broadcast to (B, H, 1, 1) = "
                f"{(batch, heads, 1, 1)}; for one weight per head pass shape (H, 1, 1)"
            )
        alpha = alpha.reshape((1,) * (4 - alpha.dim()) + tuple(alpha.shape))
    else:
        alpha = torch.tensor(float(hybrid_alpha), dtype=compute, device=q.device).reshape(1, 1, 1, 1)
    iters = sinkhorn_iters if normalization == "sinkhorn" else 1
    bias = None if spec.bias is None else spec.bias.to(compute)
    out = _SlabAttention.apply(
        q.to(compute), k.to(compute), v.to(compute), alpha, spec.allowed, bias, float(scale), iters, hybrid, block_size
    )
    return out.to(q.dtype)
