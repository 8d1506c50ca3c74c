"""Where ``impl="auto"`` should switch on the CPU: chunked (slab) vs dense time, per thread count and head dim.

For every torch thread count, head dim and shape ``(B, H, L)`` (float32, CPU), the dense and the chunked path
of ``attention(..., impl=...)`` run **interleaved** (dense, chunked, dense, chunked, ...; one warm-up call
each) for the forward pass and for forward+backward; the ratio chunked / dense is the ratio of the medians of
process CPU time (wall time is recorded beside it). From the doubly-normalized forward+backward ratios it
derives, per (threads, head dim), the **crossover**: the score count ``B·H·Lq·Lk`` from which on the chunked
path is faster (see :func:`crossovers`). ``probattn.functional.streaming.AUTO_MIN_SCORES`` is this table.

    python benchmarks/impl_crossover.py                 # doubly alone took 45 s on an idle 2-core machine
    python benchmarks/impl_crossover.py --rounds 3 --threads 1 --head-dims 64   # a quick look

Prints the ratio table and the crossover table; writes ``impl-crossover-cpu-<stamp>.{csv,json}`` under
``--out`` (default ``benchmarks/results``).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import os
import statistics
import sys
import time
from pathlib import Path

import torch

from probattn.benchmarking import machine_description
from probattn.functional import attention
from probattn.io import write_text

# (B, H, L): score counts 2**17 .. 2**23; two shapes share 2**19 and 2**21 scores with different lengths, so the
# table shows whether the score count (not the length) decides
SHAPES = [(1, 8, 128), (1, 8, 256), (4, 8, 128), (1, 8, 512), (16, 8, 128), (1, 8, 1024)]
NORMALIZATIONS = ("doubly", "hybrid", "sinkhorn")


def _load() -> str:
    try:
        return "load average " + " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "load average unknown"


def measure(shape: tuple[int, int, int, int], normalization: str, rounds: int, threads: int,
            min_sample_ms: float = 0.0) -> dict[str, float]:
    """Interleaved medians for dense and chunked, forward and forward+backward: CPU and wall seconds per call.

    A sample is ``repeat`` back-to-back calls of one path (``repeat`` from the dense path's warm-up time, so that
    a sample lasts at least ``min_sample_ms``; 1 when it is 0)."""
    torch.set_num_threads(threads)
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(*shape, generator=gen).requires_grad_() for _ in range(3))
    grad_out = torch.randn(*shape, generator=gen)

    def call(impl: str, train: bool) -> None:
        if train:
            q.grad = k.grad = v.grad = None
            attention(q, k, v, normalization=normalization, impl=impl, sinkhorn_iters=3).backward(grad_out)
        else:
            with torch.no_grad():
                attention(q, k, v, normalization=normalization, impl=impl, sinkhorn_iters=3)

    result: dict[str, float] = {}
    for mode, train in (("fwd", False), ("fwd_bwd", True)):
        cpu: dict[str, list[float]] = {"dense": [], "chunked": []}
        wall: dict[str, list[float]] = {"dense": [], "chunked": []}
        for impl in cpu:
            call(impl, train)  # warm-up
        w0 = time.perf_counter()
        call("dense", train)
        repeat = max(1, math.ceil(min_sample_ms / (1e3 * (time.perf_counter() - w0))))
        for _ in range(rounds):
            for impl in cpu:
                c0, w0 = time.process_time(), time.perf_counter()
                for _ in range(repeat):
                    call(impl, train)
                cpu[impl].append((time.process_time() - c0) / repeat)
                wall[impl].append((time.perf_counter() - w0) / repeat)
        result[f"{mode}_calls_per_sample"] = repeat
        for impl in cpu:
            result[f"{mode}_{impl}_cpu_ms"] = 1e3 * statistics.median(cpu[impl])
            result[f"{mode}_{impl}_wall_ms"] = 1e3 * statistics.median(wall[impl])
        result[f"{mode}_ratio"] = result[f"{mode}_chunked_cpu_ms"] / result[f"{mode}_dense_cpu_ms"]
        result[f"{mode}_ratio_wall"] = result[f"{mode}_chunked_wall_ms"] / result[f"{mode}_dense_wall_ms"]
    return result


def crossovers(rows: list[dict[str, object]]) -> dict[tuple[int, int], int | None]:
    """Per (threads, head_dim): where doubly forward+backward chunked / dense crosses 1, as a power of two.

    The ratios of shapes with the same score count are combined by their median. If the chunked path wins at
    every measured count from some point on, the crossing is interpolated linearly in (log2 scores, log ratio)
    between the last losing count and the next one, and rounded to the nearest power of two; if it wins at every
    count, the smallest measured count; if it loses at the largest, None (dense everywhere measured).
    """
    table: dict[tuple[int, int], int | None] = {}
    for key in sorted({(r["threads"], r["head_dim"]) for r in rows}):
        by_count: dict[int, list[float]] = {}
        for r in rows:
            if (r["threads"], r["head_dim"]) == key and r["normalization"] == "doubly":
                by_count.setdefault(r["scores"], []).append(r["fwd_bwd_ratio"])
        points = sorted((count, statistics.median(ratios)) for count, ratios in by_count.items())
        if points[-1][1] > 1.0:
            table[key] = None
            continue
        last_loss = max((i for i, (_, ratio) in enumerate(points) if ratio > 1.0), default=None)
        if last_loss is None:
            table[key] = points[0][0]
            continue
        (n0, r0), (n1, r1) = points[last_loss], points[last_loss + 1]
        x0, x1, y0, y1 = math.log2(n0), math.log2(n1), math.log(r0), math.log(r1)
        table[key] = 2 ** round(x0 + (x1 - x0) * y0 / (y0 - y1))
    return table


def print_crossovers(table: dict[tuple[int, int], int | None]) -> None:
    print("\nCrossover (doubly, forward+backward): chunked from this many scores on")
    print("| threads | D | crossover |")
    print("|---:|---:|---:|")
    for (threads, head_dim), scores in table.items():
        shown = "never (dense wins at every measured size)" if scores is None else f"2**{scores.bit_length() - 1}"
        print(f"| {threads} | {head_dim} | {shown} |")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds per case (median)")
    parser.add_argument("--min-sample-ms", type=float, default=0.0,
                        help="a sample repeats one path back to back until it lasts about this long (0: one call; "
                             "the stored table's run used single calls)")
    parser.add_argument("--normalizations", nargs="+", choices=NORMALIZATIONS, default=list(NORMALIZATIONS))
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--head-dims", type=int, nargs="+", default=[32, 64, 128])
    parser.add_argument("--all-normalizations-at", type=int, default=64, metavar="D",
                        help="head dim at which hybrid and sinkhorn are measured too (doubly at every head dim)")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"))
    parser.add_argument("--from-json", metavar="PATH", default=None,
                        help="measure nothing: print the crossover table derived from a stored run's rows")
    args = parser.parse_args(argv)
    if args.from_json:
        print_crossovers(crossovers(json.loads(Path(args.from_json).read_text())["rows"]))
        return 0
    if args.rounds < 1 or min(args.threads) < 1 or min(args.head_dims) < 1:
        raise SystemExit("--rounds, --threads and --head-dims must be positive")
    if not args.min_sample_ms >= 0:
        raise SystemExit(f"--min-sample-ms {args.min_sample_ms}: must be >= 0")
    started = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    load_before = _load()
    print(f"# {machine_description(max(args.threads))}; {load_before}; clock: process CPU time", flush=True)
    print("| threads | D | B, H, L | scores | normalization | fwd chunked/dense | fwd+bwd chunked/dense | "
          "fwd+bwd dense ms | fwd+bwd wall ratio |")
    print("|---:|---:|---|---:|---|---:|---:|---:|---:|", flush=True)
    rows: list[dict[str, object]] = []
    for head_dim in args.head_dims:
        for b, h, length in SHAPES:
            for normalization in args.normalizations:
                if normalization != "doubly" and head_dim != args.all_normalizations_at:
                    continue
                for threads in args.threads:  # thread counts side by side, so they see the same load
                    res = measure((b, h, length, head_dim), normalization, args.rounds, threads, args.min_sample_ms)
                    row = dict(threads=threads, head_dim=head_dim, batch=b, heads=h, length=length,
                               scores=b * h * length * length, normalization=normalization, rounds=args.rounds,
                               min_sample_ms=args.min_sample_ms,
                               **res)
                    rows.append(row)
                    print(f"| {threads} | {head_dim} | {b}, {h}, {length} | 2**{row['scores'].bit_length() - 1} | "
                          f"{normalization} | {res['fwd_ratio']:.2f} | {res['fwd_bwd_ratio']:.2f} | "
                          f"{res['fwd_bwd_dense_cpu_ms']:.1f} | {res['fwd_bwd_ratio_wall']:.2f} |", flush=True)
    table = crossovers(rows)
    print_crossovers(table)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    meta = {"date": started, "machine": machine_description(max(args.threads)), "clock": "process CPU time",
            "load_before": load_before, "load_after": _load(),
            "command": "python benchmarks/impl_crossover.py " + " ".join(sys.argv[1:] if argv is None else argv)}
    json_path = out / f"impl-crossover-cpu-{stamp}.json"
    write_text(json_path, json.dumps({"meta": meta, "rows": rows, "crossover": [  # atomic, never through a link
        dict(threads=t, head_dim=d, min_scores=s) for (t, d), s in table.items()]}, indent=1))
    csv_path = out / f"impl-crossover-cpu-{stamp}.csv"
    table_csv = io.StringIO(newline="")
    writer = csv.DictWriter(table_csv, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    write_text(csv_path, table_csv.getvalue())
    print(f"wrote {json_path} and {csv_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
