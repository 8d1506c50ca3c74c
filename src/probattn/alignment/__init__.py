"""Alignment attention: match each head's key and query distributions (Zhang et al., NeurIPS 2021).

See docs/alignment.md. Public API: :class:`AlignmentRegularizer` (variants ``ct``, ``gan``, ``mmd``,
``sinkhorn``), :func:`attach_alignment` / :func:`alignment_loss` / :func:`detach_alignment` for whole models,
and :class:`BayesianAttention` (stochastic attention weights with a closed-form KL).
"""

from probattn.alignment import collect
from probattn.alignment.bam import BayesianAttention
from probattn.alignment.collect import *  # noqa: F403 (the model-level API, listed in collect.__all__)
from probattn.alignment.grad_reverse import grad_reverse
from probattn.alignment.regularizer import AXES, VARIANTS, AlignmentRegularizer, alignment_distance

__all__ = [
    "AXES",
    "VARIANTS",
    "AlignmentRegularizer",
    "BayesianAttention",
    "alignment_distance",
    "grad_reverse",
    *collect.__all__,
]
