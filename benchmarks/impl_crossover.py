"""Where ``impl="auto"`` should switch: chunked (slab) vs dense time for doubly / hybrid / Sinkhorn attention.

For each shape ``(B, H, L, D)`` (float32, CPU, one thread, process CPU time, median of ``--repeats``), prints
the ratio chunked / dense for the forward pass and for forward+backward, with the number of scores
``B·H·L·L`` (the quantity ``probattn.functional.streaming.prefer_chunked`` looks at); writes JSON.

    python benchmarks/impl_crossover.py
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

from probattn.benchmarking import machine_description
from probattn.functional import attention

SHAPES = [(1, 8, 128, 64), (1, 8, 256, 64), (1, 8, 512, 64), (1, 8, 1024, 64), (16, 12, 128, 32), (16, 12, 512, 32)]
NORMALIZATIONS = ("doubly", "hybrid", "sinkhorn")


def median_seconds(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.process_time()
        fn()
        times.append(time.process_time() - start)
    return statistics.median(times)


def measure(shape: tuple[int, int, int, int], normalization: str, impl: str, repeats: int) -> tuple[float, float]:
    """(forward seconds, forward+backward seconds) of one attention call."""
    q, k, v = (torch.randn(*shape, requires_grad=True) for _ in range(3))

    def forward():
        with torch.no_grad():
            attention(q, k, v, normalization=normalization, impl=impl)

    def forward_backward():
        q.grad = k.grad = v.grad = None
        attention(q, k, v, normalization=normalization, impl=impl).sum().backward()

    return median_seconds(forward, repeats), median_seconds(forward_backward, repeats)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    torch.manual_seed(0)
    rows = []
    print("| B, H, L, D | scores | normalization | fwd chunked/dense | fwd+bwd chunked/dense |")
    print("|---|---:|---|---:|---:|")
    for shape in SHAPES:
        scores = shape[0] * shape[1] * shape[2] * shape[2]
        for normalization in NORMALIZATIONS:
            chunked = measure(shape, normalization, "chunked", args.repeats)
            dense = measure(shape, normalization, "dense", args.repeats)
            row = dict(shape=list(shape), scores=scores, normalization=normalization,
                       fwd_ratio=chunked[0] / dense[0], fwd_bwd_ratio=chunked[1] / dense[1])
            rows.append(row)
            print(f"| {shape} | 2**{scores.bit_length() - 1} | {normalization} | {row['fwd_ratio']:.2f} | "
                  f"{row['fwd_bwd_ratio']:.2f} |", flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"impl-crossover-cpu-{time.strftime('%Y%m%d-%H%M%S')}.json"
    meta = {"machine": machine_description(1), "clock": "cpu", "command": "python benchmarks/impl_crossover.py"}
    path.write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
