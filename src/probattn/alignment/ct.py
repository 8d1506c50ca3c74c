"""Bidirectional conditional transport (CT) between a cloud of queries and a cloud of keys.

For one comparison set with queries ``q_1..q_m`` and keys ``k_1..k_n``:

* critic features ``a = tau(q)``, ``b = tau(k)`` (L2-normalised) give the point-to-point cost
  ``C_ij = 1 - cos(a_i, b_j)`` (``cost="cosine"``, paper) or ``||a_i - b_j||_2`` (``cost="euclidean"``, release);
* navigator features give the similarity ``S_ij = e(q_i) . e(k_j) / temperature`` and two transport plans,
  ``pi(k_j | q_i) = softmax_j S_ij`` and ``pi(q_i | k_j) = softmax_i S_ij``;
* ``CT = (1 - rho) * mean_i sum_j pi(k_j|q_i) C_ij + rho * mean_j sum_i pi(q_i|k_j) C_ij``.

Who plays which side (gradient reversal on the auxiliary weights, so one optimizer trains everything): the
critic maximises CT (it sharpens the cost), the encoder producing q and k minimises it, and the navigator
minimises it (``navigator="min"``, the CT paper) or maximises it (``navigator="max"``, the authors' release).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from probattn.alignment import networks
from probattn.alignment.sets import as_sets, masked_mean, mean_over_sets

__all__ = ["ConditionalTransport", "conditional_transport", "transport_plans"]

COSTS = ("cosine", "euclidean")


def transport_plans(
    query_navigation: Tensor,
    key_navigation: Tensor,
    query_valid: Tensor | None,
    key_valid: Tensor | None,
    *,
    temperature: float = 1.0,
) -> tuple[Tensor, Tensor]:
    """The two conditional plans ``(*, m, n)`` from navigator features ``(*, m, s)``, ``(*, n, s)``.

    Returns ``pi(k_j | q_i)`` (each row sums to 1 over valid keys) and ``pi(q_i | k_j)`` (each column sums to
    1 over valid queries); invalid keys/queries get zero mass (their own rows/columns are finite and unused).
    """
    if temperature != 1.0:
        query_navigation = query_navigation / temperature
    key_given_query = _masked_softmax(query_navigation @ key_navigation.transpose(-1, -2), key_valid)
    # the column softmax runs on the transposed logits: a contiguous last-axis softmax is much faster
    query_given_key = _masked_softmax(key_navigation @ query_navigation.transpose(-1, -2), query_valid)
    return key_given_query, query_given_key.transpose(-1, -2)


def _masked_softmax(logits: Tensor, column_valid: Tensor | None) -> Tensor:
    """Softmax over the last axis with invalid columns given zero mass (rows of invalid points stay finite)."""
    if column_valid is not None:
        logits = logits.masked_fill(~column_valid[..., None, :], torch.finfo(logits.dtype).min)
    return logits.softmax(dim=-1)


def conditional_transport(
    query_features: Tensor,
    key_features: Tensor,
    query_navigation: Tensor,
    key_navigation: Tensor,
    query_valid: Tensor | None,
    key_valid: Tensor | None,
    *,
    rho: float = 0.5,
    cost: str = "cosine",
    temperature: float = 1.0,
) -> Tensor:
    """CT value per comparison set.

    Args:
        query_features, key_features: L2-normalised critic features ``(*, m, s)`` and ``(*, n, s)``.
        query_navigation, key_navigation: L2-normalised navigator features ``(*, m, s)`` and ``(*, n, s)``.
        query_valid, key_valid: bool ``(*, m)`` / ``(*, n)`` (broadcastable) or None (all valid); invalid
            points take no part.
    Returns:
        ``(*,)`` CT values (0 for sets without a valid query or key).
    """
    if cost not in COSTS:
        raise ValueError(f"cost must be one of {COSTS}, got {cost!r}")
    if cost == "cosine":
        if temperature != 1.0:  # scale the (small) features, not the (m, n) similarities
            query_navigation = query_navigation / temperature
        similarities = query_navigation @ key_navigation.transpose(-1, -2)  # S / temperature (*, m, n)
        backward, forward = _expected_cosine_cost(query_features, key_features, similarities, query_valid, key_valid)
    else:
        key_given_query, query_given_key = transport_plans(
            query_navigation, key_navigation, query_valid, key_valid, temperature=temperature
        )
        cos = query_features @ key_features.transpose(-1, -2)  # (*, m, n)
        pair_cost = (2 - 2 * cos).clamp_min(1e-8).sqrt()
        backward = (key_given_query * pair_cost).sum(-1)
        forward = (query_given_key * pair_cost).sum(-2)
    backward, forward = masked_mean(backward, query_valid), masked_mean(forward, key_valid)
    return (1 - rho) * backward + rho * forward


def _expected_cosine_cost(
    query_features: Tensor, key_features: Tensor, similarities: Tensor, query_valid: Tensor | None,
    key_valid: Tensor | None,
) -> tuple[Tensor, Tensor]:
    """``sum_j pi(k_j|q_i) (1 - a_i.b_j)`` per query ``(*, m)`` and ``sum_i pi(q_i|k_j) (1 - a_i.b_j)`` per key ``(*, n)``.

    ``similarities`` are the navigator logits ``S / temperature`` ``(*, m, n)``. Neither normalised plan nor the
    cost matrix is formed: with ``E = exp(S / temperature)``, ``sum_j pi(k_j|q_i) b_j = (E b)_i / (E 1)_i``
    (:class:`_PlanSums`, one matrix product per direction on features with a column of ones appended; invalid
    points get all-zero rows there, so they carry no mass).
    """
    to_keys, to_queries = _PlanSums.apply(
        similarities, _append_ones(key_features, key_valid), _append_ones(query_features, query_valid)
    )  # (*, m, s + 1), (*, n, s + 1)
    tiny = torch.finfo(similarities.dtype).tiny
    # split (not slice): its backward is one concatenation, a slice's is a zero tensor plus a copy per slice
    key_sums, key_mass = to_keys.split([key_features.shape[-1], 1], dim=-1)
    query_sums, query_mass = to_queries.split([query_features.shape[-1], 1], dim=-1)
    backward = 1 - (query_features * key_sums).sum(-1) / key_mass.squeeze(-1).clamp_min(tiny)
    forward = 1 - (key_features * query_sums).sum(-1) / query_mass.squeeze(-1).clamp_min(tiny)
    return backward, forward


class _PlanSums(torch.autograd.Function):
    """``(S (*, m, n), B (*, n, c), A (*, m, c)) -> (E @ B (*, m, c), E^T @ A (*, n, c))`` with ``E = exp(S)``.

    ``|S| <= 1 / temperature <= 20`` (unit navigator features), so ``E`` needs no max-shift. The backward
    forms ``dE = dU B^T + A dV^T`` as ONE matrix product ``[dU, A] @ [B, dV]^T`` (autograd would make two
    thin products and add a transposed ``(m, n)`` tensor to a contiguous one) and multiplies by ``E`` in place.
    """

    @staticmethod
    def forward(ctx, similarities: Tensor, key_values: Tensor, query_values: Tensor) -> tuple[Tensor, Tensor]:
        weights = similarities.exp()
        ctx.save_for_backward(weights, key_values, query_values)
        return weights @ key_values, weights.transpose(-1, -2) @ query_values

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_to_keys: Tensor | None, grad_to_queries: Tensor | None):
        weights, key_values, query_values = ctx.saved_tensors
        grad_to_keys = torch.zeros_like(query_values) if grad_to_keys is None else grad_to_keys
        grad_to_queries = torch.zeros_like(key_values) if grad_to_queries is None else grad_to_queries
        grad_similarities = grad_keys = grad_queries = None
        if ctx.needs_input_grad[0]:
            left = torch.cat([grad_to_keys, query_values], dim=-1)  # (*, m, 2c)
            right = torch.cat([key_values, grad_to_queries], dim=-1)  # (*, n, 2c)
            grad_similarities = (left @ right.transpose(-1, -2)).mul_(weights)
        if ctx.needs_input_grad[1]:
            grad_keys = weights.transpose(-1, -2) @ grad_to_keys
        if ctx.needs_input_grad[2]:
            grad_queries = weights @ grad_to_queries
        return grad_similarities, grad_keys, grad_queries


def _append_ones(features: Tensor, valid: Tensor | None) -> Tensor:
    """``[features, 1]`` ``(*, n, s + 1)``, zeroed on invalid points (``valid`` broadcastable to ``(*, n)``)."""
    out = torch.cat([features, features.new_ones((*features.shape[:-1], 1))], dim=-1)
    return out if valid is None else out * valid[..., None].to(out.dtype)


class ConditionalTransport(nn.Module):
    """CT estimator with its critic and navigator; ``forward`` returns the CT averaged over comparison sets."""

    def __init__(
        self,
        head_dim: int,
        *,
        hidden: int = 16,
        rho: float = 0.5,
        cost: str = "cosine",
        navigator: str = "min",
        temperature: float = 1.0,
        groups: int = 1,
    ) -> None:
        super().__init__()
        self.critic = networks.critic(head_dim, hidden, groups, ascend=True)
        self.navigator = networks.navigator(head_dim, hidden, groups, ascend=navigator == "max")
        self.rho, self.cost, self.temperature = rho, cost, temperature

    def forward(self, q: Tensor, k: Tensor, query_valid: Tensor | None, key_valid: Tensor | None, axis: str) -> Tensor:
        """``q (B, H, Lq, d)``, ``k (B, H, Lk, d)``, validity ``(B, Lq)`` / ``(B, Lk)`` or None -> scalar CT."""
        lengths = [q.shape[2], k.shape[2]]
        both = torch.cat([q, k], dim=2)  # one pass of each network over queries and keys
        fq, fk = self.critic(both).split(lengths, dim=2)  # split: cheaper backward than two slices
        nq, nk = self.navigator(both).split(lengths, dim=2)
        (fq, qv), (fk, kv) = as_sets(fq, query_valid, axis), as_sets(fk, key_valid, axis)
        nq, nk = as_sets(nq, query_valid, axis)[0], as_sets(nk, key_valid, axis)[0]
        per_set = conditional_transport(
            fq, fk, nq, nk, qv, kv, rho=self.rho, cost=self.cost, temperature=self.temperature
        )
        return mean_over_sets(per_set, qv, kv)
