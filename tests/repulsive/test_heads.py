"""RepulsiveHeads: finds modules, batches sets exactly, runs once per optimizer step, GA/AMP/SPOS/clip semantics."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from probattn.metrics import parameter_cosine_similarity
from probattn.models import SelfAttentiveClassifier
from probattn.nn import MultiheadAttention, replace_attention
from probattn.repulsive import PRESETS, RepulsiveHeads, svgd_direction, svgd_terms

E, H = 16, 4


def encoder(seed: int = 0, probattn: bool = True, layers: int = 2) -> nn.Module:
    torch.manual_seed(seed)
    layer = nn.TransformerEncoderLayer(E, H, 32, dropout=0.0, batch_first=True)
    model = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
    for p in model.parameters():  # TransformerEncoder deep-copies one layer: make the layers differ
        nn.init.normal_(p, std=0.3)
    return replace_attention(model) if probattn else model


def batch(seed: int = 0, n: int = 8):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, 5, E, generator=gen), torch.randn(n, 5, E, generator=gen)


def loss_of(model, x, y):
    return (model(x) - y).pow(2).mean()


@pytest.mark.parametrize("probattn", [True, False], ids=["probattn-mha", "torch-mha"])
@pytest.mark.parametrize("method", ["svgd", "spos"])
def test_step_equals_the_pure_function_on_each_set(probattn, method):
    model = encoder(probattn=probattn)
    assert all(isinstance(m.self_attn, MultiheadAttention) == probattn for m in model.layers)
    loss_of(model, *batch()).backward()
    repulsive = RepulsiveHeads(model, method=method, alpha=0.1, stepsize=0.5, beta=0.3, seed=11)
    assert [s.name for s in repulsive.particle_sets] == [f"layers.{i}.self_attn.{r}" for i in range(2) for r in "qkv"]
    weights = [m.self_attn.in_proj_weight for m in model.layers]
    d = E // H

    def particles(w, r):  # built here, not by probattn's views: head h of projection r = rows r·E + h·d ... + d
        return torch.stack([w[r * E + h * d: r * E + (h + 1) * d].flatten() for h in range(H)]).clone()

    before = [(particles(w.detach(), r), particles(w.grad, r)) for w in weights for r in range(3)]
    generator = torch.Generator().manual_seed(11 * 1_000_003)  # noise of step 0, drawn for the batch in set order
    xi = torch.randn(len(before), H, before[0][0].shape[1], generator=generator)
    repulsive.step()
    for i, (theta, grads) in enumerate(before):
        if method == "svgd":
            expected = svgd_direction(theta, grads, alpha=0.1, stepsize=0.5)
        else:
            noise = 0.5 * (0.3 * grads - (2 * 0.3 / 0.5) ** 0.5 * grads.abs().flatten().median() * xi[i])
            expected = 0.5 * svgd_direction(theta, grads, alpha=0.1) + noise
        torch.testing.assert_close(particles(weights[i // 3].grad, i % 3), expected, rtol=1e-5, atol=1e-6)


def test_spos_noise_of_differently_shaped_sets_is_not_repeated():
    """Sets of different shapes are rewritten in separate batches: each batch draws fresh noise in that step."""
    torch.manual_seed(0)
    modules = [nn.MultiheadAttention(8, 2), nn.MultiheadAttention(16, 2)]  # (2, 32) and (2, 128) particles
    noises = []
    for method in ("svgd", "spos"):
        repulsive = RepulsiveHeads(modules, method=method, alpha=0.0, beta=1.0, grouping="qk_only")
        for m in modules:
            for p in m.parameters():
                p.grad = torch.ones_like(p)
        repulsive.step()
        noises.append([s.grads().flatten() for s in repulsive.particle_sets])
    xi = [(spos - svgd) for svgd, spos in zip(*noises)]  # stepsize 1, beta 1: G - sqrt(2)·ξ with G = 1
    small, large = xi[0], xi[2]  # q of the first module, q of the second
    assert not torch.allclose(small, large[: small.numel()])


def train(model, repulsive_kwargs, *, steps=3, accumulation=1, scaler=None):
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    repulsive = RepulsiveHeads(model, **repulsive_kwargs).attach(optimizer)
    calls = []
    optimizer.register_step_pre_hook(lambda *_: calls.append(1))
    for step in range(steps):
        x, y = batch(step, n=8)
        for xs, ys in zip(x.chunk(accumulation), y.chunk(accumulation)):
            loss = loss_of(model, xs, ys) / accumulation
            (scaler.scale(loss) if scaler else loss).backward()
        if scaler:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
        optimizer.zero_grad()
    assert repulsive.num_steps == len(calls) == steps  # once per optimizer step, not per backward
    return model, repulsive


@pytest.mark.parametrize("method", ["svgd", "spos"])
def test_gradient_accumulation_two_equals_one(method):
    one, _ = train(encoder(), dict(method=method, alpha=0.5), accumulation=1)
    two, _ = train(encoder(), dict(method=method, alpha=0.5), accumulation=2)
    for a, b in zip(one.parameters(), two.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_runs_after_grad_scaler_unscaling():
    plain, _ = train(encoder(), dict(alpha=0.5))
    scaled, _ = train(encoder(), dict(alpha=0.5), scaler=torch.amp.GradScaler("cpu", init_scale=2.0**12))
    for a, b in zip(plain.parameters(), scaled.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_spos_noise_is_reproducible_and_resumable():
    a, rep_a = train(encoder(), dict(method="spos", alpha=0.1, seed=3), steps=2)
    b, _ = train(encoder(), dict(method="spos", alpha=0.1, seed=3), steps=2)
    c, _ = train(encoder(), dict(method="spos", alpha=0.1, seed=4), steps=2)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    assert not all(torch.equal(p, q) for p, q in zip(a.parameters(), c.parameters()))
    resumed = RepulsiveHeads(a, method="spos", alpha=0.1)
    resumed.load_state_dict(rep_a.state_dict())
    assert (resumed.num_steps, resumed.seed) == (2, 3)


def test_clip_before_clips_after_the_rewrite():
    model = encoder()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    RepulsiveHeads(model, alpha=10.0, max_grad_norm=0.01).attach(optimizer)
    (100 * loss_of(model, *batch())).backward()
    optimizer.step()
    norm = torch.nn.utils.get_total_norm([p.grad for p in model.parameters()])
    assert norm <= 0.01 * (1 + 1e-4)
    with pytest.raises(ValueError, match="max_grad_norm"):
        RepulsiveHeads(model, clip="after", max_grad_norm=1.0)


def test_layer_selection_and_presets():
    model = encoder(layers=3)
    assert RepulsiveHeads(model, layers=[-1]).module_names == ["layers.2.self_attn"]
    assert RepulsiveHeads(model, layers=lambda name, m: name.startswith("layers.1")).module_names == [
        "layers.1.self_attn"
    ]
    with pytest.raises(ValueError, match="out of range"):
        RepulsiveHeads(model, layers=[3])
    # the table of research/repulsive.md §8, written out here (not read from PRESETS):
    # name: (method, alpha, stepsize, normalize_by_M, median, kernel_grad_div, layers)
    table = {
        "fairseq_iwslt": ("svgd", 0.01, 0.01, True, "lower", "h2", None),
        "fairseq_wmt": ("svgd", 0.01, 0.1, True, "lower", "h2", None),
        "electra_small": ("svgd", 0.1, 0.01, True, "true", "h2", (0,)),
        "lin2017_yelp": ("svgd", 1.0, 1.0, True, "lower", "h", None),
        "lin2017_age": ("svgd", 0.01, 1.0, True, "lower", "h", None),
        "lin2017_snli": ("svgd", 0.005, 1.0, True, "lower", "h", None),
        "recommended": ("svgd", 0.01, 1.0, True, "true", "h2", None),
    }
    assert set(PRESETS) == set(table)
    for name, (method, alpha, stepsize, by_m, median, div, layers) in table.items():
        r = RepulsiveHeads.from_preset(model, name)
        assert (r.method, r.alpha, r.stepsize, r.normalize_by_M, r.median, r.kernel_grad_div) == (
            method, alpha, stepsize, by_m, median, div), name
        assert r.module_names == ([f"layers.{i}.self_attn" for i in layers] if layers else
                                  [f"layers.{i}.self_attn" for i in range(3)]), name
        assert {s.name.rsplit(".", 1)[1] for s in r.particle_sets} == {"q", "k", "v"}, name  # Q/K/V separate
    assert RepulsiveHeads.from_preset(model, "electra_small").module_names == ["layers.0.self_attn"]
    assert RepulsiveHeads.from_preset(model, "fairseq_iwslt", method="spos").method == "spos"
    with pytest.raises(ValueError, match="unknown preset"):
        RepulsiveHeads.from_preset(model, "bert_large")


def test_bad_arguments_are_named():
    model = encoder()
    with pytest.raises(ValueError, match="no attention module"):
        RepulsiveHeads(nn.Linear(3, 3))
    for kwargs, word in [(dict(method="sgld"), "method"), (dict(alpha=-1.0), "alpha"), (dict(clip="never"), "clip"),
                         (dict(grouping="pairs"), "grouping"), (dict(stepsize=0.0), "stepsize")]:
        with pytest.raises(ValueError, match=word):
            RepulsiveHeads(model, **kwargs)
    optimizer = torch.optim.SGD(model.layers[0].linear1.parameters(), lr=0.1)
    with pytest.raises(ValueError, match=r"optimizer does not update the trainable attention parameters of .*layers\.0\.self_attn\.q.*or freeze them"):
        RepulsiveHeads(model).attach(optimizer)


@pytest.mark.parametrize("when", ["before construction", "before attach"])
def test_frozen_attention_parameters_do_not_repel(when):
    """Layer 0's attention frozen, layer 1's bias frozen: the optimizer holds only the trainable parameters."""
    model = encoder()
    frozen = [model.layers[0].self_attn.in_proj_weight, model.layers[0].self_attn.in_proj_bias,
              model.layers[1].self_attn.in_proj_bias]

    def freeze():
        for p in frozen:
            p.requires_grad_(False)

    if when == "before construction":
        freeze()
    repulsive = RepulsiveHeads(model, alpha=0.1, include_bias=True)
    if when == "before attach":
        freeze()
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.0)
    repulsive.attach(optimizer)
    assert [s.name for s in repulsive.particle_sets] == [f"layers.1.self_attn.{r}" for r in "qkv"]
    loss_of(model, *batch()).backward()
    weight = model.layers[1].self_attn.in_proj_weight
    theta, grads = weight.detach().clone(), weight.grad.clone()
    optimizer.step()
    for i in range(3):  # particles: the rows of head h of projection i, weight only (the frozen bias is left out)
        rows = slice(i * E, (i + 1) * E)
        expected = svgd_direction(theta[rows].reshape(H, -1), grads[rows].reshape(H, -1), alpha=0.1)
        torch.testing.assert_close(weight.grad[rows].reshape(H, -1), expected, rtol=1e-5, atol=1e-6)
    assert all(p.grad is None for p in frozen)


def test_stats_missing_grads_and_non_finite_fallback():
    model = encoder()
    repulsive = RepulsiveHeads(model)
    assert repulsive.step()["sets"] == {}  # no gradients yet: nothing is touched
    loss_of(model, *batch()).backward()
    stats = repulsive.step()
    assert set(stats) == {"step", "sets", "bandwidth", "mean_offdiag_kernel", "repulsion_ratio"}
    one = stats["sets"]["layers.0.self_attn.q"]
    assert one["bandwidth"] > 0 and 0 < one["mean_offdiag_kernel"] < 1 and one["repulsion_ratio"] > 0
    assert len(one["head_norms"]) == H
    # the M×M shortcuts of the stats equal the explicit norms
    s = repulsive.particle_sets[0]
    loss_of(model, *batch()).backward()
    theta, grads = s.weights().clone(), s.grads().clone()
    one = repulsive.step()["sets"][s.name]
    terms = svgd_terms(theta.double(), grads.double())
    ratio = 0.01 * terms.repulsion.norm() / terms.driving.norm()
    assert one["repulsion_ratio"] == pytest.approx(ratio.item(), rel=1e-4)
    assert one["bandwidth"] == pytest.approx(terms.bandwidth.item(), rel=1e-5)
    assert one["head_norms"] == pytest.approx(theta.norm(dim=1).tolist(), rel=1e-5)
    model.zero_grad()
    loss_of(model, *batch()).backward()
    q = model.layers[0].self_attn.in_proj_weight
    q.grad[0, 0] = float("inf")
    kept = q.grad.clone()
    with pytest.warns(UserWarning, match="non-finite"):
        repulsive.step()
    torch.testing.assert_close(q.grad[:E], kept[:E])  # the q set kept its plain gradient (k, v were rewritten)


def test_self_attentive_hops_are_the_particles():
    model = SelfAttentiveClassifier(30, 2, embed_dim=6, hidden=4, attention_hops=5, attention_unit=7, mlp_hidden=8)
    repulsive = RepulsiveHeads(model)
    (only,) = repulsive.particle_sets
    assert only.num_particles == 5 and only.size == 7
    torch.testing.assert_close(only.weights(), model.attention.w_s2.weight)
    ids = torch.randint(1, 30, (4, 6))
    model(ids).logits.sum().backward()
    grads = only.grads().clone()
    repulsive.step()
    torch.testing.assert_close(model.attention.w_s2.weight.grad,
                               svgd_direction(model.attention.w_s2.weight.detach(), grads, alpha=0.01))


def collapsed_student(seed: int) -> nn.MultiheadAttention:
    """All heads (their Q/K/V rows and out_proj columns) copies of head 0 plus 1e-3 noise."""
    torch.manual_seed(seed)
    student = nn.MultiheadAttention(E, H, batch_first=True, bias=False)
    with torch.no_grad():
        w = student.in_proj_weight.view(3, H, E // H, E)
        w.copy_(w[:, :1].expand_as(w) + 1e-3 * torch.randn_like(w))
        o = student.out_proj.weight.view(E, H, E // H)
        o.copy_(o[:, :, :1].expand_as(o) + 1e-3 * torch.randn_like(o))
    return student


def test_toy_collapse_repulsion_diversifies_heads_without_hurting_the_fit():
    """Student with collapsed heads fits a teacher with 4 sharp, distinct heads (SGD + momentum, 60 steps).

    Measured (this seed): plain test MSE 0.1266, mean head cosine 0.97; α = 0.01: MSE 0.1275, cosine 0.27.
    """
    torch.manual_seed(0)
    teacher = nn.MultiheadAttention(E, H, batch_first=True, bias=False)
    with torch.no_grad():
        teacher.in_proj_weight[: 2 * E] *= 4.0  # sharp attention: the heads really differ
    x, x_test = torch.randn(256, 6, E), torch.randn(128, 6, E)
    with torch.no_grad():
        y, y_test = teacher(x, x, x)[0], teacher(x_test, x_test, x_test)[0]

    def fit(alpha):
        student = collapsed_student(1)
        optimizer = torch.optim.SGD(student.parameters(), lr=0.3, momentum=0.9)
        if alpha is not None:
            RepulsiveHeads(student, alpha=alpha).attach(optimizer)
        gen = torch.Generator().manual_seed(2)
        for _ in range(60):
            i = torch.randint(0, 256, (32,), generator=gen)
            loss = (student(x[i], x[i], x[i])[0] - y[i]).pow(2).mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        with torch.no_grad():
            test = (student(x_test, x_test, x_test)[0] - y_test).pow(2).mean().item()
            heads = student.in_proj_weight.view(3, H, -1)
            cosine = sum(parameter_cosine_similarity(heads[p]).item() for p in range(3)) / 3
        return test, cosine

    plain_loss, plain_cosine = fit(None)
    repulsive_loss, repulsive_cosine = fit(1e-2)
    assert plain_cosine > 0.9  # the collapse persists without repulsion
    assert repulsive_cosine < plain_cosine - 0.5
    assert repulsive_loss <= 1.05 * plain_loss  # stated margin: at most 5% worse test MSE


@pytest.mark.parametrize(("method", "alpha"), [("svgd", 0.01), ("spos", 0.0)])
def test_all_zero_particles_stay_finite_under_adam(method, alpha):
    """Issue 23 item 9: frozen weights, zero biases as the particles (8 heads): the bandwidth stays positive.

    Before: h² = tiny / (2 log 9) was subnormal, the rewrite gave NaN and Adam wrote NaN into the biases.
    """
    from probattn.repulsive.kernels import min_squared_bandwidth

    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(64, 8, 64, dropout=0.0, batch_first=True)
    model = replace_attention(nn.TransformerEncoder(layer, 1, enable_nested_tensor=False))
    attn = model.layers[0].self_attn
    attn.in_proj_weight.requires_grad_(False)
    assert (attn.in_proj_bias == 0).all()
    repulsive = RepulsiveHeads(model, method=method, alpha=alpha, include_bias=True)
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    repulsive.attach(optimizer)
    for step in range(2):
        model(torch.randn(4, 5, 64)).pow(2).mean().backward()
        optimizer.step()
        optimizer.zero_grad()
        assert all(torch.isfinite(p).all() for p in model.parameters()), f"NaN after step {step + 1}"
    one = repulsive.last_stats["sets"]["layers.0.self_attn.q"]
    assert one["bandwidth"] ** 2 >= min_squared_bandwidth(torch.float32) * (1 - 1e-6)


def test_a_non_finite_rewrite_names_the_regularizer_and_changes_nothing():
    model = encoder()
    with torch.no_grad():  # close query heads: h² ~ 1e-6, so alpha / h² overflows float32
        model.layers[0].self_attn.in_proj_weight[:E].mul_(1e-3)
    repulsive = RepulsiveHeads(model, alpha=3e38).attach(torch.optim.SGD(model.parameters(), lr=0.1))
    loss_of(model, *batch()).backward()
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    grads = {name: p.grad.clone() for name, p in model.named_parameters()}
    with pytest.raises(FloatingPointError, match=r"RepulsiveHeads\(svgd\) produced a non-finite gradient in "
                                                 r"layers\.0\.self_attn\.q at step 0 from finite weights"):
        repulsive._optimizer.step()
    for name, p in model.named_parameters():  # the optimizer step did not run, no gradient was rewritten
        assert torch.equal(p, before[name]) and torch.equal(p.grad, grads[name])
