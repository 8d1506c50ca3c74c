import math

import pytest
import torch

from probattn.alignment.gan import AdversarialMatching


def _setup(symmetric=False):
    """Two linear maps of a shared input give queries and keys; returns (clouds, bce, est, wq, wk)."""
    torch.manual_seed(0)
    x = torch.randn(4, 10, 8, dtype=torch.float64)
    wq = torch.nn.Linear(8, 8, dtype=torch.float64)
    wk = torch.nn.Linear(8, 8, dtype=torch.float64)
    with torch.no_grad():
        wk.bias += 1.0
    est = AdversarialMatching(4, hidden=6, symmetric=symmetric).double()
    for p in est.parameters():
        torch.nn.init.normal_(p, std=0.5)
    valid = torch.ones(4, 10, dtype=torch.bool)

    def clouds():
        q = wq(x).view(4, 10, 2, 4).transpose(1, 2)
        k = wk(x).view(4, 10, 2, 4).transpose(1, 2)
        return q, k, valid, valid, "tokens"

    return clouds, (lambda: est.bce(*clouds())), est, wq, wk


def test_bce_at_initialisation_is_two_ln_two_and_term_is_zero():
    est = AdversarialMatching(16)
    q, k = torch.randn(2, 4, 9, 16), torch.randn(2, 4, 7, 16) + 1.0
    ones_q, ones_k = torch.ones(2, 9, dtype=torch.bool), torch.ones(2, 7, dtype=torch.bool)
    assert est.bce(q, k, ones_q, ones_k, "tokens").item() == pytest.approx(2 * math.log(2), abs=0.01)
    assert est(q, k, ones_q, ones_k, "tokens").item() == pytest.approx(0.0, abs=0.01)


@pytest.mark.parametrize(("part", "direction"), [("discriminator", -1), ("keys", +1)])
def test_one_sgd_step_moves_bce_in_the_documented_direction(part, direction):
    """Spec 9.3 item 4: the discriminator lowers its BCE; the key projection raises it."""
    clouds, bce, est, _, wk = _setup()
    params = list(est.parameters()) if part == "discriminator" else list(wk.parameters())
    before_bce = bce()
    est(*clouds()).backward()  # the term 2 ln 2 - BCE is what enters the loss
    with torch.no_grad():
        for p in params:
            p -= 1e-4 * p.grad
    assert (bce() - before_bce).item() * direction > 1e-10


def test_one_sided_gives_queries_no_gradient_symmetric_does():
    for symmetric, expect_grad in ((False, False), (True, True)):
        clouds, _, est, wq, wk = _setup(symmetric)
        est(*clouds()).backward()
        assert (wq.weight.grad is not None and wq.weight.grad.abs().sum() > 0) == expect_grad
        assert wk.weight.grad.abs().sum() > 0
