"""Attach alignment regularizers to a model's attention modules and collect their terms each step.

Plain PyTorch loop (gradient accumulation: every micro-batch adds its own ``alignment_loss`` to its own
task loss and both are scaled the same way)::

    regularizers = attach_alignment(model, variant="ct", weight=0.01)
    for micro_batch in micro_batches:
        task = criterion(model(micro_batch.x), micro_batch.y)
        align, stats = alignment_loss(model)
        ((task + align) / len(micro_batches)).backward()
    optimizer.step(); optimizer.zero_grad()

Call :func:`alignment_loss` exactly once after every training forward pass: it returns
``mean over layer applications of (weight * term)`` and clears what the layers stored.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from probattn.alignment.regularizer import AlignmentRegularizer, alignment_distance
from probattn.nn import MultiheadAttention
from probattn.nn.hooks import REGULARIZER_ATTR

__all__ = [
    "AlignmentStats",
    "alignment_loss",
    "alignment_parameter_groups",
    "attach_alignment",
    "attached_regularizers",
    "default_predicate",
    "detach_alignment",
    "strip_alignment_state",
]


def default_predicate(module: nn.Module) -> bool:
    """probattn's ``MultiheadAttention`` and any module declaring a ``probattn_alignment`` slot."""
    return isinstance(module, MultiheadAttention) or hasattr(module, REGULARIZER_ATTR)


