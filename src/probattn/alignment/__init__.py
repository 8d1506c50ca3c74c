"""Alignment attention: match each head's key and query distributions (Zhang et al., NeurIPS 2021).

See docs/alignment.md. Public API: :class:`AlignmentRegularizer` (variants ``ct``, ``gan``, ``mmd``,
``sinkhorn``), :func:`attach_alignment` / :func:`alignment_loss` / :func:`detach_alignment` for whole models,
and :class:`BayesianAttention` (stochastic attention weights with a closed-form KL).
"""

from probattn.alignment.bam import BayesianAttention
from probattn.alignment.collect import (
    AlignmentStats,
    alignment_loss,
    alignment_parameter_groups,
    attach_alignment,
    attached_regularizers,
    default_predicate,
    detach_alignment,
    strip_alignment_state,
)
from probattn.alignment.grad_reverse import grad_reverse
from probattn.alignment.regularizer import AXES, VARIANTS, AlignmentRegularizer, alignment_distance

__all__ = [
    "AXES",
    "VARIANTS",
    "AlignmentRegularizer",
    "AlignmentStats",
    "BayesianAttention",
    "alignment_distance",
    "alignment_loss",
    "alignment_parameter_groups",
    "attach_alignment",
    "attached_regularizers",
    "default_predicate",
    "detach_alignment",
    "grad_reverse",
    "strip_alignment_state",
]
