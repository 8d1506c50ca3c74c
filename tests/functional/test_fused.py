"""The fused-kernel path (``impl="sdpa"``) against the float64 reference: outputs, gradients, padding, refusals.

The CPU runs PyTorch's flash kernel (float64 included, so ``gradcheck`` checks the custom backward); the tests
marked ``gpu`` run the same comparisons on CUDA (FlashAttention for bfloat16/float16, the memory-efficient
kernel for float32). Low-precision tolerance, as flash-attention's tests: the error against the float64
reference may be at most twice that of a plain implementation computed entirely in the same dtype, plus a
small absolute slack.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from probattn.functional import attention
from probattn.functional.fused import row_logsumexp
from probattn.masks import build_mask_spec, padding_factors
from probattn.reference import reference_attention

NORMS = [("doubly", 1), ("hybrid", 1), ("sinkhorn", 1), ("sinkhorn", 3)]
CPU_LOW = [torch.bfloat16, torch.float16]


def _problem(b, h, h_kv, lq, lk, d, dv, dtype, device="cpu", seed=0, spread=1.0):
    g = torch.Generator().manual_seed(seed)
    q = (torch.randn(b, h, lq, d, generator=g) * spread).to(device, dtype)
    k = (torch.randn(b, h_kv, lk, d, generator=g) * spread).to(device, dtype)
    v = torch.randn(b, h_kv, lk, dv, generator=g).to(device, dtype)
    qv = torch.ones(b, lq, dtype=torch.bool)
    kv = torch.ones(b, lk, dtype=torch.bool)
    if b > 1:  # padding on both axes, in different batch elements and together
        qv[0, max(1, lq - 2):] = False
        kv[1, max(1, lk - 3):] = False
    if b > 2:
        qv[2, 0] = lq == 1 or False
        kv[2, -1] = lk == 1 or False
    return q, k, v, qv.to(device), kv.to(device)


def _allowed(qv, kv):
    return (qv[:, None, :, None] & kv[:, None, None, :]).cpu()


def _plain_low_precision(q, k, v, qv, kv, normalization, iters):
    """Everything in the inputs' dtype, no float32 anywhere (the yardstick for low-precision error)."""
    groups = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(groups, 1), v.repeat_interleave(groups, 1)
    scores = (q @ k.transpose(-1, -2)) * (1 / math.sqrt(q.shape[-1]))
    allowed = (qv[:, None, :, None] & kv[:, None, None, :])
    low = torch.finfo(scores.dtype).min
    scores = scores.masked_fill(~allowed, low)

    def col(s):
        return torch.logsumexp(s.masked_fill(~allowed, low), dim=-2, keepdim=True)

    c = col(scores)
    for _ in range((iters if normalization == "sinkhorn" else 1) - 1):
        u = -torch.logsumexp((scores - c).masked_fill(~allowed, low), dim=-1, keepdim=True)
        c = col(scores + u)
    doubly = torch.softmax((scores - c).masked_fill(~allowed, low), -1).masked_fill(~allowed, 0)
    if normalization == "hybrid":
        soft = torch.softmax(scores, -1).masked_fill(~allowed, 0)
        doubly = 0.5 * soft + 0.5 * doubly
    return doubly @ v


def _err(x, ref, qv):
    keep = qv[:, None, :, None].cpu()
    return ((x.double().cpu() - ref) * keep).abs().max().item()


