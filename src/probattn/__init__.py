"""probattn: attention that keeps all its heads useful.

Doubly-normalized (and hybrid, Sinkhorn) attention, repulsive heads (SVGD / SPOS) and key/query alignment
regularizers for PyTorch models and pretrained Hugging Face transformers.
"""

from probattn.functional import attention
from probattn.masks import MaskSpec, build_mask_spec

__version__ = "0.1.0"

__all__ = ["MaskSpec", "__version__", "attention", "build_mask_spec"]
