"""GraphAttention: equals projections + edge_attention; repulsive heads and alignment attach and act on it."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from probattn.alignment import alignment_loss, attach_alignment
from probattn.models import GraphTransformer
from probattn.nn import GraphAttention
from probattn.reference import reference_edge_attention
from probattn.repulsive import RepulsiveHeads, svgd_direction

E, H = 8, 2


def graph(n: int = 12, e: int = 30, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, E, generator=g)
    edges = torch.stack([torch.randint(0, n, (e,), generator=g), torch.randint(0, n, (e,), generator=g)])
    return x, edges


@pytest.mark.parametrize("normalization", ["softmax", "doubly", "hybrid", "sinkhorn"])
def test_layer_equals_projections_and_reference(normalization):
    torch.manual_seed(0)
    layer = GraphAttention(E, H, normalization=normalization, hybrid_alpha=0.3).double()
    x, edges = graph()
    x = x.double()
    out, w = layer(x, edges, need_weights=True)
    q, k, v = (p(x).view(-1, H, E // H) for p in (layer.q_proj, layer.k_proj, layer.v_proj))
    ref, ref_w = reference_edge_attention(q, k, v, edges, normalization=normalization, hybrid_alpha=0.3)
    torch.testing.assert_close(out, layer.out_proj(ref.reshape(-1, E)), atol=1e-10, rtol=0)
    torch.testing.assert_close(w, ref_w, atol=1e-10, rtol=0)


def test_learned_hybrid_alpha_gets_a_gradient():
    layer = GraphAttention(E, H, normalization="hybrid", hybrid_alpha="learned")
    x, edges = graph()
    layer(x, edges).pow(2).sum().backward()
    assert layer.hybrid_logit.grad is not None and layer.hybrid_logit.grad.abs().sum() > 0


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"embed_dim": 7, "num_heads": 2}, "divisible"), ({"embed_dim": 8, "num_heads": 0}, "num_heads must be"),
     ({"embed_dim": 8, "num_heads": 2, "normalization": "x"}, "normalization must be one of"),
     ({"embed_dim": 8, "num_heads": 2, "sinkhorn_iters": 0}, "sinkhorn_iters must be"),
     ({"embed_dim": 8, "num_heads": 2, "hybrid_alpha": 2.0}, "hybrid_alpha must lie")],
)
def test_bad_constructor_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        GraphAttention(**kwargs)


def test_bad_input_shape():
    with pytest.raises(ValueError, match="x must have shape \\(num_nodes, embed_dim=8\\)"):
        GraphAttention(E, H)(torch.zeros(3, 5), torch.zeros(2, 0, dtype=torch.long))


def _model(seed: int = 0) -> GraphTransformer:
    torch.manual_seed(seed)
    return GraphTransformer(E, 3, hidden=E, num_heads=H, num_layers=2, dropout=0.0, normalization="doubly")


def _loss(model, x, edges):
    return nn.functional.cross_entropy(model(x, edges), torch.arange(x.shape[0]) % 3)


def test_repulsive_heads_find_the_layers_and_rewrite_their_gradients():
    model = _model()
    x, edges = graph()
    _loss(model, x, edges).backward()
    repulsive = RepulsiveHeads(model, alpha=0.1)
    assert [s.name for s in repulsive.particle_sets] == [f"blocks.{i}.attn.{r}" for i in range(2) for r in "qkv"]
    before = [(s.weights().clone(), s.grads().clone()) for s in repulsive.particle_sets]
    untouched = model.head.weight.grad.clone()
    repulsive.step()
    for s, (theta, grads) in zip(repulsive.particle_sets, before):
        torch.testing.assert_close(s.grads(), svgd_direction(theta, grads, alpha=0.1), rtol=1e-5, atol=1e-6)
        assert not torch.allclose(s.grads(), grads)
    assert torch.equal(model.head.weight.grad, untouched)

    # one optimizer step with the hook moves the attention weights differently from a plain step
    plain, rep = _model(), _model()
    for m, attach in ((plain, False), (rep, True)):
        opt = torch.optim.SGD(m.parameters(), lr=0.1)
        if attach:
            RepulsiveHeads(m, alpha=0.1).attach(opt)
        _loss(m, x, edges).backward()
        opt.step()
    assert not torch.allclose(plain.blocks[0].attn.q_proj.weight, rep.blocks[0].attn.q_proj.weight)
    assert torch.equal(plain.head.weight, rep.head.weight)


def test_alignment_attaches_and_its_term_moves_queries_and_keys():
    model = _model()
    x, edges = graph()
    regularizers = attach_alignment(model, "ct", weight=1.0, max_tokens=8)
    assert len(regularizers) == 2
    with pytest.raises(RuntimeError, match="no attention layer reported"):
        alignment_loss(model)  # training mode, but no forward pass yet
    _ = model(x, edges)
    align, stats = alignment_loss(model)
    assert len(stats.terms) == 2 and align.requires_grad
    align.backward()
    attn = model.blocks[0].attn
    assert attn.q_proj.weight.grad.abs().sum() > 0 and attn.k_proj.weight.grad.abs().sum() > 0
    # the term sees queries and keys only: the last layer's values feed no query or key
    assert model.blocks[-1].attn.v_proj.weight.grad is None

    # a training step with alignment differs from one without
    plain, aligned = _model(), _model()
    attach_alignment(aligned, "ct", weight=1.0, max_tokens=8)
    for m in (plain, aligned):
        opt = torch.optim.SGD(m.parameters(), lr=0.1)
        loss = _loss(m, x, edges)
        if m is aligned:
            loss = loss + alignment_loss(m)[0]
        loss.backward()
        opt.step()
    assert not torch.allclose(plain.blocks[0].attn.k_proj.weight, aligned.blocks[0].attn.k_proj.weight)
    assert torch.equal(plain.head.weight, aligned.head.weight)
