"""probattn.masks: every convention in, one MaskSpec out."""

from __future__ import annotations

import pytest
import torch

from probattn.masks import build_mask_spec, from_hf_attention_mask, from_torch_mha, looks_causal

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


def test_looks_causal():
    causal = torch.ones(4, 4, dtype=torch.bool).tril()
    assert looks_causal(_spec(attn_mask=causal))
    assert looks_causal(_spec(is_causal=True))
    left_padded = causal & torch.tensor([[False, True, True, True]]).view(1, 1, 1, 4)
    assert looks_causal(_spec(attn_mask=left_padded, sizes=dict(batch=1)))
    window = causal & ~torch.ones(4, 4, dtype=torch.bool).tril(-2)  # causal local window
    assert looks_causal(_spec(attn_mask=window))
    assert not looks_causal(_spec(key_padding_mask=torch.tensor([[1, 0, 0, 0], [1, 1, 1, 1]])))
    assert not looks_causal(_spec(attn_mask=torch.ones(4, 4, dtype=torch.bool)))
    strictly_lower = torch.ones(4, 4, dtype=torch.bool).tril(-1)  # no self-attention: not a causal mask
    assert not looks_causal(_spec(attn_mask=strictly_lower))
    assert not looks_causal(_spec(attn_mask=torch.ones(2, 3, dtype=torch.bool).tril(), sizes=dict(q_len=2, k_len=3)))


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
