"""Bayesian attention modules (BAM, Fan et al. 2020): stochastic attention weights with a closed-form KL.

Given attention probabilities ``p (B, H, Lq, Lk)`` (rows sum to 1 over allowed keys), BAM draws unnormalised
weights ``S_ij`` with ``E[S_ij] = p_ij`` and normalises them over the allowed keys of each query:

* Weibull posterior (shape ``k``): ``S = lambda * E^(1/k)``, ``lambda = p / Gamma(1 + 1/k)``, ``E ~ Exp(1)``;
  prior ``Gamma(alpha, beta)`` (rate ``beta``); ``KL = -alpha log lambda + gamma alpha / k + log k
  + beta lambda Gamma(1 + 1/k) - gamma - 1 - alpha log beta + log Gamma(alpha)`` (``gamma``: Euler's constant).
* log-normal posterior: ``log S ~ N(log p - sigma^2 / 2, sigma^2)``; prior ``N(mu0, prior_sigma^2)``.

Priors: ``"fixed"`` (``alpha`` constant; ``mu0 = 0``) or ``"contextual"``: a small network ``g`` scores each key,
``pi = softmax_j g(k_j)`` over allowed keys and ``alpha_ij = beta * pi_ij`` (Weibull) or ``mu0_ij = log pi_ij``.
The KL is averaged over allowed (query, key) pairs. It is a separate loss term, added to (never replacing)
the alignment term. In eval mode the module returns ``p`` unchanged and a zero KL.

Use it in a custom attention layer::

    out, p = probattn.functional.attention(q, k, v, return_weights=True)
    w, kl = bam(p, allowed=None, keys=k)          # training: sampled weights; eval: w is p
    out = w @ v                                    # (B, H, Lq, Dv)
    loss = task_loss + align_loss + kl_weight * kl
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.distributions import Normal, kl_divergence

from probattn.alignment.networks import HeadLinear

__all__ = ["BayesianAttention", "weibull_gamma_kl"]

EULER_GAMMA = 0.5772156649015329
EPS = 1e-20


def weibull_gamma_kl(shape: float, scale: Tensor, alpha: Tensor | float, beta: float) -> Tensor:
    """Elementwise ``KL(Weibull(shape, scale) || Gamma(alpha, rate=beta))`` (closed form, all constants kept)."""
    alpha = torch.as_tensor(alpha, dtype=scale.dtype, device=scale.device)
    return (
        -alpha * scale.log() + EULER_GAMMA * alpha / shape + math.log(shape)
        + beta * scale * math.gamma(1 + 1 / shape) - EULER_GAMMA - 1 - alpha * math.log(beta) + torch.lgamma(alpha)
    )


class BayesianAttention(nn.Module):
    """Turn attention probabilities into sampled normalised weights plus a KL term (training mode only).

    Args:
        posterior: ``"weibull"`` or ``"lognormal"``.
        prior: ``"fixed"`` or ``"contextual"`` (needs ``head_dim`` and ``keys`` in forward).
        head_dim, hidden: input and hidden width of the contextual prior network ``g``.
        shape: Weibull shape ``k`` (larger = less noise). alpha, beta: Gamma prior shape (fixed prior) and rate.
        sigma, prior_sigma: log-normal posterior and prior standard deviations.
    Defaults follow BAM's released GLUE script (k = 10, alpha = beta = 1e-4, sigma = 1e-4, prior_sigma = 100).
    """

    def __init__(
        self,
        posterior: str = "weibull",
        prior: str = "contextual",
        *,
        head_dim: int | None = None,
        hidden: int = 16,
        shape: float = 10.0,
        alpha: float = 1e-4,
        beta: float = 1e-4,
        sigma: float = 1e-4,
        prior_sigma: float = 100.0,
    ) -> None:
        super().__init__()
        if posterior not in ("weibull", "lognormal"):
            raise ValueError(f"posterior must be 'weibull' or 'lognormal', got {posterior!r}")
        if prior not in ("fixed", "contextual"):
            raise ValueError(f"prior must be 'fixed' or 'contextual', got {prior!r}")
        for name, value in (("shape", shape), ("alpha", alpha), ("beta", beta), ("sigma", sigma),
                            ("prior_sigma", prior_sigma)):
            if not value > 0:
                raise ValueError(f"{name} must be > 0, got {value!r}")
        self.posterior, self.prior = posterior, prior
        self.shape, self.alpha, self.beta, self.sigma, self.prior_sigma = shape, alpha, beta, sigma, prior_sigma
        self.prior_net: nn.Module | None = None
        if prior == "contextual":
            if head_dim is None:
                raise ValueError("prior='contextual' scores keys with a small network: pass head_dim=")
            self.prior_net = nn.Sequential(HeadLinear(head_dim, hidden), nn.ReLU(), HeadLinear(hidden, 1))

    def log_unnormalized_sample(self, p: Tensor) -> Tensor:
        """``log S`` with ``E[S] = p`` elementwise (reparameterised: differentiable in ``p``)."""
        log_p = p.clamp_min(EPS).log()
        if self.posterior == "weibull":
            exponential = torch.empty_like(p).exponential_().clamp_min(EPS)
            return log_p - math.lgamma(1 + 1 / self.shape) + exponential.log() / self.shape
        return log_p - self.sigma**2 / 2 + self.sigma * torch.randn_like(p)

    def forward(self, weights: Tensor, allowed: Tensor | None = None, keys: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Sample weights.

        Args:
            weights: attention probabilities ``p (B, H, Lq, Lk)``.
            allowed: bool ``(B|1, H|1, Lq, Lk)``, True = may attend (``MaskSpec.allowed``); None = all.
            keys: ``(B, H, Lk, d)`` for the contextual prior.
        Returns:
            ``(w (B, H, Lq, Lk), kl scalar)``; in eval mode ``(weights, 0)``.
        """
        if not isinstance(weights, Tensor) or weights.dim() != 4:
            raise ValueError("weights must be attention probabilities of shape (B, H, Lq, Lk)")
        if allowed is not None and allowed.dtype != torch.bool:
            raise TypeError(f"allowed must be bool (True = may attend), got {allowed.dtype}; use probattn.masks")
        if not self.training:
            return weights, weights.new_zeros(())
        allowed = torch.ones_like(weights, dtype=torch.bool) if allowed is None else allowed.expand_as(weights)
        log_s = self.log_unnormalized_sample(weights).masked_fill(~allowed, float("-inf"))
        has_key = allowed.any(-1, keepdim=True)
        sampled = log_s.masked_fill(~has_key, 0.0).softmax(-1).masked_fill(~has_key, 0.0)
        kl = self._kl(weights, allowed, keys)
        return sampled, kl.where(allowed, 0.0).sum() / allowed.sum().clamp_min(1)

    def _prior_probs(self, allowed: Tensor, keys: Tensor | None) -> Tensor:
        if keys is None or keys.dim() != 4 or keys.shape[2] != allowed.shape[-1]:
            raise ValueError("prior='contextual' needs keys of shape (B, H, Lk, head_dim)")
        scores = self.prior_net(keys).transpose(-1, -2)  # (B, H, 1, Lk)
        scores = scores.expand_as(allowed).masked_fill(~allowed, float("-inf"))
        has_key = allowed.any(-1, keepdim=True)
        return scores.masked_fill(~has_key, 0.0).softmax(-1)

    def _kl(self, p: Tensor, allowed: Tensor, keys: Tensor | None) -> Tensor:
        """Elementwise KL ``(B, H, Lq, Lk)`` (meaningful where allowed)."""
        probs = self._prior_probs(allowed, keys) if self.prior == "contextual" else None
        p = p.clamp_min(EPS)
        if self.posterior == "weibull":
            alpha = self.alpha if probs is None else self.beta * probs.clamp_min(EPS)
            scale = p / math.gamma(1 + 1 / self.shape)
            return weibull_gamma_kl(self.shape, scale, alpha, self.beta)
        mean = p.log() - self.sigma**2 / 2
        prior_mean = torch.zeros_like(p) if probs is None else probs.clamp_min(EPS).log()
        return kl_divergence(Normal(mean, self.sigma), Normal(prior_mean, self.prior_sigma))
