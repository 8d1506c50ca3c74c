"""probattn.nn.MultiheadAttention: a drop-in for torch.nn.MultiheadAttention with other normalizations."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from probattn.functional import attention
from probattn.nn import MultiheadAttention, replace_attention


def _pair(**kwargs):
    torch.manual_seed(0)
    theirs = nn.MultiheadAttention(8, 2, **kwargs).eval()
    ours = MultiheadAttention(8, 2, **kwargs).eval()
    ours.load_state_dict(theirs.state_dict())  # strict: same parameter names and shapes
    return theirs, ours


@pytest.mark.parametrize("batch_first", [True, False])
@pytest.mark.parametrize(
    "options", [dict(), dict(add_bias_kv=True), dict(add_zero_attn=True), dict(kdim=6, vdim=5), dict(bias=False)]
)
@pytest.mark.parametrize("average", [True, False])
def test_softmax_matches_torch_with_masks(batch_first, options, average):
    theirs, ours = _pair(batch_first=batch_first, **options)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(3, 5, 8, generator=g)
    key = torch.randn(3, 4, options.get("kdim", 8), generator=g)
    value = torch.randn(3, 4, options.get("vdim", 8), generator=g)
    if not batch_first:
        x, key, value = x.transpose(0, 1), key.transpose(0, 1), value.transpose(0, 1)
    padding = torch.tensor([[False] * 4, [False, False, True, True], [False, True, True, True]])  # True = pad
    bool_mask = torch.rand(5, 4, generator=g) > 0.6
    bool_mask[:, 0] = False  # every query keeps a key
    float_mask = torch.randn(5, 4, generator=g)
    for attn_mask in (None, bool_mask, float_mask):
        a = theirs(x, key, value, key_padding_mask=padding, attn_mask=attn_mask, average_attn_weights=average)
        b = ours(x, key, value, key_padding_mask=padding, attn_mask=attn_mask, average_attn_weights=average)
        torch.testing.assert_close(b[0], a[0], atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(b[1], a[1], atol=1e-6, rtol=1e-5)


def test_per_head_3d_mask_unbatched_input_and_no_weights():
    theirs, ours = _pair(batch_first=True)
    x = torch.randn(2, 5, 8)
    mask3d = torch.rand(2 * 2, 5, 5) > 0.5
    mask3d[..., 0] = False
    torch.testing.assert_close(ours(x, x, x, attn_mask=mask3d)[0], theirs(x, x, x, attn_mask=mask3d)[0])
    single = x[0]
    out, w = ours(single, single, single)
    torch.testing.assert_close(out, theirs(single, single, single)[0])
    assert w.shape == (5, 5)
    out, w = ours(x, x, x, need_weights=False)
    assert w is None and out.shape == (2, 5, 8)


@pytest.mark.parametrize("normalization", ["doubly", "hybrid", "sinkhorn"])
def test_other_normalizations_use_the_functional_core(normalization):
    _, ours = _pair(batch_first=True)
    ours.configure(normalization=normalization)
    x = torch.randn(2, 6, 8)
    pad = torch.tensor([[False] * 6, [False] * 4 + [True] * 2])
    out, w = ours(x, x, x, key_padding_mask=pad, average_attn_weights=False)
    q, k, v = ours._project(x, x, x)
    q, k, v = (t.view(2, 6, 2, 4).transpose(1, 2) for t in (q, k, v))
    valid = ~pad
    expected, expected_w = attention(q, k, v, normalization=normalization, key_padding_mask=valid,
                                     query_padding_mask=valid, return_weights=True)
    torch.testing.assert_close(w, expected_w)
    torch.testing.assert_close(out, ours.out_proj(expected.transpose(1, 2).reshape(2, 6, 8)))
    # a padded sequence gives the same valid outputs as the sequence alone
    alone, _ = ours(x[1:, :4], x[1:, :4], x[1:, :4])
    torch.testing.assert_close(out[1:, :4], alone, atol=1e-6, rtol=1e-5)


def test_learned_hybrid_alpha_is_a_per_head_parameter():
    m = MultiheadAttention(8, 2, batch_first=True, normalization="hybrid", hybrid_alpha="learned")
    assert m.hybrid_logit.shape == (2,)
    torch.testing.assert_close(m.current_hybrid_alpha(), torch.full((2,), 0.5))
    x = torch.randn(2, 5, 8)
    m(x, x, x)[0].sum().backward()
    assert m.hybrid_logit.grad is not None and m.hybrid_logit.grad.abs().sum() > 0
    assert "hybrid_logit" in m.state_dict()


def test_causal_rules():
    _, ours = _pair(batch_first=True)
    x = torch.randn(2, 5, 8)
    causal = nn.Transformer.generate_square_subsequent_mask(5)
    ours(x, x, x, attn_mask=causal, is_causal=True)  # softmax: fine
    ours.configure(normalization="doubly")
    with pytest.raises(ValueError, match="future"):
        ours(x, x, x, attn_mask=causal, is_causal=True)
    with pytest.raises(ValueError, match="future"):
        ours(x, x, x, attn_mask=causal)


def test_bad_options_are_named():
    with pytest.raises(ValueError, match="normalization"):
        MultiheadAttention(8, 2, normalization="dnas")
    with pytest.raises(ValueError, match="sinkhorn_iters"):
        MultiheadAttention(8, 2, sinkhorn_iters=0)
    with pytest.raises(ValueError, match="hybrid_alpha"):
        MultiheadAttention(8, 2, hybrid_alpha=2.0)
    with pytest.raises(TypeError, match="unknown options"):
        replace_attention(nn.Sequential(), alpha=0.1)


def _encoder():
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(16, 4, 32, dropout=0.0, batch_first=True)
    return nn.TransformerEncoder(layer, 2, enable_nested_tensor=True)


def test_inside_transformer_encoder_training_and_eval_no_grad():
    """The eval + no_grad fused fast path must not bypass probattn's attention (ecosystem notes §0.6)."""
    stock = _encoder().eval()
    softmax = replace_attention(copy.deepcopy(stock), normalization="softmax").eval()
    doubly = replace_attention(copy.deepcopy(stock), normalization="doubly").eval()
    assert all(isinstance(layer.self_attn, MultiheadAttention) for layer in doubly.layers)
    x = torch.randn(2, 5, 16)
    pad = torch.tensor([[False] * 5, [False, False, False, True, True]])
    calls = []
    doubly.layers[0].self_attn.forward = _counting(doubly.layers[0].self_attn.forward, calls)
    with torch.no_grad():
        expected = stock(x, src_key_padding_mask=pad)  # PyTorch's fused path (zeros at padding)
        got_softmax = softmax(x, src_key_padding_mask=pad)
        got_doubly = doubly(x, src_key_padding_mask=pad)
    assert calls, "the fused fast path bypassed probattn's attention"
    valid = ~pad
    torch.testing.assert_close(got_softmax[valid], expected[valid], atol=1e-5, rtol=1e-5)
    assert (got_doubly[valid] - expected[valid]).abs().max() > 1e-3
    # training mode: gradients flow through the replacement
    doubly.train()
    doubly(x, src_key_padding_mask=pad).sum().backward()
    assert doubly.layers[0].self_attn.in_proj_weight.grad is not None