def attach_alignment(
    model: nn.Module,
    variant: str = "ct",
    *,
    layers: Sequence[int] | None = None,
    predicate: Callable[[nn.Module], bool] = default_predicate,
    **options,
) -> list[AlignmentRegularizer]:
    """Attach an :class:`AlignmentRegularizer` as ``module.probattn_alignment`` to attention modules of ``model``.

    Args:
        model: any ``nn.Module``; attention modules are found with ``predicate`` in ``named_modules`` order
            (a module reused by several layers, as in ALBERT, is found once and contributes one term per call).
        variant: ``"ct" | "gan" | "mmd" | "sinkhorn"``.
        layers: indices into the found modules (negative allowed); None = all.
        predicate: which modules are attention modules.
        **options: passed to :class:`AlignmentRegularizer` (``axis``, ``weight``, ``hidden``...). ``head_dim``
            and ``num_heads`` default to the module's attributes of those names.
    Returns:
        the new regularizers, in the order of the modules.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    found = [module for _, module in model.named_modules() if predicate(module)]
    if not found:
        raise ValueError("attach_alignment found no attention module in model; use probattn.nn.MultiheadAttention "
                         "(probattn.nn.replace_attention) or pass predicate= to select modules")
    if layers is not None:
        bad = [i for i in layers if not -len(found) <= i < len(found)]
        if bad:
            raise ValueError(f"layers {bad} out of range: the model has {len(found)} attention modules")
        found = [found[i] for i in layers]
    regularizers = []
    for module in found:
        if isinstance(getattr(module, REGULARIZER_ATTR, None), AlignmentRegularizer):
            raise ValueError(f"{type(module).__name__} already has an alignment regularizer; "
                             "call detach_alignment(model) first")
        head_dim = options.get("head_dim", getattr(module, "head_dim", None))
        if head_dim is None:
            raise ValueError(f"{type(module).__name__} has no head_dim attribute; pass head_dim= to attach_alignment")
        kwargs = {**options, "head_dim": head_dim, "variant": variant}
        kwargs.setdefault("num_heads", getattr(module, "num_heads", None))
        regularizer = AlignmentRegularizer(**kwargs)
        reference = next(module.parameters(), None)
        if reference is not None:
            dtype = torch.float64 if reference.dtype == torch.float64 else torch.float32
            regularizer.to(device=reference.device, dtype=dtype)
        regularizer.train(module.training)
        setattr(module, REGULARIZER_ATTR, regularizer)
        regularizers.append(regularizer)
    return regularizers


def attached_regularizers(model: nn.Module) -> list[AlignmentRegularizer]:
    """The regularizers attached anywhere in ``model`` (each once)."""
    return [m for m in model.modules() if isinstance(m, AlignmentRegularizer)]


def detach_alignment(model: nn.Module) -> int:
    """Remove every attached regularizer (the slot is left as None). Returns how many were removed."""
    removed = 0
    for module in list(model.modules()):
        if isinstance(getattr(module, REGULARIZER_ATTR, None), AlignmentRegularizer):
            setattr(module, REGULARIZER_ATTR, None)
            removed += 1
    return removed


@dataclass
class AlignmentStats:
    """Diagnostics of one :func:`alignment_loss` call, one entry per layer application (in call order).

    ``terms``: unweighted term of each application. ``distances``: model-free squared MMD between each head's
    key and query clouds (no grad; mean over heads and the first ``distance_batch`` sequences), or empty.
    """

    terms: list[float] = field(default_factory=list)
    distances: list[float] = field(default_factory=list)

    def as_dict(self, prefix: str = "alignment") -> dict[str, float]:
        """Flat ``{prefix/term, prefix/distance, prefix/term_0, ...}`` for loggers."""
        out: dict[str, float] = {}
        for name, values in (("term", self.terms), ("distance", self.distances)):
            if values:
                out[f"{prefix}/{name}"] = sum(values) / len(values)
                out.update({f"{prefix}/{name}_{i}": v for i, v in enumerate(values)})
        return out


def _warn_if_frozen(regularizer: AlignmentRegularizer) -> None:
    """Warn (once per regularizer) when its auxiliary networks are all frozen while its term is trained."""
    params = regularizer.auxiliary_parameters()
    if not params or any(p.requires_grad for p in params) or getattr(regularizer, "_warned_frozen", False):
        return
    regularizer._warned_frozen = True
    warnings.warn(
        f"the {regularizer.variant!r} alignment term is in the loss but its {len(params)} auxiliary network "
        "parameters are frozen (requires_grad=False), e.g. by peft.get_peft_model: the adversary cannot train and "
        "the term measures nothing useful. Call probattn.hf.unfreeze_probattn(model) after wrapping (probattn.hf."
        "Trainer does it), or detach the regularizer (probattn.alignment.detach_alignment)",
        UserWarning, stacklevel=3,
    )


def alignment_loss(model: nn.Module, *, distance_batch: int | None = 1) -> tuple[Tensor, AlignmentStats]:
    """``mean over layer applications of (weight * term)`` stored since the last call, and diagnostics.

    Clears the stored terms. In eval mode or under ``torch.no_grad`` nothing is stored and the loss is 0.

    Args:
        distance_batch: sequences of the batch used for the diagnostic MMD (None = all, 0 = skip it). Its
            cost grows with it: at L = 128 one sequence costs about a tenth of a CT term's forward + backward.
    Raises:
        ValueError: no regularizer is attached to ``model``.
        RuntimeError: the model is in training mode with grad enabled but no attention layer reported its
            queries and keys (the layers must call ``probattn.nn.hooks.observe_qk``).
    """
    if distance_batch is not None and (isinstance(distance_batch, bool) or not isinstance(distance_batch, int)
                                       or distance_batch < 0):
        raise ValueError(f"distance_batch must be a non-negative integer or None, got {distance_batch!r}")
    regularizers = attached_regularizers(model)
    if not regularizers:
        raise ValueError("no alignment regularizer is attached to model; call attach_alignment(model) first")
    weighted, terms, distances, owners = [], [], [], []
    for regularizer in regularizers:
        observations = regularizer.pop_observations()
        if observations:
            _warn_if_frozen(regularizer)
        for obs in observations:
            weighted.append(regularizer.weight * obs.term)
            terms.append(obs.term.detach())
            owners.append((regularizer, obs))
            if distance_batch != 0:
                rows = slice(None) if distance_batch is None else slice(0, distance_batch)
                qv, kv = (None if v is None else v[rows] for v in (obs.query_valid, obs.key_valid))
                distances.append(alignment_distance(obs.q[rows], obs.k[rows], qv, kv))
    if not weighted:
        if any(r.training for r in regularizers) and torch.is_grad_enabled():
            raise RuntimeError(
                f"{len(regularizers)} alignment regularizer(s) are attached but no attention layer reported its "
                "queries and keys since the last alignment_loss call: run the training forward pass first, and "
                "make sure the attention modules call probattn.nn.hooks.observe_qk"
            )
        reference = next(model.parameters(), None)
        return torch.zeros((), device=None if reference is None else reference.device), AlignmentStats()
    stats = AlignmentStats(
        terms=torch.stack(terms).tolist(), distances=torch.stack(distances).tolist() if distances else []
    )
    _check_finite_terms(model, stats.terms, owners)
    return torch.stack(weighted).mean(), stats


def _check_finite_terms(model: nn.Module, terms: list[float], owners: list) -> None:
    """Raise ``FloatingPointError`` naming the regularizer and its layer when a term is NaN or infinite (the terms
    were read already: no extra sync). Finite queries and keys in: the regularizer is at fault; otherwise the
    model diverged before it."""
    bad = [i for i, term in enumerate(terms) if not math.isfinite(term)]
    if not bad:
        return
    regularizer, obs = owners[bad[0]]
    names = {id(m): name for name, m in model.named_modules()}
    layer = next((name for name, m in model.named_modules() if getattr(m, REGULARIZER_ATTR, None) is regularizer),
                 names.get(id(regularizer), "?"))
    inputs_finite = bool(torch.isfinite(obs.q).all()) and bool(torch.isfinite(obs.k).all())
    cause = ("from finite queries and keys: lower the alignment weight or the auxiliary networks' learning rate, or "
             "restart from an earlier checkpoint" if inputs_finite else
             "because the layer's queries/keys are already non-finite: the model diverged before the alignment term")
    raise FloatingPointError(
        f"AlignmentRegularizer({regularizer.variant}) produced {terms[bad[0]]} in layer {layer or 'model'!r} "
        f"({len(bad)} of {len(terms)} terms non-finite) {cause}"
    )


def alignment_parameter_groups(model: nn.Module, **auxiliary_options) -> list[dict]:
    """Optimizer parameter groups: the model's own parameters, then the auxiliary networks' parameters.

    ``auxiliary_options`` (e.g. ``lr=1e-4, betas=(0.0, 0.9), weight_decay=0.0``) apply to the second group
    only. Pass the result to any optimizer: ``torch.optim.AdamW(alignment_parameter_groups(model, lr=1e-4))``.
    """
    auxiliary = [p for r in attached_regularizers(model) for p in r.auxiliary_parameters()]
    ids = {id(p) for p in auxiliary}
    groups = [{"params": [p for p in model.parameters() if id(p) not in ids]}]
    if auxiliary:
        groups.append({"params": auxiliary, **auxiliary_options})
    return groups


def strip_alignment_state(state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
    """A copy of ``state_dict`` without the auxiliary networks (``*probattn_alignment.*`` keys), for inference."""
    marker = f"{REGULARIZER_ATTR}."
    return {key: value for key, value in state_dict.items() if not (key.startswith(marker) or f".{marker}" in key)}
