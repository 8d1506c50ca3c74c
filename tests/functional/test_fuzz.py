"""Seeded fuzz harness for ``attention``: every call is correct, or a clear error, never anything else.

Each case draws sizes, a dtype, a normalization, an implementation and a mask pattern (full, random, causal,
sliding window, packed blocks, per-key, per-query, extra always-visible keys), spells the pattern in one of
the accepted ways (bool, float ``-inf``, ``-1e9``, ``-1e4``, ``finfo.min``, with or without a finite bias, in
the inputs' dtype or another one, broadcast or per head), adds padding on either axis and sometimes
``is_causal``; one case in six also carries one invalid argument. Every case is classified:

* **correct**: the output (and, for some float64 cases, the gradients) matches the float64 reference
  (:mod:`probattn.reference`) computed from the pattern the harness itself drew (not from
  ``probattn.masks``); for the column-normalized schemes the pattern is block-complete (checked by brute
  force), and perturbing everything the mask hides from one query (its hidden keys and values, and every
  query that sees a key it may not see) leaves that query's output unchanged;
* **clear error**: a ValueError/TypeError naming the argument at fault, raised exactly when the harness
  expects one (an invalid argument, or a column-normalized scheme with a pattern that is not block-complete);
* **other**: anything else (a wrong number, a leak, a refused valid call, a missing or unclear error).

``pytest tests/functional/test_fuzz.py -s`` prints the counts; the ``slow`` test runs ten times as many.
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

ARGUMENT_NAMES = re.compile(
    r"\b(q|k|v|attn_mask|key_padding_mask|query_padding_mask|is_causal|scale|dropout_p|hybrid_alpha|"
    r"sinkhorn_iters|impl|normalization|return_weights)\b"
)
COLUMN = ("doubly", "hybrid", "sinkhorn")
TOL = {torch.float64: 1e-9, torch.float32: 2e-4, torch.float16: 3e-2, torch.bfloat16: 6e-2}
INVALID = ("normalization", "dropout_p", "hybrid_alpha", "hybrid_alpha_nan", "sinkhorn_iters", "impl", "mask_int",
           "mask_shape", "key_padding_shape", "q_nan", "k_dtype", "scale", "overflow")


def block_complete(allowed: torch.Tensor) -> bool:
    """Brute force: in each (batch, head) slice two queries that share a key see exactly the same keys."""
    for pattern in allowed.reshape(-1, *allowed.shape[-2:]):
        rows = [frozenset(row.nonzero().flatten().tolist()) for row in pattern]
        if any(a & b and a != b for a in set(rows) for b in set(rows)):
            return False
    return True


def _pattern(g: torch.Generator, kind: str, b: int, h: int, lq: int, lk: int) -> torch.Tensor:
    i, j = torch.arange(lq)[:, None], torch.arange(lk)[None, :]
    if kind == "full":
        return torch.ones(1, 1, lq, lk, dtype=torch.bool)
    if kind == "causal":
        return (j <= i).view(1, 1, lq, lk)
    if kind == "window":
        return ((i - j).abs() <= 1).view(1, 1, lq, lk)
    if kind == "blocks":  # packed documents: query and key labels, per batch element (or per head)
        heads = h if torch.rand((), generator=g) < 0.3 else 1
        n = int(torch.randint(1, 4, (), generator=g))
        return torch.randint(0, n, (b, heads, lq, 1), generator=g) == torch.randint(0, n, (b, heads, 1, lk), generator=g)
    if kind == "per_key":
        return torch.rand(b, 1, 1, lk, generator=g) > 0.3
    if kind == "per_query":
        return torch.rand(1, 1, lq, 1, generator=g) > 0.3
    heads = h if torch.rand((), generator=g) < 0.3 else 1  # random, per head sometimes
    return torch.rand(b, heads, lq, lk, generator=g) > 0.35


def _spell(g: torch.Generator, pattern: torch.Tensor, bias: torch.Tensor | None, dtype: torch.dtype):
    """The pattern (True = may attend) and bias as one attn_mask in a randomly chosen accepted spelling, and the
    bias as that mask holds it (rounded to the mask's dtype)."""
    if bias is None and torch.rand((), generator=g) < 0.4:
        return pattern, "bool", None
    spelling = ["-inf", "-1e9", "-1e4", "finfo.min"][int(torch.randint(0, 4, (), generator=g))]
    mask_dtype = [dtype, torch.float32, torch.float64][int(torch.randint(0, 3, (), generator=g))]
    value = {"-inf": -math.inf, "-1e9": -1e9, "-1e4": -1e4, "finfo.min": torch.finfo(mask_dtype).min}[spelling]
    base = torch.zeros(pattern.shape, dtype=mask_dtype) if bias is None else bias.to(mask_dtype)
    # filled in float64, then rounded as a user's cast would round it (-1e9 becomes -inf in float16)
    mask = base.double().masked_fill(~pattern, value).to(mask_dtype)
    return mask, spelling, None if bias is None else base.double()


def _draw(g: torch.Generator) -> dict:
    def pick(options):
        return options[int(torch.randint(0, len(options), (), generator=g))]

    b, h_kv, groups = pick([1, 2, 3]), pick([1, 2]), pick([1, 2])
    h, lq, lk, d, dv = h_kv * groups, pick([1, 2, 3, 4, 5, 6]), pick([1, 2, 3, 4, 5, 6]), pick([1, 2, 4]), pick([1, 3])
    dtype = pick([torch.float64, torch.float64, torch.float32, torch.float16, torch.bfloat16])
    magnitude = pick([0.3, 1.0, 2.0])
    q = torch.randn(b, h, lq, d, generator=g, dtype=torch.float64) * magnitude
    k = torch.randn(b, h_kv, lk, d, generator=g, dtype=torch.float64) * magnitude
    v = torch.randn(b, h_kv, lk, dv, generator=g, dtype=torch.float64)
    kind = pick(["none", "full", "random", "causal", "window", "blocks", "blocks", "per_key", "per_query"])
    pattern = None if kind == "none" else _pattern(g, kind, b, h, lq, lk)
    if pattern is not None and torch.rand((), generator=g) < 0.15:  # an extra always-visible key (add_zero_attn)
        pattern = torch.nn.functional.pad(pattern.expand(*pattern.shape[:3], lk), (0, 1), value=True)
        extra = torch.zeros(b, h_kv, 1, d, dtype=torch.float64)
        k, v, lk = torch.cat([k, extra], 2), torch.cat([v, torch.randn(b, h_kv, 1, dv, generator=g,
                                                                         dtype=torch.float64)], 2), lk + 1
    bias = None
    if pattern is not None and torch.rand((), generator=g) < 0.4:
        bias = torch.randn(*pattern.shape[:2], lq, lk, generator=g, dtype=torch.float64)
    kwargs: dict = dict(normalization=pick(["softmax", "doubly", "hybrid", "sinkhorn"]),
                        impl=pick(["auto", "dense", "chunked"]), hybrid_alpha=pick([0.0, 0.3, 1.0]),
                        sinkhorn_iters=pick([1, 2, 4]))
    spelling = "none"
    if pattern is not None:
        kwargs["attn_mask"], spelling, bias = _spell(g, pattern if bias is None else pattern.expand(bias.shape),
                                                     bias, dtype)
    key_valid = torch.rand(b, lk, generator=g) > 0.25 if torch.rand((), generator=g) < 0.5 else None
    query_valid = torch.rand(b, lq, generator=g) > 0.25 if torch.rand((), generator=g) < 0.4 else None
    if key_valid is not None:
        kwargs["key_padding_mask"] = key_valid
    if query_valid is not None:
        kwargs["query_padding_mask"] = query_valid
    kwargs["is_causal"] = bool(torch.rand((), generator=g) < 0.12)
    invalid = pick(INVALID) if torch.rand((), generator=g) < 1 / 6 else None
    return dict(q=q, k=k, v=v, dtype=dtype, pattern=pattern, bias=bias, key_valid=key_valid,
                query_valid=query_valid, kwargs=kwargs, invalid=invalid, spelling=spelling,
                grads=dtype == torch.float64 and torch.rand((), generator=g) < 0.15)


def _allowed(case: dict) -> torch.Tensor:
    """The full pattern ``(B, H, Lq, Lk)`` the harness asked for, built without probattn.masks."""
    q, k = case["q"], case["k"]
    b, h, lq, lk = q.shape[0], q.shape[1], q.shape[2], k.shape[2]
    allowed = torch.ones(b, h, lq, lk, dtype=torch.bool)
    if case["pattern"] is not None:
        allowed = allowed & case["pattern"]
    if case["kwargs"]["is_causal"]:
        allowed = allowed & torch.ones(lq, lk, dtype=torch.bool).tril()
    if case["key_valid"] is not None:
        allowed = allowed & case["key_valid"][:, None, None, :]
    if case["query_valid"] is not None:
        allowed = allowed & case["query_valid"][:, None, :, None]
    return allowed


def _break(case: dict) -> None:
    """Make one argument invalid."""
    kw, which = case["kwargs"], case["invalid"]
    if which == "normalization":
        kw["normalization"] = "dnas"
    elif which == "dropout_p":
        kw["dropout_p"] = 1.5
    elif which == "hybrid_alpha":
        kw["normalization"], kw["hybrid_alpha"] = "hybrid", -0.5
    elif which == "hybrid_alpha_nan":
        kw["normalization"], kw["hybrid_alpha"] = "hybrid", torch.tensor(float("nan"))
    elif which == "sinkhorn_iters":
        kw["normalization"], kw["sinkhorn_iters"] = "sinkhorn", 0
    elif which == "impl":
        kw["impl"] = "fast"
    elif which == "mask_int":
        kw["attn_mask"] = torch.ones(case["q"].shape[2], case["k"].shape[2], dtype=torch.int32)
    elif which == "mask_shape":
        kw["attn_mask"] = torch.ones(case["q"].shape[2] + 1, case["k"].shape[2], dtype=torch.bool)
    elif which == "key_padding_shape":
        kw["key_padding_mask"] = torch.ones(case["q"].shape[0], case["k"].shape[2] + 1, dtype=torch.bool)
    elif which == "q_nan":
        case["q"] = case["q"].clone()
        case["q"][0, 0, 0, 0] = math.nan
    elif which == "k_dtype":
        case["k_dtype"] = torch.float32 if case["dtype"] != torch.float32 else torch.float64
    elif which == "scale":
        kw["scale"] = math.inf
    else:  # scores beyond what the computing dtype holds (float32 for the half types)
        big = 1e160 if case["dtype"] == torch.float64 else 1e20
        case["q"], case["k"] = case["q"] * big + 1, case["k"] * big + 1


def _call(case: dict, q, k, v, **extra):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return attention(q, k, v, **case["kwargs"], **extra)


def _as(case: dict, q, k, v):
    """The inputs in the case's dtype (keys in another one for the "k_dtype" invalid case)."""
    return q.to(case["dtype"]), k.to(case.get("k_dtype", case["dtype"])), v.to(case["dtype"])


def _hides(allowed: torch.Tensor, b: int, hq: int, i: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Keys hidden from query i, and queries that may see one of them (bool (Lk,) and (Lq,))."""
    pattern = allowed[b, hq]
    hidden_keys = ~pattern[i]
    hidden_queries = (pattern & hidden_keys).any(-1)
    return hidden_keys, hidden_queries


def _leaks(case: dict, allowed: torch.Tensor, out: torch.Tensor, g: torch.Generator) -> bool:
    """Perturb what the mask hides from one query; True when that query's output moves."""
    q, k, v = case["q"], case["k"], case["v"]
    b, h, lq, _ = q.shape
    bi, hi, i = (int(torch.randint(0, n, (), generator=g)) for n in (b, h, lq))
    hidden_keys, hidden_queries = _hides(allowed, bi, hi, i)
    hidden_queries[i] = False
    if not allowed[bi, hi, i].any() or not (hidden_keys.any() or hidden_queries.any()):
        return False
    groups = h // k.shape[1]
    q2, k2, v2 = q.clone(), k.clone(), v.clone()
    q2[bi, :, hidden_queries] += torch.randn(q2[bi, :, hidden_queries].shape, generator=g, dtype=torch.float64)
    kv_head = hi // groups  # hidden keys of this head; other heads' keys move too, which must not matter either
    k2[bi, kv_head, hidden_keys] += torch.randn(k2[bi, kv_head, hidden_keys].shape, generator=g, dtype=torch.float64)
    v2[bi, kv_head, hidden_keys] += torch.randn(v2[bi, kv_head, hidden_keys].shape, generator=g, dtype=torch.float64)
    out2 = _call(case, *_as(case, q2, k2, v2))
    diff = (out2[bi, hi, i].double() - out[bi, hi, i].double()).abs().max().item()
    return diff > 1e-6 * max(1.0, out[bi, hi, i].double().abs().max().item())


def classify(case: dict, g: torch.Generator) -> tuple[str, str]:
    """``(outcome, detail)`` with outcome ``"correct"``, ``"clear error"`` or ``"other"``."""
    if case["invalid"] is not None:
        _break(case)
    allowed = _allowed(case)
    norm = case["kwargs"]["normalization"]
    refuse = norm in COLUMN and case["invalid"] is None and (case["kwargs"]["is_causal"] or not block_complete(allowed))
    q, k, v = _as(case, case["q"], case["k"], case["v"])
    try:
        out = _call(case, q, k, v)
    except (ValueError, TypeError) as error:
        message = str(error)
        if not ARGUMENT_NAMES.search(message):
            return "other", f"unclear error: {message}"
        if case["invalid"] is None and not refuse:
            return "other", f"refused a valid call: {message}"
        if refuse and "complete blocks" not in message:
            return "other", f"wrong error for a leaking mask: {message}"
        return "clear error", case["invalid"] or "leaking mask"
    except Exception as error:  # the harness counts these
        return "other", f"{type(error).__name__}: {error}"
    if case["invalid"] is not None:
        return "other", f"accepted invalid {case['invalid']}"
    if refuse:
        return "other", "accepted a mask that is not block-complete"
    kw = case["kwargs"]
    ref, _ = reference_attention(*(t.to(case["dtype"]) for t in (case["q"], case["k"], case["v"])),
                                 normalization=norm, allowed=allowed, bias=case["bias"],
                                 hybrid_alpha=kw["hybrid_alpha"], sinkhorn_iters=kw["sinkhorn_iters"])
    tol = TOL[case["dtype"]]
    error = (out.double() - ref).abs().max().item()
    if not math.isfinite(error) or error > tol * max(1.0, ref.abs().max().item()):
        return "other", f"output differs from the reference by {error:.3g}"
    if norm in COLUMN and case["dtype"] in (torch.float64, torch.float32) and _leaks(case, allowed, out, g):
        return "other", "output moved when hidden keys/queries changed"
    if case["grads"]:
        ins = [t.clone().requires_grad_() for t in (case["q"], case["k"], case["v"])]
        ref_ins = [t.clone().requires_grad_() for t in (case["q"], case["k"], case["v"])]
        weight = torch.randn(out.shape, generator=g, dtype=torch.float64)
        (_call(case, *ins) * weight).sum().backward()
        ref_out, _ = reference_attention(*ref_ins, normalization=norm, allowed=allowed, bias=case["bias"],
                                         hybrid_alpha=kw["hybrid_alpha"], sinkhorn_iters=kw["sinkhorn_iters"])
        (ref_out * weight).sum().backward()
        for name, a, r in zip("qkv", ins, ref_ins):
            expected = torch.zeros_like(a) if r.grad is None else r.grad  # None: nothing reached the reference
            if a.grad is None or not torch.allclose(a.grad, expected, atol=1e-7, rtol=1e-6):
                return "other", f"d{name} differs from the reference"
    return "correct", case["spelling"]


def run_fuzz(cases: int, seed: int = 0) -> tuple[Counter, list[str]]:
    """Run ``cases`` seeded cases; returns the outcome counts and the details of every "other"."""
    g = torch.Generator().manual_seed(seed)
    counts: Counter = Counter()
    others: list[str] = []
    for index in range(cases):
        outcome, detail = classify(_draw(g), g)
        counts[outcome] += 1
        if outcome == "other":
            others.append(f"case {index}: {detail}")
    return counts, others


def _check(cases: int, seed: int) -> None:
    counts, others = run_fuzz(cases, seed)
    print(f"\nfuzz seed={seed} cases={cases}: correct={counts['correct']} clear error={counts['clear error']} "
          f"other={counts['other']}")
    assert not others, "\n".join(others[:20])
    assert counts["correct"] > cases // 3 and counts["clear error"] > cases // 10


def test_fuzz_every_call_is_correct_or_a_clear_error():
    _check(2000, seed=0)


@pytest.mark.slow
def test_fuzz_many_more_cases():
    _check(20000, seed=1)


if __name__ == "__main__":
    import sys

    _check(int(sys.argv[1]) if len(sys.argv) > 1 else 2000, int(sys.argv[2]) if len(sys.argv) > 2 else 0)
