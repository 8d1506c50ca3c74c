import math

import pytest
import torch
from torch.distributions import Gamma, Weibull

from probattn.alignment import BayesianAttention
from probattn.alignment.bam import weibull_gamma_kl


def _probs(b=2, h=3, lq=4, lk=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, h, lq, lk, generator=g, dtype=torch.float64).softmax(-1)


@pytest.mark.parametrize(("posterior", "options"), [("weibull", {"shape": 3.0}), ("lognormal", {"sigma": 0.5})])
def test_unnormalised_sample_has_mean_p(posterior, options):
    torch.manual_seed(0)
    bam = BayesianAttention(posterior, "fixed", **options)
    p = torch.tensor([0.05, 0.15, 0.3, 0.5], dtype=torch.float64)
    samples = bam.log_unnormalized_sample(p.expand(200_000, 4)).exp()
    torch.testing.assert_close(samples.mean(0), p, rtol=0.01, atol=0)


def test_weibull_gamma_kl_matches_monte_carlo():
    torch.manual_seed(0)
    shape, alpha, beta = 3.0, 0.7, 2.0
    scale = torch.tensor([0.2, 1.0, 2.5], dtype=torch.float64)
    s = Weibull(scale, torch.tensor(shape, dtype=torch.float64)).sample((200_000,))
    mc = (Weibull(scale, torch.tensor(shape, dtype=torch.float64)).log_prob(s)
          - Gamma(torch.tensor(alpha, dtype=torch.float64), torch.tensor(beta, dtype=torch.float64)).log_prob(s))
    torch.testing.assert_close(weibull_gamma_kl(shape, scale, alpha, beta), mc.mean(0), rtol=0, atol=0.01)


def test_lognormal_kl_is_the_gaussian_closed_form():
    bam = BayesianAttention("lognormal", "fixed", sigma=0.3, prior_sigma=2.0).train()
    p = _probs()
    _, kl = bam(p)
    mu = p.log() - 0.3**2 / 2
    want = math.log(2.0 / 0.3) + (0.3**2 + mu**2) / (2 * 2.0**2) - 0.5
    torch.testing.assert_close(kl, want.mean())


def test_weights_are_normalised_masked_and_approach_p_as_shape_grows():
    torch.manual_seed(0)
    p = _probs()
    allowed = torch.ones_like(p, dtype=torch.bool)
    allowed[..., -1] = False
    allowed[0, 0, 0] = False  # a query with no allowed key
    p = p.masked_fill(~allowed, 0)
    p = p / p.sum(-1, keepdim=True).clamp_min(1e-30)
    w, kl = BayesianAttention("weibull", "fixed", shape=2.0)(p, allowed)
    assert torch.isfinite(kl) and torch.isfinite(w).all()
    assert (w[~allowed] == 0).all()
    assert w[0, 0, 0].abs().sum() == 0
    rows = w.sum(-1)[allowed.any(-1)]
    torch.testing.assert_close(rows, torch.ones_like(rows))
    sharp, _ = BayesianAttention("weibull", "fixed", shape=2000.0)(p, allowed)
    assert (sharp - p).abs().max() < 0.01 < (w - p).abs().max()


def test_kl_ignores_disallowed_entries_and_eval_is_deterministic():
    p = _probs()
    allowed = torch.ones_like(p, dtype=torch.bool)
    allowed[..., 0] = False
    bam = BayesianAttention("weibull", "fixed")
    _, kl = bam(p, allowed)
    _, kl_changed = bam(p.index_fill(-1, torch.tensor([0]), 0.9), allowed)
    torch.testing.assert_close(kl, kl_changed)
    bam.eval()
    w, kl_eval = bam(p, allowed)
    assert w is p and kl_eval.item() == 0


@pytest.mark.parametrize("posterior", ["weibull", "lognormal"])
def test_contextual_prior_trains_from_the_kl(posterior):
    torch.manual_seed(0)
    bam = BayesianAttention(posterior, "contextual", head_dim=8).double()
    scores = torch.randn(2, 3, 4, 5, dtype=torch.float64, requires_grad=True)
    keys = torch.randn(2, 3, 5, 8, dtype=torch.float64)
    w, kl = bam(scores.softmax(-1), keys=keys)
    (w.sum() + kl).backward()
    assert scores.grad.abs().sum() > 0
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in bam.prior_net.parameters())


def test_bad_arguments():
    with pytest.raises(ValueError, match="posterior"):
        BayesianAttention("gamma")
    with pytest.raises(ValueError, match="head_dim"):
        BayesianAttention("weibull", "contextual")
    with pytest.raises(ValueError, match="shape"):
        BayesianAttention("weibull", "fixed", shape=0.0)
    bam = BayesianAttention("weibull", "contextual", head_dim=4)
    with pytest.raises(ValueError, match="keys"):
        bam(_probs().float())
    with pytest.raises(TypeError, match="allowed"):
        bam(_probs().float(), torch.ones(2, 3, 4, 5))


@pytest.mark.parametrize("prior", ["fixed", "contextual"])
def test_module_kl_matches_a_monte_carlo_estimate_of_weibull_gamma_kl(prior):
    """The module's KL is the mean over allowed entries of KL(Weibull(k, p / Gamma(1 + 1/k)) || Gamma(alpha, beta))."""
    torch.manual_seed(0)
    shape, beta = 3.0, 1.5
    bam = BayesianAttention("weibull", prior, head_dim=4, shape=shape, alpha=0.8, beta=beta).double()
    p = _probs(b=1, h=2, lq=3, lk=4)
    keys = torch.randn(1, 2, 4, 4, dtype=torch.float64)
    allowed = torch.ones_like(p, dtype=torch.bool)
    _, kl = bam(p, allowed, keys=keys)
    if prior == "fixed":
        alpha = torch.full_like(p, 0.8)
    else:  # alpha_ij = beta * softmax_j g(k_j), the prior network scoring keys
        alpha = beta * bam.prior_net(keys).squeeze(-1).softmax(-1)[:, :, None, :].expand_as(p).detach()
    posterior = Weibull(p / math.gamma(1 + 1 / shape), torch.tensor(shape, dtype=torch.float64))
    s = posterior.sample((100_000,))
    mc = (posterior.log_prob(s) - Gamma(alpha, torch.tensor(beta, dtype=torch.float64)).log_prob(s)).mean()
    assert kl.item() == pytest.approx(mc.item(), abs=0.02)
