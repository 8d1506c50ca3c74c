"""Time per training step of ``probattn experiment nmt``'s model on the real Bible data, per model size.

Runs ``--steps`` optimizer steps of the softmax variant (and optionally the others) with the experiment's
defaults (batches of up to 2048 padded tokens, BPE 8000) and prints wall and CPU (``time.process_time``)
milliseconds per step, excluding the first ``--skip`` steps. CPU time is the honest number on a shared
machine; with T threads on T idle cores the wall time is about CPU time / T at best.

    PYTHONPATH=src python benchmarks/nmt_step_time.py --sizes small medium --steps 200 --threads 2
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch

from probattn.data.bible import bible_splits
from probattn.experiments.nmt import SIZES, VARIANTS, prepare
from probattn.training.seq2seq import Seq2SeqTrainConfig, train_seq2seq


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", default=["small", "medium"], choices=list(SIZES))
    parser.add_argument("--variants", nargs="+", default=["softmax"], choices=list(VARIANTS))
    parser.add_argument("--steps", nargs="+", type=int, default=[100], help="steps per size (one value or one per size)")
    parser.add_argument("--skip", type=int, default=5, help="warm-up steps left out of the mean")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--max-tokens", type=int, default=2048)
    parser.add_argument("--output", default=None, help="JSON file for the results")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    steps = args.steps * len(args.sizes) if len(args.steps) == 1 else args.steps
    splits = bible_splits()
    tmp = Path(os.environ.get("TMPDIR", "/tmp")) / "probattn-nmt-bench"
    _, data, _ = prepare(splits, tmp, vocab_size=8000, max_length=128, resume=False)
    rows = []
    for size, n in zip(args.sizes, steps):
        for variant in args.variants:
            config = Seq2SeqTrainConfig.from_dict({**SIZES[size], **VARIANTS[variant], "max_steps": n,
                                                   "max_tokens": args.max_tokens, "eval_every": 10**9,
                                                   "checkpoint_every": 0})
            marks = []
            trained = train_seq2seq(config, _no_validation(data), progress=False,
                                    on_step=lambda _, marks=marks: marks.append((time.perf_counter(), time.process_time())))
            wall = [b[0] - a[0] for a, b in zip(marks[args.skip:], marks[args.skip + 1:])]
            cpu = [b[1] - a[1] for a, b in zip(marks[args.skip:], marks[args.skip + 1:])]
            losses = [h["loss"] for h in trained.history if "loss" in h]
            row = {"size": size, "variant": variant, "steps": n, "threads": args.threads,
                   "parameters": sum(p.numel() for p in trained.model.parameters()),
                   "wall_ms_per_step": 1000 * sum(wall) / len(wall), "cpu_ms_per_step": 1000 * sum(cpu) / len(cpu),
                   "tokens_per_step": sum(h["tokens"] for h in trained.history if "tokens" in h) / n,
                   "first_loss": losses[0], "last_loss": losses[-1]}
            rows.append(row)
            print(json.dumps(row), flush=True)
    if args.output:
        Path(args.output).write_text(json.dumps(rows, indent=2) + "\n")


def _no_validation(data):
    from dataclasses import replace

    return replace(data, validation_sources=data.validation_sources[:1], validation_references=data.validation_references[:1])


if __name__ == "__main__":
    main()
