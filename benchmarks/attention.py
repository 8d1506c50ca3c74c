"""Attention benchmark grid: SDPA softmax vs naive / dense / chunked doubly, hybrid and Sinkhorn attention.

Full grid (sequence lengths 256, 1024, 4096, 8192; 8 heads of 64 dims; batch 1; float32 on CPU; forward and
forward+backward), results written to benchmarks/results/ and printed as a table::

    python benchmarks/attention.py                       # the full grid (tens of minutes on 2 cores)
    python benchmarks/attention.py --quick               # lengths 256 and 512, for development
    python benchmarks/attention.py --threads 1 --clock cpu   # steadier on a shared machine

Same options as ``probattn bench`` (see ``probattn bench --help``), which runs a small grid by default.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from probattn import benchmarking

FULL_LENGTHS = [256, 1024, 4096, 8192]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    benchmarking.add_arguments(parser)
    parser.set_defaults(lengths=FULL_LENGTHS, out=str(Path(__file__).parent / "results"))
    return benchmarking.run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
