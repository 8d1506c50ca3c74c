"""Memory-efficient doubly-normalized, hybrid and Sinkhorn attention: the key-block slab algorithm.

The dense paths materialize the ``(Lq, Lk)`` score matrix (and autograd keeps several copies of it for the
backward). This module never does: it loops over **key blocks** ``J`` of ``block_size`` keys and keeps the whole
query axis inside the block, so one slab ``S[rows, :, J]`` has shape ``(rows, Lq, block_size)``, for a group of
``rows`` (batch, head) pairs chosen by :func:`slab_shape` (each group is an independent problem).

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

Sinkhorn's backward walks the potentials back (one extra pass per iteration) with one exponential per slab:
every stage matrix is the output weights rescaled by O(L) factors (``_sinkhorn_backward_rows``; the exact
log-domain sweeps of ``_backward_rows`` when the factors would leave the float range). Under several torch
threads the row groups are split across threads (``_run_groups``).

Peak extra memory is a few slabs plus ``O(rows * (Lq + Lk) * D)`` per group in flight (one per thread), on top of the ``O(B * H * L * D)``
inputs, outputs and gradients; nothing of size ``Lq * Lk`` per row is ever held. Mask rules
(``probattn.masks``): ``spec.allowed`` already folds padding and causality and ``spec.bias`` is a finite additive
bias; both broadcast over ``B``/``H`` and are sliced per row group and key block, never expanded. A padded
query never enters a column statistic; a column with no allowed query gets ``c_j = 0``; a row with no allowed
key outputs zeros and receives zero gradient; nothing ever becomes NaN.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import torch
from torch import Tensor

from probattn.masks import MaskSpec

__all__ = ["AUTO_MIN_SCORES", "auto_min_scores", "chunked_attention", "prefer_chunked", "slab_shape"]

NORMALIZATIONS = ("doubly", "hybrid", "sinkhorn")

# Slab policy (measured on CPU, float32, see docs/performance.md): key blocks of KEY_BLOCK keys; a slab of at most
# SLAB_ELEMENTS floats (1 MiB in float32, so it stays in cache and the extra memory stays a few slabs), formed from
# as many (batch, head) rows as fit. Long queries shrink the block, never below MIN_BLOCK keys: narrower blocks
# make the GEMMs inefficient (doubly forward+backward at L = 8192, 1 thread: 1.72x SDPA with 32-key blocks, 1.64x
# with 64-key blocks in the next run), so beyond L = 4096 a slab is one row of L x 64 floats.
KEY_BLOCK = 128
SLAB_ELEMENTS = 2**18
MIN_BLOCK = 64

_NEG_INF = float("-inf")

# Below this many scores B * H * Lq * Lk a call stays on the calling thread (with torch's intra-op threads):
# starting worker threads costs ~0.1 ms.
PARALLEL_MIN_SCORES = 2**20


def slab_shape(batch: int, heads: int, q_len: int, k_len: int) -> tuple[int, int]:
    """``(block_size, rows_per_group)``: keys per slab and (batch, head) rows per slab.

    The block is ``KEY_BLOCK`` keys (at most ``k_len``), shrunk towards ``MIN_BLOCK`` when one row's slab
    ``q_len * block`` exceeds ``SLAB_ELEMENTS``; then as many rows as fit ``SLAB_ELEMENTS`` (at least one).
    """
    block = min(k_len, KEY_BLOCK)
    if q_len * block > SLAB_ELEMENTS:
        block = min(k_len, max(MIN_BLOCK, SLAB_ELEMENTS // q_len))
    rows = max(1, SLAB_ELEMENTS // (q_len * block))
    return block, min(rows, batch * heads)


# impl="auto" on the CPU: the slab path from AUTO_MIN_SCORES[(threads, head_dim)] scores B * H * Lq * Lk on, the
# dense path below. How it was derived: benchmarks/impl_crossover.py runs both paths interleaved (process CPU time,
# median of 21 rounds, doubly-normalized forward+backward, float32) at score counts 2**17 .. 2**23 (shapes with the
# same count but different lengths agree within the noise) for head dims 32 / 64 / 128 under 1 and 2 torch threads,
# and interpolates where chunked / dense crosses 1 (log2 scores vs log ratio, rounded to a power of two; 2**17 means
# chunked won from the smallest measured size on). Below the crossing the slab path's fixed cost per slab (a few
# dozen small ops) loses; above it the dense path's passes over (B, H, Lq, Lk) tensors fall out of cache. A wider
# head moves it up (more of the time is in the GEMMs both paths share). Run on an idle 2-core machine (load 0.2 at
# the start, nothing else running): results/impl-crossover-cpu-20261205-040545.json; the table is
# `python benchmarks/impl_crossover.py --from-json benchmarks/results/impl-crossover-cpu-20261205-040545.json`.
# (The 5-round run before it, results/impl-crossover-cpu-20261205-012104.json, put (1, 128) at 2**21, (2, 32) at
# 2**19 and (2, 128) at 2**21: 5 rounds of ~10 ms calls were not enough.) More threads than measured use the
# 2-thread row; hybrid and Sinkhorn use doubly's crossing.
AUTO_MIN_SCORES: dict[tuple[int, int], int] = {
    (1, 32): 2**17, (1, 64): 2**20, (1, 128): 2**20,
    (2, 32): 2**21, (2, 64): 2**21, (2, 128): 2**22,
}


def auto_min_scores(head_dim: int, threads: int) -> int:
    """The score count from which ``impl="auto"`` takes the slab path on the CPU.

    Looked up in ``AUTO_MIN_SCORES``: the measured thread count nearest below ``threads`` (more threads than
    measured use the largest measured count), and the smallest measured head dim ``>= head_dim`` (the largest
    for wider heads).
    """
    counts = sorted({t for t, _ in AUTO_MIN_SCORES})
    t = max([c for c in counts if c <= max(threads, 1)] or counts[:1])
    dims = sorted(d for tt, d in AUTO_MIN_SCORES if tt == t)
    d = next((x for x in dims if x >= head_dim), dims[-1])
    return AUTO_MIN_SCORES[(t, d)]


def prefer_chunked(batch: int, heads: int, q_len: int, k_len: int, *, head_dim: int, threads: int) -> bool:
    """Whether ``impl="auto"`` should take the slab path on the CPU: ``batch * heads * q_len * k_len`` at least
    :func:`auto_min_scores` for this head dim and torch thread count (a pure function of the shape)."""
    return batch * heads * q_len * k_len >= auto_min_scores(head_dim, threads)


def _row_groups(batch: int, heads: int, rows_per_group: int) -> list[tuple[slice, slice]]:
    """(batch, head) index groups of about ``rows_per_group`` rows: whole batch elements when a group holds all
    heads, else head ranges of one batch element."""
    if rows_per_group >= heads:
        step = rows_per_group // heads
        return [(slice(b0, b0 + step), slice(None)) for b0 in range(0, batch, step)]
    return [(slice(b, b + 1), slice(h0, h0 + rows_per_group)) for b in range(batch) for h0 in range(0, heads,
                                                                                                 rows_per_group)]


def _rows(x: Tensor | None, rows: tuple[slice, slice]) -> Tensor | None:
    """The (batch, head) rows ``rows`` of a tensor that may broadcast (size 1) over batch or heads; a view."""
    if x is None:
        return None
    b, h = rows
    return x[b if x.shape[0] > 1 else slice(None), h if x.shape[1] > 1 else slice(None)]


# ----------------------------------------------------------------------------------------------------------
# slab helpers (no autograd inside: they run in the Function's forward/backward)


def _key_blocks(k_len: int, block: int) -> list[tuple[int, int]]:
    return [(j0, min(j0 + block, k_len)) for j0 in range(0, k_len, block)]


def _columns(x: Tensor, j0: int, j1: int) -> Tensor:
    """Key columns ``j0:j1`` of a mask or bias that broadcasts over keys when its last dimension is 1."""
    return x if x.shape[-1] == 1 else x[..., j0:j1]


def _slab(q: Tensor, k_t: Tensor, allowed: Tensor | None, bias: Tensor | None, j0: int, j1: int) -> Tensor:
    """Scores ``q k_t[..., J] + bias[..., J]`` of shape (B, H, Lq, j1 - j0); not-allowed pairs are -inf.

    ``k_t`` (B, H, D, Lk) holds the scaled keys transposed and contiguous (see :func:`_keys_t`): the score
    product then reads a plain column block (a (2, 1024, 66) x (2, 66, 128) product, 1 thread: 0.41 ms against
    0.53 ms from a transposed row block; not visible beside the load noise of a whole call on the shared machine).
    """
    s = torch.matmul(q, k_t[..., j0:j1])
    if bias is not None:
        s += _columns(bias, j0, j1)
    if allowed is not None:
        s.masked_fill_(~_columns(allowed, j0, j1), _NEG_INF)
    return s


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


def _keys_t(k_scaled: Tensor, *rows: Tensor) -> Tensor:
    """``[scale kᵀ; rows...]`` (G, H', D + len(rows), Lk), contiguous: the keys as :func:`_slab` takes them, with
    extra rows (G, H', 1, Lk) that pair with extra query columns (e.g. ``[q, 1, -rho] [k; -c; 1]``)."""
    return torch.cat([k_scaled.transpose(-1, -2), *rows], dim=-2)


def _column_sweep(q, k_t, v, allowed, bias, rho_prev, block, soft):
    """One column-then-row sweep (Sinkhorn iteration t; t = 1 is doubly), one exp per slab.

    Per key block: ``c_j = logsumexp_i (S_ij - rho_prev_i)`` (complete in the slab, 0 for an empty column) and
    ``P = exp(S - rho_prev - c) <= 1``, so the row sums ``l_i = Σ_j P_ij`` and ``acc_i = Σ_j P_ij v_j`` need no
    running max: one GEMM ``exp(S - colmax) @ [v / colsum, 1 / colsum]`` gives both.
    ``soft`` (hybrid) additionally accumulates the plain row softmax of ``S``.

    Returns ``c (B, H, 1, Lk)``, ``l (B, H, Lq, 1)``, ``acc (B, H, Lq, Dv)`` (None when ``v`` is None) and
    ``has_query (B, H, 1, Lk)``, the columns some query may see.
    """
    c_blocks, seen, total = [], [], None
    for j0, j1 in _key_blocks(k_t.shape[-1], block):
        s = _slab(q, k_t, allowed, bias, j0, j1)
        v_block = None if v is None else v[:, :, j0:j1]
        if soft is not None:
            soft.update(s, v_block, inplace=False)
        if rho_prev is not None:
            s.sub_(rho_prev)
        top = s.amax(dim=-2, keepdim=True)
        top.masked_fill_(top == _NEG_INF, 0.0)
        e = s.sub_(top).exp_()
        colsum = e.sum(dim=-2, keepdim=True)  # >= 1, or 0 for a column no query may see
        has_query = colsum > 0
        seen.append(has_query)
        c_blocks.append(torch.where(has_query, top + colsum.log(), 0.0))
        total = _accumulate_rows(total, e, torch.where(has_query, colsum.reciprocal(), 0.0), v_block)
    return torch.cat(c_blocks, dim=-1), total[..., -1:], None if v is None else total[..., :-1], torch.cat(seen, -1)


def _accumulate_rows(total: Tensor | None, e: Tensor, inv: Tensor, v_block: Tensor | None) -> Tensor:
    """``total + e @ [v_block * invᵀ, invᵀ]`` (or ``e @ invᵀ`` without values): row sums of ``e`` with column
    weights ``inv`` (G, H', 1, Bk), and the weighted values. Without values the product is formed as the row
    vector ``inv eᵀ``: a batched matrix product with one output column runs several times slower on the CPU."""
    if v_block is None:
        row = torch.matmul(inv, e.transpose(-1, -2)).transpose(-1, -2)  # (G, H', Lq, 1)
        return row if total is None else total.add_(row)
    inv = inv.transpose(-1, -2)
    rhs = torch.cat([v_block * inv, inv], dim=-1)
    if total is None:
        return torch.matmul(e, rhs)
    # accumulate in place: (G * H', Lq, Bk) @ (G * H', Bk, Dv + 1)
    return total.flatten(0, 1).baddbmm_(e.flatten(0, 1), rhs.flatten(0, 1)).view(total.shape)


def _centred_column_sweep(q, k_t, v, allowed, bias, rho_prev, c_prev, has_query, block):
    """Sinkhorn iteration t >= 2 without a column max: ``A^(t-1) = exp(S - c^(t-1) - rho^(t-1)) <= 1`` comes out of
    the score GEMM itself (``[q, 1, -rho] [scale k, -c, 1]ᵀ``), its column sums are ``exp(c^t - c^(t-1))``.

    Returns what :func:`_column_sweep` returns, or None when a column that has a query sums below
    ``sqrt(finfo.tiny)`` (its entries may have underflowed: the caller redoes the iteration with a column max).
    ``has_query`` (G, H', 1, Lk): the columns some query may see (from iteration 1).
    """
    q_c = torch.cat([q, torch.ones_like(rho_prev), -rho_prev], dim=-1)
    k_c = torch.cat([k_t, -c_prev, torch.ones_like(c_prev)], dim=-2)
    sums, total = [], None
    for j0, j1 in _key_blocks(k_t.shape[-1], block):
        e = _slab(q_c, k_c, allowed, bias, j0, j1).exp_()
        colsum = e.sum(dim=-2, keepdim=True)
        sums.append(colsum)
        inv = torch.where(has_query[..., j0:j1], colsum.reciprocal(), 0.0)
        total = _accumulate_rows(total, e, inv, None if v is None else v[:, :, j0:j1])
    colsum = torch.cat(sums, dim=-1)
    if bool(((colsum < math.sqrt(torch.finfo(colsum.dtype).tiny)) & has_query).any()):
        return None
    c = torch.where(has_query, c_prev + colsum.log(), 0.0)
    return c, total[..., -1:], None if v is None else total[..., :-1], has_query


def _underflowed(row_sum: Tensor, allowed: Tensor | None) -> bool:
    """Whether a query with an allowed key has a row sum ``l`` too small for the single-exp sweep to be exact.

    ``P_ij`` below ``finfo.tiny`` is lost; with ``l_i >= sqrt(tiny)`` what is lost is below ``Lk * sqrt(tiny)``
    relative (2^-43 for float32 at a million keys). It happens only when a query loses every key by ~40 nats.
    """
    small = row_sum < math.sqrt(torch.finfo(row_sum.dtype).tiny)
    if not bool(small.any()):
        return False
    return allowed is None or bool((small & allowed.any(dim=-1, keepdim=True)).any())


def _exact_row_sweep(q, k_t, v, allowed, bias, c, block):
    """Row softmax of ``Z = S - c`` with a running max (log domain): ``(out or None, rho = rowLSE(Z))``."""
    rows = _OnlineSoftmax(q, None if v is None else v.shape[-1])
    for j0, j1 in _key_blocks(k_t.shape[-1], block):
        s = _slab(q, k_t, allowed, bias, j0, j1)
        rows.update(s.sub_(c[..., j0:j1]), None if v is None else v[:, :, j0:j1], inplace=True)
    return rows.finish()


# ----------------------------------------------------------------------------------------------------------
# one group of (batch, head) rows: the forward and backward sweeps over its key blocks


def _forward_rows(q, k_scaled, v, allowed, bias, iters, hybrid, block):
    """Potentials and outputs of one row group: ``(out_dbl, out_soft, rho_soft, [c^1..c^k], [rho^1..rho^k])``."""
    cs: list[Tensor] = []  # c^1..c^k, each (G, H', 1, Lk)
    rhos: list[Tensor] = []  # rho^1..rho^k, each (G, H', Lq, 1)
    rho_prev = soft = has_query = None
    k_t = _keys_t(k_scaled)
    for t in range(1, iters + 1):
        values = v if t == iters else None
        soft = _OnlineSoftmax(q, v.shape[-1]) if (hybrid and t == iters) else None
        swept = None
        if t > 1:  # (hybrid runs one iteration only, so soft is None here)
            swept = _centred_column_sweep(q, k_t, values, allowed, bias, rho_prev, cs[-1], has_query, block)
        if swept is None:
            swept = _column_sweep(q, k_t, values, allowed, bias, rho_prev, block, soft)
        c, row_sum, acc, has_query = swept
        if _underflowed(row_sum, allowed):
            out_dbl, rho = _exact_row_sweep(q, k_t, values, allowed, bias, c, block)
        else:  # l_i = exp(rho^t_i - rho^(t-1)_i); rows with no key give 0
            has_key = row_sum > 0
            l_safe = torch.where(has_key, row_sum, 1.0)
            rho = torch.where(has_key, l_safe.log() + (0.0 if rho_prev is None else rho_prev), 0.0)
            out_dbl = None if acc is None else acc.div_(l_safe)  # a row without keys has acc = 0
        cs.append(c)
        rhos.append(rho)
        rho_prev = rho
    out_soft, rho_soft = soft.finish() if soft is not None else (None, None)
    return out_dbl, out_soft, rho_soft, cs, rhos


def _rescaling_factors(cs: list[Tensor], rhos: list[Tensor | None]) -> tuple[list[Tensor], list[Tensor]] | None:
    """``(ex, ey)`` with every Sinkhorn stage matrix a diagonal rescaling of ``A = A^k``, or None if unsafe.

    ``P^t = A * ex[t-1] * ey[t]ᵀ`` and ``A^t = A * ex[t] * ey[t]ᵀ`` with ``ex[t] = exp(rho^k - rho^t)`` (Lq, 1),
    ``t = 0..k`` (``rho^0 = 0``), and ``ey[t] = exp(c^k - c^t)`` (Lk, 1), ``t = 1..k``. Exact in real arithmetic;
    in floating point a factor ``exp(x)`` multiplies an ``A_ij`` that may have underflowed, losing ``P_ij`` below
    ``tiny * exp(|x|)``, and products of two factors must stay far from overflow. So every exponent must satisfy
    ``|x| <= log(finfo.max) / 5`` (float32: 17.7, so ``exp(2|x|) <= 2.6e15``; float64: 142); otherwise (a query
    that loses every key by many nats, extreme scores) None, and the caller takes the exact log-domain sweeps.
    """
    iters = len(cs)
    rho_k, c_k = rhos[iters], cs[-1].transpose(-1, -2)
    xs = [rho_k - (0.0 if t == 0 else rhos[t]) for t in range(iters)]
    ys = [c_k - cs[t - 1].transpose(-1, -2) for t in range(1, iters)]
    limit = math.log(torch.finfo(rho_k.dtype).max) / 5
    if float(torch.stack([x.abs().amax() for x in xs + ys]).amax()) > limit:
        return None
    ones_q, ones_k = torch.ones_like(rho_k), torch.ones_like(c_k)
    return [x.exp() for x in xs] + [ones_q], [ones_k] + [y.exp() for y in ys] + [ones_k]  # ey[0] unused


def _times_row(a: Tensor, x: Tensor) -> Tensor:
    """``a @ x`` for ``a`` (G, H', Lq, Bk) and one column ``x`` (G, H', Bk, 1), as ``(xᵀ aᵀ)ᵀ``: a batched matrix
    product with one output column runs several times slower on the CPU than one with one output row."""
    return torch.matmul(x.transpose(-1, -2), a.transpose(-1, -2)).transpose(-1, -2)


def _times_column(a: Tensor, x: Tensor) -> Tensor:
    """``aᵀ @ x`` for ``a`` (G, H', Lq, Bk) and one column ``x`` (G, H', Lq, 1), as ``(xᵀ a)ᵀ`` (see ``_times_row``)."""
    return torch.matmul(x.transpose(-1, -2), a).transpose(-1, -2)


def _sinkhorn_backward_rows(d_out, q, k_scaled, v, allowed, bias, out, cs, rhos, ex, ey, d_bias, block):
    """Sinkhorn (k >= 2) gradients with one exponential per slab: every stage matrix is ``A`` rescaled.

    With ``A = exp(S - c^k - rho^k)`` (the output weights) and the factors of :func:`_rescaling_factors`:

    * pass 1 (t = k): ``dv = Aᵀ dO`` and ``dc^k = -colsum(A * (dP - D))`` from one GEMM ``Aᵀ [dO, -D]``;
      ``drho^(k-1) = -ex[k-1] * A (ey[k] * dc^k)``;
    * passes t = k-1 .. 2: ``dc^t = -ey[t] * Aᵀ (ex[t] * drho^t)``, ``drho^(t-1) = -ex[t-1] * A (ey[t] * dc^t)``;
    * final pass: ``dc^1`` as above (complete in the slab), then
      ``dS = A * (dP - D + Σ_t ex[t-1] (ey[t] dc^t)ᵀ + Σ_(t<k) (ex[t] drho^t) ey[t]ᵀ)``, one GEMM
      ``[dO, -D, F] [v, 1, G]ᵀ`` with the ``2k - 1`` rank-one terms riding in extra columns; ``dk``, ``dq``.

    Per slab: ``k`` score GEMMs and exponentials in all, plus ``Aᵀ [dO, -D]``, ``dP``, ``dk``, ``dq``
    (the exact sweeps of :func:`_backward_rows` need ``2k + 1`` exponentials per slab and one more GEMM).
    """
    iters, dv_dim = len(cs), v.shape[-1]
    blocks = _key_blocks(k_scaled.shape[-2], block)
    rho_k = rhos[iters]
    do_aug = torch.cat([d_out, -(d_out * out).sum(-1, keepdim=True)], dim=-1)  # [dO, -D]
    q_c = torch.cat([q, torch.ones_like(rho_k), -rho_k], dim=-1)  # S - c^k - rho^k in the score GEMM
    k_c = _keys_t(k_scaled, -cs[-1], torch.ones_like(cs[-1]))

    def weights(j0: int, j1: int) -> Tensor:
        return _slab(q_c, k_c, allowed, bias, j0, j1).exp_()

    dcs: list[Tensor | None] = [None] * (iters + 1)  # dc^t as (G, H', Lk, 1)
    drhos: list[Tensor | None] = [None] * (iters + 1)  # drho^t as (G, H', Lq, 1)
    dv = torch.empty_like(v)
    drho, dc_blocks = torch.zeros_like(rho_k), []
    for j0, j1 in blocks:  # pass 1: t = k
        a = weights(j0, j1)
        m = torch.matmul(a.transpose(-1, -2), do_aug)  # (G, H', Bk, Dv + 1)
        dv[:, :, j0:j1] = m[..., :dv_dim]
        dc = (v[:, :, j0:j1] * m[..., :dv_dim]).sum(-1, keepdim=True).add_(m[..., dv_dim:]).neg_()
        dc_blocks.append(dc)
        drho.sub_(_times_row(a, dc))  # ey[k] = 1
    dcs[iters], drhos[iters - 1] = torch.cat(dc_blocks, dim=-2), drho.mul_(ex[iters - 1])
    for t in range(iters - 1, 1, -1):  # passes t = k-1 .. 2
        w = ex[t] * drhos[t]
        drho, dc_blocks = torch.zeros_like(rho_k), []
        for j0, j1 in blocks:
            a = weights(j0, j1)
            dc = _times_column(a, w).mul_(ey[t][:, :, j0:j1]).neg_()
            dc_blocks.append(dc)
            drho.sub_(_times_row(a, dc * ey[t][:, :, j0:j1]))
        dcs[t], drhos[t - 1] = torch.cat(dc_blocks, dim=-2), drho.mul_(ex[t - 1])
    w1 = ex[1] * drhos[1]
    lhs = torch.cat([do_aug, *ex[:iters], *(ex[t] * drhos[t] for t in range(1, iters))], dim=-1)
    dq = torch.zeros_like(q)
    dk = torch.empty_like(k_scaled)
    for j0, j1 in blocks:  # final pass
        a = weights(j0, j1)
        eyj = [None] + [e[:, :, j0:j1] for e in ey[1:iters]]
        dc1 = _times_column(a, w1).mul_(eyj[1]).neg_()
        rhs = torch.cat([v[:, :, j0:j1], torch.ones_like(dc1), dc1 * eyj[1],
                         *(eyj[t] * dcs[t][:, :, j0:j1] for t in range(2, iters)), dcs[iters][:, :, j0:j1],
                         *eyj[1:]], dim=-1)
        ds = torch.matmul(lhs, rhs.transpose(-1, -2)).mul_(a)
        del a
        _add_block_gradients(ds, q, k_scaled, dq, dk, d_bias, j0, j1)
    return dq, dk, dv


def _backward_rows(d_out, q, k_scaled, v, allowed, bias, alpha, out_dbl, out_soft, rho_soft, cs, rhos, d_bias,
                   block):
    """Gradients ``(dq, dk_scaled, dv)`` of one row group; adds the bias gradient into ``d_bias`` (a view) if given.

    ``cs`` holds c^1..c^k, ``rhos`` holds rho^0 = None, rho^1..rho^k. Sinkhorn (k >= 2) takes the rescaled
    one-exponential sweeps of :func:`_sinkhorn_backward_rows` when :func:`_rescaling_factors` allows, else the
    exact log-domain sweeps below.
    """
    iters, hybrid = len(cs), out_soft is not None
    if iters > 1 and not hybrid:
        factors = _rescaling_factors(cs, rhos)
        if factors is not None:
            return _sinkhorn_backward_rows(d_out, q, k_scaled, v, allowed, bias, out_dbl, cs, rhos, *factors,
                                           d_bias, block)
    k_t = None if iters == 1 and not hybrid else _keys_t(k_scaled)  # doubly uses k_c below only
    blocks = _key_blocks(k_scaled.shape[-2], block)
    dv_dim = v.shape[-1]
    d_dbl = (d_out * out_dbl).sum(-1, keepdim=True)  # D_i = <dO_i, O_i>
    # [dO, -D, -exp(rho)] @ [v, 1, g]^T = dP - D - exp(rho) g^T (doubly: dS = A * that); Sinkhorn: [dO, -D].
    # Its first Dv + 1 columns also give A^T [dO, -D]: dv and colsum(A * D) in one GEMM.
    do_aug = torch.cat([d_out, -d_dbl] + ([-rhos[-1].exp()] if iters == 1 else []), dim=-1)

    def p_of(s: Tensor, t: int, j0: int, j1: int) -> Tensor:  # P^t = exp(S - rho^(t-1) - c^t), new tensor
        x = s - cs[t - 1][..., j0:j1]
        return (x if t == 1 else x.sub_(rhos[t - 1])).exp_()

    def a_of(s: Tensor, t: int, j0: int, j1: int) -> Tensor:  # A^t = exp(S - c^t - rho^t), new tensor
        return (s - cs[t - 1][..., j0:j1]).sub_(rhos[t]).exp_()

    def output_grads(s: Tensor, j0: int, j1: int, centred: bool = False) -> tuple[Tensor, Tensor, Tensor]:
        """Consumes ``s`` (S, or S - c^k - rho^k when ``centred``): A^k, g = colsum(A^k * (dP - D)) (G, H', 1, Bk)
        and A^kᵀ dO (G, H', Bk, Dv)."""
        a = (s if centred else s.sub_(cs[-1][..., j0:j1]).sub_(rhos[-1])).exp_()
        t = torch.matmul(a.transpose(-1, -2), do_aug[..., : dv_dim + 1])
        g = (v[:, :, j0:j1] * t[..., :dv_dim]).sum(-1, keepdim=True).add_(t[..., dv_dim:]).transpose(-1, -2)
        return a, g, t[..., :dv_dim]

    # Sinkhorn adjoint sweep, t = k down to 2: dc^t (complete per slab), drho^(t-1) (summed over slabs).
    dcs: list[Tensor | None] = [None] * (iters + 1)
    drhos: list[Tensor | None] = [None] * (iters + 1)
    for t in range(iters, 1, -1):
        drho_prev = torch.zeros_like(rhos[1])
        dc_blocks = []
        for j0, j1 in blocks:
            s = _slab(q, k_t, allowed, bias, j0, j1)
            p = p_of(s, t, j0, j1)
            dc = -output_grads(s, j0, j1)[1] if t == iters else -(a_of(s, t, j0, j1) * drhos[t]).sum(-2, True)
            dc_blocks.append(dc)
            drho_prev -= torch.matmul(p, dc.transpose(-1, -2))
        dcs[t] = torch.cat(dc_blocks, dim=-1)
        drhos[t - 1] = drho_prev

    # Final sweep: dS = A^k * (dP - D) + sum_t P^t * dc^t + sum_(t<k) A^t * drho^t (+ the softmax branch).
    # doubly needs only A = exp(S - c - rho): fold -c_j - rho_i into the score GEMM, [q, 1, -rho] [scale k, -c, 1]^T
    centred = iters == 1 and not hybrid
    if centred:
        q_c = torch.cat([q, torch.ones_like(rhos[1]), -rhos[1]], dim=-1)
        k_c = _keys_t(k_scaled, -cs[0], torch.ones_like(cs[0]))
    dq = torch.zeros_like(q)
    dk = torch.empty_like(k_scaled)
    dv = torch.empty_like(v)
    for j0, j1 in blocks:
        s = _slab(q_c, k_c, allowed, bias, j0, j1) if centred else _slab(q, k_t, allowed, bias, j0, j1)
        stage_terms = None
        if iters > 1:  # every dc^t and drho^t is known except dc^1, which is complete in this slab
            stage_terms = a_of(s, 1, j0, j1).mul_(drhos[1])
            dc1 = -stage_terms.sum(-2, keepdim=True)
            for t in range(1, iters + 1):
                stage_terms += p_of(s, t, j0, j1).mul_(dc1 if t == 1 else dcs[t][..., j0:j1])
                if 1 < t < iters:
                    stage_terms += a_of(s, t, j0, j1).mul_(drhos[t])
        a_soft = (s - rho_soft).exp_() if hybrid else None  # softmax branch A_s = exp(S - rho_s)
        a, g, dv_block = output_grads(s, j0, j1, centred)  # consumes s
        v_aug = [v[:, :, j0:j1], torch.ones_like(g.transpose(-1, -2))] + ([g.transpose(-1, -2)] if iters == 1 else [])
        dp = torch.matmul(do_aug, torch.cat(v_aug, dim=-1).transpose(-1, -2))  # dP - D (- exp(rho) g)
        if a_soft is not None:  # dS_s = alpha * A_s * (dP - D_s); the doubly branch is weighted by 1 - alpha
            dp_soft = (dp + (d_dbl - (d_out * out_soft).sum(-1, keepdim=True))).addcmul_(-do_aug[..., -1:], g)
            ds = dp.mul_(a).mul_(1 - alpha).add_(dp_soft.mul_(a_soft).mul_(alpha))
            dv_block = dv_block * (1 - alpha) + torch.matmul(a_soft.transpose(-1, -2), d_out).mul_(alpha)
            del dp_soft, a_soft
        else:
            ds = dp.mul_(a)
        del a
        if stage_terms is not None:
            ds += stage_terms
        dv[:, :, j0:j1] = dv_block
        _add_block_gradients(ds, q, k_scaled, dq, dk, d_bias, j0, j1)
    return dq, dk, dv


def _add_block_gradients(ds: Tensor, q: Tensor, k_scaled: Tensor, dq: Tensor, dk: Tensor, d_bias: Tensor | None,
                         j0: int, j1: int) -> None:
    """From the score gradient ``ds`` (..., Lq, j1 - j0) of key block ``j0:j1``: write its keys' ``dk``, add to
    ``dq`` and to the bias gradient (summed to the bias's broadcast shape)."""
    dk[:, :, j0:j1] = torch.matmul(ds.transpose(-1, -2), q)
    dq += torch.matmul(ds, k_scaled[:, :, j0:j1])
    if d_bias is not None:
        target = _columns(d_bias, j0, j1)
        target += ds.sum_to_size(target.shape)


def _run_groups(work: Callable[[tuple[slice, slice]], None], batch: int, heads: int, rows_per_group: int,
                scores_per_row: int) -> None:
    """Call ``work(rows)`` for every (batch, head) row group, split across torch's CPU threads when it pays.

    With ``torch.get_num_threads() = n > 1`` and at least ``PARALLEL_MIN_SCORES`` scores, the groups
    (made smaller if there are fewer than ``n``) are dealt round-robin to ``n`` Python threads that each run
    their share with one torch thread; the process goes back to ``n`` threads afterwards. Every group is an
    independent problem writing disjoint rows, so the results do not depend on the split. Why: inside a slab
    loop every op is a separate OpenMP parallel region (thousands per call), and each of them waits for the
    slowest thread; one split per call (what SDPA's CPU kernel does) waits once.
    """
    threads = torch.get_num_threads()
    if (threads < 2 or batch * heads < 2 or batch * heads * scores_per_row < PARALLEL_MIN_SCORES
            or torch.compiler.is_compiling()):
        for rows in _row_groups(batch, heads, rows_per_group):
            work(rows)
        return
    groups = _row_groups(batch, heads, min(rows_per_group, -(-batch * heads // threads)))
    shares = [groups[i::threads] for i in range(threads) if groups[i::threads]]
    # grad, inference and autocast modes are per thread: the workers take the caller's
    grad, inference = torch.is_grad_enabled(), torch.is_inference_mode_enabled()
    autocast, autocast_dtype = torch.is_autocast_enabled("cpu"), torch.get_autocast_dtype("cpu")

    def run(share: list[tuple[slice, slice]]) -> None:
        torch.set_num_threads(1)  # OpenMP's thread count is per OS thread: set it in each worker
        with (torch.inference_mode(inference), torch.set_grad_enabled(grad),
              torch.autocast("cpu", dtype=autocast_dtype, enabled=autocast)):
            for rows in share:
                work(rows)

    torch.set_num_threads(1)
    try:
        with ThreadPoolExecutor(len(shares) - 1) as pool:
            futures = [pool.submit(run, share) for share in shares[1:]]
            run(shares[0])
            for future in futures:
                future.result()
    finally:
        torch.set_num_threads(threads)


class _SlabAttention(torch.autograd.Function):
    """out = alpha * softmax(S) v + (1 - alpha) * sinkhorn_k(S) v, computed over key-block slabs.

    ``doubly`` is ``iters=1, hybrid=False``; ``sinkhorn`` is ``iters=k``; ``hybrid`` is ``iters=1, hybrid=True``.
    Potentials: ``rho^0 = 0``; for t = 1..k: ``c^t = colLSE(S - rho^(t-1))``, ``rho^t = rowLSE(S - c^t)``;
    the output uses ``A = exp(S - c^k - rho^k)``. The (batch, head) rows are processed in groups of
    ``rows_per_group`` (each group's slabs stay small and in cache); every group is an independent problem.
    """

    @staticmethod
    def forward(ctx, q, k, v, alpha, allowed, bias, scale, iters, hybrid, block, rows_per_group):  # type: ignore[override]
        batch, heads, q_len, _ = q.shape
        out_dbl = q.new_empty((batch, heads, q_len, v.shape[-1]))
        out_soft = torch.empty_like(out_dbl) if hybrid else None
        rho_soft = q.new_empty((batch, heads, q_len, 1)) if hybrid else None
        cs = q.new_empty((iters, batch, heads, 1, k.shape[-2]))
        rhos = q.new_empty((iters, batch, heads, q_len, 1))
        def work(rows: tuple[slice, slice]) -> None:
            # scaling keys (per group), not queries, keeps the O(Lq) buffers to the outputs
            o_dbl, o_soft, r_soft, c_list, r_list = _forward_rows(
                q[rows], k[rows] * scale, v[rows], _rows(allowed, rows), _rows(bias, rows), iters, hybrid, block
            )
            out_dbl[rows] = o_dbl
            cs[(slice(None), *rows)] = torch.stack(c_list)
            rhos[(slice(None), *rows)] = torch.stack(r_list)
            if hybrid:
                out_soft[rows], rho_soft[rows] = o_soft, r_soft

        _run_groups(work, batch, heads, rows_per_group, q_len * k.shape[-2])
        out = torch.lerp(out_dbl, out_soft, alpha) if hybrid else out_dbl  # alpha * soft + (1 - alpha) * doubly
        ctx.save_for_backward(q, k, v, alpha, allowed, bias, out_dbl, out_soft, rho_soft, cs, rhos)
        ctx.scale, ctx.block, ctx.rows_per_group = scale, block, rows_per_group
        return out

    @staticmethod
    def backward(ctx, d_out):  # type: ignore[override]
        q, k, v, alpha, allowed, bias, out_dbl, out_soft, rho_soft, cs, rhos = ctx.saved_tensors
        hybrid = out_soft is not None
        d_out = d_out.contiguous()
        dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
        d_bias = torch.zeros_like(bias) if bias is not None and ctx.needs_input_grad[5] else None
        # the bias may broadcast over (batch, head) rows, so several groups add into the same entries: each worker
        # thread of the split sums into its own buffer (the calling thread into d_bias), added up at the end
        caller, partial = threading.get_ident(), {}

        def work(rows: tuple[slice, slice]) -> None:
            target = d_bias
            if d_bias is not None and threading.get_ident() != caller:
                if threading.get_ident() not in partial:
                    partial[threading.get_ident()] = torch.zeros_like(d_bias)
                target = partial[threading.get_ident()]
            dq[rows], dk[rows], dv[rows] = _backward_rows(
                d_out[rows], q[rows], k[rows] * ctx.scale, v[rows], _rows(allowed, rows), _rows(bias, rows),
                _rows(alpha, rows), out_dbl[rows], None if out_soft is None else out_soft[rows],
                None if rho_soft is None else rho_soft[rows], list(cs[(slice(None), *rows)]),
                [None, *rhos[(slice(None), *rows)]], _rows(target, rows), ctx.block,
            )

        _run_groups(work, q.shape[0], q.shape[1], ctx.rows_per_group, q.shape[2] * k.shape[2])
        for buffer in partial.values():
            d_bias += buffer
        dk.mul_(ctx.scale)
        d_alpha = None
        if hybrid and ctx.needs_input_grad[3]:
            d_alpha = (d_out * (out_soft - out_dbl)).sum(dim=(-1, -2), keepdim=True).sum_to_size(alpha.shape)
        return dq, dk, dv, d_alpha, None, d_bias, None, None, None, None, None


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
        block_size: keys per slab; ``None`` picks :func:`slab_shape`'s (which also groups (batch, head) rows;
            with an explicit block size each group holds as many rows as fit ``SLAB_ELEMENTS``).

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
        block_size, rows_per_group = slab_shape(batch, heads, q_len, k_len)
    elif isinstance(block_size, bool) or not isinstance(block_size, int) or block_size < 1:
        raise ValueError(f"block_size must be a positive integer or None, got {block_size!r}")
    else:
        rows_per_group = max(1, SLAB_ELEMENTS // (q_len * block_size))
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
    with torch.autocast(q.device.type, enabled=False):  # the statistics stay in `compute` under autocast too
        out = _SlabAttention.apply(
            q.to(compute), k.to(compute), v.to(compute), alpha, spec.allowed, bias, float(scale), iters, hybrid,
            block_size, rows_per_group,
        )
    return out.to(q.dtype)
