"""Training-step time of a MiniLM-shaped encoder for every attention mechanism, as ratios to softmax.

Model: token embedding + 6 ``torch.nn.TransformerEncoderLayer`` (width 384, 12 heads, feed-forward 1536, no
dropout) whose attention is swapped for ``probattn.nn.MultiheadAttention`` with ``replace_attention``, mean
pooling and a 2-way classifier; AdamW. One step = forward, loss (+ alignment term), backward, optimizer step.

Mechanisms: ``softmax`` (the baseline), ``doubly`` and ``hybrid`` (``impl="auto"``), ``repulsive_svgd``
(softmax attention + ``probattn.repulsive.RepulsiveHeads``, SVGD, rewriting head gradients in every
optimizer step) and ``alignment_ct`` (softmax attention + ``probattn.alignment.attach_alignment(model, "ct")``).
``torch_softmax`` (the unmodified torch layers) is listed for reference.

    python benchmarks/training_step.py                          # lengths 128 and 512, batch 16
    python benchmarks/training_step.py --lengths 128 --steps 2  # quicker
    python benchmarks/training_step.py --device cuda --autocast bf16 --lengths 128 512 2048  # on a GPU
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

from probattn.alignment import alignment_loss, attach_alignment
from probattn.benchmarking import machine_description
from probattn.nn import replace_attention
from probattn.repulsive import RepulsiveHeads

MECHANISMS = ("softmax", "torch_softmax", "doubly", "hybrid", "repulsive_svgd", "alignment_ct")


class Encoder(nn.Module):
    """MiniLM shape: 6 layers, width 384, 12 heads, feed-forward 1536; mean-pooled 2-way classifier."""

    def __init__(self, vocab: int = 1000, width: int = 384, heads: int = 12, layers: int = 6) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, width)
        layer = nn.TransformerEncoderLayer(width, heads, 4 * width, dropout=0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.head = nn.Linear(width, 2)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(self.embed(tokens)).mean(dim=1))


def build(mechanism: str, device: str = "cpu") -> tuple[nn.Module, torch.optim.Optimizer, bool]:
    """(model, optimizer, uses_alignment) for one mechanism; the same initial weights for every mechanism."""
    torch.manual_seed(0)
    model = Encoder().to(device)
    if mechanism != "torch_softmax":
        options = {"normalization": mechanism} if mechanism in ("doubly", "hybrid") else {}
        replace_attention(model, **options)
    if mechanism == "alignment_ct":  # before the optimizer, so that it also trains the auxiliary networks
        attach_alignment(model, "ct")
        model.to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    if mechanism == "repulsive_svgd":
        RepulsiveHeads(model, method="svgd").attach(optimizer)
    return model, optimizer, mechanism == "alignment_ct"


def step_times(mechanism: str, length: int, batch: int, steps: int, clock, device: str = "cpu",
               autocast: str = "none") -> list[float]:
    model, optimizer, aligned = build(mechanism, device)
    model.train()
    gen = torch.Generator().manual_seed(1)
    tokens = torch.randint(0, 1000, (batch, length), generator=gen).to(device)
    labels = torch.randint(0, 2, (batch,), generator=gen).to(device)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    dtype = torch.bfloat16 if autocast == "bf16" else None
    times = []
    for _ in range(steps + 1):  # the first step is a warm-up
        sync()
        start = clock()
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device.split(":")[0], dtype=dtype, enabled=dtype is not None):
            loss = nn.functional.cross_entropy(model(tokens).float(), labels)
            if aligned:
                loss = loss + alignment_loss(model, distance_batch=0)[0]
        loss.backward()
        optimizer.step()
        sync()
        times.append(clock() - start)
    return times[1:]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=[128, 512])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--steps", type=int, default=3, help="timed steps after one warm-up step")
    parser.add_argument("--mechanisms", nargs="+", choices=MECHANISMS, default=list(MECHANISMS))
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall")
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:N] (CUDA steps are timed with synchronize)")
    parser.add_argument("--autocast", choices=("none", "bf16"), default="none", help="bf16 autocast (GPU runs)")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    machine = machine_description(args.threads)
    if args.device.startswith("cuda"):
        machine = f"{torch.cuda.get_device_name(args.device)}, torch {torch.__version__}, autocast {args.autocast}"
    print(f"# {machine}; clock: {args.clock}; batch {args.batch}", flush=True)
    print("| L | mechanism | median step s | time / softmax |\n|---:|---|---:|---:|", flush=True)
    rows = []
    for length in args.lengths:
        base = None
        for mechanism in ("softmax", *[m for m in args.mechanisms if m != "softmax"]):
            median = statistics.median(step_times(mechanism, length, args.batch, args.steps, clock, args.device,
                                                  args.autocast))
            base = median if mechanism == "softmax" else base
            rows.append({"length": length, "mechanism": mechanism, "median_s": median, "vs_softmax": median / base})
            print(f"| {length} | {mechanism} | {median:.3f} | {median / base:.2f} |", flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    kind = "gpu" if args.device.startswith("cuda") else "cpu"
    path = out / f"training-step-{kind}-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps({"machine": machine, "clock": args.clock, "batch": args.batch,
                                "command": " ".join(sys.argv), "rows": rows}, indent=1))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
