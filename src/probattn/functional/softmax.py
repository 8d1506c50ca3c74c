"""Standard (row-normalized) attention: ``softmax_j(S_ij)``, backed by ``scaled_dot_product_attention``."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from probattn.functional._masked import masked_softmax
from probattn.masks import MaskSpec


def softmax_weights(scores: Tensor, spec: MaskSpec) -> Tensor:
    """Row softmax of ``scores (B, H, Lq, Lk)`` over the allowed keys (rows with no key are all zeros)."""
    return masked_softmax(scores, spec.allowed)


def sdpa_attention(
    q: Tensor, k: Tensor, v: Tensor, spec: MaskSpec, *, scale: float, dropout_p: float, causal_only: bool
) -> Tensor:
    """``scaled_dot_product_attention`` with the mask of ``spec``; GQA through ``enable_gqa``.

    ``causal_only`` means the only restriction is causality, which SDPA handles without a mask tensor.
    Rows with no allowed key return zeros (PyTorch's safe softmax).
    """
    gqa = q.shape[1] != k.shape[1]
    if causal_only:
        return F.scaled_dot_product_attention(
            q, k, v, dropout_p=dropout_p, is_causal=True, scale=scale, enable_gqa=gqa
        )
    mask = spec.allowed if spec.bias is None else spec.additive(q.dtype)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p, scale=scale, enable_gqa=gqa)
    row_has_key = spec.row_has_key()
    if row_has_key is not None:  # fully masked rows: exact zeros in every backend, and no gradient
        out = out.masked_fill(~row_has_key, 0.0)
    return out
