"""The key-block slab path (probattn.functional.streaming) against the float64 reference and the dense path.

Tolerances: float64 within 1e-10 of the reference, float32 within 1e-5 (outputs and gradients).
"""

from __future__ import annotations

import importlib
import inspect
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from probattn.functional import attention, streaming
from probattn.functional.streaming import chunked_attention, slab_shape
from probattn.masks import build_mask_spec
from probattn.reference import reference_attention

SCHEMES = ("doubly", "hybrid", "sinkhorn")
TOL = {torch.float64: dict(atol=1e-10, rtol=0.0), torch.float32: dict(atol=1e-5, rtol=1e-5)}


def _inputs(seed, *, b=2, h=3, lq=7, lk=9, d=5, dv=4, dtype=torch.float64, magnitude=1.0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(b, h, lq, d, generator=g, dtype=torch.float64) * magnitude
    k = torch.randn(b, h, lk, d, generator=g, dtype=torch.float64) * magnitude
    v = torch.randn(b, h, lk, dv, generator=g, dtype=torch.float64)
    return [x.to(dtype).requires_grad_() for x in (q, k, v)]


def _masks(seed, b, h, lq, lk):
    """Key padding, query padding (one query of batch 1 and two keys of batch 0 padded), a random bool pattern
    with a fully blocked row and column, and a per-head finite bias, as one float attn_mask."""
    g = torch.Generator().manual_seed(seed + 100)
    kpm = torch.ones(b, lk, dtype=torch.bool)
    kpm[0, -2:] = False
    qpm = torch.ones(b, lq, dtype=torch.bool)
    qpm[-1, 0] = False
    pattern = torch.rand(lq, lk, generator=g) > 0.3
    pattern[1, :] = False  # a query that may attend to nothing
    pattern[:, 2] = False  # a key nobody may attend to
    bias = torch.randn(1, h, lq, lk, generator=g, dtype=torch.float64)
    attn_mask = bias.masked_fill(~pattern, float("-inf"))
    return dict(key_padding_mask=kpm, query_padding_mask=qpm, attn_mask=attn_mask)


def _spec(q, k, **masks):
    b, h, lq, _ = q.shape
    if masks.get("attn_mask") is not None:
        masks["attn_mask"] = masks["attn_mask"].to(q.dtype)
    return build_mask_spec(batch=b, heads=h, q_len=lq, k_len=k.shape[2], device=q.device, **masks)


def _grads(out, inputs, seed=0):
    g = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).to(out.dtype)
    return torch.autograd.grad(out, inputs, g, allow_unused=True, materialize_grads=True)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("normalization", SCHEMES)
@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("block_size", [1, 4, 9, 64])  # single keys, a ragged last block, exact, one block
def test_matches_reference_outputs_and_gradients(dtype, normalization, masked, block_size):
    q, k, v = _inputs(block_size, dtype=dtype)
    spec = _spec(q, k, **(_masks(block_size, 2, 3, 7, 9) if masked else {}))
    alpha = torch.tensor([0.2, 0.5, 0.9], dtype=dtype)
    out = chunked_attention(q, k, v, spec, scale=0.7, normalization=normalization,
                            hybrid_alpha=alpha.view(3, 1, 1), sinkhorn_iters=3, block_size=block_size)
    ref, _ = reference_attention(q, k, v, normalization=normalization, allowed=spec.allowed, bias=spec.bias,
                                 scale=0.7, hybrid_alpha=alpha, sinkhorn_iters=3)
    assert out.dtype == dtype
    torch.testing.assert_close(out.double(), ref, **TOL[dtype])
    for mine, theirs in zip(_grads(out, (q, k, v)), _grads(ref, (q, k, v))):
        torch.testing.assert_close(mine.double(), theirs.double(), **TOL[dtype])


@pytest.mark.parametrize("normalization", SCHEMES)
def test_gradcheck_with_masks_bias_and_learned_alpha(normalization):
    q, k, v = _inputs(1, b=2, h=2, lq=5, lk=6, d=3, dv=2)
    masks = _masks(1, 2, 2, 5, 6)
    bias = masks.pop("attn_mask").clone().requires_grad_()  # a learnable additive bias with -inf entries
    alpha = torch.tensor([0.3, 0.8], dtype=torch.float64, requires_grad=True)

    def f(q, k, v, bias, alpha):
        spec = _spec(q, k, attn_mask=bias, **masks)
        return chunked_attention(q, k, v, spec, scale=0.9, normalization=normalization,
                                 hybrid_alpha=alpha.view(2, 1, 1), sinkhorn_iters=2, block_size=4)

    # gradcheck perturbs the -inf entries too (they stay -inf); only the finite ones carry a gradient
    assert torch.autograd.gradcheck(f, (q, k, v, bias, alpha))