@pytest.mark.parametrize("normalization", ["doubly", "sinkhorn"])
def test_padded_batch_in_transformer_encoder_equals_sequences_one_by_one(normalization):
    """nn.TransformerEncoderLayer hands the attention a float (0 / -inf) padding mask: padded queries must
    still stay out of the column normalization, so padding never changes the real tokens' outputs."""
    torch.manual_seed(0)
    model = replace_attention(_encoder(), normalization=normalization).eval()
    lengths = [5, 3]
    x = torch.randn(2, 5, 16)
    pad = torch.arange(5)[None, :] >= torch.tensor(lengths)[:, None]  # True = padding (torch's convention)
    with torch.no_grad():
        batched = model(x, src_key_padding_mask=pad)
        for i, n in enumerate(lengths):
            alone = model(x[i : i + 1, :n])
            torch.testing.assert_close(batched[i, :n], alone[0], atol=1e-5, rtol=1e-5)


def _counting(fn, calls):
    def wrapped(*args, **kwargs):
        calls.append(1)
        return fn(*args, **kwargs)

    return wrapped


def test_a_layer_built_by_hand_keeps_probattn_in_eval():
    layer = nn.TransformerEncoderLayer(16, 4, 32, dropout=0.0, batch_first=True)
    layer.self_attn = MultiheadAttention(16, 4, batch_first=True, normalization="doubly")
    layer.eval()
    x = torch.randn(2, 5, 16)
    with torch.no_grad():
        fast = layer(x)
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        with torch.no_grad():
            slow = layer(x)
    finally:
        torch.backends.mha.set_fastpath_enabled(True)
    torch.testing.assert_close(fast, slow)


