import pytest
import torch

from probattn.alignment import AlignmentRegularizer, alignment_distance, grad_reverse

VARIANTS = ["ct", "gan", "mmd", "sinkhorn"]


def _qk(b=2, h=4, h_kv=4, lq=6, lk=6, d=8, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(b, h, lq, d, generator=g, dtype=dtype),
            torch.randn(b, h_kv, lk, d, generator=g, dtype=dtype) + 0.5)


def _regularizer(variant, **kw):
    torch.manual_seed(0)
    return AlignmentRegularizer(8, variant=variant, **kw).double()


def test_grad_reverse_is_identity_forward_and_negates_backward():
    x = torch.randn(3, requires_grad=True)
    y = grad_reverse(x, 0.5)
    assert torch.equal(y, x)
    (y * torch.tensor([1.0, 2.0, 3.0])).sum().backward()
    torch.testing.assert_close(x.grad, torch.tensor([-0.5, -1.0, -1.5]))


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("axis", ["tokens", "heads", "both"])
def test_appending_padding_never_changes_the_term(variant, axis):
    reg = _regularizer(variant, axis=axis)
    q, k = _qk()
    valid = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0]], dtype=torch.bool)
    pad = 3
    q_pad = torch.cat([q, 100 * torch.randn(2, 4, pad, 8, dtype=q.dtype)], dim=2)
    k_pad = torch.cat([k, -50 * torch.randn(2, 4, pad, 8, dtype=k.dtype)], dim=2)
    valid_pad = torch.cat([valid, torch.zeros(2, pad, dtype=torch.bool)], dim=1)
    base = reg(q, k, query_valid=valid, key_valid=valid)
    padded = reg(q_pad, k_pad, query_valid=valid_pad, key_valid=valid_pad)
    torch.testing.assert_close(padded, base, rtol=1e-9, atol=1e-12)
    # mask_padding=False (the release) matches the padding vectors too, so the term changes
    unmasked = _regularizer(variant, axis=axis, mask_padding=False)
    assert not torch.allclose(unmasked(q_pad, k_pad, query_valid=valid_pad, key_valid=valid_pad), base)


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("axis", ["tokens", "heads"])
def test_gradients_are_finite_with_padding_at_initialisation(variant, axis):
    """Padded vectors are zeroed; fresh networks (zero biases) map them to zero features: no NaN gradient."""
    reg = _regularizer(variant, axis=axis)
    q, k = (t.requires_grad_() for t in _qk())
    valid = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 0, 0, 0]], dtype=torch.bool)
    reg(q, k, query_valid=valid, key_valid=valid).backward()
    grads = [g for g in (q.grad, k.grad, *(p.grad for p in reg.parameters())) if g is not None]  # gan: q detached
    assert len(grads) >= 2 and all(torch.isfinite(g).all() for g in grads)
    assert k.grad[1, :, 3:].abs().sum() == 0 and (q.grad is None or q.grad[1, :, 3:].abs().sum() == 0)


@pytest.mark.parametrize("variant", VARIANTS)
def test_mixed_precision_autocast_computes_the_term_in_float32(variant):
    torch.manual_seed(0)
    reg = AlignmentRegularizer(8, variant=variant)
    q, k = (t.bfloat16().requires_grad_() for t in _qk(dtype=torch.float32))  # what a bf16 model hands over
    with torch.autocast("cpu", dtype=torch.bfloat16):
        term = reg(q, k)
    assert term.dtype == torch.float32
    torch.testing.assert_close(term, reg(q.float(), k.float()))
    term.backward()
    assert k.grad.dtype == torch.bfloat16 and torch.isfinite(k.grad.float()).all()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        distance = alignment_distance(q, k)
    torch.testing.assert_close(distance, alignment_distance(q.float(), k.float()))


@pytest.mark.parametrize("variant", VARIANTS)
def test_grouped_keys_are_repeated_per_group(variant):
    reg = _regularizer(variant)
    q, k = _qk(h=4, h_kv=2)
    torch.testing.assert_close(reg(q, k), reg(q, k.repeat_interleave(2, dim=1)))


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("axis", ["tokens", "heads"])
def test_matched_clouds_score_lower_than_shifted(variant, axis):
    """Spec 9.3 item 5, after the auxiliary networks (if any) improved their estimate on each pair."""
    q, k = _qk(b=4, h=2, h_kv=2, lq=16, lk=16, dtype=torch.float32)
    k = k - 0.5  # same distribution as q
    terms = []
    for keys in (k, k + 3.0):
        torch.manual_seed(1)
        reg = AlignmentRegularizer(8, variant=variant, axis=axis)
        if variant in ("ct", "gan"):
            opt = torch.optim.Adam(reg.parameters(), lr=0.01)
            for _ in range(30):
                opt.zero_grad()
                reg(q, keys).backward()
                opt.step()
        terms.append(reg(q, keys).item())
    assert terms[0] < terms[1]


def test_per_head_networks_and_shapes():
    q, k = _qk()
    reg = _regularizer("ct", share_across_heads=False, num_heads=4)
    assert reg.estimators["tokens"].critic[1].weight.shape == (4, 8, 16)
    assert reg(q, k).shape == ()
    with pytest.raises(ValueError, match="per head"):
        reg(*_qk(h=2, h_kv=2))
    with pytest.raises(ValueError, match="num_heads"):
        AlignmentRegularizer(8, share_across_heads=False)