@given(
    b=st.integers(1, 2), h=st.integers(1, 3), lq=st.integers(1, 8), lk=st.integers(1, 8),
    block=st.integers(1, 9), iters=st.integers(1, 4), seed=st.integers(0, 10_000),
    pad_q=st.booleans(), pad_k=st.booleans(), magnitude=st.sampled_from([0.1, 1.0, 10.0]),
)
@settings(max_examples=40, deadline=None)
def test_property_matches_reference(b, h, lq, lk, block, iters, seed, pad_q, pad_k, magnitude):
    q, k, v = _inputs(seed, b=b, h=h, lq=lq, lk=lk, d=3, dv=2, magnitude=magnitude)
    g = torch.Generator().manual_seed(seed)
    masks = {}
    if pad_q:
        masks["query_padding_mask"] = torch.rand(b, lq, generator=g) > 0.3
    if pad_k:
        masks["key_padding_mask"] = torch.rand(b, lk, generator=g) > 0.3
    spec = _spec(q, k, **masks)
    for normalization in SCHEMES:
        out = chunked_attention(q, k, v, spec, scale=1.0, normalization=normalization, hybrid_alpha=0.25,
                                sinkhorn_iters=iters, block_size=block)
        ref, _ = reference_attention(q, k, v, normalization=normalization, allowed=spec.allowed, scale=1.0,
                                     hybrid_alpha=0.25, sinkhorn_iters=iters)
        torch.testing.assert_close(out, ref, atol=1e-9, rtol=0.0)
        for mine, theirs in zip(_grads(out, (q, k, v)), _grads(ref, (q, k, v))):
            torch.testing.assert_close(mine, theirs, atol=1e-9, rtol=0.0)


def test_example1_doubly_output_exact():
    """doubly_normalized.md §8 example 1: S = ln[[8,4,1],[4,8,1],[8,4,2]], V = [[1,0],[0,1],[1,1]]."""
    scores = torch.tensor([[8.0, 4, 1], [4, 8, 1], [8, 4, 2]], dtype=torch.float64).log().view(1, 1, 3, 3)
    q = torch.zeros(1, 1, 3, 2, dtype=torch.float64)
    v = torch.tensor([[1.0, 0], [0, 1], [1, 1]], dtype=torch.float64).view(1, 1, 3, 2)
    spec = _spec(q, q, attn_mask=scores)  # q kᵀ = 0, so the scores are the additive mask
    out = chunked_attention(q, q, v, spec, scale=1.0, normalization="doubly", block_size=2)
    expected = torch.tensor([[13 / 18, 5 / 9], [9 / 19, 15 / 19], [18 / 23, 15 / 23]], dtype=torch.float64)
    torch.testing.assert_close(out[0, 0], expected, atol=1e-12, rtol=0)


def test_example2_padded_query_does_not_steal_column_mass():
    """§8 example 2: S = [[2,0,1],[0,2,1],[5,5,5]], query 2 padded; V = I gives the weights."""
    scores = torch.tensor([[2.0, 0, 1], [0, 2, 1], [5, 5, 5]], dtype=torch.float64).view(1, 1, 3, 3)
    q = torch.zeros(1, 1, 3, 2, dtype=torch.float64)
    eye = torch.eye(3, dtype=torch.float64).view(1, 1, 3, 3)
    spec = _spec(q, q, attn_mask=scores, query_padding_mask=torch.tensor([[True, True, False]]))
    out = chunked_attention(q, q, eye, spec, scale=1.0, normalization="doubly", block_size=1)
    e2 = math.exp(2)
    row0 = torch.tensor([e2 / (e2 + 1), 1 / (1 + e2), 0.5], dtype=torch.float64) / 1.5
    torch.testing.assert_close(out[0, 0, 0], row0, atol=1e-12, rtol=0)
    torch.testing.assert_close(out[0, 0, 2], torch.zeros(3, dtype=torch.float64), atol=0, rtol=0)


