"""Seeded fuzz of the fused path (``impl="sdpa"``, PyTorch's CPU flash kernel) against the float64 reference.

Each case draws sizes (one-token and odd lengths, grouped-query heads), a dtype (float64, float32, bfloat16,
float16), a normalization (doubly, hybrid, sinkhorn 1-4), padding on both axes (sometimes a whole batch element,
sometimes spelled as a ``(B, 1, 1, Lk)`` bool ``attn_mask``), and a score magnitude drawn log-uniformly from
``1e-2`` to ``1e8`` (extreme scores: far below and far beyond the fused path's range) at a scale that is the
default, log-uniform in ``[1e-3, 1e3]``, or ``1e30`` / ``1e-30``. Every case ends in one of:

* **refused**: ``ValueError("impl='sdpa' cannot run this call: its scores may reach X ... beyond Y ...")``, where
  ``X`` matches ``scale * max||q|| * max||k||`` computed here in float64 and ``X > Y`` (a refusal inside the
  range counts as **wrong refusal**);
* **agreed**: the output is within the dtype's tolerance (``TOL * max(1, max|v|)``) of the float64 reference
  (:mod:`probattn.reference`, from the pattern drawn here); changing every padded query, key and value (at
  most the same norms, values a thousand times larger) leaves the real queries' outputs bit-identical; and for
  about a third of the cases the gradients are finite, exactly zero on padding, and within the dtype's
  tolerance of the reference gradients (plus twice the dense path's own error in that dtype);
* **silent-bad**: anything else without an error (a wrong output, a padding leak, a NaN or wrong gradient).

``pytest tests/functional/test_fused_fuzz.py -s`` prints the counts; the ``slow`` test runs 3,000 cases.
"""

from __future__ import annotations

import math
import re
import warnings
from collections import Counter

import pytest
import torch

from probattn.functional import attention
from probattn.reference import reference_attention

TOL = {torch.float64: 1e-9, torch.float32: 2e-4, torch.float16: 3e-2, torch.bfloat16: 6e-2}
GRAD_TOL = {torch.float64: 1e-7, torch.float32: 2e-3, torch.float16: 6e-2, torch.bfloat16: 1.2e-1}
REFUSAL = re.compile(r"impl='sdpa' cannot run this call: its scores may reach (\S+) \(scale \* max\|\|q\|\| \* "
                     r"max\|\|k\|\|\), beyond (\S+), the bound")


def _draw(g: torch.Generator) -> dict:
    def pick(options):
        return options[int(torch.randint(0, len(options), (), generator=g))]

    def uniform(low, high):
        return low + (high - low) * float(torch.rand((), generator=g, dtype=torch.float64))

    b, h_kv, groups = pick([1, 2, 3]), pick([1, 2]), pick([1, 2])
    h, lq, lk, d, dv = h_kv * groups, pick([1, 2, 3, 5, 8, 9]), pick([1, 2, 3, 5, 8, 9]), pick([1, 2, 4, 8, 16]), \
        pick([1, 3])
    dtype = pick([torch.float64, torch.float32, torch.float32, torch.bfloat16, torch.bfloat16, torch.float16])
    scale_kind = pick(["default", "default", "random", "huge", "tiny"])
    scale = {"default": 1 / math.sqrt(d), "random": 10 ** uniform(-3, 3), "huge": 1e30, "tiny": 1e-30}[scale_kind]
    target = 10 ** uniform(-2, 8)  # the score magnitude aimed at
    magnitude = math.sqrt(target / (scale * math.sqrt(d)))
    if not (torch.finfo(dtype).tiny * 1e3 < magnitude < torch.finfo(dtype).max / 1e3):
        magnitude = 1.0  # the dtype cannot hold such q, k: ordinary ones (the scale alone makes the scores)
    q = (torch.randn(b, h, lq, d, generator=g, dtype=torch.float64) * magnitude).to(dtype)
    k = (torch.randn(b, h_kv, lk, d, generator=g, dtype=torch.float64) * magnitude).to(dtype)
    v = torch.randn(b, h_kv, lk, dv, generator=g, dtype=torch.float64).to(dtype)
    key_valid = torch.rand(b, lk, generator=g) > 0.3 if torch.rand((), generator=g) < 0.7 else None
    query_valid = torch.rand(b, lq, generator=g) > 0.3 if torch.rand((), generator=g) < 0.6 else None
    normalization, iters = pick([("doubly", 1), ("hybrid", 1), ("sinkhorn", 1), ("sinkhorn", 2), ("sinkhorn", 4)])
    kwargs: dict = dict(normalization=normalization, sinkhorn_iters=iters, hybrid_alpha=pick([0.0, 0.3, 1.0]),
                        scale=scale, impl="sdpa")
    if key_valid is not None and torch.rand((), generator=g) < 0.3:
        kwargs["attn_mask"] = key_valid[:, None, None, :]  # padding spelled as a bool attn_mask
    elif key_valid is not None:
        kwargs["key_padding_mask"] = key_valid
    if query_valid is not None:
        kwargs["query_padding_mask"] = query_valid
    return dict(q=q, k=k, v=v, dtype=dtype, key_valid=key_valid, query_valid=query_valid, kwargs=kwargs,
                grads=torch.rand((), generator=g) < 0.35)


