"""``probattn bench``: time and measure attention variants against SDPA softmax on this machine.

The cases of one shape (every method, forward or forward+backward) run in one fresh Python subprocess, SDPA
first. A case's peak memory is the resident-set high-water mark (``/proc/self/status`` ``VmHWM``, reset
through ``/proc/self/clear_refs`` before the case) above the resident set once its inputs exist, with glibc's
mmap threshold pinned (``MALLOC_MMAP_THRESHOLD_``) so that freed tensors leave the resident set; a small
warm-up call of the same method runs before the reset so one-time allocations are not counted. The timed
calls run after glibc's usual thresholds are restored (the pin would charge page faults to every slab). Times are
the median over repeats (fewer for cases slower than ``CASE_SECONDS``) of process CPU time (default: steady on a
shared machine) or wall-clock time (``--clock wall``). Both are reported as ratios to
``scaled_dot_product_attention`` at the same shape, measured in the same run.

Methods: ``sdpa`` (softmax, the baseline), ``naive_doubly`` (materialized doubly-normalized attention in
plain autograd, the way one would first write it), probattn's ``doubly_dense`` / ``doubly_chunked``
(``impl="dense"`` / ``"chunked"``), ``hybrid_chunked`` and ``sinkhorn_chunked`` (3 iterations). Dense
methods whose ``(B, H, L, L)`` matrices would exceed ``--memory-budget-gib`` are skipped and marked so.
CPU only: no GPU path has been measured yet.
"""

from __future__ import annotations

import argparse
import csv
import ctypes
import ctypes.util
import io
import json
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from probattn.io import write_text

__all__ = ["METHODS", "Case", "add_arguments", "format_table", "measure", "run", "run_case", "run_grid"]

METHODS: tuple[str, ...] = (
    "sdpa", "naive_doubly", "doubly_dense", "doubly_chunked", "hybrid_chunked", "sinkhorn_chunked",
)
DENSE_METHODS = frozenset({"naive_doubly", "doubly_dense"})
MODES: tuple[str, ...] = ("fwd", "fwd_bwd")
DEFAULT_LENGTHS = (256, 1024)
QUICK_LENGTHS = (256, 512)
CASE_SECONDS = 20.0  # time budget for the timed repeats of one case (at least one repeat always runs)


@dataclass(frozen=True)
class Case:
    """One measurement: ``method`` on ``(batch, heads, length, head_dim)`` float32 inputs, ``mode`` fwd|fwd_bwd."""

    method: str
    length: int
    mode: str
    batch: int = 1
    heads: int = 8
    head_dim: int = 64
    repeats: int = 3
    threads: int = 1
    clock: str = "wall"