@pytest.mark.parametrize("normalization", SCHEMES)
def test_empty_rows_and_columns_are_zero_with_zero_gradient(normalization):
    q, k, v = _inputs(3, b=2, h=2, lq=4, lk=5, d=3, dv=2)
    kpm = torch.ones(2, 5, dtype=torch.bool)
    kpm[1] = False  # batch 1: no key at all -> every row empty
    qpm = torch.tensor([[True, False, True, True], [True] * 4])
    spec = _spec(q, k, key_padding_mask=kpm, query_padding_mask=qpm)
    out = chunked_attention(q, k, v, spec, scale=0.5, normalization=normalization, block_size=2)
    dq, dk, dv = torch.autograd.grad(out.sum(), (q, k, v))
    assert torch.isfinite(out).all() and all(torch.isfinite(g).all() for g in (dq, dk, dv))
    assert (out[1] == 0).all() and (out[0, :, 1] == 0).all()
    assert (dq[1] == 0).all() and (dq[0, :, 1] == 0).all()
    assert (dk[1] == 0).all() and (dv[1] == 0).all()


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("normalization", SCHEMES)
def test_extreme_scores_stay_finite_and_exact(dtype, normalization):
    """Scores up to ~1e3: queries that lose every key (Z ~ -1e3) must still get a proper softmax row."""
    q, k, v = _inputs(4, lq=6, lk=8, d=4, dtype=dtype, magnitude=12.0)
    spec = _spec(q, k)
    out = chunked_attention(q, k, v, spec, scale=1.0, normalization=normalization, block_size=3)
    ref, _ = reference_attention(q, k, v, normalization=normalization, scale=1.0)
    tol = TOL[dtype]
    if dtype == torch.float32 and normalization == "sinkhorn":
        # float32 resolves scores of ~1e3 to ~1e-4; the alternating potentials cancel them down to O(1) values,
        # so that resolution shows in the output (measured 2.4e-5; the dense path has the same limit)
        tol = dict(atol=2e-4, rtol=0.0)
    torch.testing.assert_close(out.double(), ref, **tol)
    assert all(torch.isfinite(g).all() for g in torch.autograd.grad(out.sum(), (q, k, v)))


@pytest.mark.parametrize("normalization", SCHEMES)
def test_query_that_loses_every_key_takes_the_exact_path(normalization, monkeypatch):
    """Query 0 scores 100 below every other query on every key: its row sum exp(rho_0) ~ e^-100 underflows in
    float32, so the single-exp sweep must fall back to the log-domain row pass."""
    calls = []
    exact = streaming._exact_row_sweep
    monkeypatch.setattr(streaming, "_exact_row_sweep", lambda *a: calls.append(1) or exact(*a))
    q = torch.zeros(1, 1, 4, 2)
    v = torch.randn(1, 1, 5, 3, generator=torch.Generator().manual_seed(0))
    scores = torch.full((4, 5), 100.0)
    scores[0] = 0.0
    scores[1:, 1] = 95.0  # a little structure in the other rows
    spec = _spec(q, torch.zeros(1, 1, 5, 2), attn_mask=scores)
    out = chunked_attention(q, torch.zeros(1, 1, 5, 2), v, spec, scale=1.0, normalization=normalization,
                            block_size=2)
    ref, _ = reference_attention(q, torch.zeros(1, 1, 5, 2), v, normalization=normalization, bias=scores,
                                 scale=1.0)
    torch.testing.assert_close(out.double(), ref, **TOL[torch.float32])
    assert calls, "the log-domain fallback did not run"


@pytest.mark.parametrize("normalization", SCHEMES)
def test_attention_impl_chunked_equals_dense_with_grouped_heads(normalization):
    q, k, v = _inputs(5, b=2, h=4, lq=6, lk=7)
    k, v = k[:, :2].detach().requires_grad_(), v[:, :2].detach().requires_grad_()  # 4 query heads, 2 kv heads
    kpm = torch.tensor([[True] * 7, [True] * 4 + [False] * 3])
    outs = [attention(q, k, v, normalization=normalization, key_padding_mask=kpm, query_padding_mask=kpm[:, :6],
                      impl=impl) for impl in ("dense", "chunked")]
    torch.testing.assert_close(outs[1], outs[0], atol=1e-10, rtol=0)
    for a, b in zip(_grads(outs[1], (q, k, v)), _grads(outs[0], (q, k, v))):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=0)


def test_low_precision_inputs_are_computed_in_float32():
    q, k, v = _inputs(6, dtype=torch.float64)
    spec = _spec(q, k)
    out = chunked_attention(q.bfloat16(), k.bfloat16(), v.bfloat16(), spec, scale=0.5, normalization="doubly")
    ref = chunked_attention(q.bfloat16().float(), k.bfloat16().float(), v.bfloat16().float(), spec, scale=0.5,
                            normalization="doubly")
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out, ref.bfloat16(), atol=0, rtol=0)


