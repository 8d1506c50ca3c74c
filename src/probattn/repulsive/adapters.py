"""Find attention modules and describe their Q/K/V projections per head: a small adapter registry.

An adapter is a function ``module -> list[Projection] | None`` (None: not a layout it knows). Built-in
adapters recognise, by attribute names only (transformers is never imported here):

* ``torch_mha``: ``torch.nn.MultiheadAttention`` and ``probattn.nn.MultiheadAttention`` (fused
  ``in_proj_weight (3E, E)``, or ``q/k/v_proj_weight`` when kdim/vdim differ; bias ``in_proj_bias``);
* ``bert``: ``query``/``key``/``value`` ``nn.Linear`` + ``num_attention_heads`` (BERT, RoBERTa, MiniLM, ELECTRA);
* ``gpt2``: ``c_attn`` Conv1D ``(E, 3E)`` with fused q|k|v columns + ``num_heads``
  (cross-attention: ``q_attn (E, E)`` and ``c_attn (E, 2E)`` holding k|v);
* ``qkv_proj``: ``q_proj``/``k_proj``/``v_proj`` ``nn.Linear`` + ``head_dim`` (Llama, Mistral, Qwen, BART);
  K/V may have fewer heads (grouped-query attention);
* ``fused_qkv``: one ``nn.Linear`` holding q|k|v rows, ``Wqkv`` (ModernBERT) or ``qkv_proj`` (Phi-3), +
  ``head_dim`` (and ``num_key_value_heads`` when K/V have fewer heads);
* ``t5``: ``q``/``k``/``v`` ``nn.Linear`` + ``n_heads`` (T5, mT5);
* ``hops``: structured self-attention pooling with ``w_s2: nn.Linear`` and ``hops`` (Lin et al. 2017,
  :class:`probattn.models.SelfAttentiveClassifier`): each row of ``W_s2`` is a particle.

``peft`` LoRA-adapted ``nn.Linear`` projections (``bert``, ``qkv_proj``, ``t5``, DistilBERT) are recognised too:
their heads repel on the effective weights ``W0 + s·B·A`` and the rewrite lands on ``B``
(:class:`~probattn.repulsive.particles.LoraHeadSlice`). LoRA on fused projections (GPT-2's ``c_attn``,
``Wqkv``) is refused with a clear error.

Register your own with :func:`register_adapter`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from torch import nn

from probattn.repulsive.particles import HeadSlice, LoraHeadSlice, Projection

Adapter = Callable[[nn.Module], "list[Projection] | None"]
FoundModule = tuple[str, nn.Module, list[Projection]]

__all__ = ["ADAPTERS", "Adapter", "find_attention_modules", "is_linear", "linear_projection", "lora_parts",
           "projections_of", "register_adapter"]


def torch_mha(module: nn.Module) -> list[Projection] | None:
    if not isinstance(module, nn.MultiheadAttention):
        return None
    e, h, bias = module.embed_dim, module.num_heads, module.in_proj_bias
    if module.in_proj_weight is not None:
        weights = [HeadSlice.linear(module.in_proj_weight, h, i * e, (i + 1) * e) for i in range(3)]
    else:
        weights = [
            HeadSlice.linear(w, h) for w in (module.q_proj_weight, module.k_proj_weight, module.v_proj_weight)
        ]
    biases = [None] * 3 if bias is None else [HeadSlice.linear(bias, h, i * e, (i + 1) * e) for i in range(3)]
    return [Projection(role, h, w, b) for role, w, b in zip("qkv", weights, biases)]


def lora_parts(module: nn.Module) -> tuple[nn.Linear, nn.Parameter, nn.Parameter, float] | None:
    """``(base nn.Linear, A (r, in), B (out, r), scaling)`` of a ``peft`` LoRA-adapted linear layer (recognised
    by its attributes ``base_layer``, ``lora_A``, ``lora_B``, ``scaling``; peft is never imported), else None.

    Raises ``ValueError`` for what repulsion cannot follow: merged adapters, several active adapters, DoRA.
    """
    base, lora_a, lora_b = (getattr(module, name, None) for name in ("base_layer", "lora_A", "lora_B"))
    if not isinstance(lora_a, nn.ModuleDict) or not isinstance(lora_b, nn.ModuleDict):
        return None
    kind = type(module).__name__
    if not isinstance(base, nn.Linear):
        raise ValueError(f"{kind}: repulsion supports LoRA on nn.Linear projections only, this one adapts "
                         f"{type(base).__name__}")
    if getattr(module, "merged", False):
        raise ValueError(f"{kind}: its LoRA adapter is merged into the base weight; unmerge it before training "
                         "(model.unmerge_adapter())")
    active = [name for name in getattr(module, "active_adapters", []) if name in lora_a]
    if len(active) != 1:
        raise ValueError(f"{kind}: {len(active)} active LoRA adapters ({active}); repulsion needs exactly one")
    name = active[0]
    if (getattr(module, "use_dora", None) or {}).get(name):
        raise ValueError(f"{kind}: DoRA adapters are not supported by repulsion; use plain LoRA")
    return base, lora_a[name].weight, lora_b[name].weight, float(module.scaling[name])


def is_linear(module: object) -> bool:
    """An ``nn.Linear`` or a LoRA-adapted one (:func:`lora_parts`)."""
    return isinstance(module, nn.Linear) or (isinstance(module, nn.Module) and lora_parts(module) is not None)


def linear_projection(role: str, linear: nn.Module, heads: int) -> Projection:
    """The :class:`Projection` of an ``nn.Linear`` whose output rows split into ``heads`` heads; for a
    LoRA-adapted layer its weight is a :class:`LoraHeadSlice` (particle: the effective weight, rewrite: ``B``)."""
    lora = lora_parts(linear)
    base = linear if lora is None else lora[0]
    if base.out_features % heads:
        raise ValueError(f"{role} projection: {base.out_features} outputs do not split into {heads} heads")
    bias = None if base.bias is None else HeadSlice.linear(base.bias, heads)
    if lora is None:
        return Projection(role, heads, HeadSlice.linear(base.weight, heads), bias)
    _, lora_a, lora_b, scaling = lora
    return Projection(role, heads, LoraHeadSlice.lora_linear(base.weight, lora_a, lora_b, scaling, heads), bias)




def bert(module: nn.Module) -> list[Projection] | None:
    linears = [getattr(module, name, None) for name in ("query", "key", "value")]
    heads = getattr(module, "num_attention_heads", None)
    if not isinstance(heads, int) or not all(is_linear(m) for m in linears):
        return None
    return [linear_projection(role, m, heads) for role, m in zip("qkv", linears)]


def qkv_proj(module: nn.Module) -> list[Projection] | None:
    linears = [getattr(module, name, None) for name in ("q_proj", "k_proj", "v_proj")]
    head_dim = getattr(module, "head_dim", None)
    if not isinstance(head_dim, int) or head_dim < 1 or not all(is_linear(m) for m in linears):
        return None
    widths = [_out_features(m) for m in linears]
    if any(width % head_dim for width in widths):
        raise ValueError(
            f"{type(module).__name__}: q/k/v_proj widths are not multiples of head_dim {head_dim}"
        )
    return [linear_projection(role, m, width // head_dim) for role, m, width in zip("qkv", linears, widths)]


def _out_features(linear: nn.Module) -> int:
    lora = lora_parts(linear)
    return (linear if lora is None else lora[0]).out_features


def gpt2(module: nn.Module) -> list[Projection] | None:
    c_attn, heads = getattr(module, "c_attn", None), getattr(module, "num_heads", None)
    if any(isinstance(getattr(m, "lora_A", None), nn.ModuleDict) for m in (c_attn, getattr(module, "q_attn", None))):
        raise ValueError(f"{type(module).__name__}: LoRA on GPT-2's fused Conv1D c_attn is not supported by "
                         "repulsion (its .weight is the frozen base weight: nothing would repel)")
    weight = getattr(c_attn, "weight", None)
    if not isinstance(heads, int) or not isinstance(weight, nn.Parameter) or weight.dim() != 2:
        return None
    e, bias = weight.shape[0], getattr(c_attn, "bias", None)
    if getattr(module, "is_cross_attention", False):  # q from q_attn (E, E); k|v fused in c_attn (E, 2E)
        q_attn = module.q_attn
        sources = [(q_attn.weight, q_attn.bias, 0), (weight, bias, 0), (weight, bias, e)]
    else:
        sources = [(weight, bias, i * e) for i in range(3)]
    if weight.shape[1] != sources[-1][2] + e:
        return None
    return [
        Projection(
            role,
            heads,
            HeadSlice.conv1d(w, heads, start, start + e),
            None if b is None else HeadSlice.conv1d(b, heads, start, start + e),
        )
        for role, (w, b, start) in zip("qkv", sources)
    ]


def fused_qkv(module: nn.Module) -> list[Projection] | None:
    linear = getattr(module, "Wqkv", None)
    if linear is None:
        linear = getattr(module, "qkv_proj", None)
    if linear is not None and lora_parts(linear) is not None:
        raise ValueError(f"{type(module).__name__}: LoRA on a fused q|k|v projection is not supported by repulsion; "
                         "target the separate q/k/v projections or leave repulsion off")
    head_dim = getattr(module, "head_dim", None)
    if not isinstance(linear, nn.Linear) or not isinstance(head_dim, int) or head_dim < 1:
        return None
    out = linear.out_features
    kv_heads = getattr(module, "num_key_value_heads", None)
    if not isinstance(kv_heads, int) or kv_heads < 1:  # equal q / k / v widths
        if out % (3 * head_dim):
            raise ValueError(f"{type(module).__name__}: fused qkv width {out} is not 3 x heads x head_dim {head_dim}")
        kv_heads = out // (3 * head_dim)
    kv_width = kv_heads * head_dim
    q_width = out - 2 * kv_width
    if q_width < head_dim or q_width % head_dim:
        raise ValueError(f"{type(module).__name__}: fused qkv width {out} does not split into q heads of "
                         f"{head_dim} and 2 x {kv_heads} key/value heads")
    bounds = [(0, q_width), (q_width, q_width + kv_width), (q_width + kv_width, out)]
    return [
        Projection(role, (stop - start) // head_dim, HeadSlice.linear(linear.weight, (stop - start) // head_dim, start, stop),
                   None if linear.bias is None
                   else HeadSlice.linear(linear.bias, (stop - start) // head_dim, start, stop))
        for role, (start, stop) in zip("qkv", bounds)
    ]


def t5(module: nn.Module) -> list[Projection] | None:
    linears = [getattr(module, name, None) for name in ("q", "k", "v")]
    heads = getattr(module, "n_heads", None)
    if not isinstance(heads, int) or not all(is_linear(m) for m in linears):
        return None
    return [linear_projection(role, m, heads) for role, m in zip("qkv", linears)]


def hops(module: nn.Module) -> list[Projection] | None:
    w_s2, count = getattr(module, "w_s2", None), getattr(module, "hops", None)
    if not isinstance(w_s2, nn.Linear) or not isinstance(count, int):
        return None
    return [linear_projection("hops", w_s2, count)]


ADAPTERS: dict[str, Adapter] = {
    "torch_mha": torch_mha,
    "bert": bert,
    "gpt2": gpt2,
    "qkv_proj": qkv_proj,
    "fused_qkv": fused_qkv,
    "t5": t5,
    "hops": hops,
}


def register_adapter(name: str, adapter: Adapter) -> None:
    """Add (or replace) an adapter; adapters are tried in registration order, built-ins first."""
    if not callable(adapter):
        raise TypeError(
            f"adapter must be callable module -> list[Projection] | None, got {type(adapter).__name__}"
        )
    ADAPTERS[name] = adapter


def projections_of(module: nn.Module) -> list[Projection] | None:
    """The projections of ``module`` from the first adapter that recognises it, or None."""
    for adapter in ADAPTERS.values():
        found = adapter(module)
        if found is not None:
            return found
    return None


def find_attention_modules(model_or_modules: nn.Module | Iterable[nn.Module]) -> list[FoundModule]:
    """``(name, module, projections)`` for every attention module, in module order.

    Searching a model does not descend into a module once it is recognised. An iterable of modules is taken as
    the list of attention modules itself (each must be recognised; names are their positions).
    """
    found: list[FoundModule] = []
    if isinstance(model_or_modules, nn.Module):
        for name, module in model_or_modules.named_modules():
            if any(outer == "" or name.startswith(f"{outer}.") for outer, _, _ in found):
                continue
            projections = projections_of(module)
            if projections is not None:
                found.append((name, module, projections))
        return found
    for i, module in enumerate(model_or_modules):
        if not isinstance(module, nn.Module):
            raise TypeError(f"model_or_modules[{i}] must be an nn.Module, got {type(module).__name__}")
        projections = projections_of(module)
        if projections is None:
            raise ValueError(
                f"model_or_modules[{i}] ({type(module).__name__}) is not an attention module any adapter knows "
                f"({list(ADAPTERS)}); add one with probattn.repulsive.register_adapter"
            )
        found.append((str(i), module, projections))
    return found
