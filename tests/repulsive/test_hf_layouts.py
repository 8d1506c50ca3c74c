"""The adapters' head views agree with how real Hugging Face attention modules split their projections."""

from __future__ import annotations

import pytest
import torch

from probattn.repulsive import RepulsiveHeads, build_particle_sets, projections_of

transformers = pytest.importorskip("transformers")
pytestmark = pytest.mark.hf

HIDDEN, HEADS, KV_HEADS = 16, 4, 2
D = HIDDEN // HEADS


def per_head(projected: torch.Tensor, heads: int) -> torch.Tensor:
    """(B, L, heads·d) -> (heads, B, L, d), the split every HF model uses (view(B, L, H, d))."""
    return projected.unflatten(-1, (heads, -1)).permute(2, 0, 1, 3)


def particle_outputs(particle_set, x: torch.Tensor, conv1d: bool) -> torch.Tensor:
    """Apply each particle, read back as its head's weight block, to x: -> (heads, B, L, d)."""
    w = particle_set.weights()
    blocks = w.view(w.shape[0], HIDDEN, D) if conv1d else w.view(w.shape[0], D, HIDDEN).transpose(1, 2)
    return torch.stack([x @ block for block in blocks])


def test_bert_self_attention():
    from transformers.models.bert.modeling_bert import BertSelfAttention

    config = transformers.BertConfig(hidden_size=HIDDEN, num_attention_heads=HEADS)
    module = BertSelfAttention(config)
    x = torch.randn(2, 3, HIDDEN)
    sets = build_particle_sets("bert", projections_of(module))
    for s, linear in zip(sets, (module.query, module.key, module.value)):
        expected = per_head(linear(x) - linear.bias, HEADS)
        torch.testing.assert_close(particle_outputs(s, x, conv1d=False), expected)


def test_gpt2_attention_conv1d():
    from transformers.models.gpt2.modeling_gpt2 import GPT2Attention

    module = GPT2Attention(transformers.GPT2Config(n_embd=HIDDEN, n_head=HEADS))
    x = torch.randn(2, 3, HIDDEN)
    qkv = (module.c_attn(x) - module.c_attn.bias).split(HIDDEN, dim=-1)
    sets = build_particle_sets("gpt2", projections_of(module))
    for s, projected in zip(sets, qkv):
        torch.testing.assert_close(particle_outputs(s, x, conv1d=True), per_head(projected, HEADS))


def test_llama_attention_grouped_query():
    from transformers.models.llama.modeling_llama import LlamaAttention

    config = transformers.LlamaConfig(hidden_size=HIDDEN, num_attention_heads=HEADS, num_key_value_heads=KV_HEADS)
    module = LlamaAttention(config, layer_idx=0)
    x = torch.randn(2, 3, HIDDEN)
    sets = build_particle_sets("llama", projections_of(module))
    assert [s.num_particles for s in sets] == [HEADS, KV_HEADS, KV_HEADS]
    for s, linear, heads in zip(sets, (module.q_proj, module.k_proj, module.v_proj), (HEADS, KV_HEADS, KV_HEADS)):
        torch.testing.assert_close(particle_outputs(s, x, conv1d=False), per_head(linear(x), heads))


def test_repulsive_heads_on_a_bert_model():
    config = transformers.BertConfig(hidden_size=HIDDEN, num_attention_heads=HEADS, num_hidden_layers=2,
                                     intermediate_size=32, vocab_size=50)
    model = transformers.BertModel(config)
    repulsive = RepulsiveHeads(model)
    assert repulsive.module_names == [f"encoder.layer.{i}.attention.self" for i in range(2)]
    model(torch.randint(0, 50, (2, 5))).last_hidden_state.sum().backward()
    stats = repulsive.step()
    assert len(stats["sets"]) == 6