def test_slab_shape_bounds(monkeypatch):
    monkeypatch.setattr(streaming, "SLAB_ELEMENTS", 2**18)
    monkeypatch.setattr(streaming, "KEY_BLOCK", 128)
    assert slab_shape(1, 1, 10, 7) == (7, 1)  # never more keys than there are, never more rows
    assert slab_shape(16, 12, 128, 128) == (128, 16)  # short sequences: many rows per slab
    assert slab_shape(1, 8, 4096, 4096) == (64, 1)  # long queries shrink the block
    assert slab_shape(2, 8, 2**16, 2**16) == (streaming.MIN_BLOCK, 1)  # never below MIN_BLOCK


@pytest.mark.parametrize("rows_per_group", [1, 2, 3, 4, 7])
def test_row_groups_cover_every_row_once(rows_per_group):
    seen = torch.zeros(2, 3, dtype=torch.long)
    for rows in streaming._row_groups(2, 3, rows_per_group):
        seen[rows] += 1
    assert (seen == 1).all()


@pytest.mark.parametrize("normalization", SCHEMES)
def test_row_groups_with_broadcast_masks_match_reference(normalization, monkeypatch):
    """One (batch, head) row per slab: masks and biases that broadcast over B or H are sliced per group."""
    monkeypatch.setattr(streaming, "SLAB_ELEMENTS", 7 * 4)  # (Lq=7) x (block=4): one row per group
    q, k, v = _inputs(11)
    masks = _masks(11, 2, 3, 7, 9)  # bias (1, H, Lq, Lk); padding (B, 1, 1, Lk) and (B, 1, Lq, 1)
    spec = _spec(q, k, **masks)
    alpha = torch.tensor([0.2, 0.5, 0.9], dtype=torch.float64, requires_grad=True)
    out = chunked_attention(q, k, v, spec, scale=0.7, normalization=normalization, hybrid_alpha=alpha.view(3, 1, 1),
                            sinkhorn_iters=2, block_size=4)
    ref, _ = reference_attention(q, k, v, normalization=normalization, allowed=spec.allowed, bias=spec.bias,
                                 scale=0.7, hybrid_alpha=alpha, sinkhorn_iters=2)
    torch.testing.assert_close(out, ref, **TOL[torch.float64])
    inputs = (q, k, v, alpha) if normalization == "hybrid" else (q, k, v)
    for mine, theirs in zip(_grads(out, inputs), _grads(ref, inputs)):
        torch.testing.assert_close(mine, theirs, **TOL[torch.float64])


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(normalization="softmax"), "normalization"),
        (dict(block_size=0), "block_size"),
        (dict(sinkhorn_iters=0, normalization="sinkhorn"), "sinkhorn_iters"),
        (dict(hybrid_alpha=torch.ones(5), normalization="hybrid"), "hybrid_alpha"),
    ],
)
def test_bad_arguments_name_the_argument(kwargs, match):
    q, k, v = _inputs(7)
    options = dict(scale=1.0, normalization="doubly") | kwargs
    with pytest.raises(ValueError, match=match):
        chunked_attention(q, k, v, _spec(q, k), **options)


def test_mismatched_spec_and_dropout_are_refused():
    q, k, v = _inputs(8)
    with pytest.raises(ValueError, match="spec"):
        chunked_attention(q, k, v, _spec(q, q), scale=1.0, normalization="doubly")
    with pytest.raises(ValueError, match="impl='dense'"):
        attention(q, k, v, normalization="doubly", dropout_p=0.1, impl="chunked")


# ---------------------------------------------------------------------------------------------------------
# memory: nothing of size Lq * Lk is ever created or saved


class _LargestTensor(TorchDispatchMode):
    """Records the largest number of elements of any tensor an aten op returns (forward and backward)."""

    def __init__(self) -> None:
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel())
        return out


def _largest_and_saved(impl: str, length: int, block_size: int | None = 32) -> tuple[int, int]:
    """(largest tensor, total saved-for-backward elements) of one doubly forward + backward, B=1, H=2, D=8."""
    q, k, v = (torch.randn(1, 2, length, 8, requires_grad=True) for _ in range(3))
    kpm = torch.ones(1, length, dtype=torch.bool)
    kpm[0, -1] = False
    saved = []
    with _LargestTensor() as mode, torch.autograd.graph.saved_tensors_hooks(
        lambda t: saved.append(t.numel()) or t, lambda t: t
    ):
        if impl == "chunked":
            spec = _spec(q, k, key_padding_mask=kpm)
            out = chunked_attention(q, k, v, spec, scale=0.3, normalization="doubly", block_size=block_size)
        else:
            out = attention(q, k, v, normalization="doubly", key_padding_mask=kpm, impl=impl)
        out.sum().backward()
    return mode.largest, sum(saved)


