"""Where attention layers hand their per-head queries and keys to regularizers and probes.

Every attention implementation in probattn (``probattn.nn.MultiheadAttention`` and the Hugging Face
attention function in ``probattn.hf``) calls :func:`observe_qk` once per forward with the projected, unscaled
per-head queries and keys (after rotary embeddings, before the ``1/sqrt(d)`` scale); a caller may skip the
call, and the work of preparing its arguments, when :func:`is_observed` says nothing is attached.

* A regularizer attaches itself as the submodule ``module.probattn_alignment`` (so it is saved with the model,
  moved by ``.to()`` and synchronised by DDP) and exposes ``observe(q, k, *, query_valid, key_valid)``.
  It is called only in training mode with grad enabled. Under activation checkpointing the recomputation
  in backward calls it again; the non-reentrant ``torch.utils.checkpoint`` (``use_reentrant=False``, HF's
  default) runs the first forward with grad and records the term, while the reentrant variant runs it under
  ``no_grad``, so no term can be recorded there (``alignment_loss`` then raises).
* A probe (diagnostics) is a plain object stored as ``module.probattn_probe`` with the same ``observe``
  method; it is called in every mode (diagnostics run in eval under ``torch.no_grad``).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

REGULARIZER_ATTR = "probattn_alignment"
PROBE_ATTR = "probattn_probe"

__all__ = ["PROBE_ATTR", "REGULARIZER_ATTR", "is_observed", "observe_qk"]


def is_observed(module: nn.Module) -> bool:
    """Whether :func:`observe_qk` would hand anything over now: lets a caller skip work only observers need."""
    if getattr(module, PROBE_ATTR, None) is not None:
        return True
    return getattr(module, REGULARIZER_ATTR, None) is not None and module.training and torch.is_grad_enabled()


def observe_qk(
    module: nn.Module, q: Tensor, k: Tensor, *, query_valid: Tensor | None, key_valid: Tensor | None
) -> None:
    """Pass ``q (B, H, Lq, d)`` and ``k (B, H_kv, Lk, d)`` to what is attached to ``module``, if anything.

    ``query_valid (B, Lq)`` / ``key_valid (B, Lk)`` are bool (True = real token) or None (all real).
    """
    probe = getattr(module, PROBE_ATTR, None)
    if probe is not None:
        probe.observe(q.detach(), k.detach(), query_valid=query_valid, key_valid=key_valid)
    regularizer = getattr(module, REGULARIZER_ATTR, None)
    if regularizer is None or not module.training or not torch.is_grad_enabled():
        return
    regularizer.observe(q, k, query_valid=query_valid, key_valid=key_valid)
