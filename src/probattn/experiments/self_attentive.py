"""Lin et al. (2017) self-attentive sentence classifier with and without repulsive hops (An et al. 2020, §5.1).

The repulsive paper's setting (research notes repulsive.md §5.1, "Age" row): BiLSTM + ``r = 30`` attention
hops + MLP, Adam 5e-4, dropout 0.3, gradient clipping 0.5, SVGD over the hops (``W_s2`` rows) with
``α = 0.01``. At CPU scale: 64-d embeddings and LSTM, Rotten Tomatoes (split by movie) instead of Yelp/Age,
Amazon reviews as the out-of-domain set, 3 seeds, ``--max-steps`` optimizer steps.

Reported: accuracy and ECE, and hop diversity: mean pairwise Jensen–Shannon divergence between the hops'
attention distributions (bits, higher = more diverse) and Lin et al.'s redundancy ``‖A Aᵀ − I‖_F`` (lower =
more diverse). Both are measured on the first 256 test sentences.

Run it with ``probattn experiment self-attentive``; it is :func:`probattn.experiments.compare.compare` with the
``self-attentive`` preset and the variants ``softmax`` (no repulsion) and ``repulsive``.
"""

from __future__ import annotations

import argparse

from probattn.experiments.compare import add_run_arguments, run_compare
from probattn.experiments.results import Column

__all__ = ["TABLES", "add_arguments", "run"]

TABLES = {
    "Accuracy and calibration (Rotten Tomatoes test; Amazon out of domain)": [
        Column("accuracy_id", "accuracy", True), Column("ece_id", "ECE", False),
        Column("accuracy_ood", "OOD accuracy", True), Column("ece_ood", "OOD ECE", False),
    ],
    "Hop diversity (256 test sentences)": [
        Column("head_diversity", "hop diversity (JS, bits)", True),
        Column("lin_redundancy", "‖AAᵀ−I‖_F", False),
    ],
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_run_arguments(parser, seeds=[0, 1, 2], max_steps=300, output="probattn-experiments/self-attentive",
                      ood_examples=2000)
    parser.add_argument("--hops", type=int, default=30, help="attention hops r (default 30, as in the paper)")
    parser.add_argument("--alpha", type=float, default=0.01, help="repulsion weight α (default 0.01, Age preset)")


def run(args: argparse.Namespace) -> int:
    return run_compare(args, name="experiment self-attentive", preset="self-attentive",
                       variants=["softmax", "repulsive"],
                       overrides={"num_heads": args.hops, "repulsive_alpha": args.alpha},
                       title="Self-attentive classifier ± repulsive hops", tables=TABLES)