def test_chunked_memory_grows_linearly_in_length():
    small, large = _largest_and_saved("chunked", 128), _largest_and_saved("chunked", 512)
    assert large[0] <= 4 * small[0]  # slabs (2, L, 32): linear; quadratic growth would be a factor 16
    assert large[1] <= 4 * small[1] + 64  # saved: inputs, output and O(L) statistics
    dense_small, dense_large = _largest_and_saved("dense", 128), _largest_and_saved("dense", 512)
    assert dense_large[0] >= 15 * dense_small[0]  # the measurement does see quadratic growth


def test_default_slab_shape_caps_the_slab(monkeypatch):
    monkeypatch.setattr(streaming, "SLAB_ELEMENTS", 2**14)
    monkeypatch.setattr(streaming, "MIN_BLOCK", 32)
    largest, _ = _largest_and_saved("chunked", 512, block_size=None)
    assert largest <= 2**14  # (rows, Lq, block) = (1, 512, 32): one head per slab


# ---------------------------------------------------------------------------------------------------------
# impl="auto": which path is taken (not how fast it is)


@pytest.fixture
def chunked_calls(monkeypatch):
    """Records every call of the slab path made through ``attention()``."""
    module = importlib.import_module("probattn.functional.attention")
    calls = []
    monkeypatch.setattr(module, "chunked_attention", lambda *a, **kw: calls.append(1) or chunked_attention(*a, **kw))
    return calls


