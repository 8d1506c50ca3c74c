"""``MultiheadAttention``: a drop-in for ``torch.nn.MultiheadAttention`` with a choice of normalization.

Same constructor, parameters (``in_proj_weight`` or ``q/k/v_proj_weight``, ``in_proj_bias``, ``out_proj``,
``bias_k``/``bias_v``), ``state_dict`` and forward signature as PyTorch's module, so a trained
``torch.nn.MultiheadAttention`` loads into it unchanged. Masks keep PyTorch's convention at this boundary
(bool ``True`` = ignore) and are converted once by :func:`probattn.masks.from_torch_mha`.

Padded queries: for ``normalization="softmax"`` they behave exactly as in PyTorch (they still attend to
the real keys). For the column-normalized schemes a self-attention call (``query is key``) treats the
``key_padding_mask`` as the query padding too, so padded positions never enter a column statistic; their
outputs are zeros before ``out_proj``.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from probattn.functional import COLUMN_NORMALIZED, IMPLS, NORMALIZATIONS, attention, check_hybrid_alpha
from probattn.masks import from_torch_mha
from probattn.nn.hooks import observe_qk

__all__ = ["MultiheadAttention", "replace_attention"]


def _keep_probattn_forward(module: nn.Module, args: tuple) -> None:
    """No-op forward pre-hook.

    ``torch.nn.TransformerEncoderLayer`` in eval mode under ``no_grad`` runs a fused kernel on the raw
    projection weights and never calls ``self_attn.forward`` -- unless some submodule has forward hooks.
    Registering this hook keeps every forward going through probattn's normalization.
    """
    return None


class MultiheadAttention(nn.MultiheadAttention):
    """Multi-head attention with ``normalization`` in {"softmax", "doubly", "hybrid", "sinkhorn"}.

    Args:
        embed_dim, num_heads, dropout, bias, add_bias_kv, add_zero_attn, kdim, vdim, batch_first, device,
            dtype: as ``torch.nn.MultiheadAttention``.
        normalization: attention normalization (see :func:`probattn.functional.attention`).
        hybrid_alpha: softmax weight for ``"hybrid"``: a float in [0, 1], or ``"learned"`` for a per-head
            weight ``sigmoid(hybrid_logit)`` with ``hybrid_logit`` a ``(num_heads,)`` parameter initialised at 0.
        sinkhorn_iters: iterations for ``"sinkhorn"``.
        impl: ``"auto" | "dense" | "chunked" | "sdpa"`` (see :func:`probattn.functional.attention`).

    Shapes (batch_first=True): query ``(N, L, E)``, key/value ``(N, S, E_k|E_v)``, output ``(N, L, E)``,
    weights ``(N, L, S)`` averaged over heads or ``(N, H, L, S)``. Unbatched ``(L, E)`` inputs work too.
    """

    def __init__(
        self,
        embed_dim: int,
        num_heads: int,
        dropout: float = 0.0,
        bias: bool = True,
        add_bias_kv: bool = False,
        add_zero_attn: bool = False,
        kdim: int | None = None,
        vdim: int | None = None,
        batch_first: bool = False,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        *,
        normalization: str = "softmax",
        hybrid_alpha: float | Literal["learned"] = 0.5,
        sinkhorn_iters: int = 3,
        impl: str = "auto",
    ) -> None:
        super().__init__(embed_dim, num_heads, dropout, bias, add_bias_kv, add_zero_attn, kdim, vdim, batch_first,
                         device=device, dtype=dtype)
        self.register_parameter("hybrid_logit", None)
        self.hybrid_alpha: float | None = 0.5
        self.configure(normalization=normalization, hybrid_alpha=hybrid_alpha, sinkhorn_iters=sinkhorn_iters,
                       impl=impl)
        self.register_forward_pre_hook(_keep_probattn_forward)

    def configure(self, *, normalization: str | None = None, hybrid_alpha: float | Literal["learned"] | None = None,
                  sinkhorn_iters: int | None = None, impl: str | None = None) -> None:
        """Change options in place (None keeps the current value). A learned hybrid weight is kept if present."""
        if normalization is not None:
            if normalization not in NORMALIZATIONS:
                raise ValueError(f"normalization must be one of {NORMALIZATIONS}, got {normalization!r}")
            self.normalization = normalization
        if sinkhorn_iters is not None:
            if isinstance(sinkhorn_iters, bool) or not isinstance(sinkhorn_iters, int) or sinkhorn_iters < 1:
                raise ValueError(f"sinkhorn_iters must be an integer >= 1, got {sinkhorn_iters!r}")
            self.sinkhorn_iters = sinkhorn_iters
        if impl is not None:
            if impl not in IMPLS:
                raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
            self.impl = impl
        if hybrid_alpha == "learned":
            if self.hybrid_logit is None:
                ref = self.out_proj.weight
                self.hybrid_logit = nn.Parameter(torch.zeros(self.num_heads, device=ref.device, dtype=ref.dtype))
            self.hybrid_alpha = None
        elif hybrid_alpha is not None:
            self.hybrid_alpha = float(check_hybrid_alpha(hybrid_alpha, self.num_heads))
            self.hybrid_logit = None

    def extra_repr(self) -> str:
        alpha = "learned" if self.hybrid_logit is not None else self.hybrid_alpha
        return (f"embed_dim={self.embed_dim}, num_heads={self.num_heads}, normalization={self.normalization!r}, "
                f"hybrid_alpha={alpha}, sinkhorn_iters={self.sinkhorn_iters}, batch_first={self.batch_first}")

    def current_hybrid_alpha(self) -> float | Tensor:
        """The softmax weight of the hybrid: the float, or ``sigmoid(hybrid_logit)`` of shape ``(H,)``.

        Raises:
            ValueError when the learned ``hybrid_logit`` is NaN (training diverged).
        """
        if self.hybrid_logit is None:
            return self.hybrid_alpha
        if bool(torch.isnan(self.hybrid_logit.detach()).any()):
            heads = torch.isnan(self.hybrid_logit.detach()).nonzero().flatten().tolist()
            raise ValueError(
                f"hybrid_logit (the learned hybrid weight, alpha = sigmoid(hybrid_logit)) is NaN in heads {heads}: "
                "training diverged; lower the learning rate, clip gradients, or restart from an earlier checkpoint"
            )
        return torch.sigmoid(self.hybrid_logit)

    def _check_dtypes(self, query: Tensor, key: Tensor, value: Tensor) -> None:
        """The inputs must have the parameters' dtype (as F.linear needs), unless autocast converts them."""
        weight = self.in_proj_weight if self._qkv_same_embed_dim else self.q_proj_weight
        if torch.is_autocast_enabled(query.device.type):
            return
        for name, x in (("query", query), ("key", key), ("value", value)):
            if x.dtype != weight.dtype:
                raise TypeError(
                    f"{name} has dtype {x.dtype} but this MultiheadAttention's parameters are {weight.dtype}; "
                    f"convert the inputs ({name}.to({weight.dtype})) or the module (module.to({x.dtype}))"
                )

    def _project(self, query: Tensor, key: Tensor, value: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Input projections of batch-first ``(N, L, E)`` tensors."""
        e = self.embed_dim
        b = self.in_proj_bias
        bq, bk, bv = (None, None, None) if b is None else (b[:e], b[e:2 * e], b[2 * e:])
        if self._qkv_same_embed_dim:
            w = self.in_proj_weight
            return F.linear(query, w[:e], bq), F.linear(key, w[e:2 * e], bk), F.linear(value, w[2 * e:], bv)
        return (F.linear(query, self.q_proj_weight, bq), F.linear(key, self.k_proj_weight, bk),
                F.linear(value, self.v_proj_weight, bv))

    def forward(  # type: ignore[override]
        self,
        query: Tensor,
        key: Tensor,
        value: Tensor,
        key_padding_mask: Tensor | None = None,
        need_weights: bool = True,
        attn_mask: Tensor | None = None,
        average_attn_weights: bool = True,
        is_causal: bool = False,
    ) -> tuple[Tensor, Tensor | None]:
        """Same contract as ``torch.nn.MultiheadAttention.forward`` (bool masks: True = not allowed)."""
        if query.is_nested:
            raise ValueError(
                "probattn.nn.MultiheadAttention does not take nested tensors; build torch.nn.TransformerEncoder with "
                "enable_nested_tensor=False, or call probattn.nn.replace_attention(model) which does it for you"
            )
        self_attention = query is key
        unbatched = query.dim() == 2
        if unbatched:  # (L, E) -> (1, L, E)
            query, key, value = query.unsqueeze(0), key.unsqueeze(0), value.unsqueeze(0)
            if key_padding_mask is not None:
                key_padding_mask = key_padding_mask.unsqueeze(0)
        elif query.dim() != 3:
            raise ValueError(f"query must be 2-D (L, E) or 3-D, got shape {tuple(query.shape)}")
        elif not self.batch_first:  # (L, N, E) -> (N, L, E)
            query, key, value = query.transpose(0, 1), key.transpose(0, 1), value.transpose(0, 1)
        n, q_len, _ = query.shape
        if query.shape[-1] != self.embed_dim:
            raise ValueError(f"query's last dimension must be embed_dim={self.embed_dim}, got {query.shape[-1]}")
        self._check_dtypes(query, key, value)
        h, hd = self.num_heads, self.head_dim

        mask, key_valid = from_torch_mha(attn_mask, key_padding_mask, num_heads=h, batch=n)
        q, k, v = self._project(query, key, value)
        q = q.view(n, q_len, h, hd).transpose(1, 2)
        k = k.view(n, k.shape[1], h, hd).transpose(1, 2)
        v = v.view(n, v.shape[1], h, hd).transpose(1, 2)
        # in self-attention the padded keys are the padded queries: observers (regularizers, probes) always get
        # that; attention() needs it only for column statistics (softmax keeps torch's outputs at padded rows)
        observed_query_valid = key_valid if self_attention else None
        observe_qk(self, q, k, query_valid=observed_query_valid, key_valid=key_valid)
        query_valid = observed_query_valid if self.normalization in COLUMN_NORMALIZED else None
        k, v, mask, key_valid = self._extra_keys(k, v, mask, key_valid, q_len)

        result = attention(
            q, k, v, normalization=self.normalization, attn_mask=mask, key_padding_mask=key_valid,
            query_padding_mask=query_valid, is_causal=is_causal,
            dropout_p=self.dropout if self.training else 0.0,
            hybrid_alpha=self.current_hybrid_alpha() if self.normalization == "hybrid" else 0.5,
            sinkhorn_iters=self.sinkhorn_iters, return_weights=need_weights, impl=self.impl,
        )
        out, weights = result if need_weights else (result, None)
        out = self.out_proj(out.transpose(1, 2).reshape(n, q_len, self.embed_dim))
        if weights is not None and average_attn_weights:
            weights = weights.mean(dim=1)
        if unbatched:
            return out.squeeze(0), None if weights is None else weights.squeeze(0)
        if not self.batch_first:
            out = out.transpose(0, 1)
        return out, weights

    def _extra_keys(self, k: Tensor, v: Tensor, mask: Tensor | None, key_valid: Tensor | None,
                    q_len: int) -> tuple[Tensor, Tensor, Tensor | None, Tensor | None]:
        """Append ``bias_k``/``bias_v`` and the zero-attention slot as PyTorch does (both always attendable)."""
        extra = []
        if self.bias_k is not None and self.bias_v is not None:
            n, h, hd = k.shape[0], self.num_heads, self.head_dim
            extra.append((self.bias_k.view(1, h, 1, hd).expand(n, h, 1, hd),
                          self.bias_v.view(1, h, 1, hd).expand(n, h, 1, hd)))
        if self.add_zero_attn:
            extra.append((k.new_zeros(k.shape[0], k.shape[1], 1, k.shape[3]),
                          v.new_zeros(v.shape[0], v.shape[1], 1, v.shape[3])))
        for k_extra, v_extra in extra:
            k, v = torch.cat([k, k_extra], dim=2), torch.cat([v, v_extra], dim=2)
            if mask is not None:
                pad_value = True if mask.dtype == torch.bool else 0.0
                mask = F.pad(mask, (0, 1), value=pad_value)
            if key_valid is not None:
                key_valid = F.pad(key_valid, (0, 1), value=True)
        return k, v, mask, key_valid


def replace_attention(model: nn.Module, **options: object) -> nn.Module:
    """Swap every ``torch.nn.MultiheadAttention`` inside ``model`` for probattn's, keeping the weights.

    ``options`` are :class:`MultiheadAttention`'s keyword options (``normalization``, ``hybrid_alpha``,
    ``sinkhorn_iters``, ``impl``). Modules that already are probattn's get the options applied in place.
    ``torch.nn.TransformerEncoder``'s nested-tensor fast path is turned off so that every layer calls the
    replacement. Returns ``model`` (changed in place).
    """
    unknown = set(options) - {"normalization", "hybrid_alpha", "sinkhorn_iters", "impl"}
    if unknown:
        raise TypeError(f"replace_attention got unknown options {sorted(unknown)}; "
                        "use normalization, hybrid_alpha, sinkhorn_iters or impl")
    for parent in list(model.modules()):
        if isinstance(parent, nn.TransformerEncoder):
            parent.use_nested_tensor = False
        for name, child in list(parent.named_children()):
            if isinstance(child, MultiheadAttention):
                child.configure(**options)  # type: ignore[arg-type]
            elif isinstance(child, nn.MultiheadAttention):
                setattr(parent, name, _from_torch(child, options))
    return model


def _from_torch(child: nn.MultiheadAttention, options: dict[str, object]) -> MultiheadAttention:
    first = next(child.parameters())
    new = MultiheadAttention(
        child.embed_dim, child.num_heads, dropout=child.dropout, bias=child.in_proj_bias is not None,
        add_bias_kv=child.bias_k is not None, add_zero_attn=child.add_zero_attn, kdim=child.kdim,
        vdim=child.vdim, batch_first=child.batch_first, device=first.device, dtype=first.dtype,
        **options,  # type: ignore[arg-type]
    )
    missing, unexpected = new.load_state_dict(child.state_dict(), strict=False)
    if unexpected or any(k != "hybrid_logit" for k in missing):
        raise RuntimeError(f"could not copy the weights: missing {missing}, unexpected {unexpected}")
    new.train(child.training)
    return new
