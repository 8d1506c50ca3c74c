import pytest
import torch

from probattn.alignment.ct import ConditionalTransport, _PlanSums, conditional_transport, transport_plans
from probattn.alignment.sets import as_sets

from ._reference import ct_reference


def _features(*shape, seed):
    """Exactly unit-length float64 features (the input conditional_transport expects)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(*shape, generator=g, dtype=torch.float64)
    return x / x.norm(dim=-1, keepdim=True)


@pytest.mark.parametrize("cost", ["cosine", "euclidean"])
@pytest.mark.parametrize("rho", [0.0, 0.3, 1.0])
def test_conditional_transport_matches_loop_reference_with_padding(cost, rho):
    b, h, m, n, s = 2, 3, 5, 4, 6
    fq, fk, nq, nk = _features(b, h, m, s, seed=1), _features(b, h, n, s, seed=2), \
        _features(b, h, m, s, seed=3), _features(b, h, n, s, seed=4)
    qv = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)[:, None, :]
    kv = torch.tensor([[1, 1, 0, 0], [0, 1, 1, 1]], dtype=torch.bool)[:, None, :]
    got = conditional_transport(fq, fk, nq, nk, qv, kv, rho=rho, cost=cost, temperature=0.7)
    assert got.shape == (b, h)
    for bi in range(b):
        for hi in range(h):
            qi, ki = qv[bi, 0], kv[bi, 0]
            want = ct_reference(fq[bi, hi][qi], fk[bi, hi][ki], nq[bi, hi][qi], nk[bi, hi][ki],
                                rho=rho, cost=cost, temperature=0.7)
            assert got[bi, hi].item() == pytest.approx(want, rel=1e-10, abs=1e-12)


@pytest.mark.parametrize("cost", ["cosine", "euclidean"])
def test_conditional_transport_gradients_pass_gradcheck_with_padding(cost):
    b, h, m, n, s = 2, 1, 4, 3, 3
    inputs = [_features(b, h, size, s, seed=seed).requires_grad_() for seed, size in enumerate((m, n, m, n))]
    qv = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]], dtype=torch.bool)[:, None, :]
    kv = torch.tensor([[1, 1, 1], [0, 1, 1]], dtype=torch.bool)[:, None, :]

    def ct(fq, fk, nq, nk):
        return conditional_transport(fq, fk, nq, nk, qv, kv, rho=0.3, cost=cost, temperature=0.5)

    assert torch.autograd.gradcheck(ct, inputs)


def test_plan_sums_custom_backward_passes_gradcheck():
    g = torch.Generator().manual_seed(0)
    s = torch.randn(2, 3, 4, 5, generator=g, dtype=torch.float64, requires_grad=True)
    b = torch.randn(2, 3, 5, 2, generator=g, dtype=torch.float64, requires_grad=True)
    a = torch.randn(2, 3, 4, 2, generator=g, dtype=torch.float64, requires_grad=True)
    e = s.detach().exp()
    to_keys, to_queries = _PlanSums.apply(s, b, a)
    torch.testing.assert_close(to_keys, e @ b.detach())
    torch.testing.assert_close(to_queries, e.transpose(-1, -2) @ a.detach())
    assert torch.autograd.gradcheck(_PlanSums.apply, (s, b, a))
    assert torch.autograd.gradcheck(lambda *x: _PlanSums.apply(*x)[0], (s, b, a))  # one output unused
    assert torch.autograd.gradcheck(lambda *x: _PlanSums.apply(*x)[1], (s, b, a))


def test_hand_checkable_single_pair():
    # one query, one key at a right angle: both plans are 1, cosine cost 1 - 0 = 1, euclidean sqrt(2)
    fq = torch.tensor([[[1.0, 0.0]]], dtype=torch.float64)
    fk = torch.tensor([[[0.0, 1.0]]], dtype=torch.float64)
    ones = torch.ones(1, 1, dtype=torch.bool)
    assert conditional_transport(fq, fk, fq, fk, ones, ones, cost="cosine").item() == pytest.approx(1.0)
    assert conditional_transport(fq, fk, fq, fk, ones, ones, cost="euclidean").item() == pytest.approx(2**0.5)


def test_plans_shapes_and_normalisation_on_both_axes():
    b, h, length, s = 2, 3, 5, 4
    nav = _features(b, h, length, s, seed=0)
    valid = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)
    for axis, shape in (("tokens", (b, h, length, length)), ("heads", (b, length, h, h))):
        sets, v = as_sets(nav, valid, axis)
        k_given_q, q_given_k = transport_plans(sets, sets, v, v)
        assert k_given_q.shape == shape and q_given_k.shape == shape
        rows = k_given_q.sum(-1)
        cols = q_given_k.sum(-2)
        vv = v.expand(rows.shape)
        torch.testing.assert_close(rows[vv], torch.ones_like(rows[vv]))
        torch.testing.assert_close(cols[vv], torch.ones_like(cols[vv]))
        # padded keys receive no mass from valid queries
        if axis == "tokens":
            assert k_given_q[0, :, :3, 3:].abs().max() == 0


def test_bad_cost_is_a_value_error():
    f = _features(1, 2, 2, seed=0)
    ones = torch.ones(1, 2, dtype=torch.bool)
    with pytest.raises(ValueError, match="cost"):
        conditional_transport(f, f, f, f, ones, ones, cost="l1")


def _ct_setup(navigator):
    torch.manual_seed(0)
    x = torch.randn(4, 12, 8, dtype=torch.float64)
    wq = torch.nn.Linear(8, 2 * 4, dtype=torch.float64)
    wk = torch.nn.Linear(8, 2 * 4, dtype=torch.float64)
    with torch.no_grad():
        wk.bias += 1.0
    est = ConditionalTransport(4, hidden=6, navigator=navigator).double()
    for p in est.parameters():  # larger than the default init so first-order effects are well above rounding
        torch.nn.init.normal_(p, std=0.5)
    valid = torch.ones(4, 12, dtype=torch.bool)

    def value():
        q = wq(x).view(4, 12, 2, 4).transpose(1, 2)
        k = wk(x).view(4, 12, 2, 4).transpose(1, 2)
        return est(q, k, valid, valid, "tokens")

    return value, est, [*wq.parameters(), *wk.parameters()]


@pytest.mark.parametrize(("navigator", "part", "direction"), [
    ("min", "critic", +1), ("min", "navigator", -1), ("min", "encoder", -1),
    ("max", "critic", +1), ("max", "navigator", +1), ("max", "encoder", -1),
])
def test_one_sgd_step_moves_ct_in_the_documented_direction(navigator, part, direction):
    """Spec 9.3 item 4: critic ascends CT; navigator descends ('min') or ascends ('max'); encoder descends."""
    value, est, encoder = _ct_setup(navigator)
    params = {"critic": list(est.critic.parameters()), "navigator": list(est.navigator.parameters()),
              "encoder": encoder}[part]
    before = value()
    before.backward()
    with torch.no_grad():
        for p in params:
            p -= 1e-4 * p.grad
    change = (value() - before).item()
    assert change * direction > 1e-10