def test_auto_rule_is_the_measured_crossover_table():
    """A pure function of (B, H, Lq, Lk, head dim, threads): chunked from the table's score count on."""
    for (threads, head_dim), min_scores in streaming.AUTO_MIN_SCORES.items():
        assert streaming.auto_min_scores(head_dim, threads) == min_scores
        assert streaming.prefer_chunked(1, 1, min_scores // 64, 64, head_dim=head_dim, threads=threads)
        assert not streaming.prefer_chunked(1, 1, min_scores // 64 - 1, 64, head_dim=head_dim, threads=threads)
    table = streaming.AUTO_MIN_SCORES
    # between and beyond the measured points: the next measured head dim up, the nearest thread count below
    assert streaming.auto_min_scores(48, 1) == table[(1, 64)]
    assert streaming.auto_min_scores(16, 2) == table[(2, 32)]
    assert streaming.auto_min_scores(256, 1) == table[(1, 128)]
    assert streaming.auto_min_scores(64, 8) == table[(2, 64)]
    # the benchmark shapes: (1, 8, 256, 64) is dense (2**19 scores), (1, 8, 1024, 64) chunked, at 1 and 2 threads
    for threads in (1, 2):
        assert not streaming.prefer_chunked(1, 8, 256, 256, head_dim=64, threads=threads)
        assert streaming.prefer_chunked(1, 8, 1024, 1024, head_dim=64, threads=threads)


def test_auto_table_is_the_crossover_derived_from_the_stored_benchmark_run():
    """The table in the code is what benchmarks/impl_crossover.py derives from the run it cites (not retyped)."""
    import importlib.util
    import json
    from pathlib import Path

    root = Path(__file__).resolve().parents[2] / "benchmarks"
    spec = importlib.util.spec_from_file_location("impl_crossover", root / "impl_crossover.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    cited = inspect.getsource(streaming).split("--from-json ", 1)[1].split("`", 1)[0]
    stored = json.loads((root.parent / cited).read_text())
    assert bench.crossovers(stored["rows"]) == streaming.AUTO_MIN_SCORES
    assert min(r["rounds"] for r in stored["rows"]) >= 21


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("head_dim", [32, 128])
def test_attention_auto_follows_the_rule(chunked_calls, monkeypatch, threads, head_dim):
    """``attention(impl="auto")`` asks the rule with the call's head dim and torch's thread count."""
    monkeypatch.setattr(torch, "get_num_threads", lambda: threads)
    min_scores = streaming.auto_min_scores(head_dim, threads)
    for q_len, expected in ((min_scores // 64 - 1, False), (min_scores // 64, True)):
        chunked_calls.clear()
        q = torch.randn(1, 1, q_len, head_dim)
        k = v = torch.randn(1, 1, 64, head_dim)
        attention(q, k, v, normalization="doubly")
        assert bool(chunked_calls) == expected


@pytest.mark.parametrize(
    ("length", "options", "expected"),
    [
        (16, {}, False),
        (1024, {}, True),
        (1024, dict(impl="dense"), False),
        (16, dict(impl="chunked"), True),
        (1024, dict(return_weights=True), False),
        (1024, dict(dropout_p=0.1), False),
    ],
)
def test_auto_picks_chunked_only_when_allowed_and_preferred(chunked_calls, length, options, expected):
    q, k, v = (torch.randn(1, 1, length, 4) for _ in range(3))
    out = attention(q, k, v, normalization="doubly", **options)
    assert bool(chunked_calls) == expected
    if not options:  # the same answer either way
        dense = attention(q, k, v, normalization="doubly", impl="dense")
        torch.testing.assert_close(out, dense, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("need_weights", [False, True])
def test_multihead_attention_without_weights_uses_the_slab_path(chunked_calls, need_weights):
    from probattn.nn import MultiheadAttention

    mha = MultiheadAttention(8, 2, batch_first=True, normalization="doubly")
    x = torch.randn(1, 725, 8)  # 2 heads x 725 x 725 >= 2**20 scores
    mha(x, x, x, need_weights=need_weights)
    assert bool(chunked_calls) == (not need_weights)


# ---------------------------------------------------------------------------------------------------------
# Sinkhorn's rescaled sweeps: one exponential per slab and pass (every stage matrix is A^k rescaled)


@pytest.fixture
def sinkhorn_paths(monkeypatch):
    """Counts which Sinkhorn sweeps ran: rescaled backward vs exact, centred forward vs column-max forward."""
    counts = {"rescaled": 0, "exact": 0, "centred": 0, "colmax": 0}
    factors, centred = streaming._rescaling_factors, streaming._centred_column_sweep

    def spy_factors(*a):
        out = factors(*a)
        counts["rescaled" if out is not None else "exact"] += 1
        return out

    def spy_centred(*a):
        out = centred(*a)
        counts["centred" if out is not None else "colmax"] += 1
        return out

    monkeypatch.setattr(streaming, "_rescaling_factors", spy_factors)
    monkeypatch.setattr(streaming, "_centred_column_sweep", spy_centred)
    return counts


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("iters", [2, 3, 5])
@pytest.mark.parametrize(("lq", "lk", "block"), [(7, 9, 4), (13, 11, 3), (1, 5, 2), (6, 1, 1), (1, 1, 1)])
def test_sinkhorn_rescaled_path_matches_reference_with_padding_on_both_axes(dtype, iters, lq, lk, block,
                                                                            sinkhorn_paths):
    q, k, v = _inputs(lq * 31 + lk, b=2, h=2, lq=lq, lk=lk, d=3, dv=2, dtype=dtype)
    masks = {}
    if lk > 1:  # batch 0 loses its last key
        masks["key_padding_mask"] = torch.ones(2, lk, dtype=torch.bool)
        masks["key_padding_mask"][0, -1] = False
    if lq > 1:  # batch 1 loses its first query
        masks["query_padding_mask"] = torch.ones(2, lq, dtype=torch.bool)
        masks["query_padding_mask"][1, 0] = False
    bias = torch.randn(1, 2, lq, lk, generator=torch.Generator().manual_seed(lq), dtype=dtype)
    spec = _spec(q, k, attn_mask=bias, **masks)
    out = chunked_attention(q, k, v, spec, scale=0.8, normalization="sinkhorn", sinkhorn_iters=iters,
                            block_size=block)
    ref, _ = reference_attention(q, k, v, normalization="sinkhorn", allowed=spec.allowed, bias=spec.bias,
                                 scale=0.8, sinkhorn_iters=iters)
    torch.testing.assert_close(out.double(), ref, **TOL[dtype])
    for mine, theirs in zip(_grads(out, (q, k, v)), _grads(ref, (q, k, v))):
        torch.testing.assert_close(mine.double(), theirs.double(), **TOL[dtype])
    assert sinkhorn_paths["rescaled"] == 1 and sinkhorn_paths["exact"] == 0
    assert sinkhorn_paths["centred"] == iters - 1 and sinkhorn_paths["colmax"] == 0


@pytest.mark.parametrize("iters", [2, 3, 4])
def test_sinkhorn_rescaled_gradcheck_with_padding_and_learned_bias(iters, sinkhorn_paths):
    q, k, v = _inputs(11, b=2, h=2, lq=5, lk=6, d=3, dv=2)
    masks = _masks(11, 2, 2, 5, 6)
    bias = masks.pop("attn_mask").clone().requires_grad_()

    def f(q, k, v, bias):
        spec = _spec(q, k, attn_mask=bias, **masks)
        return chunked_attention(q, k, v, spec, scale=0.9, normalization="sinkhorn", sinkhorn_iters=iters,
                                 block_size=4)

    assert torch.autograd.gradcheck(f, (q, k, v, bias))
    assert sinkhorn_paths["rescaled"] > 0 and sinkhorn_paths["exact"] == 0


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_sinkhorn_extreme_scores_take_the_exact_backward(dtype, sinkhorn_paths):
    """A query that loses every key by ``gap`` nats: rho^1 ~ -gap, beyond the rescaling limit (17.7 in float32,
    142 in float64), so the backward must take the exact log-domain sweeps, and still match the reference."""
    gap = 100.0 if dtype == torch.float32 else 300.0
    q = torch.zeros(1, 1, 4, 2, dtype=dtype, requires_grad=True)
    k = torch.zeros(1, 1, 5, 2, dtype=dtype, requires_grad=True)
    v = torch.randn(1, 1, 5, 3, generator=torch.Generator().manual_seed(0), dtype=dtype).requires_grad_()
    scores = torch.full((4, 5), gap, dtype=dtype)
    scores[0] = 0.0
    scores[1:, 1] = gap - 5
    scores = scores.requires_grad_()
    spec = _spec(q, k, attn_mask=scores)
    out = chunked_attention(q, k, v, spec, scale=1.0, normalization="sinkhorn", sinkhorn_iters=3, block_size=2)
    ref, _ = reference_attention(q, k, v, normalization="sinkhorn", bias=scores, scale=1.0, sinkhorn_iters=3)
    torch.testing.assert_close(out.double(), ref, **TOL[dtype])
    for mine, theirs in zip(_grads(out, (v, scores)), _grads(ref, (v, scores))):
        torch.testing.assert_close(mine.double(), theirs.double(), **TOL[dtype])
    assert sinkhorn_paths["exact"] == 1 and sinkhorn_paths["rescaled"] == 0


def test_sinkhorn_forward_falls_back_to_the_column_max_sweep(monkeypatch, sinkhorn_paths):
    """The centred sweep's column sums are >= 1 / Lk in exact arithmetic; if one ever came out below
    sqrt(tiny), the iteration is redone with a column max (forced here by raising the threshold)."""
    real_sqrt = math.sqrt
    monkeypatch.setattr(streaming.math, "sqrt", lambda x: 2.0 if x < 1e-200 else real_sqrt(x))
    q, k, v = _inputs(12, lq=6, lk=7)
    spec = _spec(q, k, **_masks(12, 2, 3, 6, 7))
    out = chunked_attention(q, k, v, spec, scale=0.7, normalization="sinkhorn", sinkhorn_iters=3, block_size=3)
    ref, _ = reference_attention(q, k, v, normalization="sinkhorn", allowed=spec.allowed, bias=spec.bias,
                                 scale=0.7, sinkhorn_iters=3)
    torch.testing.assert_close(out, ref, **TOL[torch.float64])
    assert sinkhorn_paths["colmax"] == 2 and sinkhorn_paths["centred"] == 0


class _SlabOps(TorchDispatchMode):
    """Counts exponentials over whole slabs, and matrix products over a slab with a single output column."""

    def __init__(self, slab_numel: int) -> None:
        super().__init__()
        self.slab_numel, self.exps, self.single_column = slab_numel, 0, 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        name = func.overloadpacket.__name__
        if name in ("exp", "exp_") and out.numel() == self.slab_numel:
            self.exps += 1
        if name in ("bmm", "mm", "baddbmm", "baddbmm_") and out.shape[-1] == 1 and any(
                isinstance(a, torch.Tensor) and a.numel() == self.slab_numel for a in args):
            self.single_column += 1
        return out


def test_sinkhorn_needs_one_exponential_per_slab_and_pass():
    """Sinkhorn-3 over 4 slabs: 3 forward passes and 3 backward passes, one exponential per slab each (the
    exact sweeps take 3 + 10), and no slab product with a single output column (several times slower)."""
    q, k, v = _inputs(13, b=1, h=2, lq=16, lk=32, d=4, dv=4, dtype=torch.float32)
    spec = _spec(q, k)
    with _SlabOps(slab_numel=2 * 16 * 8) as ops:  # rows (1, 2) x Lq 16 x block 8: 4 slabs
        out = chunked_attention(q, k, v, spec, scale=0.5, normalization="sinkhorn", sinkhorn_iters=3, block_size=8)
        out.backward(torch.ones_like(out))
    assert ops.exps == (3 + 3) * 4
    assert ops.single_column == 0


# ---------------------------------------------------------------------------------------------------------
# several torch threads: (batch, head) row groups split across threads, one torch thread each


@pytest.fixture
def two_threads(monkeypatch):
    """Two torch threads, and the split taken for any problem size; records the OS threads that ran groups."""
    import threading

    before = torch.get_num_threads()
    torch.set_num_threads(2)
    monkeypatch.setattr(streaming, "PARALLEL_MIN_SCORES", 0)
    idents = set()
    forward_rows, backward_rows = streaming._forward_rows, streaming._backward_rows
    monkeypatch.setattr(streaming, "_forward_rows",
                        lambda *a: idents.add(("fwd", threading.get_ident())) or forward_rows(*a))
    monkeypatch.setattr(streaming, "_backward_rows",
                        lambda *a: idents.add(("bwd", threading.get_ident())) or backward_rows(*a))
    yield idents
    torch.set_num_threads(before)


@pytest.mark.parametrize("normalization", SCHEMES)
def test_threads_split_row_groups_and_match_the_reference(two_threads, normalization):
    q, k, v = _inputs(21, b=2, h=3, lq=7, lk=9)
    masks = _masks(21, 2, 3, 7, 9)
    masks.pop("attn_mask")  # padding on both axes, no bias to learn (a learned bias is summed on one thread)
    spec = _spec(q, k, **masks)
    out = chunked_attention(q, k, v, spec, scale=0.7, normalization=normalization, sinkhorn_iters=3, block_size=4)
    ref, _ = reference_attention(q, k, v, normalization=normalization, allowed=spec.allowed, scale=0.7,
                                 sinkhorn_iters=3)
    torch.testing.assert_close(out, ref, **TOL[torch.float64])
    for mine, theirs in zip(_grads(out, (q, k, v)), _grads(ref, (q, k, v))):
        torch.testing.assert_close(mine, theirs, **TOL[torch.float64])
    assert len({i for stage, i in two_threads if stage == "fwd"}) == 2  # forward groups ran on two OS threads
    assert len({i for stage, i in two_threads if stage == "bwd"}) == 2
    assert torch.get_num_threads() == 2  # restored after the split


def test_threads_keep_inference_mode_and_sum_a_shared_learned_bias(two_threads):
    q, k, v = _inputs(22, b=2, h=2, lq=5, lk=6)
    with torch.inference_mode():
        spec = _spec(q, k)
        out = chunked_attention(q, k, v, spec, scale=0.5, normalization="doubly", block_size=2)
    assert out.is_inference()
    for bias_shape in ((1, 2, 5, 6), (1, 1, 5, 6), (2, 2, 5, 6)):  # shared by batch / by everything / per row
        bias = torch.randn(bias_shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
        bias.requires_grad_()
        two_threads.clear()
        out = chunked_attention(q, k, v, _spec(q, k, attn_mask=bias), scale=0.5, normalization="sinkhorn",
                                block_size=2)
        mine = torch.autograd.grad(out, (q, bias), _grads_seed(out))
        ref, _ = reference_attention(q, k, v, normalization="sinkhorn", bias=bias, scale=0.5)
        theirs = torch.autograd.grad(ref, (q, bias), _grads_seed(ref))
        for a, b in zip(mine, theirs):
            torch.testing.assert_close(a, b, **TOL[torch.float64])
        assert len({i for stage, i in two_threads if stage == "bwd"}) == 2  # the backward was split too


def _grads_seed(out):
    return torch.randn(out.shape, generator=torch.Generator().manual_seed(3), dtype=out.dtype)


@pytest.mark.parametrize("threads", [1, 2])
def test_cpu_autocast_keeps_float32_statistics(two_threads, threads):
    """Under CPU autocast (bfloat16) the slab path computes in float32 as without it, split across threads or
    not (it used to fail: a bfloat16 product accumulated in place into a float32 buffer)."""
    torch.set_num_threads(threads)
    q, k, v = _inputs(23, b=2, h=2, lq=6, lk=7, dtype=torch.float32)
    spec = _spec(q, k)
    plain = chunked_attention(q, k, v, spec, scale=0.5, normalization="sinkhorn", block_size=3)
    two_threads.clear()  # a new call starts a new worker thread (its id may or may not be reused)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = chunked_attention(q, k, v, spec, scale=0.5, normalization="sinkhorn", block_size=3)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, plain, atol=0, rtol=0)
    assert len({i for stage, i in two_threads if stage == "fwd"}) == threads
