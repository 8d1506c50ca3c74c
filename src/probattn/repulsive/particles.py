"""Head-major particle views: which numbers of which parameter belong to which head (repulsive.md §3.4, §7.1).

A *head view* maps a tensor laid out like a parameter (the parameter itself or its ``.grad``) to a strided
**view** ``(M, ...)`` whose index 0 is the head, so reading copies nothing and writing goes straight into the
parameter's own layout. The layouts:

* ``nn.Linear`` weight ``(out, in)`` with ``out = M·d``: rows ``[i·d, (i+1)·d)`` are head i
  (also each third of a fused ``in_proj_weight (3E, E)``, and GQA ``k_proj``/``v_proj`` with ``M_kv`` heads);
* HF ``Conv1D`` weight ``(in, out)`` (GPT-2, fused q|k|v along ``out``): columns ``[i·d, (i+1)·d)`` of the
  chosen third are head i;
* a projection bias ``(out,)``: entries ``[i·d, (i+1)·d)``.

A :class:`ParticleSet` concatenates the flattened head views of one or more projections into ``(M, P)``:
``grouping="separate"`` gives one set per projection (Q, K, V), ``"joint"`` one set per module with particle
``[Q_i; K_i; V_i]``, ``"qk_only"`` the Q and K sets (V untouched; self-attentive hops are always kept).
Biases join their head's particle only with ``include_bias=True``; the authors' code never includes them, nor
the output projection.

LoRA (``peft``): a LoRA-adapted projection's heads are :class:`LoraHeadSlice` s. Their particles are the heads'
effective weights ``W0_i + s·B_i·A``; the gradient rewrite lands on the rows of ``B`` (see
:meth:`ParticleSet.pull_back`), which is SVGD over ``B`` with the kernel measured on the effective weights.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Literal

import torch
from torch import Tensor, nn

Grouping = Literal["separate", "joint", "qk_only"]
GROUPINGS: tuple[str, ...] = ("separate", "joint", "qk_only")

__all__ = [
    "GROUPINGS",
    "Grouping",
    "HeadSlice",
    "LoraHeadSlice",
    "ParticleSet",
    "Projection",
    "build_particle_sets",
    "conv1d_heads",
    "linear_heads",
]


def linear_heads(tensor: Tensor, *, heads: int, start: int = 0, stop: int | None = None) -> Tensor:
    """Rows ``[start, stop)`` of an ``(out, in)`` weight or ``(out,)`` bias as a view ``(heads, d, ...)``."""
    return tensor[start:stop].unflatten(0, (heads, -1))


def conv1d_heads(tensor: Tensor, *, heads: int, start: int = 0, stop: int | None = None) -> Tensor:
    """Columns ``[start, stop)`` of an ``(in, out)`` Conv1D weight as a view ``(heads, in, d)``.

    A 1-D bias ``(out,)`` is split like :func:`linear_heads`.
    """
    if tensor.dim() == 1:
        return linear_heads(tensor, heads=heads, start=start, stop=stop)
    return tensor[:, start:stop].unflatten(1, (heads, -1)).transpose(0, 1)


@dataclass(frozen=True, eq=False)
class HeadSlice:
    """The part of ``param`` that ``view`` selects, head-major: ``view(param) -> (M, ...)``."""

    param: nn.Parameter
    view: Callable[[Tensor], Tensor]

    @staticmethod
    def linear(param: nn.Parameter, heads: int, start: int = 0, stop: int | None = None) -> HeadSlice:
        return HeadSlice(param, partial(linear_heads, heads=heads, start=start, stop=stop))

    @staticmethod
    def conv1d(param: nn.Parameter, heads: int, start: int = 0, stop: int | None = None) -> HeadSlice:
        return HeadSlice(param, partial(conv1d_heads, heads=heads, start=start, stop=stop))


@dataclass(frozen=True, eq=False)
class LoraHeadSlice(HeadSlice):
    """The heads of a LoRA-adapted ``nn.Linear`` (``W = W0 + s·B·A``, ``W0 (out, in)`` frozen, ``A (r, in)``,
    ``B (out, r)``, ``s`` the LoRA scaling; rows of head i: ``[i·d, (i+1)·d)``).

    ``param`` / ``view`` are ``B`` and its head rows ``(M, d, r)``: the numbers whose gradient the rewrite
    replaces. The particle (what the kernel measures) is the head's *effective* weight
    ``θ_i = W0_i + s·B_i·A`` ``(d, in)``: :meth:`effective`. A direction ``φ (M, d, in)`` in that space reaches
    ``B`` through the chain rule, ``s·φ_i·Aᵀ``: :meth:`pull_back`. ``A`` (shared by all heads) is not a particle.
    """

    base: Tensor
    base_view: Callable[[Tensor], Tensor]
    lora_a: Tensor
    scaling: float

    @staticmethod
    def lora_linear(base: Tensor, lora_a: Tensor, lora_b: nn.Parameter, scaling: float, heads: int,
                    start: int = 0, stop: int | None = None) -> LoraHeadSlice:
        view = partial(linear_heads, heads=heads, start=start, stop=stop)
        return LoraHeadSlice(lora_b, view, base, view, lora_a, float(scaling))

    def effective(self) -> Tensor:
        """``θ (M, d, in)``: each head's effective weight (detached)."""
        lora_a = self.lora_a.detach()
        delta = self.view(self.param.detach()).to(lora_a.dtype) @ lora_a
        return self.base_view(self.base.detach()) + self.scaling * delta.to(self.base.dtype)

    def pull_back(self, direction: Tensor) -> Tensor:
        """``s·φ_i·Aᵀ (M, d, r)`` for ``φ (M, d·in)`` or ``(M, d, in)`` in the effective-weight space."""
        lora_a = self.lora_a.detach().to(direction.dtype)
        return self.scaling * direction.reshape(direction.shape[0], -1, lora_a.shape[1]) @ lora_a.T