def _naive_doubly(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Doubly-normalized attention written directly: column softmax over queries, then row renormalization."""
    scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    weights = torch.softmax(scores - torch.logsumexp(scores, dim=-2, keepdim=True), dim=-1)
    return weights @ v


def _method(name: str) -> Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]:
    from probattn.functional import attention

    table: dict[str, Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]] = {
        "sdpa": torch.nn.functional.scaled_dot_product_attention,
        "naive_doubly": _naive_doubly,
        "doubly_dense": lambda q, k, v: attention(q, k, v, normalization="doubly", impl="dense"),
        "doubly_chunked": lambda q, k, v: attention(q, k, v, normalization="doubly", impl="chunked"),
        "hybrid_chunked": lambda q, k, v: attention(q, k, v, normalization="hybrid", impl="chunked"),
        "sinkhorn_chunked": lambda q, k, v: attention(q, k, v, normalization="sinkhorn", sinkhorn_iters=3,
                                                      impl="chunked"),
    }
    return table[name]


def dense_bytes(case: Case) -> int:
    """Rough peak of a materialized method: 3 (forward) or 6 (forward+backward) float32 ``(B, H, L, L)`` matrices."""
    return case.batch * case.heads * case.length**2 * 4 * (3 if case.mode == "fwd" else 6)


def _status_kib(field: str) -> int | None:
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _reset_peak_rss() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as refs:
            refs.write("5")
        return True
    except OSError:
        return False


def _set_malloc(*, measuring: bool) -> None:
    """glibc only: pin the mmap threshold for a memory measurement, or restore usual thresholds for timing.

    Measuring: every allocation above 64 KiB is mapped on its own and unmapped when freed, so the resident set
    follows the live tensors (``MALLOC_MMAP_THRESHOLD_`` does the same for the process start), and what earlier
    cases freed is trimmed. Timing: with the pin every slab of the chunked path would pay page faults a normal
    process does not (measured: 50 s of system time in a 4096-length grid), so set the values glibc's adaptive
    defaults end at (32 MiB mmap threshold, 64 MiB trim threshold).
    """
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallopt(-3, 64 << 10 if measuring else 32 << 20)  # M_MMAP_THRESHOLD
        libc.mallopt(-1, 128 << 10 if measuring else 64 << 20)  # M_TRIM_THRESHOLD
        if measuring:
            libc.malloc_trim(0)
    except (OSError, AttributeError):
        pass


def run_case(case: Case) -> dict[str, object]:
    """Measure ``case`` in this process: peak extra memory of the first call, then the median of ``repeats``."""
    torch.set_num_threads(case.threads)
    fn = _method(case.method)
    gen = torch.Generator().manual_seed(0)
    shape = (case.batch, case.heads, case.length, case.head_dim)
    train = case.mode == "fwd_bwd"
    q, k, v = (torch.randn(shape, generator=gen).requires_grad_(train) for _ in range(3))
    grad_out = torch.randn(shape, generator=gen)
    clock = time.process_time if case.clock == "cpu" else time.perf_counter

    def step(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
        if train:
            q.grad = k.grad = v.grad = None
            fn(q, k, v).backward(grad_out[:, :, : q.shape[2]])
        else:
            with torch.inference_mode():
                fn(q, k, v)

    step(*(x[:, :, :16].detach().requires_grad_(train) for x in (q, k, v)))  # one-time allocations
    _set_malloc(measuring=True)
    exact = _reset_peak_rss() and _status_kib("VmHWM") is not None
    before = _status_kib("VmRSS") if exact else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = clock()
    step(q, k, v)
    first = clock() - start
    after = _status_kib("VmHWM") if exact else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    _set_malloc(measuring=False)
    times = []
    for _ in range(max(1, min(case.repeats, int(CASE_SECONDS / max(first, 1e-9))))):
        start = clock()
        step(q, k, v)
        times.append(clock() - start)
    return asdict(case) | {
        "repeats": len(times),
        "median_ms": 1e3 * statistics.median(times),
        "peak_mib": max(0, (after or 0) - (before or 0)) / 1024,
        "peak_method": "VmHWM" if exact else "ru_maxrss",
        "note": "",
    }


def measure(cases: list[Case], *, timeout_s: float = 3600.0) -> list[dict[str, object]]:
    """Run :func:`run_case` for each case in one fresh subprocess; failures become rows with a note."""
    env = os.environ | {"MALLOC_MMAP_THRESHOLD_": "65536", "OMP_NUM_THREADS": str(cases[0].threads)}
    cmd = [sys.executable, "-m", "probattn.benchmarking", "--worker", json.dumps([asdict(c) for c in cases])]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout_s, check=False)
        rows = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
        note = "failed: " + ((done.stderr.strip().splitlines() or ["no output"])[-1])[:200]
    except subprocess.TimeoutExpired as exc:
        rows = [json.loads(line) for line in (exc.stdout or b"").decode().splitlines() if line.startswith("{")]
        note = f"timed out after {timeout_s:.0f} s"
    return rows + [asdict(c) | {"median_ms": None, "peak_mib": None, "note": note} for c in cases[len(rows):]]


def run_grid(lengths, modes, methods, *, batch=1, heads=8, head_dim=64, repeats=3, threads=1, clock="wall",
             memory_budget_gib=4.0, progress: Callable[[dict[str, object]], None] | None = None):
    """Measure every (length, mode, method); SDPA first at each shape. Returns rows with ratios to SDPA."""
    rows: list[dict[str, object]] = []
    for length in lengths:
        for mode in modes:
            cases = [Case(m, length, mode, batch, heads, head_dim, repeats, threads, clock)
                     for m in ("sdpa", *[m for m in methods if m != "sdpa"])]
            too_big = [c for c in cases if c.method in DENSE_METHODS and dense_bytes(c) > memory_budget_gib * 2**30]
            measured = iter(measure([c for c in cases if c not in too_big]))
            base: dict[str, object] = {}
            for case in cases:
                if case in too_big:
                    row = asdict(case) | {"median_ms": None, "peak_mib": None,
                                          "note": f"skipped: needs ~{dense_bytes(case) / 2**30:.1f} GiB "
                                                  f"> budget {memory_budget_gib:g} GiB"}
                else:
                    row = next(measured)
                base = row if case.method == "sdpa" else base
                for key, ratio in (("median_ms", "time_vs_sdpa"), ("peak_mib", "memory_vs_sdpa")):
                    mine, theirs = row.get(key), base.get(key)
                    row[ratio] = mine / theirs if mine is not None and theirs else None
                if case.method in methods:
                    rows.append(row)
                    if progress is not None:
                        progress(row)
    return rows


def _fmt(value: object, digits: int) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def format_table(rows: list[dict[str, object]]) -> str:
    """Markdown table: one line per case, times in ms and peak extra memory in MiB, with ratios to SDPA."""
    lines = ["| L | mode | method | median ms | time / SDPA | peak MiB | memory / SDPA | note |",
             "|---:|---|---|---:|---:|---:|---:|---|"]
    for r in rows:
        lines.append(
            f"| {r['length']} | {r['mode']} | {r['method']} | {_fmt(r['median_ms'], 1)} | "
            f"{_fmt(r['time_vs_sdpa'], 2)} | {_fmt(r['peak_mib'], 1)} | {_fmt(r['memory_vs_sdpa'], 2)} | {r['note']} |"
        )
    return "\n".join(lines)


def machine_description(threads: int) -> str:
    return (f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
            f"{threads} thread(s), Python {platform.python_version()}")


def write_results(rows: list[dict[str, object]], out_dir: str | Path, meta: dict[str, object]) -> list[Path]:
    """Write ``attention-<stamp>.csv`` / ``.json`` / ``.md`` under ``out_dir``; returns the paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    paths = [out / f"attention-cpu-{stamp}.{ext}" for ext in ("csv", "json", "md")]
    table = io.StringIO(newline="")
    writer = csv.DictWriter(table, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    write_text(paths[0], table.getvalue())  # atomic, never through a link
    write_text(paths[1], json.dumps({"meta": meta, "rows": rows}, indent=1))
    write_text(paths[2], f"Machine: {meta['machine']}; clock: {meta['clock']}; command: `{meta['command']}`\n\n"
                        + format_table(rows) + "\n")
    return paths


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--lengths", type=int, nargs="+", default=list(DEFAULT_LENGTHS), metavar="L",
                        help="sequence lengths (default: %(default)s)")
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES), help="fwd and/or fwd_bwd")
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS), metavar="METHOD",
                        help=f"subset of {', '.join(METHODS)} (SDPA always runs as the baseline)")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--head-dim", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per case after one warm-up call")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch CPU threads")
    parser.add_argument("--clock", choices=("wall", "cpu"), default="cpu",
                        help="process CPU time (default: steady when the machine is shared), or wall-clock time")
    parser.add_argument("--memory-budget-gib", type=float, default=4.0,
                        help="skip dense methods whose score matrices would need more than this")
    parser.add_argument("--out", default=None, help="folder for CSV/JSON/Markdown results (default: print only)")
    parser.add_argument("--quick", action="store_true", help=f"small grid: lengths {QUICK_LENGTHS}, 2 repeats")


