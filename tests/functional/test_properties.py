"""Property tests (hypothesis) for every normalization."""

from __future__ import annotations

import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from probattn.functional import attention
from probattn.masks import build_mask_spec, is_block_complete

SETTINGS = settings(max_examples=40, deadline=None)


@st.composite
def problems(draw):
    b = draw(st.integers(1, 3))
    h_kv = draw(st.integers(1, 2))
    h = h_kv * draw(st.integers(1, 2))
    lq = draw(st.integers(1, 7))
    lk = draw(st.integers(1, 7))
    d = draw(st.integers(1, 4))
    scale = draw(st.sampled_from([0.1, 1.0, 5.0, 20.0, 60.0]))
    seed = draw(st.integers(0, 2**31 - 1))
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(b, h, lq, d, generator=g, dtype=torch.float64)
    k = torch.randn(b, h_kv, lk, d, generator=g, dtype=torch.float64)
    v = torch.randn(b, h_kv, lk, 2, generator=g, dtype=torch.float64)
    key_valid = torch.rand(b, lk, generator=g) > 0.3
    query_valid = torch.rand(b, lq, generator=g) > 0.3
    kind = draw(st.sampled_from(["none", "blocks", "random"]))
    allowed = None
    if kind == "blocks":  # packed documents: the patterns column normalization accepts
        labels = draw(st.integers(1, 3))
        allowed = torch.randint(0, labels, (b, 1, lq, 1), generator=g) == torch.randint(0, labels, (b, 1, 1, lk),
                                                                                         generator=g)
    elif kind == "random":
        allowed = torch.rand(b, 1, lq, lk, generator=g) > 0.2
    return q, k, v, scale, key_valid, query_valid, allowed


def _attend(problem, normalization):
    q, k, v, scale, key_valid, query_valid, allowed = problem
    spec = build_mask_spec(batch=q.shape[0], heads=q.shape[1], q_len=q.shape[2], k_len=k.shape[2], device=q.device,
                           attn_mask=allowed, key_padding_mask=key_valid, query_padding_mask=query_valid)
    # column-normalized schemes refuse patterns that are not block-complete (they would leak hidden keys)
    assume(normalization == "softmax" or spec.allowed is None or is_block_complete(spec.allowed))
    return attention(q, k, v, normalization=normalization, scale=scale, key_padding_mask=key_valid,
                     query_padding_mask=query_valid, attn_mask=allowed, return_weights=True)


def _full_allowed(problem):
    q, k, _, _, key_valid, query_valid, allowed = problem
    full = query_valid[:, None, :, None] & key_valid[:, None, None, :]
    if allowed is not None:
        full = full & allowed
    return full.expand(q.shape[0], q.shape[1], q.shape[2], k.shape[2])


@SETTINGS
@given(problems(), st.sampled_from(["softmax", "doubly", "hybrid", "sinkhorn"]))
def test_rows_sum_to_one_on_queries_with_a_key_and_masked_pairs_get_nothing(problem, normalization):
    _, w = _attend(problem, normalization)
    full = _full_allowed(problem)
    has_key = full.any(-1)
    sums = w.sum(-1)
    torch.testing.assert_close(sums[has_key], torch.ones_like(sums[has_key]))
    assert (sums[~has_key] == 0).all()
    assert (w[~full] == 0).all()


@SETTINGS
@given(problems())
def test_doubly_every_visible_key_gets_at_least_one_over_n(problem):
    _, w = _attend(problem, "doubly")
    full = _full_allowed(problem)
    n = full.sum(-1).amax(-1, keepdim=True).clamp(min=1).double()  # most keys any valid query may attend to
    visible = full.any(-2)  # keys some query may attend to
    incoming = w.sum(-2)
    assert (incoming[visible] >= (1.0 / n.expand_as(incoming))[visible] - 1e-12).all()


@SETTINGS
@given(problems(), st.floats(-30, 30))
def test_doubly_is_invariant_to_a_per_key_bias(problem, magnitude):
    q, k, v, scale, key_valid, query_valid, allowed = problem
    g = torch.Generator().manual_seed(1)
    bias = torch.randn(q.shape[0], q.shape[1], 1, k.shape[2], generator=g, dtype=torch.float64) * magnitude
    base = _attend(problem, "doubly")[0]
    mask = bias if allowed is None else bias.masked_fill(~allowed, float("-inf"))
    shifted = attention(q, k, v, normalization="doubly", scale=scale, key_padding_mask=key_valid,
                        query_padding_mask=query_valid, attn_mask=mask)
    torch.testing.assert_close(shifted, base)


@SETTINGS
@given(problems())
def test_softmax_equals_sdpa(problem):
    q, k, v, scale, key_valid, _, allowed = problem
    mask = key_valid[:, None, None, :].expand(q.shape[0], 1, q.shape[2], k.shape[2])
    if allowed is not None:
        mask = mask & allowed
    ours = attention(q, k, v, scale=scale, attn_mask=mask)
    sdpa = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale,
                                                            enable_gqa=q.shape[1] != k.shape[1])
    rows = mask.any(-1, keepdim=True).expand_as(ours[..., :1]).expand_as(ours)
    torch.testing.assert_close(ours[rows], sdpa[rows])
    assert (ours[~rows] == 0).all()