@dataclass(frozen=True, eq=False)
class Projection:
    """One projection of an attention module: ``role`` is "q", "k", "v" or "hops" (self-attentive W_s2 rows)."""

    role: str
    num_heads: int
    weight: HeadSlice
    bias: HeadSlice | None = None


class ParticleSet:
    """M particles of P numbers each, gathered from the head views ``slices`` (concatenated per head)."""

    def __init__(self, name: str, slices: Sequence[HeadSlice]) -> None:
        self.name = name
        self.slices = tuple(slices)
        shapes = [tuple(s.view(s.param.detach()).shape) for s in self.slices]
        self.num_particles = shapes[0][0]
        if any(shape[0] != self.num_particles for shape in shapes):
            raise ValueError(f"{name}: the projections grouped together have different head counts {shapes}")
        self.sizes = [int(torch.Size(shape[1:]).numel()) for shape in shapes]
        self.size = sum(self.sizes)
        # the particle space: the same numbers, except LoRA heads, whose particle is the effective weight
        self.lifted = any(isinstance(s, LoraHeadSlice) for s in self.slices)
        self.particle_sizes = [
            int(s.base_view(s.base.detach()).shape[1:].numel()) if isinstance(s, LoraHeadSlice) else size
            for s, size in zip(self.slices, self.sizes)
        ]
        self.particle_size = sum(self.particle_sizes)

    @property
    def params(self) -> list[nn.Parameter]:
        return [s.param for s in self.slices]

    def _gather(self, tensors: Sequence[Tensor]) -> Tensor:
        parts = [s.view(t).reshape(self.num_particles, -1) for s, t in zip(self.slices, tensors)]
        return parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)

    def weights(self) -> Tensor:
        """The particles ``(M, particle_size)`` (detached); a LoRA head's particle is its effective weight."""
        if not self.lifted:
            return self._gather([s.param.detach() for s in self.slices])
        parts = [(s.effective() if isinstance(s, LoraHeadSlice) else s.view(s.param.detach()))
                 .reshape(self.num_particles, -1) for s in self.slices]
        return parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)

    def pull_back(self, directions: Tensor) -> Tensor:
        """Map ``directions (M, particle_size)`` in particle space to the gradient space ``(M, size)`` of
        :meth:`grads` / :meth:`set_grads` (the identity except for LoRA heads, see :class:`LoraHeadSlice`)."""
        out = [s.pull_back(part) if isinstance(s, LoraHeadSlice) else part
               for s, part in zip(self.slices, directions.split(self.particle_sizes, dim=1))]
        out = [part.reshape(self.num_particles, -1) for part in out]
        return out[0] if len(out) == 1 else torch.cat(out, dim=1)

    def grads(self) -> Tensor | None:
        """The gradients ``(M, P)``, or None if any parameter of the set has no ``.grad``."""
        grads = [s.param.grad for s in self.slices]
        return None if any(g is None for g in grads) else self._gather(grads)

    def set_grads(self, values: Tensor) -> None:
        """Write ``values (M, P)`` into the ``.grad`` of the parameters, each entry at its head's place."""
        for s, part in zip(self.slices, values.split(self.sizes, dim=1)):
            target = s.view(s.param.grad)
            target.copy_(part.reshape(target.shape))


def build_particle_sets(
    name: str,
    projections: Sequence[Projection],
    *,
    grouping: Grouping = "separate",
    include_bias: bool = False,
) -> list[ParticleSet]:
    """Particle sets of one attention module (named ``name``) from its ``projections`` (see module doc)."""
    if grouping not in GROUPINGS:
        raise ValueError(f"grouping must be one of {GROUPINGS}, got {grouping!r}")
    chosen = [p for p in projections if grouping != "qk_only" or p.role != "v"]

    def slices(p: Projection) -> list[HeadSlice]:
        return [p.weight] + ([p.bias] if include_bias and p.bias is not None else [])

    if grouping == "joint" and len(chosen) > 1:
        counts = {p.role: p.num_heads for p in chosen}
        if len(set(counts.values())) > 1:
            raise ValueError(
                f"grouping='joint' needs the same head count in every projection of {name}, got {counts} "
                "(grouped-query attention): use grouping='separate' or 'qk_only'"
            )
        return [
            ParticleSet(f"{name}.{'+'.join(p.role for p in chosen)}", [s for p in chosen for s in slices(p)])
        ]
    return [ParticleSet(f"{name}.{p.role}", slices(p)) for p in chosen]