def _allowed(case: dict) -> torch.Tensor:
    """``(B, H, Lq, Lk)`` pattern drawn here: a pair takes part iff its query and key are real and, in that batch
    element, some real query and some real key exist."""
    q, k = case["q"], case["k"]
    b, h, lq, lk = q.shape[0], q.shape[1], q.shape[2], k.shape[2]
    kv = torch.ones(b, lk, dtype=torch.bool) if case["key_valid"] is None else case["key_valid"]
    qv = torch.ones(b, lq, dtype=torch.bool) if case["query_valid"] is None else case["query_valid"]
    return (qv[:, None, :, None] & kv[:, None, None, :]).expand(b, h, lq, lk)


def _call(case: dict, q, k, v):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return attention(q, k, v, **case["kwargs"])


def _reference(case: dict, q, k, v):
    kw = case["kwargs"]
    return reference_attention(q, k, v, normalization=kw["normalization"], allowed=_allowed(case),
                               scale=kw["scale"], hybrid_alpha=kw["hybrid_alpha"], sinkhorn_iters=kw["sinkhorn_iters"])[0]


def _padding_moves_output(case: dict, out: torch.Tensor, g: torch.Generator) -> bool:
    """Redraw every padded query, key and value (norms at most the current maxima, values 1e3 times larger):
    True when a real query's output changes at all."""
    allowed = _allowed(case)
    real_q = allowed.any(-1)  # (B, H, Lq)
    real_k = allowed.any(-2)[:, :: case["q"].shape[1] // case["k"].shape[1]]  # (B, H_kv, Lk)
    if real_q.all() and real_k.all():
        return False
    q, k, v = (t.double().clone() for t in (case["q"], case["k"], case["v"]))

    def redraw(x: torch.Tensor, keep: torch.Tensor, factor: float) -> torch.Tensor:
        top = x.norm(dim=-1).max()
        noise = torch.randn(x.shape, generator=g, dtype=torch.float64)
        noise = noise / noise.norm(dim=-1, keepdim=True).clamp_min(1e-300) * top * factor
        return torch.where(keep[..., None], x, noise)

    v_big = min(1e3, torch.finfo(case["dtype"]).max / 8 / max(1.0, v.abs().max().item()))
    q2, k2 = redraw(q, real_q, 0.999), redraw(k, real_k, 0.999)
    v2 = torch.where(real_k[..., None], v, torch.randn(v.shape, generator=g, dtype=torch.float64) * v_big)
    out2 = _call(case, *(t.to(case["dtype"]) for t in (q2, k2, v2)))
    return not torch.equal(out2[real_q], out[real_q])


def _gradients_bad(case: dict, g: torch.Generator) -> str | None:
    dtype = case["dtype"]
    leaves = [t.clone().requires_grad_() for t in (case["q"], case["k"], case["v"])]
    out = _call(case, *leaves)
    weight = torch.randn(out.shape, generator=g, dtype=torch.float64)
    (out.double() * weight).sum().backward()
    ref_leaves = [t.double().clone().requires_grad_() for t in (case["q"], case["k"], case["v"])]
    (_reference(case, *ref_leaves) * weight).sum().backward()
    dense_leaves = [t.clone().requires_grad_() for t in (case["q"], case["k"], case["v"])]
    dense_case = dict(case, kwargs=dict(case["kwargs"], impl="dense"))
    (_call(dense_case, *dense_leaves).double() * weight).sum().backward()
    allowed = _allowed(case)
    # each gradient is a sum of terms rounded to the input dtype; their magnitude bounds what rounding may leave
    # (a gradient of 0 can come out as a few ulps of terms of size scale * |k| * |v| * |w|)
    kw = case["kwargs"]
    passes = kw["sinkhorn_iters"] if kw["normalization"] == "sinkhorn" else 1
    qn, kn, vn = (t.double().norm(dim=-1).max().item() for t in (case["q"], case["k"], case["v"]))
    wmax, lq = weight.abs().max().item(), case["q"].shape[2]
    terms = [x * (2 * passes + 1) * 2 * kw["scale"] * vn * wmax for x in (kn, qn * lq)] + [wmax * lq]
    # inside the range each pass rounds its scores and biases (magnitude <= R) to the computing dtype on its own:
    # the gradient terms carry the same relative error u * R as the weights (fused.max_score_bound)
    reach = (2 * passes + 1) * (kw["scale"] * qn * kn + math.log(case["q"].shape[2] + case["k"].shape[2]))
    rounding = torch.finfo(torch.float64 if dtype == torch.float64 else torch.float32).eps / 2 * reach
    padded = [~allowed.any(-1), ~allowed.any(-2)[:, :: case["q"].shape[1] // case["k"].shape[1]]]
    padded.append(padded[1])
    for name, mine, ref, dense, pad, term in zip("qkv", leaves, ref_leaves, dense_leaves, padded, terms,
                                                 strict=True):
        grad = mine.grad
        if grad is None or not torch.isfinite(grad).all():
            return f"d{name} is not finite"
        if (grad[pad] != 0).any():
            return f"d{name} is nonzero on padding"
        expected = torch.zeros_like(ref) if ref.grad is None else ref.grad  # None: nothing reached it
        dense_err = (dense.grad.double() - expected).abs().max().item() if dense.grad is not None else math.inf
        err = (grad.double() - expected).abs().max().item()
        allowed_err = GRAD_TOL[dtype] * max(1.0, expected.abs().max().item()) + (
            4 * torch.finfo(dtype).eps + rounding) * term
        if math.isfinite(dense_err):
            allowed_err += 2 * dense_err
        if not err <= allowed_err:
            return (f"d{name} differs from the reference by {err:.3g} (dense: {dense_err:.3g}, allowed "
                    f"{allowed_err:.3g}, terms {term:.3g}, u * R = {rounding:.3g})")
    return None


def classify(case: dict, g: torch.Generator) -> tuple[str, str]:
    """``(outcome, detail)``: ``"refused"``, ``"agreed"``, ``"silent-bad"`` or ``"wrong refusal"``."""
    q, k, v, dtype = case["q"], case["k"], case["v"], case["dtype"]
    try:
        out = _call(case, q, k, v)
    except ValueError as error:
        match = REFUSAL.search(str(error))
        if match is None:
            return "wrong refusal", str(error)
        claimed, limit = float(match.group(1)), float(match.group(2))
        bound = case["kwargs"]["scale"] * q.double().norm(dim=-1).max().item() * k.double().norm(dim=-1).max().item()
        if not (claimed > limit and math.isclose(claimed, bound, rel_tol=1e-2)):
            return "wrong refusal", f"claimed {claimed:.4g} > {limit:.4g}, bound {bound:.4g}"
        return "refused", ""
    ref = _reference(case, q, k, v)
    err = (out.double() - ref).abs().max().item()
    tol = TOL[dtype] * max(1.0, v.double().abs().max().item())
    if not err <= tol:
        return "silent-bad", f"output differs from the reference by {err:.3g} (tolerance {tol:.3g})"
    if _padding_moves_output(case, out, g):
        return "silent-bad", "a real query's output moved when only padding changed"
    if case["grads"]:
        bad = _gradients_bad(case, g)
        if bad is not None:
            return "silent-bad", bad
    return "agreed", ""


def run_fuzz(cases: int, seed: int = 0) -> tuple[Counter, list[str]]:
    """Run ``cases`` seeded cases; returns the outcome counts and the details of every bad one."""
    g = torch.Generator().manual_seed(seed)
    counts: Counter = Counter()
    bad: list[str] = []
    for index in range(cases):
        case = _draw(g)
        outcome, detail = classify(case, g)
        counts[outcome] += 1
        if outcome in ("silent-bad", "wrong refusal"):
            kw = case["kwargs"]
            bad.append(f"case {index} ({case['dtype']}, {kw['normalization']} x{kw['sinkhorn_iters']}, "
                       f"scale {kw['scale']:.3g}, shape {tuple(case['q'].shape)}): {outcome}: {detail}")
    return counts, bad


def _check(cases: int, seed: int) -> None:
    counts, bad = run_fuzz(cases, seed)
    print(f"\nfused fuzz seed={seed} cases={cases}: refused={counts['refused']} agreed={counts['agreed']} "
          f"silent-bad={counts['silent-bad']} wrong refusal={counts['wrong refusal']}")
    assert not bad, "\n".join(bad[:20])
    assert counts["agreed"] > cases // 3 and counts["refused"] > cases // 10  # both sides of the range are hit


def test_fused_fuzz_agrees_or_refuses():
    _check(300, seed=0)


@pytest.mark.slow
def test_fused_fuzz_many_more_cases():
    _check(3000, seed=1)


if __name__ == "__main__":
    import sys

    _check(int(sys.argv[1]) if len(sys.argv) > 1 else 300, int(sys.argv[2]) if len(sys.argv) > 2 else 0)