def _check_against_reference(device, dtype, normalization, iters, *, shape=(3, 4, 2, 7, 9, 16, 24), spread=1.0,
                             grads=True, seed=0):
    b, h, h_kv, lq, lk, d, dv = shape
    q, k, v, qv, kv = _problem(b, h, h_kv, lq, lk, d, dv, dtype, device, seed=seed, spread=spread)
    leaves = [t.detach().clone().requires_grad_(grads) for t in (q, k, v)]
    out = attention(*leaves, normalization=normalization, sinkhorn_iters=iters, key_padding_mask=kv,
                    query_padding_mask=qv, impl="sdpa")
    assert out.dtype == dtype and out.device == q.device
    ref_leaves = [t.detach().double().cpu().requires_grad_(grads) for t in (q, k, v)]
    ref, _ = reference_attention(*ref_leaves, normalization=normalization, sinkhorn_iters=iters,
                                 allowed=_allowed(qv, kv))
    # padded queries output exact zeros, as on every path
    assert (out[~qv[:, None, :].expand(b, h, lq)] == 0).all()
    if dtype == torch.float64:
        assert _err(out, ref, qv) <= 1e-10
    elif dtype == torch.float32:  # at most twice the error of the dense float32 path (scores of ~1e3 lose digits)
        dense = attention(q, k, v, normalization=normalization, sinkhorn_iters=iters, key_padding_mask=kv,
                          query_padding_mask=qv, impl="dense")
        assert _err(out, ref, qv) <= 2 * _err(dense, ref, qv) + 2e-5
    else:
        plain = _plain_low_precision(q, k, v, qv, kv, normalization, iters)
        assert _err(out, ref, qv) <= 2 * _err(plain, ref, qv) + 2e-3
    if not grads:
        return
    weights = torch.randn(out.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    (out.double().cpu() * weights).sum().backward()
    (ref * weights).sum().backward()
    for mine, theirs in zip(leaves, ref_leaves, strict=True):
        scale = max(theirs.grad.abs().max().item(), 1.0)
        err = (mine.grad.double().cpu() - theirs.grad).abs().max().item() / scale
        assert err <= {torch.float64: 1e-10, torch.float32: 1e-4}.get(dtype, 3e-2), (normalization, err)


@pytest.mark.parametrize(("normalization", "iters"), NORMS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, *CPU_LOW])
def test_cpu_matches_reference(normalization, iters, dtype):
    _check_against_reference("cpu", dtype, normalization, iters, grads=dtype != torch.float16)


@pytest.mark.parametrize(("normalization", "iters"), NORMS)
@pytest.mark.parametrize("shape", [(2, 1, 1, 1, 1, 8, 8), (2, 2, 1, 1, 5, 8, 8), (2, 2, 2, 6, 1, 8, 4),
                                   (1, 3, 3, 13, 11, 5, 7)])
def test_one_token_and_odd_shapes(normalization, iters, shape):
    _check_against_reference("cpu", torch.float64, normalization, iters, shape=shape)


@pytest.mark.parametrize(("normalization", "iters"), NORMS)
def test_extreme_scores(normalization, iters):
    """Scores of magnitude ~ 1e3: softmax saturates, the column statistics still must not.

    float32 at spread 9 (score bound ~800, inside the fused path's float32 range for 3 Sinkhorn passes, 956).
    """
    _check_against_reference("cpu", torch.float64, normalization, iters, spread=12.0)
    _check_against_reference("cpu", torch.float32, normalization, iters, spread=9.0, grads=False)


@pytest.mark.parametrize(("normalization", "iters"), NORMS)
def test_gradcheck(normalization, iters):
    q, k, v, qv, kv = _problem(3, 2, 1, 5, 6, 4, 3, torch.float64)
    leaves = [t.requires_grad_() for t in (q, k, v)]
    alpha = torch.tensor([0.3, 0.8], dtype=torch.float64, requires_grad=True)

    def f(q, k, v, alpha):
        return attention(q, k, v, normalization=normalization, sinkhorn_iters=iters, hybrid_alpha=alpha,
                         key_padding_mask=kv, query_padding_mask=qv, impl="sdpa")

    assert torch.autograd.gradcheck(f, (*leaves, alpha))


