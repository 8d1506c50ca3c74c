"""``probattn adapt``: convert a pretrained encoder and distil it back toward the original on unlabeled text.

    probattn adapt --model minilm --normalization doubly --steps 300 --output runs/minilm-doubly

Texts: Rotten Tomatoes (``--data rotten_tomatoes``, the movie-split train part; held-out cosine on the test
part) or a UTF-8 text file with one sentence per line (the last ``--held-out`` lines are held out). Writes the
adapted model with ``save_pretrained`` (reload it with :func:`probattn.hf.load`) and ``adapt.json``.
"""

from __future__ import annotations

import argparse
import copy
import shutil
import tempfile
import warnings
from pathlib import Path

from probattn.hf.adapt import adapt, sentence_cosine
from probattn.hf.convert import convert
from probattn.hf.pretrained import load_model
from probattn.io import claim_output_dir, write_bytes, write_json

__all__ = ["add_arguments", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="minilm", help="minilm (default) or a local Hugging Face encoder directory")
    parser.add_argument("--normalization", default="doubly", choices=("doubly", "hybrid", "sinkhorn"))
    parser.add_argument("--hybrid-alpha", type=float, default=0.5, help="softmax weight of hybrid")
    parser.add_argument("--sinkhorn-iters", type=int, default=3)
    parser.add_argument("--data", default="rotten_tomatoes", help="rotten_tomatoes or a text file, one sentence a line")
    parser.add_argument("--held-out", type=int, default=500, help="sentences for the held-out cosine (default 500)")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=3e-4)
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--pooled-weight", type=float, default=0.0,
                        help="weight of the sentence-embedding cosine term (default 0: hidden states only)")
    parser.add_argument("--time-budget", type=float, default=None, help="stop after this many CPU seconds")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", default=None, help="directory for the adapted model and adapt.json")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace the files probattn wrote in --output (never other files)")
    parser.add_argument("--trust-remote-code", action="store_true", help="allow a --model folder whose config "
                        "names Python classes of its own (auto_map): runs the .py files in that folder (default: "
                        "refuse such folders)")


def _texts(data: str, held_out: int) -> tuple[list[str], list[str]]:
    if data == "rotten_tomatoes":
        from probattn.data.sources import rotten_tomatoes_splits

        splits = rotten_tomatoes_splits(seed=0)
        return splits.train.texts, splits.test.texts[:held_out]
    path = Path(data)
    if not path.is_file():
        raise FileNotFoundError(f"--data {data}: not rotten_tomatoes and not a file")
    lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if len(lines) <= held_out:
        raise ValueError(f"--data {data}: {len(lines)} sentences, but --held-out {held_out} must leave some to train")
    return lines[:-held_out], lines[-held_out:]


def _save_pretrained(out: Path, model, tokenizer) -> None:
    """``save_pretrained`` of the model and tokenizer into a private folder, then each file moved into ``out``
    through :mod:`probattn.io` (atomic, recorded as probattn's, never over a file probattn did not write)."""
    staging = Path(tempfile.mkdtemp(dir=out, prefix=".probattn-tmp-adapt."))
    try:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        for file in sorted(p for p in staging.rglob("*") if p.is_file() and not p.is_symlink()):
            write_bytes(out / file.relative_to(staging), file.read_bytes())
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def run(args: argparse.Namespace) -> int:
    if args.held_out < 1:
        raise ValueError(f"--held-out {args.held_out}: must be at least 1")
    out = None
    if args.output:  # checked before any work: a folder holding files probattn did not write is refused
        out = claim_output_dir(args.output, command="probattn adapt", overwrite=args.overwrite,
                               will_write=("adapt.json", "config.json", "model.safetensors"))
    train_texts, held = _texts(args.data, args.held_out)
    reference, tokenizer = load_model(args.model, task="encoder",
                                      trust_remote_code=getattr(args, "trust_remote_code", False))
    if tokenizer is None:
        raise ValueError(f"--model {args.model}: the directory holds no tokenizer")
    model = copy.deepcopy(reference)
    with warnings.catch_warnings():  # adapting is the answer to convert's warning
        warnings.simplefilter("ignore", UserWarning)
        convert(model, normalization=args.normalization, hybrid_alpha=args.hybrid_alpha,
                sinkhorn_iters=args.sinkhorn_iters)
    before = sentence_cosine(model, reference, tokenizer, held)
    print(f"held-out cosine to the original before adapting: {before:.4f} ({len(held)} sentences)", flush=True)
    result = adapt(model, reference, train_texts, tokenizer=tokenizer, steps=args.steps, batch_size=args.batch_size,
                   lr=args.lr, max_length=args.max_length, seed=args.seed, pooled_weight=args.pooled_weight,
                   time_budget=args.time_budget,
                   log=lambda step, loss: print(f"step {step}: loss {loss:.4f}", flush=True))
    after = sentence_cosine(model, reference, tokenizer, held)
    print(f"held-out cosine after {result.steps} steps: {after:.4f} (CPU {result.cpu_seconds:.0f} s, "
          f"wall {result.wall_seconds:.0f} s)")
    if out is not None:
        _save_pretrained(out, model, tokenizer)
        report = {"model": args.model, "normalization": args.normalization, "steps": result.steps,
                  "hybrid_alpha": args.hybrid_alpha, "sinkhorn_iters": args.sinkhorn_iters,
                  "cosine_before": before, "cosine_after": after, "cpu_seconds": result.cpu_seconds,
                  "wall_seconds": result.wall_seconds, "losses": result.losses, "held_out": len(held),
                  "lr": args.lr, "pooled_weight": args.pooled_weight, "batch_size": args.batch_size,
                  "max_length": args.max_length}
        write_json(out / "adapt.json", report)
        print(f"wrote {out} (load it with probattn.hf.load)")
    return 0
