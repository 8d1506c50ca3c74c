"""Bidirectional conditional transport (CT) between a cloud of queries and a cloud of keys.

For one comparison set with queries ``q_1..q_m`` and keys ``k_1..k_n``:

* critic features ``a = tau(q)``, ``b = tau(k)`` (L2-normalised) give the point-to-point cost
  ``C_ij = 1 - cos(a_i, b_j)`` (``cost="cosine"``, paper) or ``||a_i - b_j||_2`` (``cost="euclidean"``, release);
* navigator features give the similarity ``S_ij = e(q_i) . e(k_j) / temperature`` and two transport plans,
  ``pi(k_j | q_i) = softmax_j S_ij`` and ``pi(q_i | k_j) = softmax_i S_ij``;
* ``CT = (1 - rho) * mean_i sum_j pi(k_j|q_i) C_ij + rho * mean_j sum_i pi(q_i|k_j) C_ij``.

Who plays which side (implemented with gradient reversal so one optimizer trains everything): the critic
maximises CT (it sharpens the cost), the encoder producing q and k minimises it, and the navigator minimises
it (``navigator="min"``, the CT paper) or maximises it (``navigator="max"``, the authors' release).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from probattn.alignment import networks
from probattn.alignment.grad_reverse import grad_reverse
from probattn.alignment.sets import as_sets, masked_mean, mean_over_sets

__all__ = ["ConditionalTransport", "conditional_transport", "transport_plans"]

COSTS = ("cosine", "euclidean")


def transport_plans(
    query_navigation: Tensor, key_navigation: Tensor, query_valid: Tensor, key_valid: Tensor, *, temperature: float = 1.0
) -> tuple[Tensor, Tensor]:
    """The two conditional plans ``(*, m, n)`` from navigator features ``(*, m, s)``, ``(*, n, s)``.

    Returns ``pi(k_j | q_i)`` (each valid row sums to 1 over valid keys) and ``pi(q_i | k_j)`` (each valid
    column sums to 1 over valid queries); invalid keys/queries get zero mass.
    """
    logits = query_navigation @ key_navigation.transpose(-1, -2) / temperature
    lowest = torch.finfo(logits.dtype).min
    logits = logits.masked_fill(~key_valid[..., None, :], lowest).masked_fill(~query_valid[..., :, None], lowest)
    return logits.softmax(dim=-1), logits.softmax(dim=-2)


def conditional_transport(
    query_features: Tensor,
    key_features: Tensor,
    query_navigation: Tensor,
    key_navigation: Tensor,
    query_valid: Tensor,
    key_valid: Tensor,
    *,
    rho: float = 0.5,
    cost: str = "cosine",
    temperature: float = 1.0,
) -> Tensor:
    """CT value per comparison set.

    Args:
        query_features, key_features: L2-normalised critic features ``(*, m, s)`` and ``(*, n, s)``.
        query_navigation, key_navigation: L2-normalised navigator features ``(*, m, s)`` and ``(*, n, s)``.
        query_valid, key_valid: bool ``(*, m)`` / ``(*, n)`` (broadcastable); invalid points take no part.
    Returns:
        ``(*,)`` CT values (0 for sets without a valid query or key).
    """
    cos = query_features @ key_features.transpose(-1, -2)  # (*, m, n)
    if cost == "cosine":
        pair_cost = 1 - cos
    elif cost == "euclidean":
        pair_cost = (2 - 2 * cos).clamp_min(1e-8).sqrt()
    else:
        raise ValueError(f"cost must be one of {COSTS}, got {cost!r}")
    key_given_query, query_given_key = transport_plans(
        query_navigation, key_navigation, query_valid, key_valid, temperature=temperature
    )
    backward = masked_mean((key_given_query * pair_cost).sum(-1), query_valid)
    forward = masked_mean((query_given_key * pair_cost).sum(-2), key_valid)
    return (1 - rho) * backward + rho * forward


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
        self.critic = networks.critic(head_dim, hidden, groups)
        self.navigator = networks.navigator(head_dim, hidden, groups)
        self.rho, self.cost, self.navigator_mode, self.temperature = rho, cost, navigator, temperature

    def forward(self, q: Tensor, k: Tensor, query_valid: Tensor, key_valid: Tensor, axis: str) -> Tensor:
        """``q (B, H, Lq, d)``, ``k (B, H, Lk, d)``, validity ``(B, Lq)`` / ``(B, Lk)`` -> scalar CT."""
        lq = q.shape[2]
        both = torch.cat([q, k], dim=2)
        # Reversal before and after the critic: its parameters ascend CT, the encoder still descends.
        features = grad_reverse(self.critic(grad_reverse(both)))
        if self.navigator_mode == "max":
            navigation = grad_reverse(self.navigator(grad_reverse(both)))
        else:
            navigation = self.navigator(both)
        fq, qv = as_sets(features[:, :, :lq], query_valid, axis)
        fk, kv = as_sets(features[:, :, lq:], key_valid, axis)
        nq, _ = as_sets(navigation[:, :, :lq], query_valid, axis)
        nk, _ = as_sets(navigation[:, :, lq:], key_valid, axis)
        per_set = conditional_transport(
            fq, fk, nq, nk, qv, kv, rho=self.rho, cost=self.cost, temperature=self.temperature
        )
        return mean_over_sets(per_set, qv, kv)
