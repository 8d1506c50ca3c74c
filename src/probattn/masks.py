"""The one module that interprets attention masks.

Every other part of probattn asks this module; nothing else reads a mask's dtype or polarity.

Conventions accepted here and turned into one :class:`MaskSpec`:

* probattn / SDPA / Hugging Face ``sdpa_mask`` booleans: ``True`` = may attend.
* float additive masks (SDPA, Hugging Face ``eager_mask``): added to the scores. Entries equal to ``-inf``
  or at most ``finfo(dtype).min / 2`` mean "not allowed" (that is how Hugging Face writes them); every other
  entry is a finite bias.
* ``torch.nn.MultiheadAttention`` booleans (``True`` = ignore): converted by :func:`from_torch_mha` only.
* padding: ``key_padding_mask`` / ``query_padding_mask`` of shape ``(B, L)``, ``True`` (or 1) = a real token.
* causality: ``is_causal=True`` (top-left aligned, as in ``scaled_dot_product_attention``).

Semantics the attention kernels rely on (see ``docs/masks.md``):
a pair ``(i, j)`` takes part iff ``query_valid[i] and key_valid[j] and allowed[i, j]`` (and ``j <= i`` when
causal). Padded queries therefore never enter a column statistic, padded keys receive zero mass, and a query
with no allowed key outputs zeros.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = [
    "MaskSpec",
    "add_bias",
    "build_mask_spec",
    "from_hf_attention_mask",
    "from_torch_mha",
    "looks_causal",
]


@dataclass(frozen=True)
class MaskSpec:
    """Which (query, key) pairs take part, and any additive bias.

    Attributes:
        batch, heads, q_len, k_len: the attention problem's sizes ``(B, H, Lq, Lk)``.
        allowed: bool ``(B|1, H|1, Lq, Lk)``, True = may attend; ``None`` when every pair is allowed.
            Already folds in ``query_valid``, ``key_valid`` and causality.
        bias: float ``(B|1, H|1, Lq, Lk)`` finite additive bias, or ``None``.
        query_valid: bool ``(B, Lq)`` (``None`` = all valid). Queries that are padding.
        key_valid: bool ``(B, Lk)`` (``None`` = all valid). Keys that are padding.
        causal: whether a causal (``j <= i``) restriction is part of ``allowed``.
    """

    batch: int
    heads: int
    q_len: int
    k_len: int
    allowed: Tensor | None = None
    bias: Tensor | None = None
    query_valid: Tensor | None = None
    key_valid: Tensor | None = None
    causal: bool = False

    @property
    def is_trivial(self) -> bool:
        """True when nothing is masked and there is no bias."""
        return self.allowed is None and self.bias is None

    def row_has_key(self) -> Tensor | None:
        """bool ``(B|1, H|1, Lq, 1)``: whether each query may attend to at least one key (None = all)."""
        return None if self.allowed is None else self.allowed.any(dim=-1, keepdim=True)

    def column_has_query(self) -> Tensor | None:
        """bool ``(B|1, H|1, 1, Lk)``: whether each key is visible to at least one query (None = all)."""
        return None if self.allowed is None else self.allowed.any(dim=-2, keepdim=True)

    def additive(self, dtype: torch.dtype) -> Tensor | None:
        """Float mask ``(B|1, H|1, Lq, Lk)`` for ``scaled_dot_product_attention``: bias, -inf where not allowed."""
        if self.allowed is None:
            return None if self.bias is None else self.bias.to(dtype)
        base = torch.zeros((), dtype=dtype, device=self.allowed.device) if self.bias is None else self.bias.to(dtype)
        return base.masked_fill(~self.allowed, float("-inf"))


def _check_tensor(name: str, value: object) -> Tensor:
    if not isinstance(value, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor or None, got {type(value).__name__}")
    return value


def _as_validity(name: str, mask: Tensor | None, batch: int, length: int, device: torch.device) -> Tensor | None:
    """Turn a (B, L) padding mask (bool or 0/1 integers, True/1 = real token) into a bool tensor."""
    if mask is None:
        return None
    mask = _check_tensor(name, mask)
    if mask.dim() != 2 or tuple(mask.shape) != (batch, length):
        raise ValueError(
            f"{name} must have shape (batch, length) = ({batch}, {length}), got {tuple(mask.shape)}"
        )
    if mask.dtype == torch.bool:
        out = mask
    elif not mask.is_floating_point() and not mask.is_complex():
        if bool(((mask != 0) & (mask != 1)).any()):
            raise ValueError(f"{name} holds integers other than 0 and 1; use True/1 for real tokens, False/0 for padding")
        out = mask != 0
    else:
        raise TypeError(
            f"{name} must be bool (True = real token) or 0/1 integers, got {mask.dtype}; "
            "for torch.nn.MultiheadAttention's convention (True = ignore) use probattn.masks.from_torch_mha"
        )
    if out.device != device:
        raise ValueError(f"{name} is on {out.device} but the inputs are on {device}; move it with .to({str(device)!r})")
    return out


def _broadcast_check(name: str, mask: Tensor, target: tuple[int, int, int, int]) -> Tensor:
    """Check that ``mask`` broadcasts to ``target`` and return it as 4-D (missing leading dims become 1)."""
    if mask.dim() < 2 or mask.dim() > 4:
        raise ValueError(
            f"{name} must have 2 to 4 dimensions broadcastable to (B, H, Lq, Lk) = {target}, got shape {tuple(mask.shape)}"
        )
    m4 = mask.reshape((1,) * (4 - mask.dim()) + tuple(mask.shape))
    for axis, (have, want) in enumerate(zip(m4.shape, target)):
        if have not in (1, want):
            dims = "BHQK"[axis]
            raise ValueError(
                f"{name} of shape {tuple(mask.shape)} does not broadcast to (B, H, Lq, Lk) = {target} "
                f"(axis {dims}: {have} vs {want})"
            )
    return m4


def _split_attn_mask(mask: Tensor) -> tuple[Tensor | None, Tensor | None]:
    """Split an attn_mask into (allowed bool, finite bias) following the module conventions."""
    if mask.dtype == torch.bool:
        return mask, None
    if not mask.is_floating_point():
        raise TypeError(
            f"attn_mask must be bool (True = may attend) or floating point (additive), got {mask.dtype}"
        )
    if mask.numel() == 0:
        return None, None
    # one read pass and one sync for the common cases: NaN propagates to both extremes, +inf shows in the max
    low, high = torch.stack(torch.aminmax(mask)).tolist()
    if math.isnan(low) or math.isnan(high):
        raise ValueError("attn_mask contains NaN; use -inf (or a bool mask) for pairs that may not attend")
    if high == math.inf:
        raise ValueError("attn_mask contains +inf; additive masks may only hold finite values or -inf")
    threshold = torch.finfo(mask.dtype).min / 2
    if low > threshold:  # nothing blocked: a pure bias (None when all zero)
        return None, (mask if low != 0 or high != 0 else None)
    blocked = mask <= threshold  # includes -inf
    bias = mask.masked_fill(blocked, 0.0)
    return ~blocked, (bias if bool((bias != 0).any()) else None)


def _and(a: Tensor | None, b: Tensor | None) -> Tensor | None:
    if a is None:
        return b
    if b is None:
        return a
    return a & b


def build_mask_spec(
    *,
    batch: int,
    heads: int,
    q_len: int,
    k_len: int,
    device: torch.device,
    attn_mask: Tensor | None = None,
    key_padding_mask: Tensor | None = None,
    query_padding_mask: Tensor | None = None,
    is_causal: bool = False,
) -> MaskSpec:
    """Validate every mask argument and combine them into one :class:`MaskSpec`.

    Args:
        batch, heads, q_len, k_len: sizes of the attention problem ``(B, H, Lq, Lk)``.
        device: device of the attention inputs; masks must live there too.
        attn_mask: bool (True = may attend) or float additive, broadcastable to ``(B, H, Lq, Lk)``.
        key_padding_mask: ``(B, Lk)`` bool or 0/1, True = a real key.
        query_padding_mask: ``(B, Lq)`` bool or 0/1, True = a real query.
        is_causal: restrict query ``i`` to keys ``j <= i`` (top-left aligned).

    Raises:
        TypeError / ValueError naming the offending argument.
    """
    if not isinstance(is_causal, bool):
        raise TypeError(f"is_causal must be a bool, got {type(is_causal).__name__}")
    target = (batch, heads, q_len, k_len)
    key_valid = _as_validity("key_padding_mask", key_padding_mask, batch, k_len, device)
    query_valid = _as_validity("query_padding_mask", query_padding_mask, batch, q_len, device)

    allowed: Tensor | None = None
    bias: Tensor | None = None
    if attn_mask is not None:
        attn_mask = _check_tensor("attn_mask", attn_mask)
        if attn_mask.device != device:
            raise ValueError(
                f"attn_mask is on {attn_mask.device} but the inputs are on {device}; move it with .to({str(device)!r})"
            )
        m4 = _broadcast_check("attn_mask", attn_mask, target)
        allowed, bias = _split_attn_mask(m4)
    if is_causal:
        causal = torch.ones(q_len, k_len, dtype=torch.bool, device=device).tril()
        allowed = _and(allowed, causal.view(1, 1, q_len, k_len))
    # skipping an all-True validity saves a pass in eager mode; compiled graphs fold it in (no data-dependent branch)
    compiling = torch.compiler.is_compiling()
    if key_valid is not None and (compiling or not bool(key_valid.all())):
        allowed = _and(allowed, key_valid.view(batch, 1, 1, k_len))
    if query_valid is not None and (compiling or not bool(query_valid.all())):
        allowed = _and(allowed, query_valid.view(batch, 1, q_len, 1))
    return MaskSpec(
        batch=batch,
        heads=heads,
        q_len=q_len,
        k_len=k_len,
        allowed=allowed,
        bias=bias,
        query_valid=query_valid,
        key_valid=key_valid,
        causal=is_causal,
    )


def looks_causal(spec: MaskSpec) -> bool:
    """Whether the allowed pattern is causal: ``is_causal``, or a lower-triangular ``attn_mask``.

    A pattern counts as causal when every query that attends to anything attends to its own position, and no
    pair ``j > i`` is allowed between positions that take part (padding, local windows and causal + padding
    masks as Hugging Face builds them all fit). A pure padding mask is not causal. Only square problems
    (``Lq == Lk > 1``) can be causal in this sense.
    """
    if spec.causal:
        return True
    if torch.compiler.is_compiling():  # data-dependent: checked in eager mode (and by probattn.hf.convert) only
        return False
    if spec.allowed is None or spec.q_len != spec.k_len or spec.q_len < 2:
        return False
    n = spec.q_len
    allowed = spec.allowed
    q_used = allowed.any(dim=-1)  # (B|1, H|1, Lq)
    k_used = allowed.any(dim=-2)  # (B|1, H|1, Lk)
    upper = torch.ones(n, n, dtype=torch.bool, device=allowed.device).triu(1)
    candidate = q_used.unsqueeze(-1) & k_used.unsqueeze(-2) & upper  # pairs i < j between used positions
    if not bool(candidate.any()) or bool((allowed & candidate).any()):
        return False
    diagonal = torch.diagonal(allowed, dim1=-2, dim2=-1)
    return bool((diagonal | ~q_used).all())


def from_torch_mha(
    attn_mask: Tensor | None, key_padding_mask: Tensor | None, *, num_heads: int, batch: int
) -> tuple[Tensor | None, Tensor | None]:
    """Convert ``torch.nn.MultiheadAttention``'s masks (bool True = ignore) to probattn's conventions.

    Args:
        attn_mask: ``(Lq, Lk)`` or ``(B*H, Lq, Lk)``, bool (True = not allowed) or float additive.
        key_padding_mask: ``(B, Lk)``, bool (True = padding) or float additive.
        num_heads, batch: to unflatten a ``(B*H, Lq, Lk)`` mask.

    Returns:
        ``(attn_mask, key_valid)`` where ``attn_mask`` is bool True = may attend or float additive of shape
        ``(Lq, Lk)`` / ``(B, H, Lq, Lk)``, and ``key_valid`` is a bool ``(B, Lk)`` validity mask (True = real key).
        A float key padding mask gives its ``-inf`` entries as padding in ``key_valid`` and folds its finite
        entries, if any is nonzero, into ``attn_mask``.
    """
    out_mask: Tensor | None = None
    if attn_mask is not None:
        attn_mask = _check_tensor("attn_mask", attn_mask)
        if attn_mask.dim() == 3:
            if attn_mask.shape[0] != batch * num_heads:
                raise ValueError(
                    f"3-D attn_mask must have shape (batch * num_heads, L, S) = ({batch * num_heads}, ...), "
                    f"got {tuple(attn_mask.shape)}"
                )
            attn_mask = attn_mask.view(batch, num_heads, *attn_mask.shape[1:])
        elif attn_mask.dim() != 2:
            raise ValueError(f"attn_mask must be 2-D (L, S) or 3-D (batch * num_heads, L, S), got {attn_mask.dim()}-D")
        if attn_mask.dtype == torch.bool:
            out_mask = ~attn_mask
        elif attn_mask.is_floating_point():
            out_mask = attn_mask
        else:
            raise TypeError(f"attn_mask must be bool or floating point, got {attn_mask.dtype}")
    key_valid: Tensor | None = None
    if key_padding_mask is not None:
        key_padding_mask = _check_tensor("key_padding_mask", key_padding_mask)
        if key_padding_mask.dim() != 2 or key_padding_mask.shape[0] != batch:
            raise ValueError(
                f"key_padding_mask must have shape (batch, S) with batch={batch}, got {tuple(key_padding_mask.shape)}"
            )
        if key_padding_mask.dtype == torch.bool:
            key_valid = ~key_padding_mask
        elif key_padding_mask.is_floating_point():
            # -inf entries are padding (torch.nn.TransformerEncoderLayer turns a bool mask into 0 / -inf): they
            # become key validity, so that self-attention also knows which queries are padding; finite
            # entries stay an additive bias.
            padded = torch.isneginf(key_padding_mask)
            key_valid = ~padded
            finite = key_padding_mask.masked_fill(padded, 0.0)
            if bool(finite.any()):
                kb = finite[:, None, None, :]
                if out_mask is None:
                    out_mask = kb
                elif out_mask.dtype == torch.bool:
                    out_mask = torch.zeros((), dtype=kb.dtype, device=kb.device).masked_fill(~out_mask, float("-inf")) + kb
                else:
                    out_mask = out_mask + kb
        else:
            raise TypeError(f"key_padding_mask must be bool (True = padding) or float, got {key_padding_mask.dtype}")
    return out_mask, key_valid


def add_bias(attn_mask: Tensor | None, bias: Tensor) -> Tensor:
    """Fold a finite additive ``bias`` (e.g. T5's relative-position bias, ``(B|1, H|1, Lq, Lk)``) into an
    ``attn_mask`` (bool True = may attend, float additive, or None): a float additive mask, ``-inf`` where the
    bool mask forbids a pair.
    """
    bias = _check_tensor("bias", bias)
    if not bias.is_floating_point():
        raise TypeError(f"bias must be floating point (additive), got {bias.dtype}")
    if attn_mask is None:
        return bias
    if attn_mask.dtype == torch.bool:
        return bias.masked_fill(~attn_mask, float("-inf"))
    return bias + attn_mask


def from_hf_attention_mask(
    attention_mask: Tensor | None, *, is_causal: bool, batch: int, q_len: int, k_len: int
) -> tuple[Tensor | None, Tensor | None, bool]:
    """Read the mask Hugging Face passes to a registered attention function.

    Hugging Face masks are ``(B, 1, Lq, Lk)``, bool (``sdpa_mask``, True = attend) or float additive
    (``eager_mask``), or ``None`` (no padding; causality then comes from ``is_causal``). They only mask key
    columns, so padded *queries* look valid; for self-attention without a cache (``Lq == Lk``) the diagonal
    tells which queries are real (``mask[b, 0, i, i]`` is True iff token ``i`` is real).

    Returns:
        ``(attn_mask, query_padding_mask, is_causal)`` ready for :func:`build_mask_spec`.
    """
    if attention_mask is None:
        return None, None, is_causal
    attention_mask = attention_mask[..., :k_len]
    query_valid = None
    if q_len == k_len and attention_mask.dim() == 4:
        diag = torch.diagonal(attention_mask[:, 0], dim1=-2, dim2=-1)  # (B|1, L)
        if attention_mask.dtype == torch.bool:
            query_valid = diag
        else:
            query_valid = diag > torch.finfo(attention_mask.dtype).min / 2
        query_valid = query_valid.expand(batch, q_len)
    return attention_mask, query_valid, is_causal
