"""probattn.masks: every convention in, one MaskSpec out."""

from __future__ import annotations

import warnings

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from probattn.masks import (
    MASKED_AT_OR_BELOW,
    build_mask_spec,
    check_column_normalizable,
    from_hf_attention_mask,
    from_torch_mha,
    is_block_complete,
)

CPU = torch.device("cpu")


def _spec(**kwargs):
    sizes = dict(batch=2, heads=3, q_len=4, k_len=4, device=CPU)
    sizes.update(kwargs.pop("sizes", {}))
    return build_mask_spec(**sizes, **kwargs)


def test_no_mask_is_trivial():
    spec = _spec()
    assert spec.is_trivial and spec.row_has_key() is None and spec.additive(torch.float32) is None


def test_padding_on_both_axes_folds_into_allowed():
    kpm = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]])  # integer 0/1 masks are accepted (Hugging Face style)
    qpm = torch.tensor([[True, True, False, False], [True, True, True, True]])
    spec = _spec(key_padding_mask=kpm, query_padding_mask=qpm)
    expected = qpm.view(2, 1, 4, 1) & kpm.bool().view(2, 1, 1, 4)
    assert torch.equal(spec.allowed.expand(2, 1, 4, 4), expected)
    assert torch.equal(spec.row_has_key().flatten(1), qpm)


def test_float_masks_split_into_allowed_and_bias():
    mask = torch.tensor([[0.0, -1.5, float("-inf"), torch.finfo(torch.float32).min]]).expand(4, 4)
    spec = _spec(attn_mask=mask)
    assert torch.equal(spec.allowed[0, 0, 0], torch.tensor([True, True, False, False]))
    assert torch.equal(spec.bias[0, 0, 0], torch.tensor([0.0, -1.5, 0.0, 0.0]))
    additive = spec.additive(torch.float32)[0, 0, 0]
    assert additive[1] == -1.5 and torch.isinf(additive[2:]).all()
    bias_only = _spec(attn_mask=torch.tensor([[0.0, -1.5, 2.0, 0.0]]))  # nothing blocked: a pure bias
    assert bias_only.allowed is None and torch.equal(bias_only.bias.flatten(), torch.tensor([0.0, -1.5, 2.0, 0.0]))
    assert _spec(attn_mask=torch.zeros(4, 4)).is_trivial  # an all-zero additive mask masks nothing
    nan_and_inf = torch.tensor([[float("-inf"), float("nan"), float("inf"), 0.0]])
    with pytest.raises(ValueError, match="NaN"):  # NaN is named first, whatever else the mask holds
        _spec(attn_mask=nan_and_inf)


