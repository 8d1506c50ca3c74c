"""GPU attention grid: doubly / hybrid / Sinkhorn (``impl="sdpa"``) against SDPA's FlashAttention, same run.

For each sequence length L and (heads, head_dim): batch ``max(1, tokens // L)`` (16k tokens by default), bfloat16,
forward (no autograd) and forward+backward. Time: median of CUDA-event timings (warm-up first, repeats until
``--min-time`` seconds or ``--max-repeats``). Memory: peak allocated during the call minus what was allocated
before it (the inputs and the output gradient are allocated before), and the same peak with the inputs counted.
Every method is reported as a ratio to ``sdpa_flash`` (``scaled_dot_product_attention`` forced to the
FlashAttention backend) of the same (L, heads, head_dim, mode)::

    python benchmarks/attention_gpu.py --out results          # the grid of benchmarks/README.md
    python benchmarks/attention_gpu.py --lengths 1024 --quick # a smoke run

Methods: ``sdpa_flash`` (softmax; the baseline), ``doubly``, ``hybrid``, ``sinkhorn3`` (the fused path),
``doubly_chunked`` (the key-block slab path that ``impl="auto"`` took on CUDA before) and ``doubly_dense``
(materialized scores) up to ``--old-max-length``.
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from probattn.functional import attention


def _sdpa_flash(q, k, v):
    with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
        return F.scaled_dot_product_attention(q, k, v)


METHODS = {
    "sdpa_flash": _sdpa_flash,
    "doubly": lambda q, k, v: attention(q, k, v, normalization="doubly", impl="sdpa"),
    "hybrid": lambda q, k, v: attention(q, k, v, normalization="hybrid", impl="sdpa"),
    "sinkhorn3": lambda q, k, v: attention(q, k, v, normalization="sinkhorn", sinkhorn_iters=3, impl="sdpa"),
    "doubly_chunked": lambda q, k, v: attention(q, k, v, normalization="doubly", impl="chunked"),
    "doubly_dense": lambda q, k, v: attention(q, k, v, normalization="doubly", impl="dense"),
}
OLD = ("doubly_chunked", "doubly_dense")


def measure(fn, q, k, v, mode: str, min_time: float, max_repeats: int) -> tuple[float, int, int]:
    """(median ms, extra peak bytes, repeats) of one method on one problem."""
    grad = torch.randn_like(q[..., : v.shape[-1]]) if mode == "fwd_bwd" else None

    def call():
        if mode == "fwd":
            with torch.no_grad():
                fn(q, k, v)
        else:
            leaves = [t.detach().requires_grad_() for t in (q, k, v)]
            fn(*leaves).backward(grad)

    call()  # warm-up (and kernel selection)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    call()
    torch.cuda.synchronize()
    extra = torch.cuda.max_memory_allocated() - before
    times: list[float] = []
    while len(times) < max_repeats and (sum(times) < min_time * 1e3 or len(times) < 3):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        call()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times), extra, len(times)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=[1024, 2048, 4096, 8192, 16384, 32768])
    parser.add_argument("--shapes", nargs="+", default=["16x64", "8x128"], help="HEADSxHEAD_DIM")
    parser.add_argument("--tokens", type=int, default=16384, help="batch = max(1, tokens // L)")
    parser.add_argument("--methods", nargs="+", choices=list(METHODS), default=list(METHODS))
    parser.add_argument("--old-max-length", type=int, default=4096, help="longest L for the chunked/dense paths")
    parser.add_argument("--min-time", type=float, default=0.25, help="seconds of timed calls per case")
    parser.add_argument("--max-repeats", type=int, default=20)
    parser.add_argument("--quick", action="store_true", help="one repeat per case")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("attention_gpu.py needs a CUDA device", file=sys.stderr)
        return 2
    if args.quick:
        args.min_time, args.max_repeats = 0.0, 3
    device = torch.cuda.get_device_name()
    print(f"# {device}, torch {torch.__version__}, bfloat16, batch = max(1, {args.tokens} // L)", flush=True)
    rows: list[dict[str, object]] = []
    for shape in args.shapes:
        heads, head_dim = map(int, shape.split("x"))
        for length in args.lengths:
            batch = max(1, args.tokens // length)
            gen = torch.Generator(device="cuda").manual_seed(0)
            q, k, v = (torch.randn(batch, heads, length, head_dim, device="cuda", dtype=torch.bfloat16,
                                   generator=gen) for _ in range(3))
            inputs = 3 * q.numel() * q.element_size()
            for mode in ("fwd", "fwd_bwd"):
                base: dict[str, float] = {}
                for name in ["sdpa_flash", *[m for m in args.methods if m != "sdpa_flash"]]:
                    if name in OLD and length > args.old_max_length:
                        continue
                    try:
                        ms, extra, reps = measure(METHODS[name], q, k, v, mode, args.min_time, args.max_repeats)
                    except torch.OutOfMemoryError:
                        torch.cuda.empty_cache()
                        print(f"| {shape} | {length} | {mode} | {name} | out of memory |", flush=True)
                        continue
                    if name == "sdpa_flash":
                        base = {"ms": ms, "extra": max(extra, 1), "total": inputs + extra}
                    row = {"device": device, "heads": heads, "head_dim": head_dim, "length": length, "batch": batch,
                           "mode": mode, "method": name, "ms": round(ms, 4), "repeats": reps,
                           "extra_mib": round(extra / 2**20, 2), "time_vs_sdpa": round(ms / base["ms"], 3),
                           "extra_mem_vs_sdpa": round(max(extra, 1) / base["extra"], 3),
                           "total_mem_vs_sdpa": round((inputs + extra) / base["total"], 3)}
                    rows.append(row)
                    print(f"| {shape} | {length} | {mode} | {name} | {ms:.3f} ms | x{row['time_vs_sdpa']} time | "
                          f"extra {row['extra_mib']} MiB x{row['extra_mem_vs_sdpa']} | total x{row['total_mem_vs_sdpa']} |",
                          flush=True)
            del q, k, v
            torch.cuda.empty_cache()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = out / f"attention-gpu-{time.strftime('%Y%m%d-%H%M%S')}"
    stem.with_suffix(".json").write_text(json.dumps({"device": device, "torch": torch.__version__,
                                                     "command": " ".join(sys.argv), "rows": rows}, indent=1))
    with stem.with_suffix(".csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    print(f"wrote {stem}.json and .csv")
    return 0


if __name__ == "__main__":
    sys.exit(main())
