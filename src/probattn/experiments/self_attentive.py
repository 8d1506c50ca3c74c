"""Lin et al. (2017) self-attentive sentence classifier with and without repulsive hops (An et al. 2020, §5.1).

The repulsive paper's setting (research notes repulsive.md §5.1, "Age" row): BiLSTM + ``r = 30`` attention
hops + MLP, Adam 5e-4, dropout 0.3, gradient clipping 0.5, SVGD over the hops (``W_s2`` rows) with
``α = 0.01``. At CPU scale: 64-d embeddings and LSTM, Rotten Tomatoes (split by movie) instead of Yelp/Age,
Amazon reviews as the out-of-domain set, 3 seeds, ``--max-steps`` optimizer steps.

Reported: accuracy and ECE, and hop diversity: mean pairwise Jensen–Shannon divergence between the hops'
attention distributions (bits, higher = more diverse) and Lin et al.'s redundancy ``‖A Aᵀ − I‖_F`` (lower =
more diverse). Both are measured on the first 256 test sentences.

Run it with ``probattn experiment self-attentive``; it is the compare study
(:class:`probattn.experiments.compare.CompareStudy`) with the ``self-attentive`` preset and the variants
``softmax`` (no repulsion) and ``repulsive``.
"""

from __future__ import annotations

import argparse
import math
from typing import Any

from probattn.experiments import runner
from probattn.experiments.compare import ACCURACY, ECE, CompareStudy, Metric, Table

__all__ = ["STUDY", "TABLES", "add_arguments", "run"]

TABLES = (
    Table("Accuracy and calibration: Rotten Tomatoes test", (ACCURACY, ECE), "test"),
    Table("Out of domain: Amazon", (ACCURACY, ECE), "ood"),
    Table("Hop diversity (256 test sentences)", (Metric("head_diversity", "hop diversity (JS, bits)", True,
                                                        bounds=(0.0, 1.0)),
                                                 Metric("lin_redundancy", "‖AAᵀ−I‖_F", False, bounds=(0.0, math.inf))),
          None),
)


class SelfAttentiveStudy(CompareStudy):
    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        super().add_arguments(parser)
        parser.add_argument("--hops", type=int, default=30, help="attention hops r (default 30, as in the paper)")
        parser.add_argument("--alpha", type=float, default=0.01, help="repulsion weight α (default 0.01, Age preset)")

    def extra_overrides(self, args: argparse.Namespace) -> dict[str, Any]:
        return {"num_heads": args.hops, "repulsive_alpha": args.alpha}


STUDY = SelfAttentiveStudy(name="experiment self-attentive", title="Self-attentive classifier ± repulsive hops",
                           preset="self-attentive", tables=TABLES, default_variants=("softmax", "repulsive"),
                           output="probattn-experiments/self-attentive", max_steps=300)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    runner.add_arguments(parser, STUDY)


def run(args: argparse.Namespace) -> int:
    return runner.main(STUDY, args)
