"""``RepulsiveHeads``: rewrite the gradients of attention heads with SVGD / SPOS once per optimizer step.

Usage::

    repulsive = RepulsiveHeads(model, alpha=0.01).attach(optimizer)
    loss.backward(); optimizer.step()          # the rewrite runs inside optimizer.step(), before the update
    repulsive.last_stats                       # bandwidth, kernel, repulsion/gradient ratio, head norms

The rewrite is an ``optimizer.register_step_pre_hook``: it runs exactly once per optimizer step, on the
fully accumulated gradients (correct under gradient accumulation), after DDP's all-reduce and after
``GradScaler.step`` has unscaled them (a step that the scaler skips for inf/NaN is skipped here too). SVGD is
deterministic, so DDP ranks stay identical; SPOS noise comes from a generator seeded from ``(seed, step)``,
identical on every rank and after a resume (keep ``state_dict()`` with your checkpoint).

``clip`` says where gradient clipping sits relative to the rewrite:

* ``"before"`` (default, the authors' order): the rewrite sees unclipped gradients. Do not clip in your loop;
  pass ``max_grad_norm`` and the hook clips all the optimizer's gradients right after the rewrite.
* ``"after"``: the rewrite sees gradients your loop has already clipped (HF Trainer with ``max_grad_norm``
  > 0 and a callback calling :meth:`RepulsiveHeads.step` in ``on_pre_optimizer_step``). ``max_grad_norm``
  must then be None.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Literal

import torch
from torch import Tensor, nn
from torch.optim import Optimizer

from probattn.repulsive.adapters import ADAPTERS, find_attention_modules
from probattn.repulsive.directions import (
    KernelGradDiv,
    KernelParts,
    check_options,
    compute_dtype,
    fused_svgd,
    kernel_parts,
    repulsion_scale,
    spos_noise,
)
from probattn.repulsive.kernels import MedianKind
from probattn.repulsive.particles import GROUPINGS, Grouping, ParticleSet, build_particle_sets
from probattn.repulsive.presets import PRESETS

LayerFilter = Sequence[int] | Callable[[str, nn.Module], bool] | None

__all__ = ["RepulsiveHeads"]


def _select(found: list, layers: LayerFilter) -> list:
    if layers is None:
        return found
    if callable(layers):
        return [entry for entry in found if layers(entry[0], entry[1])]
    if isinstance(layers, (str, bytes)) or not all(isinstance(i, int) for i in layers):
        raise TypeError(
            f"layers must be None, a sequence of ints or a callable(name, module), got {layers!r}"
        )
    n = len(found)
    bad = [i for i in layers if not -n <= i < n]
    if bad:
        raise ValueError(f"layers {bad} out of range: found {n} attention modules ({[e[0] for e in found]})")
    return [found[i % n] for i in sorted({i % n for i in layers})]


def _without_frozen(sets: list[ParticleSet]) -> list[ParticleSet]:
    """``sets`` without the head slices of frozen parameters (a set with nothing trainable left is dropped)."""
    kept = []
    for s in sets:
        trainable = [piece for piece in s.slices if piece.param.requires_grad]
        if len(trainable) == len(s.slices):
            kept.append(s)
        elif trainable:
            kept.append(ParticleSet(s.name, trainable))
    return kept


class RepulsiveHeads:
    """SVGD / SPOS over the heads of the attention modules in ``model_or_modules`` (see module doc).

    Args:
        model_or_modules: a model (searched for attention modules, see :mod:`probattn.repulsive.adapters`)
            or a list of attention modules.
        method: ``"svgd"`` or ``"spos"``.
        alpha: repulsion weight α (0 keeps only the kernel-weighted consensus term K·G).
        stepsize: overall scale s of the rewritten gradient.
        layers: None (all found modules), indices into the found modules in model order, or
            ``callable(name, module) -> bool``.
        grouping: ``"separate"`` (Q, K, V each a particle set), ``"joint"`` or ``"qk_only"``.
        clip: ``"before"`` or ``"after"`` (module doc). max_grad_norm: clip norm used with ``clip="before"``.
        beta: SPOS Langevin weight β. seed: seed of the SPOS noise.
        median, kernel_grad_div, normalize_by_M, eps: see :func:`~probattn.repulsive.svgd_direction`.
        include_bias: put each head's slice of the projection biases into its particle.
    """

    def __init__(
        self,
        model_or_modules: nn.Module | Iterable[nn.Module],
        method: Literal["svgd", "spos"] = "svgd",
        alpha: float = 0.01,
        stepsize: float = 1.0,
        layers: LayerFilter = None,
        grouping: Grouping = "separate",
        clip: Literal["before", "after"] = "before",
        *,
        max_grad_norm: float | None = None,
        beta: float = 1.0,
        seed: int = 0,
        median: MedianKind = "true",
        kernel_grad_div: KernelGradDiv = "h2",
        normalize_by_M: bool = True,
        include_bias: bool = False,
        eps: float = 1e-8,
    ) -> None:
        if method not in ("svgd", "spos"):
            raise ValueError(f"method must be 'svgd' or 'spos', got {method!r}")
        if clip not in ("before", "after"):
            raise ValueError(f"clip must be 'before' or 'after', got {clip!r}")
        if max_grad_norm is not None and (clip == "after" or not max_grad_norm > 0):
            raise ValueError("max_grad_norm must be None with clip='after', and > 0 with clip='before'")
        if grouping not in GROUPINGS:
            raise ValueError(f"grouping must be one of {GROUPINGS}, got {grouping!r}")
        if median not in ("true", "lower"):
            raise ValueError(f"median must be 'true' or 'lower', got {median!r}")
        if not (isinstance(beta, (int, float)) and math.isfinite(beta) and beta >= 0):
            raise ValueError(f"beta must be a finite number >= 0, got {beta!r}")
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise TypeError(f"seed must be an int, got {seed!r}")
        check_options(alpha, stepsize, kernel_grad_div, "median")
        self.method, self.alpha, self.stepsize, self.beta, self.seed = method, alpha, stepsize, beta, seed
        self.clip, self.max_grad_norm, self.median, self.eps = clip, max_grad_norm, median, eps
        self.kernel_grad_div, self.normalize_by_M = kernel_grad_div, normalize_by_M

        found = _select(find_attention_modules(model_or_modules), layers)
        if not found:
            raise ValueError(
                "model_or_modules: no attention module found (known layouts: "
                f"{list(ADAPTERS)}); register one with probattn.repulsive.register_adapter"
            )
        self.module_names = [name for name, _, _ in found]
        sets = [
            s
            for name, _, projections in found
            for s in build_particle_sets(name or "model", projections, grouping=grouping, include_bias=include_bias)
        ]
        self.particle_sets: list[ParticleSet] = _without_frozen([s for s in sets if s.num_particles >= 2])  # M = 1: none
        self._model_params = list(model_or_modules.parameters()) if isinstance(model_or_modules, nn.Module) else []
        self.num_steps = 0
        self.last_stats: dict[str, Any] = {}
        self._optimizer: Optimizer | None = None
        self._handle: Any = None
        self._generators: dict[torch.device, torch.Generator] = {}

    @classmethod
    def from_preset(
        cls, model_or_modules: nn.Module | Iterable[nn.Module], name: str, **overrides: Any
    ) -> RepulsiveHeads:
        """``RepulsiveHeads`` with the hyper-parameters of ``PRESETS[name]``, updated by ``overrides``."""
        if name not in PRESETS:
            raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
        return cls(model_or_modules, **{**PRESETS[name].kwargs(), **overrides})

    # -- hooking into an optimizer -------------------------------------------------------------------------------
    def attach(self, optimizer: Optimizer) -> RepulsiveHeads:
        """Run :meth:`step` inside every ``optimizer.step()``, before the update. Returns ``self``.

        Frozen parameters (``requires_grad=False``) do not repel: they leave their particle sets here (a set
        left with no parameter is dropped). Every trainable attention parameter must be in ``optimizer``.
        """
        if self._handle is not None:
            raise RuntimeError("RepulsiveHeads is already attached; call detach() first")
        self.particle_sets = _without_frozen(self.particle_sets)
        in_optimizer = {id(p) for group in optimizer.param_groups for p in group["params"]}
        missing = sorted({s.name for s in self.particle_sets for p in s.params if id(p) not in in_optimizer})
        if missing:
            raise ValueError(f"optimizer does not update the trainable attention parameters of {missing}: add them "
                             f"to it, or freeze them (param.requires_grad_(False)); frozen parameters do not repel")
        if not self.particle_sets:
            warnings.warn("RepulsiveHeads: every attention parameter is frozen; nothing will repel", stacklevel=2)
        self._optimizer = optimizer
        self._handle = optimizer.register_step_pre_hook(self._pre_step_hook)
        return self

    def _pre_step_hook(self, optimizer: Optimizer, args: Any, kwargs: Any) -> None:
        self.step()

    def detach(self) -> None:
        """Stop rewriting gradients in ``optimizer.step()``."""
        if self._handle is not None:
            self._handle.remove()
        self._handle, self._optimizer = None, None

    def state_dict(self) -> dict[str, int]:
        return {"num_steps": self.num_steps, "seed": self.seed}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.num_steps, self.seed = int(state["num_steps"]), int(state["seed"])

    # -- the rewrite ---------------------------------------------------------------------------------------------
    def _generator(self, device: torch.device) -> torch.Generator:
        if device not in self._generators:
            self._generators[device] = torch.Generator(device=device)
        generator = self._generators[device]
        generator.manual_seed((self.seed * 1_000_003 + self.num_steps) % (2**63))
        return generator

    @torch.no_grad()
    def step(self) -> dict[str, Any]:
        """Rewrite the ``.grad`` of every particle set now (then clip if ``max_grad_norm``); returns the stats.

        Sets of the same shape are stacked and rewritten in one batched computation. Sets whose parameters have
        no gradient are left alone; a set with non-finite gradients or weights keeps its gradients, with a
        warning. A non-finite rewrite of finite weights and gradients raises ``FloatingPointError`` naming the
        method, the set and the step, before any gradient is changed.
        """
        batches: dict[tuple, list[tuple[ParticleSet, Tensor]]] = {}
        for s in self.particle_sets:
            grads = s.grads()
            if grads is not None:
                key = (s.num_particles, s.size, grads.dtype, grads.device, s.particle_size, s.lifted)
                batches.setdefault(key, []).append((s, grads))
        per_set: dict[str, dict[str, Any]] = {}
        rewrites: list[tuple[ParticleSet, Tensor]] = []
        generators: dict[torch.device, torch.Generator] = {}  # seeded once per step: batches draw in turn
        for (m, _, _, device, _, lifted), members in batches.items():
            theta = torch.stack([s.weights() for s, _ in members])
            dtype = compute_dtype(theta)
            grads = torch.stack([g for _, g in members]).to(dtype)
            parts = kernel_parts(theta, dtype, median=self.median, eps=self.eps)
            coef = self.stepsize / (m if self.normalize_by_M else 1)
            if lifted:  # LoRA: kernel on the effective weights, repulsion pulled back to B (particles.py)
                repulsion = fused_svgd(parts, torch.zeros_like(parts.centred), alpha=self.alpha, coef=coef,
                                       kernel_grad_div=self.kernel_grad_div)
                pulled = torch.stack([s.pull_back(r) for (s, _), r in zip(members, repulsion)])
                direction = torch.baddbmm(pulled, parts.kernel * coef, grads)
            else:
                direction = fused_svgd(parts, grads, alpha=self.alpha, coef=coef,
                                       kernel_grad_div=self.kernel_grad_div)
            if self.method == "spos":
                if device not in generators:
                    generators[device] = self._generator(device)
                noise = spos_noise(grads, beta=self.beta, stepsize=self.stepsize, generator=generators[device])
                direction.add_(noise, alpha=self.stepsize)
            stats = self._stats(parts, grads, theta, direction)
            if lifted:  # the ratio in the space the rewrite lands in: |pulled-back alpha R| / |K G|
                driving = (parts.kernel * coef) @ grads
                stats["repulsion_ratio"] = (pulled.flatten(1).norm(dim=1)
                                            / driving.flatten(1).norm(dim=1).clamp_min(1e-30)).tolist()
            for i, (s, _) in enumerate(members):
                per_set[s.name] = {key: value[i] for key, value in stats.items()}
                inputs_finite, output_finite = per_set[s.name].pop("finite"), per_set[s.name].pop("direction_finite")
                if not inputs_finite:
                    warnings.warn(f"{s.name} has non-finite gradients or weights: left its gradients as they are",
                                  stacklevel=2)
                elif not output_finite:  # finite weights and gradients in, NaN/inf out: this regularizer's doing
                    one = per_set[s.name]
                    raise FloatingPointError(
                        f"RepulsiveHeads({self.method}) produced a non-finite gradient in {s.name} at step "
                        f"{self.num_steps} from finite weights and gradients (bandwidth {one['bandwidth']:.3g}, "
                        f"repulsion/gradient ratio {one['repulsion_ratio']:.3g}, alpha={self.alpha}, "
                        f"stepsize={self.stepsize}); nothing was changed. Lower alpha or stepsize, or leave this "
                        "layer out (layers=...)"
                    )
                else:
                    rewrites.append((s, direction[i]))
        for s, new_grads in rewrites:  # only once every set is known to be finite: an error changes nothing
            s.set_grads(new_grads)
        if self.max_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_(self._clip_parameters(), self.max_grad_norm)
        self.num_steps += 1
        self.last_stats = self._summary(per_set)
        return self.last_stats

    def _stats(self, parts: KernelParts, grads: Tensor, theta: Tensor, direction: Tensor) -> dict[str, list]:
        """Per set: bandwidth h, mean off-diagonal kernel, ‖αR‖/‖K·G‖, per-head weight norms, whether the weights
        and gradients are finite, whether the rewritten gradient is.

        Computed from M×M matrices only: ‖K·G‖² = Σ K ⊙ (K·GGᵀ), ‖R‖² = Σ A ⊙ (A·C) / h⁴ with
        ``A = diag(rowsum K) − K`` and C the centred Gram matrix (h instead of h² for ``kernel_grad_div="h"``).
        """
        k, m = parts.kernel, parts.kernel.shape[-1]
        grad_gram = grads @ grads.transpose(-1, -2)
        driving = (k * (k @ grad_gram)).sum(dim=(-1, -2)).clamp_min(0).sqrt()
        a = torch.diag_embed(k.sum(dim=-1)) - k
        repulsion = (a * (a @ parts.gram)).sum(dim=(-1, -2)).clamp_min(0).sqrt()
        ratio = repulsion * repulsion_scale(parts, self.alpha, self.kernel_grad_div) / driving.clamp_min(1e-30)
        cross = (parts.centred @ parts.mean.transpose(-1, -2)).squeeze(-1)  # θc_i · mean
        head_sq_norms = parts.gram.diagonal(dim1=-2, dim2=-1) + 2 * cross + parts.mean.square().sum(dim=(-1, -2))[:, None]
        finite = torch.isfinite(grad_gram.diagonal(dim1=-2, dim2=-1)).all(dim=-1) & torch.isfinite(
            theta.abs().amax(dim=(-1, -2)))
        direction_finite = torch.isfinite(direction.abs().amax(dim=(-1, -2)))
        scalars = torch.stack([parts.h2.sqrt(), (k.sum(dim=(-1, -2)) - m) / (m * (m - 1)), ratio, finite.to(ratio.dtype),
                               direction_finite.to(ratio.dtype)])
        columns = torch.cat([scalars.T, head_sq_norms.clamp_min(0).sqrt()], dim=1).tolist()  # one device sync
        return {
            "bandwidth": [row[0] for row in columns],
            "mean_offdiag_kernel": [row[1] for row in columns],
            "repulsion_ratio": [row[2] for row in columns],
            "finite": [row[3] == 1.0 for row in columns],
            "direction_finite": [row[4] == 1.0 for row in columns],
            "head_norms": [row[5:] for row in columns],
        }

    def _summary(self, per_set: dict[str, dict[str, Any]]) -> dict[str, Any]:
        summary: dict[str, Any] = {"step": self.num_steps, "sets": per_set}
        for key in ("bandwidth", "mean_offdiag_kernel", "repulsion_ratio"):
            values = [stats[key] for stats in per_set.values()]
            summary[key] = sum(values) / len(values) if values else float("nan")
        return summary

    def _clip_parameters(self) -> list[nn.Parameter]:
        if self._optimizer is not None:
            return [p for group in self._optimizer.param_groups for p in group["params"]]
        if self._model_params:
            return self._model_params
        return [p for s in self.particle_sets for p in s.params]