def test_nested_tensors_get_a_clear_error():
    m = MultiheadAttention(8, 2, batch_first=True)
    nested = torch.nested.nested_tensor([torch.randn(3, 8), torch.randn(2, 8)])
    with pytest.raises(ValueError, match="enable_nested_tensor=False"):
        m(nested, nested, nested)


@pytest.mark.parametrize("extra", [dict(add_zero_attn=True), dict(add_bias_kv=True)])
@pytest.mark.parametrize("normalization", ["doubly", "hybrid", "sinkhorn"])
def test_extra_keys_do_not_bypass_the_causal_guard(extra, normalization):
    """add_zero_attn / add_bias_kv make the problem (L, L + 1); a causal mask must still be refused."""
    m = MultiheadAttention(8, 2, batch_first=True, normalization=normalization, **extra)
    x = torch.randn(2, 4, 8)
    causal = nn.Transformer.generate_square_subsequent_mask(4)  # float, -inf above the diagonal
    with pytest.raises(ValueError, match=r"attn_mask.*future"):
        m(x, x, x, attn_mask=causal)
    with pytest.raises(ValueError, match=r"attn_mask.*future"):
        m(x, x, x, attn_mask=causal.isinf(), key_padding_mask=torch.tensor([[False] * 4, [False] * 3 + [True]]))
    m(x, x, x, key_padding_mask=torch.tensor([[False] * 4, [False] * 3 + [True]]))  # padding alone is fine


def test_wrong_input_dtype_is_named():
    m = MultiheadAttention(8, 2, batch_first=True)
    x = torch.randn(2, 4, 8)
    with pytest.raises(TypeError, match=r"query has dtype torch.float64 .* parameters are torch.float32.*\.to\("):
        m(x.double(), x.double(), x.double())
    with pytest.raises(TypeError, match=r"value has dtype torch.float16"):
        m(x, x, x.half())
    with torch.autocast("cpu", dtype=torch.bfloat16):  # autocast converts the inputs itself
        out, _ = m(x.bfloat16(), x.bfloat16(), x.bfloat16())
    assert torch.isfinite(out).all()


def test_a_diverged_learned_hybrid_weight_is_reported_as_nan():
    m = MultiheadAttention(8, 2, batch_first=True, normalization="hybrid", hybrid_alpha="learned")
    with torch.no_grad():
        m.hybrid_logit[1] = float("nan")
    x = torch.randn(2, 4, 8)
    with pytest.raises(ValueError, match=r"hybrid_logit .* NaN in heads \[1\].*diverged"):
        m(x, x, x)


@pytest.mark.parametrize("normalization", ["softmax", "doubly", "hybrid", "sinkhorn"])
@pytest.mark.parametrize("hybrid_alpha", [0.3, "learned"])
def test_state_dict_round_trip_into_a_differently_initialised_module(normalization, hybrid_alpha):
    """Load into a module built from another seed: outputs agree only if every parameter was carried."""
    torch.manual_seed(0)
    source = MultiheadAttention(8, 2, batch_first=True, add_bias_kv=True, normalization=normalization,
                                hybrid_alpha=hybrid_alpha).eval()
    if source.hybrid_logit is not None:
        with torch.no_grad():
            source.hybrid_logit.copy_(torch.tensor([1.5, -2.0]))
    torch.manual_seed(1)
    target = MultiheadAttention(8, 2, batch_first=True, add_bias_kv=True, normalization=normalization,
                                hybrid_alpha=hybrid_alpha).eval()
    x = torch.randn(2, 5, 8)
    assert not torch.allclose(target(x, x, x)[0], source(x, x, x)[0])  # the check below can fail
    target.load_state_dict(source.state_dict())
    torch.testing.assert_close(target(x, x, x)[0], source(x, x, x)[0], rtol=0, atol=0)