def test_row_logsumexp_gradcheck_with_bias_and_exclusions():
    g = torch.Generator().manual_seed(3)
    a = torch.randn(2, 3, 4, 5, generator=g, dtype=torch.float64, requires_grad=True)
    b = torch.randn(2, 3, 6, 5, generator=g, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(2, 1, 6, generator=g, dtype=torch.float64, requires_grad=True)  # broadcast over heads
    valid = torch.tensor([[True] * 6, [True, False, True, True, False, False]])[:, None, :]
    lse = row_logsumexp(a, b, bias, valid, scale=0.7)
    scores = 0.7 * a @ b.transpose(-1, -2) + bias[..., None, :]
    expected = torch.logsumexp(scores.masked_fill(~valid[..., None, :], -math.inf), dim=-1)
    torch.testing.assert_close(lse, expected, atol=1e-12, rtol=0)
    assert torch.autograd.gradcheck(lambda a, b, bias: row_logsumexp(a, b, bias, valid, scale=0.7), (a, b, bias))


def test_no_valid_column_gives_zero_and_no_gradient():
    a = torch.randn(2, 1, 3, 4, dtype=torch.float64, requires_grad=True)
    b = torch.randn(2, 1, 5, 4, dtype=torch.float64, requires_grad=True)
    valid = torch.tensor([[True] * 5, [False] * 5])[:, None, :]
    lse = row_logsumexp(a, b, None, valid, scale=0.5)
    assert (lse[1] == 0).all() and torch.isfinite(lse).all()
    lse.sum().backward()
    assert (a.grad[1] == 0).all() and (b.grad[1] == 0).all() and torch.isfinite(b.grad).all()


@settings(max_examples=30, deadline=None)
@given(st.sampled_from(NORMS), st.integers(1, 6), st.integers(1, 7), st.integers(0, 2**16))
def test_hidden_positions_do_not_move_outputs(norm, lq, lk, seed):
    """Perturb padded keys, padded queries and their values: no real query's output moves."""
    normalization, iters = norm
    q, k, v, qv, kv = _problem(2, 2, 1, lq, lk, 4, 3, torch.float64, seed=seed)
    qv[0, 0] = True
    kv[0, 0] = True
    out = attention(q, k, v, normalization=normalization, sinkhorn_iters=iters, key_padding_mask=kv,
                    query_padding_mask=qv, impl="sdpa")
    g = torch.Generator().manual_seed(seed + 1)
    q2, k2, v2 = q.clone(), k.clone(), v.clone()
    q2[~qv[:, None, :].expand_as(q2[..., 0])] = 50 * torch.randn(int((~qv).sum()) * 2, 4, generator=g,
                                                                  dtype=torch.float64)
    hidden_k = ~kv[:, None, :].expand_as(k2[..., 0])
    k2[hidden_k] = 50 * torch.randn(int(hidden_k.sum()), 4, generator=g, dtype=torch.float64)
    v2[hidden_k] = 1e6
    out2 = attention(q2, k2, v2, normalization=normalization, sinkhorn_iters=iters, key_padding_mask=kv,
                     query_padding_mask=qv, impl="sdpa")
    torch.testing.assert_close(out2, out, atol=1e-12, rtol=0)


@pytest.mark.parametrize("normalization", ["doubly", "hybrid", "sinkhorn"])
def test_nothing_quadratic_is_allocated(normalization):
    """Forward and backward with padding on both axes: no operation makes a tensor of Lq * Lk elements or more.

    Device-independent: every ATen call's outputs are observed (the kernels' own tiles are internal).
    """
    from torch.utils._python_dispatch import TorchDispatchMode

    class LargestOutput(TorchDispatchMode):
        largest = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            for t in out if isinstance(out, (tuple, list)) else (out,):
                if isinstance(t, torch.Tensor):
                    LargestOutput.largest = max(LargestOutput.largest, t.numel())
            return out

    length = 1024
    q, k, v, qv, kv = _problem(2, 2, 2, length, length, 8, 8, torch.float32)
    leaves = [t.requires_grad_() for t in (q, k, v)]
    with LargestOutput():
        attention(*leaves, normalization=normalization, key_padding_mask=kv, query_padding_mask=qv,
                  impl="sdpa").sum().backward()
    assert 0 < LargestOutput.largest < length * length // 8


def test_traces_as_one_graph_with_gradients():
    """torch.compile(fullgraph=True) through the custom log-sum-exp Function (aot_eager: forward and backward)."""
    q, k, v, qv, kv = _problem(2, 2, 1, 7, 9, 8, 8, torch.float32)

    def f(q, k, v):
        return attention(q, k, v, normalization="sinkhorn", sinkhorn_iters=2, key_padding_mask=kv,
                         query_padding_mask=qv, impl="sdpa")

    leaves = [t.clone().requires_grad_() for t in (q, k, v)]
    compiled_leaves = [t.clone().requires_grad_() for t in (q, k, v)]
    f(*leaves).square().sum().backward()
    torch.compile(f, fullgraph=True, backend="aot_eager")(*compiled_leaves).square().sum().backward()
    for eager, compiled in zip(leaves, compiled_leaves, strict=True):
        torch.testing.assert_close(compiled.grad, eager.grad, atol=1e-6, rtol=1e-6)


def test_padding_shaped_attn_mask_takes_the_fused_path():
    """A (B, 1, 1, Lk) bool attn_mask is padding: the fused path accepts it and matches the reference."""
    q, k, v, _, kv = _problem(3, 2, 2, 5, 6, 8, 8, torch.float64)
    out = attention(q, k, v, normalization="doubly", attn_mask=kv[:, None, None, :], impl="sdpa")
    ref, _ = reference_attention(q, k, v, normalization="doubly", allowed=kv[:, None, None, :].expand(3, 2, 5, 6))
    torch.testing.assert_close(out, ref, atol=1e-12, rtol=0)


def test_padding_factors():
    b, h, lq, lk = 2, 3, 4, 5
    kv = torch.tensor([[True, True, False, True, False], [True] * 5])
    spec = build_mask_spec(batch=b, heads=h, q_len=lq, k_len=lk, device=torch.device("cpu"),
                           attn_mask=kv[:, None, None, :])
    q_valid, k_valid = padding_factors(spec)
    assert torch.equal(k_valid, kv[:, None, :]) and q_valid.all()
    causal = build_mask_spec(batch=b, heads=h, q_len=lq, k_len=lk, device=torch.device("cpu"), is_causal=True)
    assert padding_factors(causal) is None
    blocks = torch.zeros(lq, lk, dtype=torch.bool)
    blocks[:2, :2] = blocks[2:, 2:] = True
    block_spec = build_mask_spec(batch=b, heads=h, q_len=lq, k_len=lk, device=torch.device("cpu"), attn_mask=blocks)
    assert padding_factors(block_spec) is None
    bias_spec = build_mask_spec(batch=b, heads=h, q_len=lq, k_len=lk, device=torch.device("cpu"),
                                attn_mask=torch.randn(lq, lk))
    assert padding_factors(bias_spec) is None
    # a batch element with no real key has no valid query either
    kv_empty = torch.tensor([[False] * 5, [True] * 5])
    spec = build_mask_spec(batch=b, heads=h, q_len=lq, k_len=lk, device=torch.device("cpu"),
                           key_padding_mask=kv_empty)
    q_valid, _ = padding_factors(spec)
    assert not q_valid[0].any() and q_valid[1].all()


@pytest.mark.parametrize(("kwargs", "message"), [
    (dict(return_weights=True), "return_weights=True materializes"),
    (dict(dropout_p=0.1), "dropout_p > 0 is not supported"),
    (dict(scale=-0.5), "scale must be > 0"),
    (dict(attn_mask=torch.eye(4, dtype=torch.bool)), "padding-shaped masks only"),
    (dict(attn_mask=torch.randn(4, 4)), "padding-shaped masks only"),
])
def test_refusals_name_the_reason(kwargs, message):
    q = torch.randn(1, 2, 4, 8)
    with pytest.raises(ValueError, match=f"impl='sdpa' cannot run this call: .*{message}"):
        attention(q, q, q, normalization="doubly", impl="sdpa", **kwargs)


def test_float16_scores_too_large_are_refused():
    q = torch.full((1, 1, 4, 64), 8.0).half()
    with pytest.raises(ValueError, match=r"scores may reach 512 .* beyond 322, the bound .* in torch.float16 .* "
                                         r"bfloat16 instead of float16"):
        attention(q, q, q, normalization="doubly", impl="sdpa")


def test_auto_keeps_the_chunked_path_on_cpu(monkeypatch):
    import sys

    module = sys.modules["probattn.functional.attention"]

    def fail(*args, **kwargs):
        raise AssertionError("impl='auto' must not take the fused path on the CPU")

    monkeypatch.setattr(module, "fused_normalized_attention", fail)
    q = torch.randn(1, 2, 8, 8)
    attention(q, q, q, normalization="doubly")


# -- CUDA ------------------------------------------------------------------------------------------------------
@pytest.mark.gpu
@pytest.mark.parametrize(("normalization", "iters"), NORMS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("shape", [(3, 4, 2, 7, 9, 64, 64), (3, 8, 8, 129, 200, 128, 128), (2, 2, 1, 1, 33, 64, 64)])
def test_cuda_matches_reference(normalization, iters, dtype, shape):
    _check_against_reference("cuda", dtype, normalization, iters, shape=shape)


@pytest.mark.gpu
@pytest.mark.parametrize("normalization", ["doubly", "hybrid", "sinkhorn"])
def test_cuda_auto_takes_the_fused_path_and_stays_linear(normalization, monkeypatch):
    """impl='auto' on CUDA: no (Lq, Lk) tensor: peak memory at L = 16384 far below one float32 score matrix."""
    import sys

    module = sys.modules["probattn.functional.attention"]
    calls = []
    fused = module.fused_normalized_attention
    monkeypatch.setattr(module, "fused_normalized_attention", lambda *a, **kw: calls.append(1) or fused(*a, **kw))
    q, k, v, qv, kv = _problem(2, 4, 4, 16384, 16384, 64, 64, torch.bfloat16, "cuda")
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    attention(q, k, v, normalization=normalization, key_padding_mask=kv, query_padding_mask=qv)
    torch.cuda.synchronize()
    assert calls == [1]
    extra = torch.cuda.max_memory_allocated() - base
    # linear: a dozen copies of q at most; the padding folded into one (B, 1, L, L) bool would be 512 MiB
    assert extra < 12 * q.numel() * q.element_size()


@pytest.mark.gpu
def test_cuda_float64_is_refused_clearly_and_auto_falls_back():
    q = torch.randn(1, 2, 5, 8, device="cuda", dtype=torch.float64)
    with pytest.raises(ValueError, match="float64 on CUDA"):
        attention(q, q, q, normalization="doubly", impl="sdpa")
    ref, _ = reference_attention(q.cpu(), q.cpu(), q.cpu(), normalization="doubly")
    torch.testing.assert_close(attention(q, q, q, normalization="doubly").cpu(), ref, atol=1e-10, rtol=0)


# -- the fused path's range (issue 23, item 6) -----------------------------------------------------------------
@pytest.mark.parametrize(("normalization", "iters"), NORMS)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_padding_never_leaks_up_to_the_edge_of_the_range(normalization, iters, dtype):
    """Score bounds at 90% of the range: padded keys get exactly 0, padded queries take no column mass.

    Before, the excluded key sat a fixed 1e6 below (bfloat16 range: 6.7e5 for doubly): from |scores| ~ 5e5 on
    padded keys got weight and a padded query's large score took the column mass.
    """
    from probattn.functional.fused import column_passes, max_score_bound, score_bound

    q, k, v, qv, kv = _problem(3, 2, 1, 7, 9, 16, 8, torch.float64, seed=5)
    scale = 0.25
    limit = max_score_bound(dtype, scale, 7, 9, column_passes(normalization, iters))
    factor = math.sqrt(0.9 * limit / score_bound(q, k, scale))
    q, k, v = (q * factor).to(dtype), (k * factor).to(dtype), v.to(dtype)
    q[~qv[:, None, :].expand(3, 2, 7)] *= -1  # padded queries with the opposite (large) scores
    assert 0.8 * limit < score_bound(q, k, scale) <= limit
    kwargs = dict(normalization=normalization, sinkhorn_iters=iters, key_padding_mask=kv, query_padding_mask=qv,
                  impl="sdpa", scale=scale)
    out = attention(q, k, v, **kwargs)
    ref, _ = reference_attention(q, k, v, normalization=normalization, sinkhorn_iters=iters, allowed=_allowed(qv, kv),
                                 scale=scale)
    assert _err(out, ref, qv) <= {torch.float32: 2e-4, torch.bfloat16: 6e-2}[dtype] * v.double().abs().max().item()
    q2, k2, v2 = q.clone(), k.clone(), v.clone()
    q2[~qv[:, None, :].expand(3, 2, 7)] *= -0.5
    k2[~kv[:, None, :]] *= -1
    v2[~kv[:, None, :]] = 1e4
    out2 = attention(q2, k2, v2, **kwargs)
    real = qv[:, None, :].expand(3, 2, 7)
    assert torch.equal(out2[real], out[real])


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16, torch.float16])
def test_outside_the_range_sdpa_refuses_with_the_bound(dtype):
    from probattn.functional.fused import max_score_bound

    q = torch.randn(1, 2, 5, 8, dtype=torch.float64)
    q = q / q.norm(dim=-1, keepdim=True)  # unit rows: the score bound is scale * factor**2
    scale = 0.125
    limit = max_score_bound(dtype, scale, 5, 5, 1)
    outside, inside = ((f * limit / scale) ** 0.5 * q for f in (1.05, 0.9))
    with pytest.raises(ValueError, match=rf"impl='sdpa' cannot run this call: its scores may reach .* beyond .*, "
                                         rf"the bound up to which the fused path is exact in {dtype}.*impl='chunked'"):
        attention(outside.to(dtype), outside.to(dtype), outside.to(dtype), normalization="doubly", impl="sdpa",
                  scale=scale)
    q = inside.to(dtype)
    attention(q, q, q, normalization="doubly", impl="sdpa", scale=scale)  # inside: runs
    q = outside.to(dtype)
    # every other path takes it (the dense / chunked paths' bound is the overflow bound)
    attention(q, q, q, normalization="doubly", impl="chunked", scale=scale)