def run(args: argparse.Namespace) -> int:
    lengths = list(QUICK_LENGTHS) if args.quick else list(args.lengths)
    repeats = 2 if args.quick else args.repeats
    for name, value in (("--lengths", min(lengths)), ("--batch", args.batch), ("--heads", args.heads),
                        ("--head-dim", args.head_dim), ("--repeats", repeats), ("--threads", args.threads)):
        if value < 1:
            raise ValueError(f"{name} must be at least 1, got {value}")
    if args.memory_budget_gib <= 0:
        raise ValueError(f"--memory-budget-gib must be positive, got {args.memory_budget_gib}")
    print(f"# {machine_description(args.threads)}; clock: {args.clock}", flush=True)
    rows = run_grid(lengths, args.modes, args.methods, batch=args.batch, heads=args.heads, head_dim=args.head_dim,
                    repeats=repeats, threads=args.threads, clock=args.clock, memory_budget_gib=args.memory_budget_gib,
                    progress=lambda r: print(format_table([r]).splitlines()[-1], flush=True))
    print(format_table(rows))
    if args.out:
        meta = {"machine": machine_description(args.threads), "clock": args.clock,
                "command": " ".join(["probattn bench", *sys.argv[1:]] if "bench" in sys.argv else sys.argv)}
        for path in write_results(rows, args.out, meta):
            print(f"wrote {path}")
    return 0


def _worker_main() -> int:
    parser = argparse.ArgumentParser(description="internal: measure cases and print each as a JSON line")
    parser.add_argument("--worker", required=True)
    for fields in json.loads(parser.parse_args().worker):
        print(json.dumps(run_case(Case(**fields))), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(_worker_main())
