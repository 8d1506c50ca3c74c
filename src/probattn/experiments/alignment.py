"""Alignment attention (Zhang et al. 2021) on a pretrained encoder: calibration under domain shift.

The paper's claim (research notes alignment.md §6): matching each head's key and query distributions
improves accuracy and calibration (ECE) in domain and, more so, out of domain. At CPU scale: the real
pretrained all-MiniLM-L6-v2 fine-tuned on Rotten Tomatoes (split by movie), tested on held-out movies and
on Amazon Fine Food reviews (out of domain), for the variants ``softmax`` (plain fine-tuning), ``alignment``
(CT, bidirectional conditional transport) and ``alignment-gan`` (adversarial), with ``λ = 0.01`` as in the
authors' script. Fine-tuning MiniLM took 0.9-1.6 s per step at batch 16 on 2 CPU cores (softmax, CT, GAN in
docs/experiments.md), so the budget is set by ``--max-steps`` and ``--seeds``.

Run it with ``probattn experiment alignment``; it is :func:`probattn.experiments.compare.compare` with the
``minilm-full`` preset (every MiniLM layer fine-tuned).
"""

from __future__ import annotations

import argparse

from probattn.experiments.compare import COLUMNS_IN_DOMAIN, COLUMNS_OOD, add_run_arguments, run_compare
from probattn.experiments.results import Column

__all__ = ["TABLES", "add_arguments", "run"]

TABLES = {
    "In domain: Rotten Tomatoes test (held-out movies)": COLUMNS_IN_DOMAIN,
    "Out of domain: Amazon Fine Food reviews": COLUMNS_OOD,
    "Key/query alignment and cost (256 test sentences)": [
        Column("kq_alignment", "k/q distance (MMD²)", False, 4),
    ],
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--variants", nargs="+", default=["softmax", "alignment", "alignment-gan"],
                        help="default: softmax alignment alignment-gan")
    add_run_arguments(parser, seeds=[0], max_steps=150, output="probattn-experiments/alignment", ood_examples=1000)
    parser.add_argument("--max-train-examples", type=int, default=None, help="train on a random subset")


def run(args: argparse.Namespace) -> int:
    overrides = {} if args.max_train_examples is None else {"max_train_examples": args.max_train_examples}
    return run_compare(args, name="experiment alignment", preset="minilm-full", variants=args.variants,
                       overrides=overrides, title="Alignment attention on MiniLM: Rotten Tomatoes -> Amazon",
                       tables=TABLES)
