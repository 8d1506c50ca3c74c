"""Fuzzing the functional API: every input either gets a clear error naming the argument, or finite outputs
whose weights sum to 1 on each query that may attend to something."""

from __future__ import annotations

import re
import warnings

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from probattn.functional import attention

ARGUMENT_NAMES = re.compile(
    r"\b(q|k|v|attn_mask|key_padding_mask|query_padding_mask|is_causal|scale|dropout_p|hybrid_alpha|"
    r"sinkhorn_iters|impl|normalization|return_weights|batch sizes|head_dim|query heads)\b"
)


def _rarely(draw, good, bad):
    """Mostly a valid value, sometimes (1 in 8) an invalid one."""
    return draw(st.sampled_from(bad)) if draw(st.integers(0, 7)) == 0 else draw(st.sampled_from(good))


@st.composite
def calls(draw):
    b, h_kv, lq, lk, d = (_rarely(draw, [1, 2, 3], [0]) for _ in range(5))
    h = h_kv * draw(st.integers(1, 2)) + _rarely(draw, [0], [1])  # sometimes not divisible
    dtype = _rarely(draw, [torch.float64, torch.float32, torch.bfloat16, torch.float16], [torch.int64])
    magnitude = draw(st.sampled_from([1.0, 10.0, 1e2, 1e4, 1e30]))
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))

    def tensor(*shape):
        return (torch.randn(*shape, generator=g, dtype=torch.float64) * magnitude).to(dtype)

    q = tensor(b, h, lq, d)
    k = tensor(b, h_kv, lk + _rarely(draw, [0], [1]), d)
    v = tensor(b, h_kv, lk, draw(st.integers(1, 3)))
    if draw(st.integers(0, 15)) == 0:
        q = q.flatten(0, 1)  # wrong rank
    kwargs = {}
    mask_kind = _rarely(draw, ["none", "bool", "float"], ["int", "wrong_shape"])
    if mask_kind == "bool":
        kwargs["attn_mask"] = torch.rand(b, 1, lq, lk, generator=g) > 0.3
    elif mask_kind == "float":
        kwargs["attn_mask"] = torch.randn(lq, lk, generator=g).masked_fill(torch.rand(lq, lk, generator=g) > 0.7,
                                                                         float("-inf"))
    elif mask_kind == "int":
        kwargs["attn_mask"] = torch.ones(lq, lk, dtype=torch.int32)
    elif mask_kind == "wrong_shape":
        kwargs["attn_mask"] = torch.ones(lq + 1, lk, dtype=torch.bool)
    if draw(st.booleans()):
        kwargs["key_padding_mask"] = torch.rand(b, lk, generator=g) > 0.3
    if draw(st.booleans()):
        kwargs["query_padding_mask"] = torch.rand(b, lq, generator=g) > 0.3
    kwargs["normalization"] = _rarely(draw, ["softmax", "doubly", "hybrid", "sinkhorn"], ["dnas"])
    kwargs["is_causal"] = _rarely(draw, [False], [True])
    kwargs["dropout_p"] = _rarely(draw, [0.0], [-0.5, 1.0])
    kwargs["hybrid_alpha"] = _rarely(draw, [0.5, 0.0, 1.0, 0.3], [1.5, -1.0])
    kwargs["sinkhorn_iters"] = _rarely(draw, [1, 3], [0])
    kwargs["impl"] = _rarely(draw, ["auto", "dense", "chunked"], ["bogus"])
    return q, k, v, kwargs


@settings(max_examples=200, deadline=None)
@given(calls())
def test_clear_error_or_finite_normalized_output(call):
    q, k, v, kwargs = call
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            result = attention(q, k, v, **kwargs)
            if kwargs["impl"] != "chunked":
                _, weights = attention(q, k, v, **kwargs, return_weights=True)
    except (ValueError, TypeError) as error:
        assert ARGUMENT_NAMES.search(str(error)), f"error does not name an argument: {error}"
        return
    assert torch.isfinite(result).all()
    if kwargs["impl"] != "chunked":
        sums = weights.float().sum(-1)
        nonzero = sums != 0
        torch.testing.assert_close(sums[nonzero], torch.ones_like(sums[nonzero]), atol=2e-2, rtol=0)
