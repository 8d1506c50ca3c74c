import pytest
import torch
from torch import nn

from probattn.alignment import (
    AlignmentRegularizer,
    alignment_loss,
    alignment_parameter_groups,
    attach_alignment,
    attached_regularizers,
    detach_alignment,
    strip_alignment_state,
)

from ._models import tiny_batch, tiny_model

VARIANTS = ["ct", "gan", "mmd", "sinkhorn"]


def _grads(model):
    return {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("variant", VARIANTS)
def test_weight_zero_gives_exactly_the_baseline_loss_and_gradients(variant):
    x, y = tiny_batch()
    base = tiny_model()
    base_loss = nn.functional.cross_entropy(base(x), y)
    base_loss.backward()
    model = tiny_model()
    attach_alignment(model, variant, weight=0.0)
    task = nn.functional.cross_entropy(model(x), y)
    align, stats = alignment_loss(model)
    loss = task + align
    loss.backward()
    assert torch.equal(loss, base_loss)
    grads = _grads(model)
    for name, grad in _grads(base).items():
        assert torch.equal(grads[name], grad), name
    assert len(stats.terms) == 2  # the term was computed (and then weighted by 0)


@pytest.mark.parametrize("variant", VARIANTS)
def test_eval_outputs_are_bit_identical_and_nothing_is_computed(variant):
    x, _ = tiny_batch()
    base = tiny_model().eval()
    model = tiny_model()
    attach_alignment(model, variant, weight=1.0)
    model.eval()
    assert torch.equal(model(x), base(x))
    loss, stats = alignment_loss(model)  # eval: nothing stored, zero loss
    assert loss.item() == 0 and stats.terms == []
    model.train()
    with torch.no_grad():
        model(x)
    assert all(not r.pop_observations() for r in attached_regularizers(model))


def test_alignment_loss_errors_are_clear():
    model = tiny_model()
    with pytest.raises(ValueError, match="attach_alignment"):
        alignment_loss(model)
    attach_alignment(model)
    with pytest.raises(RuntimeError, match="observe_qk"):
        alignment_loss(model)
    with pytest.raises(ValueError, match="already has"):
        attach_alignment(model)
    with pytest.raises(ValueError, match="no attention module"):
        attach_alignment(nn.Linear(2, 2))
    with pytest.raises(ValueError, match="out of range"):
        attach_alignment(tiny_model(), layers=[5])
    with pytest.raises(ValueError, match="distance_batch"):
        alignment_loss(model, distance_batch=-1)


class Recorder:
    """A diagnostics probe (``module.probattn_probe``): keeps what the layer observed."""

    def observe(self, q, k, *, query_valid, key_valid):
        self.qk = (q, k)


def test_loss_is_weight_times_mean_over_layers_and_clears():
    x, _ = tiny_batch()
    model = tiny_model(layers=3)
    regs = attach_alignment(model, "mmd", weight=0.5)
    for block in model.blocks:
        block.probattn_probe = Recorder()
    model(x)
    terms = [r(*block.probattn_probe.qk) for r, block in zip(regs, model.blocks)]
    loss, stats = alignment_loss(model)
    torch.testing.assert_close(loss, 0.5 * torch.stack(terms).mean())
    torch.testing.assert_close(torch.tensor(stats.terms, dtype=torch.float64), torch.stack(terms).detach())
    assert len(stats.distances) == 3 and all(d > 0 for d in stats.distances)
    assert set(stats.as_dict()) >= {"alignment/term", "alignment/distance", "alignment/term_2"}
    with pytest.raises(RuntimeError):
        alignment_loss(model)  # cleared


def test_layers_subset_predicate_shared_module_and_detach():
    model = tiny_model(layers=3)
    regs = attach_alignment(model, layers=[-1])
    assert len(regs) == 1 and model.blocks[2].probattn_alignment is regs[0]
    assert getattr(model.blocks[0], "probattn_alignment", None) is None
    assert detach_alignment(model) == 1 and attached_regularizers(model) == []
    regs = attach_alignment(model, predicate=lambda m: m is model.blocks[1])
    assert len(regs) == 1 and model.blocks[1].probattn_alignment is regs[0]
    # a module reused by every layer (ALBERT-style) gets one regularizer and one term per application
    shared = tiny_model(layers=3, shared=True)
    assert len(attach_alignment(shared, "mmd")) == 1
    shared(tiny_batch()[0])
    assert len(alignment_loss(shared)[1].terms) == 3


@pytest.mark.parametrize("variant", VARIANTS)
def test_gradient_accumulation_matches_the_full_batch(variant):
    x, y = tiny_batch(n=4)

    def run(chunks):
        model = tiny_model()
        attach_alignment(model, variant, weight=0.3)
        for xs, ys in zip(x.chunk(chunks), y.chunk(chunks)):
            task = nn.functional.cross_entropy(model(xs), ys)
            align, _ = alignment_loss(model)
            ((task + align) / chunks).backward()
        return _grads(model)

    full, accumulated = run(1), run(2)
    assert full.keys() == accumulated.keys()
    for name in full:
        torch.testing.assert_close(accumulated[name], full[name], rtol=1e-7, atol=1e-10, msg=name)


def test_checkpoints_with_and_without_auxiliary_networks_load_for_inference():
    x, _ = tiny_batch()
    trained = tiny_model()
    attach_alignment(trained, "ct")
    with torch.no_grad():
        for p in trained.parameters():
            p.add_(0.01)
    full_state = trained.state_dict()
    assert any("probattn_alignment." in key for key in full_state)
    trained.eval()
    # 1) inference model without the regularizer: strip the auxiliary networks, load strictly
    plain = tiny_model(seed=3).eval()
    plain.load_state_dict(strip_alignment_state(full_state))
    assert torch.equal(plain(x), trained(x))
    # 2) a checkpoint saved without auxiliary networks loads strictly into a model that has them attached
    fresh = tiny_model(seed=4)
    attach_alignment(fresh, "ct")
    fresh.load_state_dict(plain.state_dict())
    assert torch.equal(fresh.eval()(x), trained(x))
    # 3) full round trip keeps the auxiliary networks too
    again = tiny_model(seed=5)
    attach_alignment(again, "ct")
    again.load_state_dict(full_state)
    for key, value in again.state_dict().items():
        assert torch.equal(value, full_state[key]), key


def test_parameter_groups_split_model_and_auxiliary_networks():
    model = tiny_model()
    regs = attach_alignment(model, "gan")
    groups = alignment_parameter_groups(model, lr=1e-4, betas=(0.0, 0.9))
    assert len(groups) == 2 and groups[1]["lr"] == 1e-4 and groups[1]["betas"] == (0.0, 0.9)
    aux = {id(p) for r in regs for p in r.auxiliary_parameters()}
    assert {id(p) for p in groups[1]["params"]} == aux
    assert {id(p) for g in groups for p in g["params"]} == {id(p) for p in model.parameters()}
    torch.optim.AdamW(groups, lr=1e-3)  # accepted by an optimizer as is


def test_attach_matches_the_module_device_and_float64():
    model = tiny_model()
    (reg, *_) = attach_alignment(model)
    assert isinstance(reg, AlignmentRegularizer)
    assert all(p.dtype == torch.float64 for p in reg.parameters())


@pytest.mark.parametrize("normalization", ["softmax", "doubly"])
@pytest.mark.parametrize("variant", VARIANTS)
def test_padding_a_batch_does_not_change_the_terms_of_a_model(variant, normalization):
    """Through probattn MultiheadAttention: in self-attention the layer reports padded queries too."""
    x, _ = tiny_batch(n=2, length=5)
    padded = torch.cat([x, torch.randn(2, 3, 5, dtype=x.dtype)], dim=1)
    ignore = torch.zeros(2, 8, dtype=torch.bool)
    ignore[:, 5:] = True  # torch convention at the module boundary: True = padding
    terms = []
    for inputs, mask in ((x, None), (padded, ignore)):
        model = tiny_model(normalization=normalization)
        attach_alignment(model, variant)
        model(inputs, key_padding_mask=mask)
        terms.append(torch.tensor(alignment_loss(model)[1].terms))
    torch.testing.assert_close(terms[1], terms[0], rtol=1e-6, atol=1e-9)


class CheckpointedEncoder(nn.Module):
    """The tiny encoder with every attention block under non-reentrant activation checkpointing."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        h = self.inner.embed(x)
        for block in self.inner.blocks:
            h = h + torch.utils.checkpoint.checkpoint(
                lambda t, b=block: b(t, t, t, need_weights=False)[0], h, use_reentrant=False
            )
        return self.inner.head(h.mean(1))


def test_activation_checkpointing_gives_the_same_gradients_and_leaves_nothing_behind():
    x, y = tiny_batch()

    def step_grads(checkpointed):
        inner = tiny_model()
        attach_alignment(inner, "ct", weight=0.5)
        model = CheckpointedEncoder(inner) if checkpointed else inner
        for _ in range(2):  # a recomputation that stored its term would break the second step
            inner.zero_grad()
            task = nn.functional.cross_entropy(model(x), y)
            align, stats = alignment_loss(inner)
            (task + align).backward()
            assert len(stats.terms) == 2
            assert all(not r.pop_observations() for r in attached_regularizers(inner))
        return _grads(inner)

    plain, checkpointed = step_grads(False), step_grads(True)
    for name, grad in plain.items():
        torch.testing.assert_close(checkpointed[name], grad, rtol=1e-10, atol=1e-12, msg=name)


def test_a_non_finite_term_names_the_regularizer_and_its_layer(monkeypatch):
    """Issue 23 item 9: where a regularizer makes NaN the error names it, not the attention input a step later."""
    x, _ = tiny_batch()
    model = tiny_model(layers=3)
    regs = attach_alignment(model, "mmd")
    estimator = regs[1].estimators["tokens"]
    monkeypatch.setattr(estimator, "forward", lambda q, k, qv, kv, axis: (q.sum() + k.sum()) * float("nan"))
    model(x)
    with pytest.raises(FloatingPointError, match=r"AlignmentRegularizer\(mmd\) produced nan in layer "
                                                 r"'blocks\.1'.*1 of 3 terms non-finite\) from finite queries and keys"):
        alignment_loss(model)
    q = torch.randn(2, 2, 5, regs[0].head_dim)  # a layer whose queries already diverged: said so, not blamed on it
    regs[0].observe(q * float("nan"), q, query_valid=None, key_valid=None)
    with pytest.raises(FloatingPointError, match=r"layer 'blocks\.0'.*queries/keys are already non-finite"):
        alignment_loss(model)
