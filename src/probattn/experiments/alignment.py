"""Alignment attention (Zhang et al. 2021) on a pretrained encoder: calibration under domain shift.

The paper's claim (research notes alignment.md §6): matching each head's key and query distributions
improves accuracy and calibration (ECE) in domain and, more so, out of domain. At CPU scale: the real
pretrained all-MiniLM-L6-v2 fine-tuned on Rotten Tomatoes (split by movie), tested on held-out movies and
on Amazon Fine Food reviews (out of domain), for the variants ``softmax`` (plain fine-tuning), ``alignment``
(CT, bidirectional conditional transport) and ``alignment-gan`` (adversarial), with ``λ = 0.01`` as in the
authors' script. Fine-tuning MiniLM took 0.9-1.6 s per step at batch 16 on 2 CPU cores (softmax, CT, GAN in
docs/experiments.md), so the budget is set by ``--max-steps`` and ``--seeds``.

Run it with ``probattn experiment alignment``; it is the compare study
(:class:`probattn.experiments.compare.CompareStudy`) with the ``minilm-full`` preset (every MiniLM layer
fine-tuned).
"""

from __future__ import annotations

import argparse

from probattn.experiments import runner
from probattn.experiments.compare import ACCURACY, BRIER, ECE, NLL, CompareStudy, Metric, Table

__all__ = ["STUDY", "TABLES", "add_arguments", "run"]

TABLES = (
    Table("In domain: Rotten Tomatoes test (held-out movies)", (ACCURACY, ECE, NLL, BRIER), "test"),
    Table("Out of domain: Amazon Fine Food reviews", (ACCURACY, ECE, NLL, BRIER), "ood"),
    Table("Key/query alignment (256 test sentences)", (Metric("kq_alignment", "k/q distance (MMD²)", False, 4,
                                                             (0.0, float("inf"))),), None),
)
STUDY = CompareStudy(name="experiment alignment", title="Alignment attention on MiniLM: Rotten Tomatoes -> Amazon",
                     preset="minilm-full", tables=TABLES, default_variants=("softmax", "alignment", "alignment-gan"),
                     default_seeds=(0,), output="probattn-experiments/alignment", max_steps=150, ood_examples=1000)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    runner.add_arguments(parser, STUDY)


def run(args: argparse.Namespace) -> int:
    return runner.main(STUDY, args)
