"""Adversarial (GAN) matching of keys and queries.

A discriminator ``D`` labels keys "real" (1) and queries "fake" (0). Its binary cross-entropy per
comparison set is ``BCE = -mean_j log sigmoid(D(k_j)) - mean_i log(1 - sigmoid(D(q_i)))``; at initialisation
(``D ~ 0``) it is ``2 ln 2``. The term written into the loss is the Jensen-Shannon-style distance estimate
``2 ln 2 - BCE`` (about 0 when the discriminator cannot tell keys from queries; it equals ``2 JS`` for the
optimal discriminator): the discriminator minimises the BCE (its weights' gradients are reversed) and the
encoder maximises it. ``symmetric=False`` (the release) detaches the queries, so only keys move; ``symmetric=True``
lets the encoder move both clouds.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from probattn.alignment import networks
from probattn.alignment.sets import as_sets, masked_mean, mean_over_sets

__all__ = ["LOG4", "AdversarialMatching"]

LOG4 = 2 * math.log(2.0)


class AdversarialMatching(nn.Module):
    """GAN estimator; ``forward`` returns ``2 ln 2 - BCE`` averaged over comparison sets."""

    def __init__(self, head_dim: int, *, hidden: int = 16, symmetric: bool = False, groups: int = 1) -> None:
        super().__init__()
        self.discriminator = networks.discriminator(head_dim, hidden, groups, ascend=True)
        self.symmetric = symmetric

    def bce(self, q: Tensor, k: Tensor, query_valid: Tensor | None, key_valid: Tensor | None, axis: str) -> Tensor:
        """The discriminator's BCE averaged over comparison sets (scalar; ``2 ln 2`` at initialisation)."""
        q_in = q if self.symmetric else q.detach()
        q_logits, k_logits = self.discriminator(torch.cat([q_in, k], dim=2)).split([q.shape[2], k.shape[2]], dim=2)
        # softplus(x) = -log(1 - sigmoid(x)) (query labelled 0); softplus(-x) = -log sigmoid(x) (key labelled 1)
        q_loss, qv = as_sets(F.softplus(q_logits), query_valid, axis)  # (.., 1) last axis: a 1-d "point"
        k_loss, kv = as_sets(F.softplus(-k_logits), key_valid, axis)
        per_set = masked_mean(q_loss.squeeze(-1), qv) + masked_mean(k_loss.squeeze(-1), kv)
        return mean_over_sets(per_set, qv, kv)

    def forward(self, q: Tensor, k: Tensor, query_valid: Tensor | None, key_valid: Tensor | None, axis: str) -> Tensor:
        """``q (B, H, Lq, d)``, ``k (B, H, Lk, d)``, validity ``(B, Lq)`` / ``(B, Lk)`` -> scalar ``2 ln 2 - BCE``."""
        return LOG4 - self.bce(q, k, query_valid, key_valid, axis)
