"""The one module that interprets attention masks.

Every other part of probattn asks this module; nothing else reads a mask's dtype or polarity.

Conventions accepted here and turned into one :class:`MaskSpec`:

* probattn / SDPA / Hugging Face ``sdpa_mask`` booleans: ``True`` = may attend.
* float additive masks (SDPA, Hugging Face ``eager_mask``): added to the scores. Entries at most
  :data:`MASKED_AT_OR_BELOW` (``-1e4``, compared in the mask's own dtype, so ``-inf``, ``-1e9``, BERT's
  ``-10000`` and Hugging Face's ``finfo.min`` all count) mean "not allowed", for every normalization; every
  other entry is a finite bias. (Under the column-normalized schemes a finite bias that depends on the key
  only cancels exactly, so a "soft" padding bias would silently do nothing: hence one threshold for all.)
* ``torch.nn.MultiheadAttention`` booleans (``True`` = ignore): converted by :func:`from_torch_mha` only.
* padding: ``key_padding_mask`` / ``query_padding_mask`` of shape ``(B, L)``, ``True`` (or 1) = a real token.
* causality: ``is_causal=True`` (top-left aligned, as in ``scaled_dot_product_attention``).

Semantics the attention kernels rely on (see ``docs/attention.md``):
a pair ``(i, j)`` takes part iff ``query_valid[i] and key_valid[j] and allowed[i, j]`` (and ``j <= i`` when
causal). Padded queries therefore never enter a column statistic, padded keys receive zero mass, and a query
with no allowed key outputs zeros.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = [
    "COLUMN_MASK_GAP",
    "COLUMN_NEGLIGIBLE_GAP",
    "MASKED_AT_OR_BELOW",
    "MaskSpec",
    "add_bias",
    "bias_acts_as_mask",
    "blocked",
    "build_mask_spec",
    "check_column_normalizable",
    "edge_validity",
    "from_hf_attention_mask",
    "from_torch_mha",
    "is_block_complete",
    "padding_factors",
]

# Additive mask entries at or below this value mean "may not attend". exp(-1e4) is 0 in every float dtype
# (float64 underflows below -745), so under softmax such an entry already carried no weight next to any key
# within ~700 of the row's best; BERT's original masks used exactly -10000.0, Hugging Face uses finfo.min.
MASKED_AT_OR_BELOW = -1e4

# Under the column-normalized schemes a finite bias entry can act as a mask too. Relative to the largest bias of
# its row (equal scores), an entry COLUMN_MASK_GAP lower gets weight exp(-104) < 1.4e-45, exactly 0 in float32
# (the computing dtype of every path but float64 inputs): a mask in effect, so its pattern must be
# block-complete like a bool mask's. One COLUMN_NEGLIGIBLE_GAP lower gets less than float32's resolution
# (2**-24 = exp(-16.6)): most likely meant as a mask; such a pattern that is not block-complete warns.
COLUMN_MASK_GAP = math.ceil(-math.log(torch.finfo(torch.float32).smallest_normal * torch.finfo(torch.float32).eps))
COLUMN_NEGLIGIBLE_GAP = 24 * math.log(2)


@dataclass(frozen=True)
class MaskSpec:
    """Which (query, key) pairs take part, and any additive bias.

    Attributes:
        batch, heads, q_len, k_len: the attention problem's sizes ``(B, H, Lq, Lk)``.
        allowed: bool ``(B|1, H|1, Lq, Lk)``, True = may attend; ``None`` when every pair is allowed.
            Folds in ``pattern``, ``query_valid`` and ``key_valid``; built on first use, so that a path that
            needs only the validities (:func:`padding_factors`) never allocates ``Lq * Lk`` booleans.
        pattern: bool ``(B|1, H|1, Lq, Lk)`` from ``attn_mask`` and causality, padding not folded in; or None.
        bias: float ``(B|1, H|1, Lq, Lk)`` finite additive bias (every entry above ``MASKED_AT_OR_BELOW``), or
            ``None``; kept in the mask's dtype.
        query_valid: bool ``(B, Lq)`` (``None`` = all valid). Queries that are padding.
        key_valid: bool ``(B, Lk)`` (``None`` = all valid). Keys that are padding.
        causal: whether a causal (``j <= i``) restriction is part of ``allowed``.
        bias_absmax: largest ``|bias|`` (0 without a bias); lets callers refuse a bias their dtype cannot hold.
        patterned: whether ``attn_mask`` blocked some pair (padding alone never does).
    """

    batch: int
    heads: int
    q_len: int
    k_len: int
    pattern: Tensor | None = None
    bias: Tensor | None = None
    query_valid: Tensor | None = None
    key_valid: Tensor | None = None
    causal: bool = False
    bias_absmax: float = 0.0
    patterned: bool = False

    @property
    def allowed(self) -> Tensor | None:
        """The full pattern (see the class docstring); computed once, on first use (every use under compile)."""
        if torch.compiler.is_compiling():  # no caching inside a traced graph
            return self._fold_validity()
        if "_allowed" not in self.__dict__:
            object.__setattr__(self, "_allowed", self._fold_validity())
        return self.__dict__["_allowed"]

    def _fold_validity(self) -> Tensor | None:
        allowed = self.pattern
        # skipping an all-True validity saves a pass in eager mode; compiled graphs fold it in (no data-dependent branch)
        compiling = torch.compiler.is_compiling()
        if self.key_valid is not None and (compiling or not bool(self.key_valid.all())):
            allowed = _and(allowed, self.key_valid.view(self.batch, 1, 1, self.k_len))
        if self.query_valid is not None and (compiling or not bool(self.query_valid.all())):
            allowed = _and(allowed, self.query_valid.view(self.batch, 1, self.q_len, 1))
        return allowed

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

    def bias_is_per_key(self) -> bool:
        """Whether the finite bias is the same for every query (depends on the key only).

        Column-normalized schemes cancel such a bias exactly: it changes nothing.
        """
        if self.bias is None or self.q_len < 2 or torch.compiler.is_compiling():
            return False
        return self.bias.shape[-2] == 1 or bool((self.bias == self.bias[..., :1, :]).all())

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


def blocked(mask: Tensor) -> Tensor:
    """bool: where a float additive mask means "may not attend" (``<= MASKED_AT_OR_BELOW`` in its own dtype)."""
    return mask <= MASKED_AT_OR_BELOW  # the Python scalar is rounded to mask.dtype (bfloat16: -9984)


def _split_attn_mask(mask: Tensor) -> tuple[Tensor | None, Tensor | None, float]:
    """Split an attn_mask into (allowed bool, finite bias, max |bias|) following the module conventions."""
    if mask.dtype == torch.bool:
        return mask, None, 0.0
    if not mask.is_floating_point():
        raise TypeError(
            f"attn_mask must be bool (True = may attend) or floating point (additive), got {mask.dtype}"
        )
    if mask.numel() == 0:
        return None, None, 0.0
    # one read pass and one sync for the common cases: NaN propagates to both extremes, +inf shows in the max
    low, high = torch.stack(torch.aminmax(mask)).tolist()
    if math.isnan(low) or math.isnan(high):
        raise ValueError("attn_mask contains NaN; use -inf (or a bool mask) for pairs that may not attend")
    if high == math.inf:
        raise ValueError("attn_mask contains +inf; additive masks may only hold finite values or -inf")
    threshold = torch.tensor(MASKED_AT_OR_BELOW, dtype=mask.dtype).item()  # in the mask's own dtype
    if low > threshold:  # nothing blocked: a pure bias (None when all zero)
        return None, (mask if low != 0 or high != 0 else None), max(-low, high)
    is_blocked = blocked(mask)
    bias = mask.masked_fill(is_blocked, 0.0)
    if high <= threshold or not bool((bias != 0).any()):
        return ~is_blocked, None, 0.0
    return ~is_blocked, bias, float(bias.abs().max())


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
    bias_absmax = 0.0
    if attn_mask is not None:
        attn_mask = _check_tensor("attn_mask", attn_mask)
        if attn_mask.device != device:
            raise ValueError(
                f"attn_mask is on {attn_mask.device} but the inputs are on {device}; move it with .to({str(device)!r})"
            )
        m4 = _broadcast_check("attn_mask", attn_mask, target)
        allowed, bias, bias_absmax = _split_attn_mask(m4)
    patterned = allowed is not None
    if is_causal:
        causal = torch.ones(q_len, k_len, dtype=torch.bool, device=device).tril()
        allowed = _and(allowed, causal.view(1, 1, q_len, k_len))
    return MaskSpec(
        batch=batch,
        heads=heads,
        q_len=q_len,
        k_len=k_len,
        pattern=allowed,
        bias=bias,
        query_valid=query_valid,
        key_valid=key_valid,
        causal=is_causal,
        bias_absmax=bias_absmax,
        patterned=patterned,
    )


def _first_true(mask: Tensor, dim: int) -> Tensor:
    """Index of the first True along ``dim`` (clamped into range where there is none), int64.

    ``n - max(mask * (n - index))``: a multiply and a max, several times faster than ``argmax`` across rows.
    """
    n = mask.shape[dim]
    dtype = torch.int16 if n < 2**15 else torch.int32
    shape = [1] * mask.dim()
    shape[dim] = n
    weights = torch.arange(n, 0, -1, dtype=dtype, device=mask.device).view(shape)
    return (n - (mask * weights).amax(dim=dim).long()).clamp_(max=n - 1)


def is_block_complete(allowed: Tensor) -> bool:
    """Whether a bool pattern ``(..., Lq, Lk)`` is, in every leading slice, a disjoint union of complete blocks.

    That is: any two queries that may attend to a common key may attend to exactly the same keys (queries
    and keys with no allowed pair are ignored). Exact, with ``O(Lq * Lk)`` work: with ``r(j)`` the first
    query that sees key ``j``, the pattern is block-complete iff for every allowed ``(i, j)`` (a) ``r(j)``
    equals ``r`` of row ``i``'s first key and (b) row ``i`` sees as many keys as row ``r(j)``. (By (a) and
    connectivity every key of a component has the same ``r = r*``, so row ``r*`` sees the whole component;
    (b) then makes every row of the component see all of it.)
    """
    if allowed.shape[-2] == 1 or allowed.shape[-1] == 1:  # all queries alike, or each sees all keys or none
        return True
    k_len = allowed.shape[-1]
    first_query = _first_true(allowed, dim=-2)  # (..., Lk): first query that sees key j
    first_key = _first_true(allowed, dim=-1)  # (..., Lq)
    row_count = allowed.sum(dim=-1, dtype=torch.int32)  # (..., Lq)
    # (a) and (b) as one comparison of codes r * (Lk + 1) + count: per row (..., Lq) and per key (..., Lk)
    width = k_len + 1
    row_code = first_query.gather(-1, first_key) * width + row_count
    key_code = first_query * width + row_count.gather(-1, first_query)
    return not bool(((row_code.unsqueeze(-1) != key_code.unsqueeze(-2)) & allowed).any())


def padding_factors(spec: MaskSpec) -> tuple[Tensor | None, Tensor | None] | None:
    """The pattern as padding: ``(query_valid, key_valid)`` with ``allowed == query_valid & key_valid``, or None.

    Returns bool ``(B|1, H|1, Lq)`` and ``(B|1, H|1, Lk)`` factors (None = all valid) when ``spec`` has no
    bias, no causal restriction, and its allowed pattern is, in every (batch, head) slice, the product of a
    query validity and a key validity (padding on either axis in any spelling, e.g. a ``(B, 1, 1, Lk)`` bool
    ``attn_mask``); None otherwise (bias, causal, block-diagonal or sparse patterns). A query that sees no key
    is invalid (takes part in no column statistic and outputs zeros), as on every path. Exact, ``O(Lq * Lk)``;
    under ``torch.compile`` only ``key_padding_mask`` / ``query_padding_mask`` count (no data-dependent check).
    """
    if spec.bias is not None or spec.causal:
        return None
    if not spec.patterned:
        q_valid = None if spec.query_valid is None else spec.query_valid[:, None, :]
        k_valid = None if spec.key_valid is None else spec.key_valid[:, None, :]
        # a batch element with no real key has no valid query, and one with no real query no valid key
        q_any = None if q_valid is None else q_valid.any(dim=-1, keepdim=True)
        if k_valid is not None:
            k_any = k_valid.any(dim=-1, keepdim=True)
            q_valid = k_any.expand(-1, -1, spec.q_len) if q_valid is None else q_valid & k_any
        if q_any is not None:
            k_valid = q_any.expand(-1, -1, spec.k_len) if k_valid is None else k_valid & q_any
        return q_valid, k_valid
    if torch.compiler.is_compiling() or spec.allowed is None:
        return None
    allowed = spec.allowed
    q_valid, k_valid = allowed.any(dim=-1), allowed.any(dim=-2)
    if bool((allowed != (q_valid.unsqueeze(-1) & k_valid.unsqueeze(-2))).any()):
        return None
    return q_valid, k_valid


def bias_acts_as_mask(spec: MaskSpec, gap: float, normalization: str) -> Tensor | None:
    """bool ``(B|1, H|1, Lq, Lk)``: allowed pairs that a finite bias masks in effect under ``normalization``; None
    without a bias.

    A column step cancels any bias that depends on the key only and a row step any that depends on the query
    only, so the bias is first centred as the normalization does: each column by its largest allowed entry (the
    column step; a per-key bias becomes 0), then each row. A pair lying ``gap`` or more below its row's largest
    centred entry is masked in effect. ``"hybrid"`` also has a softmax branch (rows only): a pair is masked only
    when both branches mask it. Every row keeps its largest entry.
    """
    if spec.bias is None:
        return None
    bias = spec.bias if spec.bias.dtype in (torch.float32, torch.float64) else spec.bias.float()
    allowed = spec.allowed
    if allowed is not None:
        bias = bias.masked_fill(~allowed, -math.inf)
    column_top = bias.amax(dim=-2, keepdim=True)
    centred = bias - torch.where(torch.isfinite(column_top), column_top, torch.zeros((), dtype=bias.dtype))
    low = centred <= centred.amax(dim=-1, keepdim=True) - gap
    if normalization == "hybrid":
        low = low & (bias <= bias.amax(dim=-1, keepdim=True) - gap)
    return low if allowed is None else low & allowed


def _leaking_bias(spec: MaskSpec, gap: float, normalization: str) -> bool:
    """Whether the pairs a finite bias masks in effect (:func:`bias_acts_as_mask`) leave a pattern that is not
    block-complete."""
    low = bias_acts_as_mask(spec, gap, normalization)
    if low is None or not bool(low.any()):
        return False
    effective = ~low if spec.allowed is None else spec.allowed & ~low
    return not is_block_complete(effective)


def check_column_normalizable(spec: MaskSpec, normalization: str) -> None:
    """Refuse a mask under which a column-normalized scheme would leak what the mask hides.

    Under ``doubly``, ``hybrid`` and ``sinkhorn`` query ``i``'s output depends on every query that shares a
    visible key with it (through that key's column statistic). The mask hides from query ``i`` every key it
    may not attend to, and every query that may attend to such a key. Both stay invisible to ``i`` exactly
    when the allowed pattern (padding folded in) is block-complete (:func:`is_block_complete`): full
    attention, padding on either axis, block-diagonal packing, per-head blocks. Causal masks (``is_causal``,
    lower-triangular in any spelling, with or without padding or extra always-visible keys), sliding windows
    and general sparse patterns are not, and raise.

    A finite bias entry that lies :data:`COLUMN_MASK_GAP` (104) or more below the largest of its row, once
    centred as the normalization centres it (:func:`bias_acts_as_mask`), gets weight exactly 0 in float32, so
    it masks in effect (e.g. a causal mask written as ``-1000``): the pattern left by such entries must be
    block-complete too, or this raises. Entries :data:`COLUMN_NEGLIGIBLE_GAP` (16.6) or more below (a weight
    under float32's resolution) whose pattern is not block-complete warn: their queries still enter the other
    queries' column statistics.

    Raises:
        ValueError naming ``attn_mask`` / ``is_causal`` and pointing to ``normalization='softmax'``.
    """
    if spec.causal:
        reason = "is_causal=True"
    elif torch.compiler.is_compiling():  # a data-dependent branch would break the graph: checked in eager runs
        return
    elif spec.patterned and spec.allowed is not None and not is_block_complete(spec.allowed):
        reason = "this attn_mask (with the padding folded in)"
    elif _leaking_bias(spec, COLUMN_MASK_GAP, normalization):
        reason = (f"this attn_mask, whose finite entries {COLUMN_MASK_GAP} or more below the largest of their row "
                  "get weight exactly 0 in float32 and so act as a mask (a causal mask written as a finite bias "
                  "such as -1000)")
    else:
        if _leaking_bias(spec, COLUMN_NEGLIGIBLE_GAP, normalization):
            warnings.warn(
                f"attn_mask holds finite entries {COLUMN_NEGLIGIBLE_GAP:.3g} or more below the largest of their row "
                f"(weight under float32's resolution) in a pattern that is not a union of complete blocks; under "
                f"normalization={normalization!r} they are a bias, not a mask: every query still enters the column "
                "statistics of the keys it has such entries for. To hide those pairs (e.g. causal) use a bool "
                "mask or -inf and normalization='softmax'", UserWarning, stacklevel=3,
            )
        return
    raise ValueError(
        f"normalization={normalization!r} normalizes each key's column over every query that sees it, so query "
        f"i's output depends on all queries that share a key with it. Under {reason} such queries see keys "
        "that query i may not see (under a causal mask: future tokens i' > i), so their information would leak "
        "into query i and a KV cache could not work. Column-normalized schemes accept only masks whose allowed "
        "pattern is a union of complete blocks (full attention, padding, block-diagonal packing; see "
        "docs/attention.md). Use normalization='softmax' for causal (decoder) or sliding-window attention."
    )


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
            # -inf (and <= -1e4) entries are padding (torch.nn.TransformerEncoderLayer writes 0 / -inf): they
            # become key validity, so that self-attention also knows which queries are padding; finite
            # entries stay an additive bias.
            padded = blocked(key_padding_mask)
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
            query_valid = ~blocked(diag)
        query_valid = query_valid.expand(batch, q_len)
    return attention_mask, query_valid, is_causal


def edge_validity(edge_mask: Tensor | None, num_edges: int, device: torch.device) -> Tensor | None:
    """Turn an edge mask ``(E,)`` (bool or 0/1 integers, True/1 = the edge may be attended) into a bool tensor.

    Used by :func:`probattn.functional.edge_attention`: a masked edge takes part in no statistic, exactly as
    if it were removed from ``edge_index``, and gets weight 0. None means every edge takes part.
    """
    if edge_mask is None:
        return None
    mask = _check_tensor("edge_mask", edge_mask)
    if mask.dim() != 1 or mask.shape[0] != num_edges:
        raise ValueError(f"edge_mask must have shape (num_edges,) = ({num_edges},), got {tuple(mask.shape)}")
    return _as_validity("edge_mask", mask[None], 1, num_edges, device)[0]  # type: ignore[index]
