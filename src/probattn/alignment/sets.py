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


def as_sets(x: Tensor, valid: Tensor | None, axis: str) -> tuple[Tensor, Tensor | None]:
    """``x (B, H, L, f)``, ``valid (B, L)`` bool or None (all valid) -> ``(sets (*, n, f), valid (*, n) | None)``.

    The returned validity broadcasts against the sets' leading and point axes.
    """
    if axis == "tokens":
        return x, None if valid is None else valid[:, None, :]
    if axis == "heads":
        return x.transpose(1, 2), None if valid is None else valid[:, :, None]
    raise ValueError(f"axis must be 'tokens' or 'heads', got {axis!r}")


def masked_mean(values: Tensor, valid: Tensor | None, dim: int = -1) -> Tensor:
    """Mean of ``values`` over ``dim`` counting only entries where ``valid`` (broadcastable; None = all) is True.

    An all-invalid slice gives 0 (callers exclude such sets with :func:`mean_over_sets`).
    """
    if valid is None:
        return values.mean(dim)
    valid = valid.expand_as(values)
    total = values.where(valid, values.new_zeros(())).sum(dim)
    return total / valid.sum(dim).clamp_min(1).to(values.dtype)


def mean_over_sets(values: Tensor, query_valid: Tensor | None, key_valid: Tensor | None) -> Tensor:
    """Average per-set ``values (*,)`` over sets with a valid query and a valid key (valid: ``(*, n)`` or None)."""
    keep = None
    for valid in (query_valid, key_valid):
        if valid is not None:
            has_point = valid.any(-1).expand_as(values)
            keep = has_point if keep is None else keep & has_point
    return masked_mean(values.flatten(), None if keep is None else keep.flatten(), dim=0)