def test_causal_is_top_left_aligned():
    spec = _spec(is_causal=True, sizes=dict(q_len=2, k_len=3))
    assert torch.equal(spec.allowed[0, 0], torch.tensor([[True, False, False], [True, True, False]]))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(attn_mask=torch.ones(5, 4, dtype=torch.bool)), "does not broadcast"),
        (dict(attn_mask=torch.ones(4, dtype=torch.bool)), "2 to 4 dimensions"),
        (dict(attn_mask=torch.zeros(4, 4, dtype=torch.int32)), "bool .* or floating"),
        (dict(attn_mask=torch.full((4, 4), float("nan"))), "NaN"),
        (dict(attn_mask=torch.full((4, 4), float("inf"))), r"\+inf"),
        (dict(key_padding_mask=torch.ones(2, 5, dtype=torch.bool)), "key_padding_mask must have shape"),
        (dict(key_padding_mask=torch.full((2, 4), 2)), "other than 0 and 1"),
        (dict(query_padding_mask=torch.ones(2, 4)), "query_padding_mask must be bool"),
        (dict(attn_mask="causal"), "attn_mask must be a torch.Tensor"),
        (dict(is_causal="yes"), "is_causal must be a bool"),
    ],
)
def test_bad_masks_name_the_argument(kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        _spec(**kwargs)


def _block_complete_by_definition(allowed: torch.Tensor) -> bool:
    """Brute force over each 2-D slice: two queries that share a key see exactly the same keys."""
    for pattern in allowed.reshape(-1, *allowed.shape[-2:]):
        rows = [set(row.nonzero().flatten().tolist()) for row in pattern]
        for a in rows:
            for b in rows:
                if a & b and a != b:
                    return False
    return True


def test_block_complete_patterns():
    causal = torch.ones(4, 4, dtype=torch.bool).tril()
    assert not is_block_complete(causal)
    assert not is_block_complete(causal & torch.tensor([True, True, True, False]))  # + right padding
    assert not is_block_complete(torch.nn.functional.pad(causal, (0, 1), value=True))  # + a zero-attention key
    assert not is_block_complete(causal & ~torch.ones(4, 4, dtype=torch.bool).tril(-2))  # causal window
    assert not is_block_complete((torch.arange(4)[:, None] - torch.arange(4)).abs() <= 1)  # symmetric window
    assert is_block_complete(torch.ones(4, 4, dtype=torch.bool))
    packed = torch.block_diag(torch.ones(2, 3), torch.ones(2, 1)).bool()  # two packed documents
    assert is_block_complete(packed) and is_block_complete(packed[[2, 0, 3, 1]][:, [3, 1, 0, 2]])
    padded = torch.tensor([True, True, False, True])
    assert is_block_complete(padded[:, None] & padded[None, :])
    assert is_block_complete(torch.zeros(3, 4, dtype=torch.bool))


def test_block_complete_agrees_with_its_definition():
    g = torch.Generator().manual_seed(0)
    seen = {True: 0, False: 0}
    for _ in range(400):
        lq, lk = (int(x) for x in torch.randint(1, 6, (2,), generator=g))
        if torch.rand((), generator=g) < 0.5:  # random blocks: labels per query and key, some rows/cols dropped
            n = int(torch.randint(1, 4, (), generator=g))
            pattern = torch.randint(0, n, (lq, 1), generator=g) == torch.randint(0, n, (1, lk), generator=g)
            pattern &= torch.rand(lq, 1, generator=g) > 0.2
            if torch.rand((), generator=g) < 0.3:  # and sometimes one flipped pair
                pattern[torch.randint(0, lq, ()), torch.randint(0, lk, ())] ^= True
        else:
            pattern = torch.rand(2, lq, lk, generator=g) > 0.5
        expected = _block_complete_by_definition(pattern)
        assert is_block_complete(pattern) == expected, pattern
        seen[expected] += 1
    assert min(seen.values()) > 50  # both outcomes well covered


def test_column_normalization_guard_names_the_mask():
    causal = torch.ones(4, 4, dtype=torch.bool).tril()
    with pytest.raises(ValueError, match=r"attn_mask.*future.*normalization='softmax'"):
        check_column_normalizable(_spec(attn_mask=causal), "doubly")
    with pytest.raises(ValueError, match="is_causal=True"):
        check_column_normalizable(_spec(is_causal=True), "sinkhorn")
    check_column_normalizable(_spec(key_padding_mask=torch.tensor([[1, 0, 0, 0], [1, 1, 1, 1]])), "doubly")
    check_column_normalizable(_spec(attn_mask=torch.ones(4, 4, dtype=torch.bool)), "doubly")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
@pytest.mark.parametrize("value", [float("-inf"), -1e4, -1e9, "min"])
def test_very_negative_finite_entries_are_masked_in_their_own_dtype(dtype, value):
    value = torch.finfo(dtype).min if value == "min" else value
    mask = torch.tensor([[0.0, -3.0, value, 0.0]]).to(dtype)  # -1e9 is -inf in float16: masked either way
    spec = _spec(attn_mask=mask)
    assert torch.equal(spec.allowed.flatten(), torch.tensor([True, True, False, True]))
    assert spec.bias.flatten().tolist() == [0.0, -3.0, 0.0, 0.0] and spec.bias_absmax == 3.0
    near = _spec(attn_mask=torch.tensor([[0.0, MASKED_AT_OR_BELOW / 2]]).to(dtype), sizes=dict(k_len=2))
    assert near.allowed is None  # -5000 is a bias
    huge = _spec(attn_mask=torch.tensor([[0.0, -1e300]], dtype=torch.float64), sizes=dict(k_len=2))
    assert torch.equal(huge.allowed.flatten(), torch.tensor([True, False])) and huge.bias is None


def test_per_key_bias_is_recognised():
    assert _spec(attn_mask=torch.tensor([[0.0, -3.0, 1.0, 0.0]])).bias_is_per_key()
    assert _spec(attn_mask=torch.tensor([0.0, -3.0, 1.0, 0.0]).expand(4, 4)).bias_is_per_key()
    assert not _spec(attn_mask=torch.randn(4, 4)).bias_is_per_key()
    assert not _spec(attn_mask=torch.tensor([[0.0, -1e4, 0.0, 0.0]])).bias_is_per_key()  # a mask, not a bias


def test_torch_mha_convention_is_inverted():
    attn = torch.tensor([[False, True], [False, False]])  # True = not allowed
    kpm = torch.tensor([[False, True]])  # True = padding
    mask, key_valid = from_torch_mha(attn, kpm, num_heads=2, batch=1)
    assert torch.equal(mask, ~attn) and torch.equal(key_valid, ~kpm)
    mask3d, _ = from_torch_mha(torch.zeros(4, 2, 2, dtype=torch.bool), None, num_heads=2, batch=2)
    assert mask3d.shape == (2, 2, 2, 2)
    float_kpm = torch.tensor([[0.0, float("-inf")]])  # what nn.TransformerEncoderLayer passes down
    mask, key_valid = from_torch_mha(attn, float_kpm, num_heads=2, batch=1)
    assert torch.equal(mask, ~attn) and torch.equal(key_valid, torch.tensor([[True, False]]))
    bert_kpm = torch.tensor([[0.0, -10000.0]])  # BERT's old convention is padding too
    mask, key_valid = from_torch_mha(None, bert_kpm, num_heads=2, batch=1)
    assert mask is None and torch.equal(key_valid, torch.tensor([[True, False]]))
    biased_kpm = torch.tensor([[-0.5, float("-inf")]])  # finite entries stay an additive bias
    mask, key_valid = from_torch_mha(None, biased_kpm, num_heads=2, batch=1)
    assert torch.equal(key_valid, torch.tensor([[True, False]])) and mask.shape == (1, 1, 1, 2)
    assert mask[0, 0, 0, 0] == -0.5 and mask[0, 0, 0, 1] == 0
    with pytest.raises(ValueError, match="batch \\* num_heads"):
        from_torch_mha(torch.zeros(3, 2, 2, dtype=torch.bool), None, num_heads=2, batch=2)


def test_hf_masks_give_query_validity_from_the_diagonal():
    valid = torch.tensor([[True, True, False], [True, True, True]])
    bool_mask = valid[:, None, None, :].expand(2, 1, 3, 3)
    _, query_valid, causal = from_hf_attention_mask(bool_mask, is_causal=False, batch=2, q_len=3, k_len=3)
    assert torch.equal(query_valid, valid) and not causal
    float_mask = torch.zeros(2, 1, 3, 3).masked_fill(~bool_mask, torch.finfo(torch.float32).min)
    _, query_valid, _ = from_hf_attention_mask(float_mask, is_causal=False, batch=2, q_len=3, k_len=3)
    assert torch.equal(query_valid, valid)
    assert from_hf_attention_mask(None, is_causal=True, batch=2, q_len=3, k_len=3) == (None, None, True)


# -- a finite bias that masks in effect (issue 23, item 10) ------------------------------------------------------
def _future_moves(bias: torch.Tensor, normalization: str, query: int, seed: int = 0) -> float:
    """Change only the tokens after ``query`` (their q, k, v); how far does ``query``'s output move?"""
    from probattn.functional import attention

    g = torch.Generator().manual_seed(seed)
    length = bias.shape[-1]
    q, k, v = (torch.randn(2, 2, length, 4, generator=g, dtype=torch.float64) for _ in range(3))
    q2, k2, v2 = q.clone(), k.clone(), v.clone()
    for t in (q2, k2, v2):
        t[:, :, query + 1:] += torch.randn(t[:, :, query + 1:].shape, generator=g, dtype=torch.float64)
    out = attention(q, k, v, normalization=normalization, attn_mask=bias, impl="dense")
    out2 = attention(q2, k2, v2, normalization=normalization, attn_mask=bias, impl="dense")
    return (out[:, :, query] - out2[:, :, query]).abs().max().item()


@pytest.mark.parametrize("normalization", ["doubly", "hybrid", "sinkhorn"])
@pytest.mark.parametrize("value", [-1000.0, -200.0, -104.0, -9000.0])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_causal_mask_written_as_a_finite_bias_never_leaks_the_future(normalization, value, dtype):
    """Property: either refused with the reason, or what a query may not see (the future) leaves it unchanged.

    Before: ``-1000`` above the diagonal passed the causal guard and query 1 moved by ~0.26 when only future
    tokens changed.
    """
    length = 6
    causal = torch.ones(length, length, dtype=torch.bool).tril()
    bias = torch.zeros(length, length, dtype=torch.float64).masked_fill(~causal, value).to(dtype)
    try:
        moved = _future_moves(bias, normalization, query=1)
    except ValueError as error:
        with pytest.raises(ValueError, match=r"act as a mask \(a causal mask written as a finite bias.*complete blocks"):
            raise error
        return
    assert moved == 0.0, f"query 1 moved by {moved} when only future tokens changed"


def test_finite_bias_mask_rules():
    from probattn.functional import attention

    length = 6
    q = torch.randn(1, 2, length, 4, dtype=torch.float64)
    causal = torch.ones(length, length, dtype=torch.bool).tril()
    # the case: refused with the reason
    with pytest.raises(ValueError, match=r"attn_mask, whose finite entries 104 or more below the largest of their row"):
        attention(q, q, q, normalization="doubly", attn_mask=torch.zeros(length, length).masked_fill(~causal, -1000.0))
    # relative to the row's largest entry: a causal pattern shifted by +500 still masks
    with pytest.raises(ValueError, match="act as a mask"):
        attention(q, q, q, normalization="sinkhorn",
                  attn_mask=torch.full((length, length), 500.0).masked_fill(~causal, -1000.0))
    # block-complete in effect (two packed documents written as -1000): accepted, and each document alone
    blocks = torch.zeros(length, length, dtype=torch.bool)
    blocks[:2, :2] = blocks[2:, 2:] = True
    packed = attention(q, q, q, normalization="doubly", attn_mask=torch.zeros(length, length).masked_fill(~blocks, -1e3))
    alone = attention(q[:, :, :2], q[:, :, :2], q[:, :, :2], normalization="doubly")
    torch.testing.assert_close(packed[:, :, :2], alone, atol=1e-12, rtol=0)
    # a bias within 16.6 of each row's largest entry is a bias: no warning, no error
    soft = -0.5 * (torch.arange(length)[:, None] - torch.arange(length)[None, :]).abs().double()  # ALiBi-like
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        attention(q, q, q, normalization="doubly", attn_mask=soft)
    # entries between 16.6 and 104 below, in a causal pattern: a bias (accepted) that warns with the reason
    with pytest.warns(UserWarning, match=r"they are a bias, not a mask: every query still enters the column"):
        attention(q, q, q, normalization="hybrid", attn_mask=torch.zeros(length, length).masked_fill(~causal, -50.0))
    # softmax: a finite -1000 causal bias is fine (row normalization only)
    attention(q, q, q, normalization="softmax", attn_mask=torch.zeros(length, length).masked_fill(~causal, -1000.0))


@settings(max_examples=60, deadline=None)
@given(st.sampled_from(["causal", "window", "blocks", "random"]), st.sampled_from(["doubly", "hybrid",
       "sinkhorn"]), st.floats(-9000.0, -110.0), st.integers(2, 7), st.integers(0, 2**16))
def test_finite_bias_masks_are_refused_or_hide_what_they_mask(kind, normalization, value, length, seed):
    """Whatever the pattern written as a finite bias (plus a soft bias): refused with the reason, or perturbing
    what it hides from a query (its masked keys and every query that sees one of them) leaves that query alone.

    (A pattern that is the same for every query is a per-key bias, which column normalization cancels: it hides
    nothing; ``test_per_key_bias_is_recognised``.)"""
    from probattn.functional import attention

    g = torch.Generator().manual_seed(seed)
    i, j = torch.arange(length)[:, None], torch.arange(length)[None, :]
    pattern = {"causal": j <= i, "window": (i - j).abs() <= 1,
               "blocks": (i < length // 2) == (j < length // 2),
               "random": (torch.rand(length, length, generator=g) > 0.4) | (i == j)}[kind]
    bias = (0.3 * torch.randn(length, length, generator=g, dtype=torch.float64)).masked_fill(~pattern, value)
    q, k, v = (torch.randn(1, 2, length, 4, generator=g, dtype=torch.float64) for _ in range(3))
    try:
        out = attention(q, k, v, normalization=normalization, attn_mask=bias)
    except ValueError as error:
        assert kind != "blocks"  # block-complete in effect: accepted
        with pytest.raises(ValueError, match="complete blocks"):
            raise error
        return
    query = int(torch.randint(0, length, (), generator=g))
    hidden_keys = ~pattern[query]
    hidden_queries = (pattern & hidden_keys).any(-1)
    hidden_queries[query] = False
    q2, k2, v2 = q.clone(), k.clone(), v.clone()
    q2[:, :, hidden_queries] += torch.randn(q2[:, :, hidden_queries].shape, generator=g, dtype=torch.float64)
    k2[:, :, hidden_keys] += torch.randn(k2[:, :, hidden_keys].shape, generator=g, dtype=torch.float64)
    v2[:, :, hidden_keys] += torch.randn(v2[:, :, hidden_keys].shape, generator=g, dtype=torch.float64)
    out2 = attention(q2, k2, v2, normalization=normalization, attn_mask=bias)
    assert (out2[:, :, query] - out[:, :, query]).abs().max().item() <= 1e-12
