"""probattn: attention that keeps all its heads useful.

Doubly-normalized (and hybrid, Sinkhorn) attention, repulsive heads (SVGD / SPOS) and key/query alignment
regularizers for PyTorch models and pretrained Hugging Face transformers.

The one-call entry points are exported here; the Hugging Face integration (``probattn.hf``) is imported only
when used, so that ``import probattn`` needs nothing but torch.
"""

from probattn.alignment import AlignmentRegularizer, alignment_loss, attach_alignment, detach_alignment
from probattn.functional import attention
from probattn.masks import MaskSpec, build_mask_spec
from probattn.nn import MultiheadAttention, replace_attention
from probattn.repulsive import RepulsiveHeads, spos_direction, svgd_direction

__version__ = "0.2.0"

__all__ = [
    "AlignmentRegularizer",
    "MaskSpec",
    "MultiheadAttention",
    "RepulsiveHeads",
    "__version__",
    "alignment_loss",
    "attach_alignment",
    "attention",
    "build_mask_spec",
    "detach_alignment",
    "replace_attention",
    "spos_direction",
    "svgd_direction",
]
