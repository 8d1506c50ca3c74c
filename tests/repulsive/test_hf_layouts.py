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
