"""CPU attention benchmark: doubly (auto / dense / chunked), hybrid and Sinkhorn-3 as ratios to SDPA, interleaved.

``(1, 8, L, 64)`` float32 on the CPU, forward+backward, L = 256, 1024, 4096. Everything runs in one process and
**interleaved**: each round runs every thread count (1 and 2 torch threads) and, under each, every method (in a
fresh seeded random order each round); a method's time is the median over rounds, and its ratio is that median over SDPA's median under the same
thread count in the same run, so a load change on a shared machine hits the baseline too. Both process CPU time
(steady on a shared machine; with 2 threads it sums both threads, spinning included) and wall time are recorded.
Shorter lengths get more rounds (``--rounds`` x min(7, longest // L)): their calls are short and scatter more.
A timed sample is ``repeat`` back-to-back calls of one method (``repeat`` per length, from SDPA's warm-up call, so
that a sample lasts at least ``--min-sample-ms``); its time / ``repeat`` is the per-call figure. Single ~10 ms calls
interleaved with other methods scattered by 20 % at L = 256 (two identical code paths, ``doubly_auto`` and
``doubly_dense``, read 2.11 and 1.77 in one idle run), more than the 5 % ``impl="auto"`` is held to.

    python benchmarks/attention.py                  # the acceptance grid: ~2 min idle (by per-call times), 8 under load
    python benchmarks/attention.py --lengths 256 1024 --rounds 3     # quicker

Prints one table per clock and writes ``attention-interleaved-cpu-<stamp>.{csv,json,md}`` (with the date, the
machine and the load average) under ``--out`` (default ``benchmarks/results``). Peak memory: ``probattn bench``
(one subprocess per shape, see ``probattn.benchmarking``).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import os
import random
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

from probattn.benchmarking import machine_description
from probattn.functional import attention
from probattn.io import write_text

LENGTHS = (256, 1024, 4096)
THREADS = (1, 2)
SHAPE = dict(batch=1, heads=8, head_dim=64)

Method = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
METHODS: dict[str, Method] = {
    "sdpa": torch.nn.functional.scaled_dot_product_attention,
    "doubly_auto": lambda q, k, v: attention(q, k, v, normalization="doubly"),
    "doubly_dense": lambda q, k, v: attention(q, k, v, normalization="doubly", impl="dense"),
    "doubly_chunked": lambda q, k, v: attention(q, k, v, normalization="doubly", impl="chunked"),
    "hybrid_chunked": lambda q, k, v: attention(q, k, v, normalization="hybrid", impl="chunked"),
    "sinkhorn3_chunked": lambda q, k, v: attention(q, k, v, normalization="sinkhorn", sinkhorn_iters=3,
                                                   impl="chunked"),
}
DENSE = frozenset({"doubly_dense"})


def _load() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "unknown"


def dense_gib(length: int) -> float:
    """About what the dense path holds at once, forward+backward: 6 float32 ``(B, H, L, L)`` matrices."""
    return SHAPE["batch"] * SHAPE["heads"] * length**2 * 4 * 6 / 2**30


def run_length(length: int, methods: list[str], threads: list[int], rounds: int,
               min_sample_ms: float = 0.0) -> list[dict[str, object]]:
    """Interleaved rounds at one length; one row per (threads, method) with per-call medians and ratios to SDPA."""
    gen = torch.Generator().manual_seed(0)
    shape = (SHAPE["batch"], SHAPE["heads"], length, SHAPE["head_dim"])
    q, k, v = (torch.randn(shape, generator=gen).requires_grad_() for _ in range(3))
    grad_out = torch.randn(shape, generator=gen)

    def step(fn: Method, repeat: int = 1) -> tuple[float, float]:
        c0, w0 = time.process_time(), time.perf_counter()
        for _ in range(repeat):
            q.grad = k.grad = v.grad = None
            fn(q, k, v).backward(grad_out)
        return (time.process_time() - c0) / repeat, (time.perf_counter() - w0) / repeat

    cpu = {(t, m): [] for t in threads for m in methods}
    wall = {(t, m): [] for t in threads for m in methods}
    sdpa_s = []
    for t in threads:  # warm-up: one call of each method under each thread count, then SDPA's time once more
        torch.set_num_threads(t)
        for m in methods:
            step(METHODS[m])
        sdpa_s.append(step(METHODS["sdpa"])[1])
    repeat = max(1, math.ceil(min_sample_ms / (1e3 * min(sdpa_s))))
    for r in range(rounds):
        for t in threads:
            torch.set_num_threads(t)
            # a fresh random order each round (seeded): the first call after a thread-count switch pays for the
            # switch, and what ran just before changes a short call's time; a fixed order charged the switch to
            # SDPA and doubly_auto (auto 1.23 vs dense 0.85 at L = 256, idle), and a rotation always ran
            # doubly_auto right after SDPA (auto 1.68 vs dense 1.53 under 2 threads: the same code path)
            for m in random.Random(f"{length}-{r}-{t}").sample(methods, len(methods)):
                c, w = step(METHODS[m], repeat)
                cpu[(t, m)].append(c)
                wall[(t, m)].append(w)
    rows = []
    for t in threads:
        base_cpu, base_wall = statistics.median(cpu[(t, "sdpa")]), statistics.median(wall[(t, "sdpa")])
        for m in methods:
            c, w = statistics.median(cpu[(t, m)]), statistics.median(wall[(t, m)])
            rows.append(dict(length=length, threads=t, method=m, mode="fwd_bwd", rounds=rounds,
                             calls_per_sample=repeat,
                             cpu_ms=1e3 * c, wall_ms=1e3 * w, cpu_vs_sdpa=c / base_cpu, wall_vs_sdpa=w / base_wall,
                             cpu_ratio_per_round=[a / b for a, b in zip(cpu[(t, m)], cpu[(t, "sdpa")])],
                             note=""))
    return rows


def format_tables(rows: list[dict[str, object]], methods: list[str]) -> str:
    """Markdown: one table per clock; rows (L, threads), SDPA's own median in ms, then ratios to SDPA."""
    out = []
    for clock, label in (("cpu", "process CPU time"), ("wall", "wall time")):
        out.append(f"**Time / SDPA, forward+backward, {label}** (the SDPA column is SDPA's median in ms)\n")
        out.append("| L | threads | SDPA ms | " + " | ".join(m for m in methods if m != "sdpa") + " |")
        out.append("|---:|---:|---:|" + "---:|" * (len(methods) - 1))
        keys = sorted({(r["length"], r["threads"]) for r in rows})
        for length, t in keys:
            cells = {r["method"]: r for r in rows if (r["length"], r["threads"]) == (length, t)}
            base = cells["sdpa"][f"{clock}_ms"]
            shown = []
            for m in methods:
                if m == "sdpa":
                    continue
                r = cells.get(m)
                shown.append("skipped" if r is None or r[f"{clock}_vs_sdpa"] is None else f"{r[f'{clock}_vs_sdpa']:.2f}")
            out.append(f"| {length} | {t} | {base:.1f} | " + " | ".join(shown) + " |")
        out.append("")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=list(LENGTHS))
    parser.add_argument("--threads", type=int, nargs="+", default=list(THREADS))
    parser.add_argument("--methods", nargs="+", choices=list(METHODS), default=list(METHODS),
                        help="SDPA always runs as the baseline")
    parser.add_argument("--rounds", type=int, default=3,
                        help="interleaved rounds (median, after one warm-up) at the longest length; a length L "
                             "gets rounds * min(7, longest // L), as short calls scatter more and cost little")
    parser.add_argument("--min-sample-ms", type=float, default=100.0,
                        help="a timed sample repeats one method back to back until it lasts about this long")
    parser.add_argument("--dense-budget-gib", type=float, default=2.0,
                        help="skip doubly_dense where its (B, H, L, L) matrices would need more (default 2)")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = parser.parse_args(argv)
    if args.rounds < 1 or min(args.threads) < 1 or min(args.lengths) < 1:
        raise SystemExit("--rounds, --threads and --lengths must be positive")
    if not args.min_sample_ms >= 0:
        raise SystemExit(f"--min-sample-ms {args.min_sample_ms}: must be >= 0")
    methods = ["sdpa", *[m for m in args.methods if m != "sdpa"]]
    started, load_before, t0 = time.strftime("%Y-%m-%d %H:%M:%S %Z"), _load(), time.perf_counter()
    machine = machine_description(max(args.threads))
    print(f"# {started}; {machine}; load average {load_before}", flush=True)
    rows: list[dict[str, object]] = []
    for length in args.lengths:
        skipped = [m for m in methods if m in DENSE and dense_gib(length) > args.dense_budget_gib]
        rounds = args.rounds * min(7, max(1, max(args.lengths) // length))
        measured = run_length(length, [m for m in methods if m not in skipped], args.threads, rounds,
                              args.min_sample_ms)
        for t in args.threads:
            measured += [dict(length=length, threads=t, method=m, mode="fwd_bwd", rounds=0, calls_per_sample=0,
                              cpu_ms=None,
                              wall_ms=None, cpu_vs_sdpa=None, wall_vs_sdpa=None, cpu_ratio_per_round=[],
                              note=f"skipped: needs ~{dense_gib(length):.1f} GiB > {args.dense_budget_gib:g} GiB")
                         for m in skipped]
        rows += measured
        print(f"L={length} done ({time.perf_counter() - t0:.0f} s)", flush=True)
    table = format_tables(rows, methods)
    load_after = _load()
    header = (f"Date {started}; machine: {machine}; load average before {load_before}, after {load_after}; "
              f"(B, H, D) = ({SHAPE['batch']}, {SHAPE['heads']}, {SHAPE['head_dim']}) float32, forward+backward, "
              f"{args.rounds} interleaved rounds at L = {max(args.lengths)} (median), "
              f"{args.rounds} x min(7, {max(args.lengths)} // L) at shorter L; a sample repeats a method until "
              f"it lasts >= {args.min_sample_ms:g} ms; {time.perf_counter() - t0:.0f} s "
              "in all.\n")
    print("\n" + header + "\n" + table)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = out / f"attention-interleaved-cpu-{time.strftime('%Y%m%d-%H%M%S')}"
    meta = dict(date=started, machine=machine, load_before=load_before, load_after=load_after,
                seconds=time.perf_counter() - t0, shape=SHAPE, dtype="float32", mode="fwd_bwd", rounds=args.rounds,
                min_sample_ms=args.min_sample_ms, command="python benchmarks/attention.py " + " ".join(sys.argv[1:] if argv is None else argv))
    table_csv = io.StringIO(newline="")
    writer = csv.DictWriter(table_csv, fieldnames=[k for k in rows[0] if k != "cpu_ratio_per_round"],
                            extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    # atomic, never through a link (probattn.io)
    write_text(f"{stem}.json", json.dumps({"meta": meta, "rows": rows}, indent=1))
    write_text(f"{stem}.csv", table_csv.getvalue())
    write_text(f"{stem}.md", header + "\n" + table)
    print(f"wrote {stem}.json, .csv and .md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
