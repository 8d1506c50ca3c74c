"""probattn.functional.attention against the float64 reference, SDPA, and its error contract.

Tolerances (stated up front, flash-attention style): float64 within 1e-10, float32 within 1e-5 of the float64
reference computed from the same inputs.
"""

from __future__ import annotations

import math
import warnings

import pytest
import torch
import torch.nn.functional as F

from probattn.functional import NORMALIZATIONS, attention
from probattn.masks import build_mask_spec
from probattn.reference import reference_attention

TOL = {torch.float64: dict(atol=1e-10, rtol=0.0), torch.float32: dict(atol=1e-5, rtol=1e-5)}


def _lengths_mask(lengths: list[int], total: int) -> torch.Tensor:
    return torch.arange(total)[None, :] < torch.tensor(lengths)[:, None]


def _case(seed: int, *, b=3, h=4, h_kv=2, lq=5, lk=7, d=8, dv=3, dtype=torch.float64, magnitude=1.0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(b, h, lq, d, generator=g, dtype=torch.float64) * magnitude
    k = torch.randn(b, h_kv, lk, d, generator=g, dtype=torch.float64) * magnitude
    v = torch.randn(b, h_kv, lk, dv, generator=g, dtype=torch.float64)
    return q.to(dtype), k.to(dtype), v.to(dtype)


def _reference(q, k, v, *, normalization, key_padding_mask=None, query_padding_mask=None, attn_mask=None,
               scale=None, hybrid_alpha=0.5, sinkhorn_iters=3):
    b, h, lq, _ = q.shape
    spec = build_mask_spec(batch=b, heads=h, q_len=lq, k_len=k.shape[2], device=q.device, attn_mask=attn_mask,
                           key_padding_mask=key_padding_mask, query_padding_mask=query_padding_mask)
    return reference_attention(q, k, v, normalization=normalization, allowed=spec.allowed, bias=spec.bias,
                               scale=scale, hybrid_alpha=hybrid_alpha, sinkhorn_iters=sinkhorn_iters)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("normalization", NORMALIZATIONS)
@pytest.mark.parametrize(
    "shape",
    [
        dict(lq=5, lk=7),  # odd lengths, Lq != Lk, grouped-query heads (4 q heads, 2 kv heads)
        dict(lq=1, lk=1, h_kv=4),  # one-token sequences
        dict(lq=9, lk=9, h_kv=1),  # multi-query attention
        dict(lq=6, lk=3, d=5, dv=4, h_kv=4),
    ],
)
def test_matches_reference_with_padding_on_both_axes(dtype, normalization, shape):
    for seed in range(3):
        q, k, v = _case(seed, dtype=dtype, **shape)
        b, lq, lk = q.shape[0], q.shape[2], k.shape[2]
        kpm = _lengths_mask([lk, max(1, lk - 2), 1][:b], lk)
        qpm = _lengths_mask([lq, 1, max(1, lq - 1)][:b], lq)
        out, w = attention(q, k, v, normalization=normalization, key_padding_mask=kpm, query_padding_mask=qpm,
                           return_weights=True, hybrid_alpha=0.3, sinkhorn_iters=4)
        ref_out, ref_w = _reference(q, k, v, normalization=normalization, key_padding_mask=kpm,
                                    query_padding_mask=qpm, hybrid_alpha=0.3, sinkhorn_iters=4)
        torch.testing.assert_close(w.double(), ref_w, **TOL[dtype])
        torch.testing.assert_close(out.double(), ref_out, **TOL[dtype])
        no_weights = attention(q, k, v, normalization=normalization, key_padding_mask=kpm, query_padding_mask=qpm,
                               hybrid_alpha=0.3, sinkhorn_iters=4)
        torch.testing.assert_close(no_weights.double(), ref_out, **TOL[dtype])


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("normalization", NORMALIZATIONS)
def test_extreme_scores_up_to_1e4(dtype, normalization):
    q, k, v = _case(11, lq=5, lk=6, h_kv=4, dtype=dtype)
    scale = 1e4 / (q.double() @ k.double().transpose(-1, -2)).abs().max().item()
    kpm = _lengths_mask([6, 4, 2], 6)
    out, w = attention(q, k, v, normalization=normalization, key_padding_mask=kpm, query_padding_mask=kpm[:, :5],
                       scale=scale, return_weights=True)
    ref_out, ref_w = _reference(q, k, v, normalization=normalization, key_padding_mask=kpm,
                                query_padding_mask=kpm[:, :5], scale=scale)
    assert torch.isfinite(out).all() and torch.isfinite(w).all()
    tol = TOL[dtype]
    if dtype == torch.float32 and normalization == "sinkhorn":
        # float32 resolves scores of 1e4 to about 1e-3; the alternating potentials cancel them down to O(1)
        # values, so that resolution shows in the weights (measured: 6e-5). One normalization saturates instead.
        tol = dict(atol=2e-4, rtol=0.0)
    torch.testing.assert_close(w.double(), ref_w, **tol)
    torch.testing.assert_close(out.double(), ref_out, **tol)


@pytest.mark.parametrize("normalization", NORMALIZATIONS)
def test_general_bool_and_float_attn_masks(normalization):
    q, k, v = _case(3, lq=6, lk=6, h_kv=4)
    g = torch.Generator().manual_seed(0)
    allowed = torch.rand(3, 1, 6, 6, generator=g) > 0.4
    allowed[..., 0] = True  # every query sees at least one key
    if normalization != "softmax":  # column normalization takes block-complete patterns only: packed documents
        with pytest.raises(ValueError, match=r"attn_mask.*complete blocks"):
            attention(q, k, v, normalization=normalization, attn_mask=allowed)
        allowed = torch.randint(0, 3, (3, 1, 6, 1), generator=g) == torch.randint(0, 3, (3, 1, 1, 6), generator=g)
        allowed[..., 0, :] = False  # and a query that sees nothing
    bias = torch.randn(3, 4, 6, 6, generator=g, dtype=torch.float64)
    additive = bias.masked_fill(~allowed, float("-inf"))
    out_bool = attention(q, k, v, normalization=normalization, attn_mask=allowed)
    ref_bool, _ = _reference(q, k, v, normalization=normalization, attn_mask=allowed)
    torch.testing.assert_close(out_bool, ref_bool, **TOL[torch.float64])
    out_float = attention(q, k, v, normalization=normalization, attn_mask=additive)
    ref_float, _ = reference_attention(q, k, v, normalization=normalization, allowed=allowed, bias=bias)
    torch.testing.assert_close(out_float, ref_float, **TOL[torch.float64])
    # Hugging Face's eager masks use finfo.min instead of -inf: same meaning
    hf_style = bias.masked_fill(~allowed, torch.finfo(torch.float64).min)
    torch.testing.assert_close(attention(q, k, v, normalization=normalization, attn_mask=hf_style), out_float)


def test_softmax_equals_sdpa():
    q, k, v = _case(5, lq=7, lk=9, h_kv=4, dtype=torch.float32)
    mask = torch.rand(3, 4, 7, 9, generator=torch.Generator().manual_seed(1)) > 0.3
    mask[..., 0] = True
    torch.testing.assert_close(attention(q, k, v, attn_mask=mask), F.scaled_dot_product_attention(q, k, v, mask))
    torch.testing.assert_close(attention(q, k, v, is_causal=True),
                               F.scaled_dot_product_attention(q, k, v, is_causal=True))
    qg, kg, vg = _case(6, lq=4, lk=4, h=6, h_kv=2, dtype=torch.float32)
    torch.testing.assert_close(attention(qg, kg, vg), F.scaled_dot_product_attention(qg, kg, vg, enable_gqa=True))


@pytest.mark.parametrize("normalization", NORMALIZATIONS)
def test_padded_batch_equals_sequences_run_one_by_one(normalization):
    lengths = [5, 2, 4]
    q, k, v = _case(21, lq=5, lk=5, h_kv=4)
    pad = _lengths_mask(lengths, 5)
    batched = attention(q, k, v, normalization=normalization, key_padding_mask=pad, query_padding_mask=pad)
    for i, n in enumerate(lengths):
        alone = attention(q[i:i + 1, :, :n], k[i:i + 1, :, :n], v[i:i + 1, :, :n], normalization=normalization)
        torch.testing.assert_close(batched[i:i + 1, :, :n], alone, **TOL[torch.float64])
        assert (batched[i, :, n:] == 0).all()


@pytest.mark.parametrize("normalization", NORMALIZATIONS)
def test_fully_masked_rows_and_columns_are_zero_and_finite_in_backward(normalization):
    q, k, v = _case(8, lq=4, lk=5, h_kv=4)
    q.requires_grad_(True)
    k.requires_grad_(True)
    v.requires_grad_(True)
    allowed = torch.ones(3, 1, 4, 5, dtype=torch.bool)
    allowed[0, :, 1, :] = False  # a query with no key
    allowed[1, :, :, 2] = False  # a key no query sees
    allowed[2] = False  # everything masked
    out, w = attention(q, k, v, normalization=normalization, attn_mask=allowed, return_weights=True)
    assert (out[0, :, 1] == 0).all() and (w[1, :, :, 2] == 0).all() and (out[2] == 0).all()
    (out.square().sum() + w.sum()).backward()
    for t in (q, k, v):
        assert torch.isfinite(t.grad).all()
    assert (q.grad[0, :, 1] == 0).all() and (q.grad[2] == 0).all()


@pytest.mark.parametrize("normalization", NORMALIZATIONS)
def test_gradcheck_with_masks(normalization):
    q, k, v = _case(4, b=2, h=2, h_kv=1, lq=4, lk=5, d=3, dv=2)
    kpm = _lengths_mask([5, 3], 5)
    qpm = _lengths_mask([4, 2], 4)
    alpha = torch.tensor([0.2, 0.7], dtype=torch.float64, requires_grad=True)

    def fn(q, k, v, alpha):
        return attention(q, k, v, normalization=normalization, key_padding_mask=kpm, query_padding_mask=qpm,
                         hybrid_alpha=alpha if normalization == "hybrid" else 0.5, return_weights=True)

    inputs = (*(t.requires_grad_(True) for t in (q, k, v)), alpha)
    assert torch.autograd.gradcheck(fn, inputs)


def test_hybrid_alpha_per_head_and_limits():
    q, k, v = _case(9, lq=5, lk=5, h=4, h_kv=4)
    soft = attention(q, k, v)
    doubly = attention(q, k, v, normalization="doubly")
    torch.testing.assert_close(attention(q, k, v, normalization="hybrid", hybrid_alpha=1.0), soft)
    torch.testing.assert_close(attention(q, k, v, normalization="hybrid", hybrid_alpha=0.0), doubly)
    alpha = torch.tensor([0.0, 0.25, 0.5, 1.0], dtype=torch.float64)
    mixed = attention(q, k, v, normalization="hybrid", hybrid_alpha=alpha)
    torch.testing.assert_close(mixed, alpha.view(1, 4, 1, 1) * soft + (1 - alpha.view(1, 4, 1, 1)) * doubly)


def test_sinkhorn_one_iteration_is_doubly_bit_for_bit():
    for dtype in (torch.float32, torch.float64):
        q, k, v = _case(10, dtype=dtype)
        pad = _lengths_mask([7, 4, 6], 7)
        a = attention(q, k, v, normalization="doubly", key_padding_mask=pad, return_weights=True)
        b = attention(q, k, v, normalization="sinkhorn", sinkhorn_iters=1, key_padding_mask=pad, return_weights=True)
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_low_precision_inputs_are_computed_in_float32():
    q, k, v = _case(12, lq=16, lk=16, h_kv=4, dtype=torch.float32, magnitude=3.0)
    for dtype in (torch.bfloat16, torch.float16):
        out = attention(q.to(dtype), k.to(dtype), v.to(dtype), normalization="doubly")
        assert out.dtype == dtype
        ref, _ = reference_attention(q.to(dtype), k.to(dtype), v.to(dtype), normalization="doubly")
        torch.testing.assert_close(out.double(), ref, atol=2e-2, rtol=2e-2)


@pytest.mark.parametrize("normalization", ["doubly", "hybrid", "sinkhorn"])
def test_column_normalized_schemes_refuse_causal(normalization):
    q, k, v = _case(13, lq=5, lk=5)
    with pytest.raises(ValueError, match="future"):
        attention(q, k, v, normalization=normalization, is_causal=True)
    causal = torch.ones(5, 5, dtype=torch.bool).tril()
    with pytest.raises(ValueError, match="normalization='softmax'"):
        attention(q, k, v, normalization=normalization, attn_mask=causal)
    # causal + left padding (as Hugging Face decoders build it) is still causal
    padded = causal[None, None] & _lengths_mask([5, 3, 4], 5).flip(-1)[:, None, None, :]
    with pytest.raises(ValueError, match="future"):
        attention(q, k, v, normalization=normalization, attn_mask=padded)
    # a padding-only mask is not causal
    attention(q, k, v, normalization=normalization, key_padding_mask=_lengths_mask([5, 1, 2], 5))


def test_single_query_warns_about_mean_pooling():
    q, k, v = _case(14, lq=1, lk=4)
    with pytest.warns(UserWarning, match="uniform"):
        _, w = attention(q, k, v, normalization="doubly", return_weights=True)
    torch.testing.assert_close(w, torch.full_like(w, 0.25))


def test_dropout_applies_to_weights():
    q, k, v = _case(15, lq=6, lk=6, h_kv=4)
    _, clean = attention(q, k, v, normalization="doubly", return_weights=True)
    torch.manual_seed(0)
    out, w = attention(q, k, v, normalization="doubly", dropout_p=0.5, return_weights=True)
    dropped = w == 0
    assert 0.3 < dropped.double().mean() < 0.7  # about half of the weights dropped
    torch.testing.assert_close(w[~dropped], clean[~dropped] / 0.5)  # the others scaled by 1 / (1 - p)
    torch.testing.assert_close(out, w @ v)


@pytest.mark.parametrize(
    ("kwargs", "argument"),
    [
        (dict(normalization="dnas"), "normalization"),
        (dict(dropout_p=-0.1), "dropout_p"),
        (dict(dropout_p=1.0), "dropout_p"),
        (dict(sinkhorn_iters=0), "sinkhorn_iters"),
        (dict(sinkhorn_iters=2.5), "sinkhorn_iters"),
        (dict(normalization="hybrid", hybrid_alpha=1.5), "hybrid_alpha"),
        (dict(normalization="hybrid", hybrid_alpha=torch.tensor([0.1, 0.2, 0.3])), "hybrid_alpha"),
        (dict(scale=math.inf), "scale"),
        (dict(impl="fast"), "impl"),
        (dict(attn_mask=torch.ones(5, 6, dtype=torch.bool)), "attn_mask"),
        (dict(attn_mask=torch.ones(5, 7, dtype=torch.int64)), "attn_mask"),
        (dict(key_padding_mask=torch.ones(3, 6, dtype=torch.bool)), "key_padding_mask"),
        (dict(key_padding_mask=torch.ones(3, 7)), "key_padding_mask"),
        (dict(query_padding_mask=torch.ones(2, 5, dtype=torch.bool)), "query_padding_mask"),
        (dict(is_causal=1), "is_causal"),
    ],
)
def test_bad_options_name_the_argument(kwargs, argument):
    q, k, v = _case(16)
    with pytest.raises((ValueError, TypeError), match=argument):
        attention(q, k, v, **kwargs)


def test_bad_tensors_name_the_argument():
    q, k, v = _case(17)
    with pytest.raises(ValueError, match="q must be 4-D"):
        attention(q[0], k, v)
    with pytest.raises(ValueError, match="multiple"):
        attention(q[:, :3], k, v)
    with pytest.raises(ValueError, match="head_dim"):
        attention(q, k[..., :4], v)
    with pytest.raises(TypeError, match="dtype"):
        attention(q, k.float(), v)
    with pytest.raises(TypeError, match="floating"):
        attention(q.long(), k.long(), v.long())
    with pytest.raises(ValueError, match="empty"):
        attention(q[:0], k[:0], v[:0])
    with pytest.raises(ValueError, match="q contains NaN"):
        attention(q.clone().fill_(math.nan), k, v)
    with pytest.raises(TypeError, match="attn_mask"):
        attention(q, k, v, attn_mask=[[True]])


@pytest.mark.parametrize("normalization", ["softmax", "doubly", "hybrid", "sinkhorn"])
@pytest.mark.parametrize("impl", ["dense", "chunked"])
def test_non_finite_inputs_and_overflow_are_named(normalization, impl):
    q, k, v = (torch.randn(1, 2, 5, 4) for _ in range(3))
    for name in ("q", "k", "v"):
        bad = dict(q=q, k=k, v=v)
        bad[name] = bad[name].clone()
        bad[name][0, 1, 2, 3] = math.inf
        with pytest.raises(ValueError, match=f"^{name} contains NaN or infinite"):
            attention(bad["q"], bad["k"], bad["v"], normalization=normalization, impl=impl)
    with pytest.raises(ValueError, match=r"scores may overflow.*scale"):
        attention(q * 1e30, k * 1e30, v, normalization=normalization, impl=impl)


@pytest.mark.parametrize("normalization", ["doubly", "hybrid", "sinkhorn"])
def test_huge_scores_have_one_outcome_on_every_path(normalization):
    """Dense and chunked, forward and backward: both raise the same error, or both give finite, equal results.
    (At 1e19 the chunked path used to return a finite output with NaN gradients while the dense one raised.)"""
    for magnitude in (1e2, 1e8, 1e15, 1e17, 1e18, 1e19, 1e20):
        for seed in range(3):
            outcomes = []
            for impl in ("dense", "chunked"):
                g = torch.Generator().manual_seed(seed)
                q, k = (torch.randn(2, 2, 5, 4, generator=g) * magnitude for _ in range(2))
                v = torch.randn(2, 2, 5, 3, generator=g)
                q, k, v = (t.requires_grad_() for t in (q, k, v))
                try:
                    out = attention(q, k, v, normalization=normalization, impl=impl)
                except ValueError as error:
                    assert "scores may overflow" in str(error)
                    outcomes.append(None)
                    continue
                out.backward(torch.ones_like(out))
                for t in (out, q.grad, k.grad, v.grad):
                    assert torch.isfinite(t).all(), (magnitude, impl)
                outcomes.append((out.detach(), v.grad))
            assert (outcomes[0] is None) == (outcomes[1] is None), magnitude
            if magnitude == 1e2:  # scores ~1e4: float32 resolves them to ~1e-3
                torch.testing.assert_close(outcomes[0], outcomes[1], atol=2e-3, rtol=2e-3)


def _future_moves_past(normalization, **masks):
    """How far query 1's output moves when only token 3 (query, key and value) changes; 4 tokens."""
    q, k, v = _case(20, b=1, h=4, h_kv=4, lq=4, lk=4)
    q2, k2, v2 = q.clone(), k.clone(), v.clone()
    for t in (q2, k2, v2):
        t[..., 3, :] += 1.0
    a = attention(q, k, v, normalization=normalization, **masks)
    b = attention(q2, k2, v2, normalization=normalization, **masks)
    return (a[:, -1, 1] - b[:, -1, 1]).abs().max().item()  # the last head (causal in every spelling)


CAUSAL = torch.ones(4, 4, dtype=torch.bool).tril()
CAUSAL_SPELLINGS = {
    "bool + right padding as key_padding_mask": dict(attn_mask=CAUSAL,
                                                     key_padding_mask=torch.tensor([[True, True, True, False]])),
    "float -1e9": dict(attn_mask=torch.zeros(4, 4, dtype=torch.float64).masked_fill(~CAUSAL, -1e9)),
    "float -1e4 (BERT)": dict(attn_mask=torch.zeros(4, 4).masked_fill(~CAUSAL, -1e4)),
    "float finfo.min, per head (head 0 full)": dict(
        attn_mask=torch.zeros(1, 4, 4, 4).masked_fill(~CAUSAL, torch.finfo().min).index_fill(1, torch.tensor(0), 0)),
    "bool + an extra always-visible key (add_zero_attn)": dict(
        attn_mask=F.pad(CAUSAL, (0, 1), value=True)),
}


@pytest.mark.parametrize("normalization", ["doubly", "hybrid", "sinkhorn"])
@pytest.mark.parametrize("spelling", list(CAUSAL_SPELLINGS))
def test_causal_guard_holds_for_every_spelling(normalization, spelling):
    masks = dict(CAUSAL_SPELLINGS[spelling])
    if "extra" in spelling:
        q, k, v = _case(21, b=1, h=1, h_kv=1, lq=4, lk=5)
        with pytest.raises(ValueError, match=r"attn_mask.*future.*normalization='softmax'"):
            attention(q, k, v, normalization=normalization, **masks)
        return
    assert _future_moves_past("softmax", **masks) < 1e-12  # softmax is causal under every spelling
    with pytest.raises(ValueError, match=r"attn_mask.*future.*normalization='softmax'"):
        _future_moves_past(normalization, **masks)


@pytest.mark.parametrize("impl", ["dense", "chunked"])
@pytest.mark.parametrize("normalization", NORMALIZATIONS)
@pytest.mark.parametrize("value", [-1e4, -1e9, -1e30])
def test_very_negative_finite_padding_masks_for_every_normalization(impl, normalization, value):
    """A key padded with -1e4 (BERT's convention) or -1e9 gets no attention: column normalization used to
    cancel such a per-key value exactly and give the padded key [0.057, 0.357, 0.456, 0.114]."""
    q, k, v = _case(22, lq=4, lk=5, h_kv=4)
    valid = _lengths_mask([5, 3, 4], 5)
    additive = torch.zeros(3, 1, 1, 5, dtype=torch.float64).masked_fill(~valid[:, None, None, :], value)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "per-key bias has no effect" warning: this is a mask
        out = attention(q, k, v, normalization=normalization, attn_mask=additive, impl=impl)
    expected = attention(q, k, v, normalization=normalization, key_padding_mask=valid, impl=impl)
    torch.testing.assert_close(out, expected, **TOL[torch.float64])
    if impl == "dense":
        _, w = attention(q, k, v, normalization=normalization, attn_mask=additive, return_weights=True)
        assert (w.masked_select(~valid[:, None, None, :]) == 0).all()


def test_mask_values_are_read_in_their_own_dtype():
    q, k, v = _case(23, b=1, lq=4, lk=4, h_kv=4, dtype=torch.float32)
    row_blocked = torch.zeros(4, 4)
    row_blocked[1] = -1e9  # float32 mask on float16 inputs: used to give zeros, and uniform weights in float32
    blocked_bool = torch.ones(4, 4, dtype=torch.bool)
    blocked_bool[1] = False
    for normalization in NORMALIZATIONS:
        expected = attention(q, k, v, normalization=normalization, attn_mask=blocked_bool)
        half = attention(q.half(), k.half(), v.half(), normalization=normalization, attn_mask=row_blocked)
        torch.testing.assert_close(half.float(), expected, atol=2e-2, rtol=2e-2)
        full = attention(q, k, v, normalization=normalization, attn_mask=row_blocked)
        torch.testing.assert_close(full, expected)
        # float64 -1e300 on float32 inputs: blocked (was a silent zero row / a wrong "overflowed" error)
        huge = torch.zeros(4, 4, dtype=torch.float64).masked_fill(~blocked_bool, -1e300)
        torch.testing.assert_close(attention(q, k, v, normalization=normalization, attn_mask=huge), expected)
    with pytest.raises(ValueError, match=r"attn_mask holds finite values up to 1e.300"):
        attention(q, k, v, attn_mask=torch.full((4, 4), 1e300, dtype=torch.float64))


@pytest.mark.parametrize("normalization", ["doubly", "hybrid", "sinkhorn"])
def test_per_key_bias_warns_that_it_cancels(normalization):
    q, k, v = _case(24, lq=4, lk=5, h_kv=4)
    per_key = torch.tensor([0.0, -2.0, 3.0, 0.5, -1.0], dtype=torch.float64)
    with pytest.warns(UserWarning, match="cancels such a bias exactly"):
        out = attention(q, k, v, normalization=normalization, attn_mask=per_key.expand(4, 5))
    if normalization == "doubly":  # what the warning says: no effect at all
        torch.testing.assert_close(out, attention(q, k, v, normalization=normalization), **TOL[torch.float64])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        attention(q, k, v, normalization=normalization, attn_mask=torch.randn(4, 5, dtype=torch.float64))


def test_nan_hybrid_alpha_is_named_as_nan():
    q, k, v = _case(25, lq=4, lk=4, h_kv=4)
    for alpha in (float("nan"), torch.tensor([0.5, float("nan"), 0.5, 0.5], dtype=torch.float64)):
        with pytest.raises(ValueError, match=r"hybrid_alpha is NaN.*diverged"):
            attention(q, k, v, normalization="hybrid", hybrid_alpha=alpha)
