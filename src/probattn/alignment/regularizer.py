"""AlignmentRegularizer: one scalar per attention layer that pulls each head's key and query clouds together.

Inputs are what :func:`probattn.nn.hooks.observe_qk` hands over: projected, unscaled per-head queries
``q (B, H, Lq, d_h)`` and keys ``k (B, H_kv, Lk, d_h)`` (``H % H_kv == 0``; grouped keys are repeated per
group) plus bool validity masks ``(B, Lq)`` / ``(B, Lk)`` (True = real token).

The term is a distance estimate that the model minimises (every variant scores matched clouds lower than
shifted ones). Adversarial variants (``ct``, ``gan``) hold small auxiliary networks whose gradients are
reversed (:mod:`probattn.alignment.grad_reverse`), so one ordinary optimizer trains the model and the
auxiliary networks together; the loss added to the task loss is ``weight * term`` (see
:func:`probattn.alignment.alignment_loss`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from probattn.alignment.closed_form import MaximumMeanDiscrepancy, SinkhornDivergence, mmd
from probattn.alignment.ct import COSTS, ConditionalTransport
from probattn.alignment.gan import AdversarialMatching
from probattn.alignment.sets import as_sets, mean_over_sets
from probattn.nn.hooks import REGULARIZER_ATTR

__all__ = ["AXES", "NAVIGATORS", "VARIANTS", "AlignmentRegularizer", "Observation", "alignment_distance"]

VARIANTS = ("ct", "gan", "mmd", "sinkhorn")
AXES = ("tokens", "heads", "both")
NAVIGATORS = ("min", "max")


@dataclass
class Observation:
    """One layer application seen in training: the term (with grad) and the prepared, detached clouds."""

    term: Tensor
    q: Tensor
    k: Tensor
    query_valid: Tensor | None
    key_valid: Tensor | None


def _choice(name: str, value: object, allowed: tuple[str, ...]) -> str:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {allowed}, got {value!r}")
    return value  # type: ignore[return-value]


def _positive_int(name: str, value: object, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer{' or None' if allow_none else ''}, got {value!r}")


def _validity(name: str, mask: Tensor | None, batch: int, length: int, device: torch.device) -> Tensor | None:
    """Check a ``(B, L)`` bool validity mask from the hook contract; None means all real tokens."""
    if mask is None:
        return None
    if not isinstance(mask, Tensor) or mask.dtype != torch.bool or tuple(mask.shape) != (batch, length):
        got = f"{mask.dtype} {tuple(mask.shape)}" if isinstance(mask, Tensor) else type(mask).__name__
        raise ValueError(
            f"{name} must be a bool tensor of shape (batch, length) = ({batch}, {length}) with True = real token, "
            f"got {got}; build it with probattn.masks"
        )
    return mask.to(device)


def _subsample(valid: Tensor | None, batch: int, length: int, max_tokens: int, device: torch.device) -> Tensor:
    """Indices ``(B, max_tokens)`` of up to ``max_tokens`` random valid positions per row (valid ones first)."""
    scores = torch.rand(batch, length, device=device)
    if valid is not None:
        scores = scores.masked_fill(~valid, -1.0)
    return scores.topk(max_tokens, dim=-1).indices


def _gather(x: Tensor, valid: Tensor | None, index: Tensor) -> tuple[Tensor, Tensor | None]:
    """Pick positions ``index (B, T)`` from ``x (B, H, L, d)`` and ``valid (B, L)``."""
    expanded = index[:, None, :, None].expand(x.shape[0], x.shape[1], index.shape[1], x.shape[3])
    return x.gather(2, expanded), None if valid is None else valid.gather(1, index)


class AlignmentRegularizer(nn.Module):
    """Key/query distribution-matching term for one attention module (attached as ``probattn_alignment``).

    Args:
        head_dim: ``d_h``, the width of each head's queries and keys.
        variant: ``"ct"`` (bidirectional conditional transport, default), ``"gan"`` (discriminator),
            ``"mmd"`` (multi-bandwidth RBF MMD^2) or ``"sinkhorn"`` (debiased entropic OT); the last two have
            no auxiliary network.
        axis: ``"tokens"`` (each head's tokens, per sequence; paper), ``"heads"`` (the H heads at each
            position; release) or ``"both"`` (sum of the two, separate auxiliary networks).
        weight: ``lambda``; :func:`alignment_loss` returns ``weight`` times the mean term over layers.
        rho: CT balance between the query->key and key->query transport (``ct`` only).
        hidden: width ``s`` of the auxiliary networks.
        cost: CT point cost on critic features, ``"cosine"`` (``1 - cos``) or ``"euclidean"`` (release).
        navigator: ``"min"`` (navigator minimises CT, CT paper) or ``"max"`` (release).
        mask_padding: drop padded tokens (default). ``False`` reproduces the release, which matches padding too.
        share_across_heads: one set of auxiliary networks for all heads (default) or one per head
            (then ``num_heads`` is required).
        max_tokens: compare at most this many random valid positions per sequence (None = all).
        num_heads: ``H``, needed only with ``share_across_heads=False``.
        temperature: CT navigator temperature ``tau`` (release: 1; at least 0.05).
        symmetric: GAN only; False (release) detaches the queries, True moves both clouds.
        ot_epsilon, ot_iters: Sinkhorn blur (relative to the mean squared query-key distance) and iterations.
    """

    def __init__(
        self,
        head_dim: int,
        *,
        variant: str = "ct",
        axis: str = "tokens",
        weight: float = 0.01,
        rho: float = 0.5,
        hidden: int = 16,
        cost: str = "cosine",
        navigator: str = "min",
        mask_padding: bool = True,
        share_across_heads: bool = True,
        max_tokens: int | None = None,
        num_heads: int | None = None,
        temperature: float = 1.0,
        symmetric: bool = False,
        ot_epsilon: float = 0.1,
        ot_iters: int = 50,
    ) -> None:
        super().__init__()
        _positive_int("head_dim", head_dim)
        _positive_int("hidden", hidden)
        _positive_int("max_tokens", max_tokens, allow_none=True)
        _positive_int("ot_iters", ot_iters)
        self.variant = _choice("variant", variant, VARIANTS)
        self.axis = _choice("axis", axis, AXES)
        _choice("cost", cost, COSTS)
        _choice("navigator", navigator, NAVIGATORS)
        if not 0.0 <= rho <= 1.0:
            raise ValueError(f"rho must lie in [0, 1], got {rho!r}")
        if not weight >= 0.0:
            raise ValueError(f"weight must be >= 0 (it is lambda, the strength of the term), got {weight!r}")
        if not temperature >= 0.05:
            raise ValueError(f"temperature must be >= 0.05 (navigator similarities lie in [-1, 1]), got {temperature!r}")
        if not ot_epsilon > 0.0:
            raise ValueError(f"ot_epsilon must be > 0, got {ot_epsilon!r}")
        if not share_across_heads:
            _positive_int("num_heads (required with share_across_heads=False)", num_heads)
        groups = 1 if share_across_heads else int(num_heads)  # type: ignore[arg-type]
        self.head_dim, self.weight, self.mask_padding, self.max_tokens = head_dim, float(weight), mask_padding, max_tokens

        def estimator() -> nn.Module:
            if variant == "ct":
                return ConditionalTransport(
                    head_dim, hidden=hidden, rho=rho, cost=cost, navigator=navigator,
                    temperature=temperature, groups=groups,
                )
            if variant == "gan":
                return AdversarialMatching(head_dim, hidden=hidden, symmetric=symmetric, groups=groups)
            if variant == "mmd":
                return MaximumMeanDiscrepancy()
            return SinkhornDivergence(epsilon=ot_epsilon, iters=ot_iters)

        axes = ("tokens", "heads") if axis == "both" else (axis,)
        self.estimators = nn.ModuleDict({name: estimator() for name in axes})
        self._observations: list[Observation] = []
        self.register_load_state_dict_post_hook(_accept_missing_auxiliary_state)

    def auxiliary_parameters(self) -> list[nn.Parameter]:
        """The auxiliary networks' parameters (critic, navigator, discriminator); empty for mmd/sinkhorn."""
        return list(self.parameters())

    def prepare(
        self, q: Tensor, k: Tensor, query_valid: Tensor | None = None, key_valid: Tensor | None = None
    ) -> tuple[Tensor, Tensor, Tensor | None, Tensor | None]:
        """Check inputs; repeat grouped keys; zero padded vectors; subsample. Returns ``(q, k, qv, kv)``.

        Validity stays None (all tokens real) when no mask was given or ``mask_padding=False``.
        """
        for name, x in (("q", q), ("k", k)):
            if not isinstance(x, Tensor) or x.dim() != 4:
                raise ValueError(f"{name} must be a 4-D tensor (batch, heads, length, head_dim), got "
                                 f"{tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__}")
            if x.shape[-1] != self.head_dim:
                raise ValueError(f"{name} has head_dim {x.shape[-1]} but the regularizer was built for "
                                 f"head_dim={self.head_dim}")
        (batch, heads, lq, _), (kb, kv_heads, lk, _) = q.shape, k.shape
        if kb != batch or heads % kv_heads:
            raise ValueError(f"k of shape {tuple(k.shape)} does not match q of shape {tuple(q.shape)}: need the "
                             "same batch and a number of key heads dividing the number of query heads")
        if self.axis != "tokens" and lq != lk:
            raise ValueError(f"axis={self.axis!r} compares keys and queries at the same positions and needs "
                             f"Lq == Lk, got {lq} and {lk}; use axis='tokens' for cross-attention")
        qv = _validity("query_valid", query_valid, batch, lq, q.device)
        kv = _validity("key_valid", key_valid, batch, lk, q.device)
        if not self.mask_padding:
            qv = kv = None
        params = next(self.parameters(), None)
        dtype = params.dtype if params is not None else torch.promote_types(q.dtype, torch.float32)
        q, k = q.to(dtype), k.to(dtype)
        if kv_heads != heads:
            k = k.repeat_interleave(heads // kv_heads, dim=1)
        if qv is not None:
            q = q.masked_fill(~qv[:, None, :, None], 0.0)
        if kv is not None:
            k = k.masked_fill(~kv[:, None, :, None], 0.0)
        if self.max_tokens is not None:
            if self.axis == "tokens":
                if lq > self.max_tokens:
                    q, qv = _gather(q, qv, _subsample(qv, batch, lq, self.max_tokens, q.device))
                if lk > self.max_tokens:
                    k, kv = _gather(k, kv, _subsample(kv, batch, lk, self.max_tokens, k.device))
            elif lq > self.max_tokens:
                joint = kv if qv is None else qv if kv is None else qv & kv
                index = _subsample(joint, batch, lq, self.max_tokens, q.device)
                q, qv = _gather(q, qv, index)
                k, kv = _gather(k, kv, index)
        return q, k, qv, kv

    def forward(
        self, q: Tensor, k: Tensor, *, query_valid: Tensor | None = None, key_valid: Tensor | None = None
    ) -> Tensor:
        """Unweighted term (scalar) for ``q (B, H, Lq, d_h)``, ``k (B, H_kv, Lk, d_h)``; nothing is stored."""
        return self._term(*self.prepare(q, k, query_valid, key_valid))

    def _term(self, q: Tensor, k: Tensor, qv: Tensor | None, kv: Tensor | None) -> Tensor:
        # Mixed-precision training: the tiny networks and the exponentials run in the regularizer's own dtype
        # (float32 unless the model is float64), never in the autocast dtype.
        with torch.autocast(q.device.type, enabled=False):
            return sum(est(q, k, qv, kv, axis) for axis, est in self.estimators.items())  # type: ignore[return-value]

    def observe(self, q: Tensor, k: Tensor, *, query_valid: Tensor | None, key_valid: Tensor | None) -> None:
        """Called by :func:`probattn.nn.hooks.observe_qk` (training, grad enabled): compute and store the term.

        Inside a backward pass (activation checkpointing recomputing the layer) the term is recomputed, so that
        the recomputation saves the same tensors as the original forward, but not stored: the term of the
        original forward is the one in the loss.
        """
        q, k, qv, kv = self.prepare(q, k, query_valid, key_valid)
        term = self._term(q, k, qv, kv)
        if not _in_backward():
            self._observations.append(Observation(term, q.detach(), k.detach(), qv, kv))

    def pop_observations(self) -> list[Observation]:
        """Return the observations stored since the last call and forget them."""
        observations, self._observations = self._observations, []
        return observations

    def extra_repr(self) -> str:
        return f"head_dim={self.head_dim}, variant={self.variant!r}, axis={self.axis!r}, weight={self.weight}"


def _in_backward() -> bool:
    """True inside a backward pass (torch exposes this only privately; False if the hook is missing).

    Under ``torch.compile`` this is False without asking: dynamo cannot trace the query (an int from the
    autograd engine, a graph break that ``fullgraph=True`` refuses), and it need not: a compiled forward is
    traced once, and activation checkpointing inside it recomputes in the compiled backward graph, which never
    runs this Python code again, so the term is stored exactly once per forward either way.
    """
    if torch.compiler.is_compiling():
        return False
    task_id = getattr(torch._C, "_current_graph_task_id", None)
    return task_id is not None and task_id() != -1


@torch.no_grad()
def alignment_distance(
    q: Tensor, k: Tensor, query_valid: Tensor | None = None, key_valid: Tensor | None = None
) -> Tensor:
    """Model-free diagnostic: squared MMD between each head's query and key clouds, mean over (sequence, head).

    ``q (B, H, Lq, d)``, ``k (B, H, Lk, d)`` (same number of heads), validity bool ``(B, Lq)`` / ``(B, Lk)``
    (None = all real tokens). Computed in float32 (float64 for float64 inputs), also under autocast.
    """
    qs, qv = as_sets(q.float() if q.dtype != torch.float64 else q, query_valid, "tokens")
    ks, kv = as_sets(k.to(qs.dtype), key_valid, "tokens")
    with torch.autocast(q.device.type, enabled=False):
        return mean_over_sets(mmd(qs, ks, qv, kv), qv, kv)


def _accept_missing_auxiliary_state(module: nn.Module, incompatible_keys) -> None:
    """A checkpoint saved without the auxiliary networks loads strictly: they keep their fresh initialisation."""
    marker = f"{REGULARIZER_ATTR}."
    incompatible_keys.missing_keys[:] = [key for key in incompatible_keys.missing_keys if marker not in key]