def test_the_range_follows_from_the_arithmetic():
    """The three conditions of fused.max_score_bound, evaluated by hand for the usual cases."""
    from probattn.functional.fused import excluded_gap, max_score_bound

    log_l = math.log(256)
    # bfloat16 / float32: the precision condition decides (gap 2**120 ~ 1.3e36 is never reached)
    assert excluded_gap(torch.bfloat16, 0.125) == pytest.approx(torch.finfo(torch.float32).max / 2**8, rel=1e-2)
    assert max_score_bound(torch.bfloat16, 0.125, 128, 128, 1) == pytest.approx(
        6e-2 / 2 / (0.25 * 2**-24) / 3 - log_l)
    assert max_score_bound(torch.float32, 0.125, 128, 128, 3) == pytest.approx(2e-4 / 2 / (0.25 * 2**-24) / 7 - log_l)
    # float16: the excluded key's f = 16376 (finfo.max / 4) gives G = 2047 at scale 1/8; exp(-105) = 0 in float32
    assert excluded_gap(torch.float16, 0.125) == pytest.approx(16376 * 0.125)
    assert max_score_bound(torch.float16, 0.125, 128, 128, 1) == pytest.approx((2047 - 105) / 2 / 3 - log_l)


@pytest.mark.gpu
def test_cuda_auto_routes_outside_the_range_and_sdpa_refuses():
    """bfloat16, |q|, |k| ~ 1e4 (the issue's case): impl='sdpa' refuses; impl='auto' takes another path, exact."""
    q, k, v, qv, kv = _problem(2, 2, 2, 9, 11, 64, 64, torch.float64, seed=2, spread=1e4 / 8)
    q, k, v = (t.to("cuda", torch.bfloat16) for t in (q, k, v))
    kwargs = dict(normalization="doubly", key_padding_mask=kv.cuda(), query_padding_mask=qv.cuda())
    with pytest.raises(ValueError, match="the bound up to which the fused path is exact"):
        attention(q, k, v, impl="sdpa", **kwargs)
    out = attention(q, k, v, **kwargs)
    ref, _ = reference_attention(q.cpu(), k.cpu(), v.cpu(), normalization="doubly", allowed=_allowed(qv, kv))
    assert _err(out, ref, qv) <= 6e-2 * v.double().abs().max().item()
