"""Which vectors are compared with which: turning per-head clouds into comparison sets.

* ``axis="tokens"``: one set per (sequence b, head h) holding that head's vectors at every valid position
  (the paper's "within each head"). Sets have shape ``(B, H, L, f)``.
* ``axis="heads"``: one set per (sequence b, position l) holding the H per-head vectors at that position
  (the authors' released code). Sets have shape ``(B, L, H, f)``.

Every distance in this package returns one value per set; :func:`mean_over_sets` averages the sets that
have at least one valid key and one valid query, so appending padding never changes a term.
"""

from __future__ import annotations

from torch import Tensor

__all__ = ["as_sets", "masked_mean", "mean_over_sets"]


def as_sets(x: Tensor, valid: Tensor, axis: str) -> tuple[Tensor, Tensor]:
    """``x (B, H, L, f)``, ``valid (B, L)`` bool -> ``(sets (*, n, f), valid (*, n))`` (valid broadcastable)."""
    if axis == "tokens":
        return x, valid[:, None, :]
    if axis == "heads":
        return x.transpose(1, 2), valid[:, :, None]
    raise ValueError(f"axis must be 'tokens' or 'heads', got {axis!r}")


def masked_mean(values: Tensor, valid: Tensor, dim: int = -1) -> Tensor:
    """Mean of ``values`` over ``dim`` counting only entries where ``valid`` (broadcastable) is True.

    An all-invalid slice gives 0 (callers exclude such sets with :func:`mean_over_sets`).
    """
    valid = valid.expand_as(values)
    total = values.where(valid, values.new_zeros(())).sum(dim)
    return total / valid.sum(dim).clamp_min(1).to(values.dtype)


def mean_over_sets(values: Tensor, query_valid: Tensor, key_valid: Tensor) -> Tensor:
    """Average per-set ``values (*,)`` over sets with a valid query and a valid key (valid: ``(*, n)``)."""
    has_query = query_valid.any(-1).expand_as(values)
    has_key = key_valid.any(-1).expand_as(values)
    return masked_mean(values.flatten(), (has_query & has_key).flatten(), dim=0)