def test_heads_axis_needs_equal_lengths_and_tokens_axis_handles_cross_attention():
    q, k = _qk(lq=5, lk=7)
    assert torch.isfinite(_regularizer("ct")(q, k))
    with pytest.raises(ValueError, match="Lq == Lk"):
        _regularizer("ct", axis="heads")(q, k)


def test_max_tokens_subsamples_valid_positions_only():
    reg = _regularizer("mmd", max_tokens=3)
    q, k = _qk(lq=10, lk=10)
    valid = torch.zeros(2, 10, dtype=torch.bool)
    valid[:, :4] = True
    q2, k2, qv, kv = reg.prepare(q, k, valid, valid)
    assert q2.shape == (2, 4, 3, 8) and k2.shape == (2, 4, 3, 8)
    assert qv.all() and kv.all()
    # every kept vector is one of the valid originals
    for b in range(2):
        assert all(any(torch.equal(q2[b, 0, t], q[b, 0, j]) for j in range(4)) for t in range(3))


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"variant": "wasserstein"}, "variant"), ({"axis": "layers"}, "axis"), ({"cost": "l1"}, "cost"),
    ({"navigator": "up"}, "navigator"), ({"rho": 1.5}, "rho"), ({"weight": -1.0}, "weight"),
    ({"hidden": 0}, "hidden"), ({"max_tokens": 0}, "max_tokens"), ({"temperature": 0.0}, "temperature"),
])
def test_bad_options_raise_value_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        AlignmentRegularizer(8, **kwargs)


def test_bad_inputs_raise_value_errors_naming_the_argument():
    reg = _regularizer("ct")
    q, k = _qk()
    with pytest.raises(ValueError, match="head_dim"):
        reg(q[..., :4], k[..., :4])
    with pytest.raises(ValueError, match="q must be a 4-D"):
        reg(q[0], k)
    with pytest.raises(ValueError, match="key heads"):
        reg(q, k[:, :3])
    with pytest.raises(ValueError, match="query_valid"):
        reg(q, k, query_valid=torch.ones(2, 6))
    with pytest.raises(ValueError, match="key_valid"):
        reg(q, k, key_valid=torch.ones(2, 5, dtype=torch.bool))


def test_alignment_distance_is_zero_for_identical_clouds_and_positive_otherwise():
    q, k = _qk()
    ones = torch.ones(2, 6, dtype=torch.bool)
    assert alignment_distance(q, q, ones, ones).abs().item() < 1e-12
    assert alignment_distance(q, k, ones, ones).item() > 0


@pytest.mark.parametrize("variant", VARIANTS)
def test_state_dict_round_trip(variant):
    reg = _regularizer(variant, axis="both")
    torch.manual_seed(1)
    other = AlignmentRegularizer(8, variant=variant, axis="both").double()
    q, k = _qk()
    if variant in ("mmd", "sinkhorn"):  # closed-form terms: nothing to carry, and two instances agree
        assert reg.state_dict() == {}
    else:  # learned critics / navigators: the round trip has something to carry, so it can fail
        assert not torch.allclose(other(q, k), reg(q, k))
    other.load_state_dict(reg.state_dict())
    torch.testing.assert_close(other(q, k), reg(q, k))
    assert len(reg.auxiliary_parameters()) == (0 if variant in ("mmd", "sinkhorn") else len(list(reg.parameters())))


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("axis", ["tokens", "heads"])
def test_no_mask_equals_an_all_true_mask(variant, axis):
    reg = _regularizer(variant, axis=axis, max_tokens=None)
    q, k = _qk()
    ones = torch.ones(2, 6, dtype=torch.bool)
    torch.testing.assert_close(reg(q, k), reg(q, k, query_valid=ones, key_valid=ones), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("variant", ["ct"])  # gan stores its term the same way
def test_observe_traces_as_one_graph_under_torch_compile(variant):
    """In training the term is computed and stored inside the compiled forward with no graph break (the
    backward-pass check must not ask the autograd engine while dynamo traces)."""
    torch.manual_seed(0)
    reg = AlignmentRegularizer(8, variant=variant)
    proj = torch.nn.Linear(8, 16)

    def forward(x, valid):
        q, k = proj(x).unflatten(-1, (2, 8)).transpose(1, 2).chunk(2, dim=1)  # (B, 1, L, 8) each
        reg.observe(q, k, query_valid=valid, key_valid=valid)
        return q.sum()

    x, valid = torch.randn(2, 5, 8), torch.tensor([[True] * 5, [True] * 3 + [False] * 2])
    forward(x, valid)
    want = reg.pop_observations()[0].term
    torch._dynamo.reset()
    compiled = torch.compile(forward, fullgraph=True, backend="eager")  # any graph break raises
    compiled(x, valid)
    (got,) = reg.pop_observations()
    torch.testing.assert_close(got.term, want)
    got.term.backward()
    assert proj.weight.grad is not None and all(p.grad is not None for p in reg.parameters())
