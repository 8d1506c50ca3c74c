"""SDPA and doubly-normalized (slab path) forward+backward, alternating in one process: the steadiest ratio.

On a shared machine a grid run measures each case at a different moment; alternating the two methods round
by round exposes both to the same load. ``(1, 8, L, 64)`` float32, one thread, process CPU time.

    python benchmarks/interleaved.py 1024:7 4096:5 8192:2     # L:rounds
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path

import torch

from probattn.benchmarking import machine_description
from probattn.functional import attention

METHODS = {
    "sdpa": torch.nn.functional.scaled_dot_product_attention,
    "doubly_chunked": lambda q, k, v: attention(q, k, v, normalization="doubly", impl="chunked"),
}


def main(argv: list[str] | None = None) -> int:
    specs = (sys.argv[1:] if argv is None else argv) or ["1024:7", "4096:5", "8192:2"]
    torch.set_num_threads(1)
    rows = []
    for spec in specs:
        length, rounds = map(int, spec.split(":"))
        generator = torch.Generator().manual_seed(0)
        q, k, v = (torch.randn(1, 8, length, 64, generator=generator).requires_grad_() for _ in range(3))

        def step(fn, q=q, k=k, v=v):
            q.grad = k.grad = v.grad = None
            fn(q, k, v).sum().backward()

        for fn in METHODS.values():  # warm-up
            step(fn)
        times: dict[str, list[float]] = {name: [] for name in METHODS}
        for _ in range(rounds):
            for name, fn in METHODS.items():
                start = time.process_time()
                step(fn)
                times[name].append(time.process_time() - start)
        medians = {name: statistics.median(t) for name, t in times.items()}
        per_round = [a / b for a, b in zip(times["doubly_chunked"], times["sdpa"])]
        rows.append(dict(length=length, rounds=rounds, sdpa_ms=1e3 * medians["sdpa"],
                         doubly_chunked_ms=1e3 * medians["doubly_chunked"],
                         ratio_of_medians=medians["doubly_chunked"] / medians["sdpa"], per_round_ratios=per_round))
        print(f"L={length} rounds={rounds}: SDPA {rows[-1]['sdpa_ms']:.0f} ms, doubly_chunked "
              f"{rows[-1]['doubly_chunked_ms']:.0f} ms, ratio {rows[-1]['ratio_of_medians']:.2f} "
              f"(per round {' '.join(f'{r:.2f}' for r in per_round)})", flush=True)
    out = Path(__file__).parent / "results" / f"interleaved-cpu-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"machine": machine_description(1), "clock": "cpu", "command": "python benchmarks/interleaved.py " + " ".join(specs)}
    out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
