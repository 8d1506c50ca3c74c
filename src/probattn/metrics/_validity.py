"""Padding masks for the metrics, read through :mod:`probattn.masks` (the one place that interprets masks)."""

from __future__ import annotations

from torch import Tensor

from probattn.masks import build_mask_spec


def _renamed(exc: Exception, names: dict[str, str]) -> Exception:
    message = str(exc)
    for core_name, our_name in names.items():
        message = message.replace(core_name, our_name)
    return type(exc)(message)


def validity(
    weights: Tensor, query_valid: Tensor | None, key_valid: Tensor | None
) -> tuple[Tensor | None, Tensor | None]:
    """Check ``query_valid (B, Lq)`` / ``key_valid (B, Lk)`` against attention weights ``(B, H, Lq, Lk)``.

    Returns bool tensors (True = real token) or None (every token real).
    """
    if not hasattr(weights, "dim") or weights.dim() != 4:
        shape = tuple(weights.shape) if hasattr(weights, "shape") else type(weights).__name__
        raise ValueError(f"attention weights must have shape (batch, heads, q_len, k_len), got {shape}")
    b, h, lq, lk = weights.shape
    try:
        spec = build_mask_spec(
            batch=b, heads=h, q_len=lq, k_len=lk, device=weights.device,
            key_padding_mask=key_valid, query_padding_mask=query_valid,
        )
    except (ValueError, TypeError) as exc:
        raise _renamed(exc, {"key_padding_mask": "key_valid", "query_padding_mask": "query_valid"}) from None
    return spec.query_valid, spec.key_valid


def token_validity(x: Tensor, valid: Tensor | None, name: str) -> Tensor | None:
    """Check a ``(B, L)`` padding mask ``name`` against per-head vectors ``x (B, H, L, d)``; bool or None."""
    if x.dim() != 4:
        raise ValueError(f"per-head vectors must have shape (batch, heads, length, dim), got {tuple(x.shape)}")
    b, _, n, _ = x.shape
    try:
        spec = build_mask_spec(batch=b, heads=1, q_len=n, k_len=n, device=x.device, query_padding_mask=valid)
    except (ValueError, TypeError) as exc:
        raise _renamed(exc, {"query_padding_mask": name}) from None
    return spec.query_valid
