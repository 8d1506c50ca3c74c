"""The fused path's rounding constant: output error per unit of ``u * R * max|v|`` (docs/attention.md, "the fused
path's range"; ``probattn.functional.fused.ROUNDING_CONSTANT``).

Random cases (float64/float32/bfloat16, D = 1..64, |q|,|k| log-uniform in [0.1, 1e4], the default or a random
scale in [1e-3, 1e3], padding on both axes, doubly/hybrid/sinkhorn 2 and 4) that the fused path accepts; for
each the error against the float64 reference beyond 8 ulps of the input dtype, divided by ``u * R * max|v|``.
Prints the largest per (dtype, normalization). Usage: ``OMP_NUM_THREADS=1 PYTHONPATH=src python
benchmarks/fused_precision.py SEED`` (seeds 0, 1, 2 gave 0.050, 0.061, 0.082).
"""

from __future__ import annotations

import math
import sys
import warnings

import torch

from probattn.functional import attention
from probattn.functional.fused import column_passes, score_bound
from probattn.reference import reference_attention


def main(seed: int, cases: int = 400) -> None:
    g = torch.Generator().manual_seed(seed)
    worst: dict = {}
    for _ in range(cases):
        def pick(options):
            return options[int(torch.randint(0, len(options), (), generator=g))]

        dtype = pick([torch.float32, torch.bfloat16, torch.float64])
        d, lq, lk = pick([1, 2, 4, 8, 16, 64]), pick([1, 2, 5, 9, 17]), pick([1, 2, 5, 9, 17])
        norm, iters = pick([("doubly", 1), ("hybrid", 1), ("sinkhorn", 2), ("sinkhorn", 4)])
        mag = 10 ** float(torch.empty(()).uniform_(-1, 4, generator=g))
        scale = pick([None, None, 10 ** float(torch.empty(()).uniform_(-3, 3, generator=g))])
        q = (torch.randn(2, 2, lq, d, generator=g, dtype=torch.float64) * mag).to(dtype)
        k = (torch.randn(2, 2, lk, d, generator=g, dtype=torch.float64) * mag).to(dtype)
        v = torch.randn(2, 2, lk, 3, generator=g, dtype=torch.float64).to(dtype)
        qv, kv = torch.rand(2, lq, generator=g) > 0.3, torch.rand(2, lk, generator=g) > 0.3
        qv[:, 0] = kv[:, 0] = True
        sc = scale if scale is not None else d ** -0.5
        reach = (2 * column_passes(norm, iters) + 1) * (score_bound(q, k, sc) + math.log(lq + lk))
        u = torch.finfo(torch.float64 if dtype == torch.float64 else torch.float32).eps / 2
        ref, _ = reference_attention(q, k, v, normalization=norm, allowed=qv[:, None, :, None] & kv[:, None, None, :],
                                     scale=sc, sinkhorn_iters=iters)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                out = attention(q, k, v, normalization=norm, key_padding_mask=kv, query_padding_mask=qv, impl="sdpa",
                                scale=sc, sinkhorn_iters=iters)
        except ValueError:
            continue  # outside the range
        err = ((out.double() - ref) * qv[:, None, :, None]).abs().max().item() / v.double().abs().max().item()
        constant = max(0.0, err - 8 * torch.finfo(dtype).eps) / (u * reach)
        key = (str(dtype), norm, iters)
        worst[key] = max(worst.get(key, 0.0), constant)
    for key, value in sorted(worst.items()):
        print(*key, f"{value:.3g}")
    print(f"largest: {max(worst.values()):.3g}")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 0)