def test_pretrained_minilm_heads_sit_at_the_high_dimensional_kernel_value(monkeypatch):
    """Real all-MiniLM-L6-v2: 6 layers x Q/K/V = 18 sets of 12 heads; off-diagonal k ≈ 1/(M+1) (spec §3.6)."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    from probattn.hf import load_pretrained

    model, tokenizer = load_pretrained("minilm", task="classification", num_labels=2)
    repulsive = RepulsiveHeads(model)
    assert len(repulsive.particle_sets) == 18
    assert {(s.num_particles, s.size) for s in repulsive.particle_sets} == {(12, 32 * 384)}
    batch = tokenizer(["a fine film", "dull"], padding=True, return_tensors="pt")
    model(**batch, labels=torch.tensor([1, 0])).loss.backward()
    stats = repulsive.step()
    assert abs(stats["mean_offdiag_kernel"] - 1 / 13) < 0.01


# ---- LoRA (peft): particles are the effective head weights, the rewrite lands on B ----

def _lora_bert(dtype=torch.float32):
    peft = pytest.importorskip("peft")
    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=50, hidden_size=HIDDEN, num_attention_heads=HEADS, num_hidden_layers=1,
                                     intermediate_size=8, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    model = transformers.BertModel(config).to(dtype)
    # init_lora_weights=False: B random (peft's default B = 0 would hide a wrong effective weight)
    lora = peft.get_peft_model(model, peft.LoraConfig(r=3, lora_alpha=6, target_modules=["query", "value"],
                                                      init_lora_weights=False, lora_dropout=0.0))
    return lora.eval(), lora.base_model.model.encoder.layer[0].attention.self


def test_lora_heads_are_found_and_their_particles_are_the_effective_weights():
    model, attention = _lora_bert()
    found = RepulsiveHeads(model)  # previously: "no attention module found"
    assert [s.name.rsplit(".", 1)[-1] for s in found.particle_sets] == ["q", "v"]  # key: frozen base, no LoRA
    x = torch.randn(2, 3, HIDDEN)
    for s, linear in zip(found.particle_sets, (attention.query, attention.value)):
        assert s.lifted and s.params == [linear.lora_B["default"].weight]
        with torch.no_grad():
            expected = per_head(linear(x) - linear.base_layer.bias, HEADS)  # peft's own adapted forward
            torch.testing.assert_close(particle_outputs(s, x, conv1d=False), expected)


def _reference_lora_svgd(w0, lora_a, lora_b, scaling, grads, alpha, coef, h2):
    """SVGD over B's head rows with the RBF kernel of the effective weights θ_i = W0_i + s·B_i·A, float64, by
    autograd: Ĝ_i = coef·(Σ_j k_ij G_j − α Σ_j ∇_{B_j} k(θ(B_j), θ_i))."""
    b = lora_b.detach().clone().requires_grad_(True)
    theta = (w0 + scaling * b @ lora_a).flatten(1)
    k = torch.exp(-torch.cdist(theta, theta).square() / (2 * h2)).detach()
    repulsion = []
    for i in range(theta.shape[0]):
        energy = torch.exp(-(theta - theta[i].detach()).square().sum(1) / (2 * h2)).sum()
        (grad,) = torch.autograd.grad(energy, b, retain_graph=True)
        repulsion.append(grad.sum(0))
    return coef * (torch.einsum("ij,jdr->idr", k, grads) - alpha * torch.stack(repulsion))


@pytest.mark.parametrize("alpha", [0.0, 0.5])
def test_lora_rewrite_matches_an_autograd_reference(alpha):
    _model, attention = _lora_bert(torch.float64)
    repulsive = RepulsiveHeads([attention], alpha=alpha, layers=None)
    linear = attention.query
    w0 = linear.base_layer.weight.detach().unflatten(0, (HEADS, D))
    lora_a, lora_b = linear.lora_A["default"].weight.detach(), linear.lora_B["default"].weight
    gen = torch.Generator().manual_seed(3)
    for s in repulsive.particle_sets:
        for p in s.params:
            p.grad = torch.randn(p.shape, generator=gen, dtype=p.dtype)
    grads = lora_b.grad.detach().clone().unflatten(0, (HEADS, D))
    stats = repulsive.step()
    h2 = stats["sets"]["0.q"]["bandwidth"] ** 2
    want = _reference_lora_svgd(w0, lora_a, lora_b.detach().unflatten(0, (HEADS, D)), linear.scaling["default"],
                                grads, alpha, 1.0 / HEADS, h2)
    torch.testing.assert_close(lora_b.grad.unflatten(0, (HEADS, D)), want)
    # the bandwidth is the median heuristic of the effective weights (what a plain layer with W0 + s·B·A gets)
    from probattn.repulsive import svgd_terms

    theta = (linear.base_layer.weight + linear.get_delta_weight("default")).detach().unflatten(0, (HEADS, D))
    plain = svgd_terms(theta.flatten(1), torch.zeros_like(theta.flatten(1)))
    assert stats["sets"]["0.q"]["bandwidth"] == pytest.approx(float(plain.bandwidth), rel=1e-9)


def test_lora_on_a_fused_projection_is_refused():
    peft = pytest.importorskip("peft")
    config = transformers.GPT2Config(n_embd=HIDDEN, n_head=HEADS, n_layer=1, vocab_size=50, n_positions=8)
    model = peft.get_peft_model(transformers.GPT2Model(config), peft.LoraConfig(r=2, target_modules=["c_attn"]))
    with pytest.raises(ValueError, match=r"LoRA on GPT-2's fused Conv1D c_attn is not supported"):
        RepulsiveHeads(model)


def test_lora_spos_and_joint_grouping_run_in_b_space():
    _model, attention = _lora_bert()
    for options in ({"method": "spos"}, {"grouping": "joint"}):
        repulsive = RepulsiveHeads([attention], **options)
        lora_b = [attention.query.lora_B["default"].weight, attention.value.lora_B["default"].weight]
        for p in lora_b:
            p.grad = torch.randn_like(p)
        before = [p.grad.clone() for p in lora_b]
        stats = repulsive.step()
        assert all(torch.isfinite(p.grad).all() and not torch.equal(p.grad, b) for p, b in zip(lora_b, before))
        assert all(s["repulsion_ratio"] > 0 for s in stats["sets"].values())
