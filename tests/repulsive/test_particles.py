"""Head-major particle views: every particle holds exactly one head's entries, for every supported layout."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from probattn.repulsive import build_particle_sets, find_attention_modules, projections_of

E, H, D, IN = 8, 4, 2, 5  # embed, heads, head dim (E = H·D), input width of stand-alone projections


def code(projection: int, head: int, row: int, col: int) -> float:
    """An entry's identity: which projection (q=0, k=1, v=2), head, row within the head, column."""
    return projection * 1_000_000 + head * 10_000 + row * 100 + col


def assert_grouped_by_head(sets, expected_projections):
    """Each particle i contains only head i's entries, and the sets cover each projection's entries once."""
    seen = []
    for particle_set, projections in zip(sets, expected_projections, strict=True):
        w = particle_set.weights()
        for i in range(particle_set.num_particles):
            heads = {int(v) // 10_000 % 100 for v in w[i].tolist()}
            assert heads == {i}, f"{particle_set.name}: particle {i} holds heads {heads}"
            assert {int(v) // 1_000_000 for v in w[i].tolist()} == set(projections)
        seen += w.flatten().tolist()
    assert len(seen) == len(set(seen)), "an entry appears in two particles"
    return set(seen)


class LinearAttention(nn.Module):
    """Llama/BART-like: q_proj/k_proj/v_proj nn.Linear + head_dim; K/V may have fewer heads (GQA)."""

    def __init__(self, heads: int, kv_heads: int):
        super().__init__()
        self.head_dim = D
        self.q_proj = nn.Linear(IN, heads * D)
        self.k_proj = nn.Linear(IN, kv_heads * D)
        self.v_proj = nn.Linear(IN, kv_heads * D)
        with torch.no_grad():
            for p, linear in enumerate((self.q_proj, self.k_proj, self.v_proj)):
                for o in range(linear.out_features):
                    linear.bias[o] = code(p, o // D, o % D, 99)
                    for c in range(IN):
                        linear.weight[o, c] = code(p, o // D, o % D, c)


class BertSelfAttentionStandIn(nn.Module):
    def __init__(self):
        super().__init__()
        self.num_attention_heads = H
        self.query, self.key, self.value = (nn.Linear(IN, E) for _ in range(3))
        with torch.no_grad():
            for p, linear in enumerate((self.query, self.key, self.value)):
                for o in range(E):
                    for c in range(IN):
                        linear.weight[o, c] = code(p, o // D, o % D, c)


class Conv1D(nn.Module):
    """Same weight layout as transformers' Conv1D: weight (in, out), forward x @ W + b."""

    def __init__(self, nf: int, nx: int):
        super().__init__()
        self.nf = nf
        self.weight = nn.Parameter(torch.empty(nx, nf))
        self.bias = nn.Parameter(torch.zeros(nf))

    def forward(self, x):
        return x @ self.weight + self.bias


class GPT2AttentionStandIn(nn.Module):
    def __init__(self, cross: bool = False):
        super().__init__()
        self.num_heads, self.is_cross_attention = H, cross
        self.c_attn = Conv1D((2 if cross else 3) * E, E)
        with torch.no_grad():
            for out in range(self.c_attn.nf):
                p = out // E + (1 if cross else 0)
                for c in range(E):
                    self.c_attn.weight[c, out] = code(p, out % E // D, out % D, c)
                self.c_attn.bias[out] = code(p, out % E // D, out % D, 99)
        if cross:
            self.q_attn = Conv1D(E, E)
            with torch.no_grad():
                for out in range(E):
                    for c in range(E):
                        self.q_attn.weight[c, out] = code(0, out // D, out % D, c)


def torch_mha(**kwargs) -> nn.MultiheadAttention:
    mha = nn.MultiheadAttention(E, H, **kwargs)
    with torch.no_grad():
        if mha.in_proj_weight is not None:
            for r in range(3 * E):
                for c in range(E):
                    mha.in_proj_weight[r, c] = code(r // E, r % E // D, r % D, c)
        else:
            for p, w in enumerate((mha.q_proj_weight, mha.k_proj_weight, mha.v_proj_weight)):
                for r in range(E):
                    for c in range(w.shape[1]):
                        w[r, c] = code(p, r // D, r % D, c)
    return mha


def all_weight_codes(module: nn.Module) -> set[float]:
    names = ("in_proj_weight", "q_proj_weight", "k_proj_weight", "v_proj_weight", "weight")
    return {
        v
        for name, p in module.named_parameters()
        if name.split(".")[-1] in names and not name.startswith("out_proj")
        for v in p.flatten().tolist()
    }


@pytest.mark.parametrize(
    "module",
    [
        torch_mha(),
        torch_mha(kdim=3, vdim=6),
        BertSelfAttentionStandIn(),
        LinearAttention(H, H),
        GPT2AttentionStandIn(),
        GPT2AttentionStandIn(cross=True),
    ],
    ids=["torch-mha-fused", "torch-mha-kdim", "bert-linear", "llama-linear", "gpt2-conv1d", "gpt2-cross"],
)
def test_separate_grouping_by_head(module):
    projections = projections_of(module)
    assert [p.role for p in projections] == ["q", "k", "v"]
    sets = build_particle_sets("m", projections)
    assert [s.num_particles for s in sets] == [H, H, H]
    covered = assert_grouped_by_head(sets, [[0], [1], [2]])
    if not isinstance(module, GPT2AttentionStandIn):
        assert covered == all_weight_codes(module)  # every projection entry is in exactly one particle


def test_gpt2_conv1d_covers_the_fused_weight():
    module = GPT2AttentionStandIn()
    sets = build_particle_sets("m", projections_of(module))
    assert assert_grouped_by_head(sets, [[0], [1], [2]]) == set(module.c_attn.weight.flatten().tolist())


def test_grouped_query_attention_kv_has_fewer_particles():
    module = LinearAttention(heads=4, kv_heads=2)
    sets = build_particle_sets("m", projections_of(module))
    assert [s.num_particles for s in sets] == [4, 2, 2]
    assert_grouped_by_head(sets, [[0], [1], [2]])
    with pytest.raises(ValueError, match="grouping='separate'"):
        build_particle_sets("m", projections_of(module), grouping="joint")


def test_joint_and_qk_only_groupings():
    module = torch_mha()
    joint = build_particle_sets("m", projections_of(module), grouping="joint")
    assert len(joint) == 1 and joint[0].size == 3 * D * E
    assert_grouped_by_head(joint, [[0, 1, 2]])
    qk = build_particle_sets("m", projections_of(module), grouping="qk_only")
    assert [s.name for s in qk] == ["m.q", "m.k"]
    assert_grouped_by_head(qk, [[0], [1]])
    with pytest.raises(ValueError, match="grouping"):
        build_particle_sets("m", projections_of(module), grouping="together")


def test_biases_join_their_head():
    module = LinearAttention(H, H)
    sets = build_particle_sets("m", projections_of(module), include_bias=True)
    assert sets[0].size == D * IN + D
    assert_grouped_by_head(sets, [[0], [1], [2]])
    assert 99 in {int(v) % 100 for v in sets[0].weights().flatten().tolist()}


@pytest.mark.parametrize("module", [torch_mha(), GPT2AttentionStandIn(), LinearAttention(4, 2)],
                         ids=["fused", "conv1d", "gqa"])
def test_set_grads_writes_each_entry_at_its_place(module):
    sets = build_particle_sets("m", projections_of(module), include_bias=True)
    for p in module.parameters():
        p.grad = torch.zeros_like(p)
    for s in sets:
        s.set_grads(s.weights())  # grad := weight, written through the head views
    for s in sets:
        torch.testing.assert_close(s.grads(), s.weights())
    touched = [p for s in sets for p in s.params]
    for p in touched:
        mask = p.grad != 0
        torch.testing.assert_close(p.grad[mask], p.detach()[mask])


def test_find_attention_modules_does_not_descend_into_found_modules():
    encoder = nn.TransformerEncoder(nn.TransformerEncoderLayer(E, H, 16, batch_first=True), 2,
                                    enable_nested_tensor=False)
    names = [name for name, _, _ in find_attention_modules(encoder)]
    assert names == ["layers.0.self_attn", "layers.1.self_attn"]
    with pytest.raises(ValueError, match="register_adapter"):
        find_attention_modules([nn.Linear(2, 2)])


def test_conv1d_stand_in_particles_reproduce_its_per_head_outputs():
    """Particle i, read as an (in, d) block, maps x to head i's slice of x @ W (the split GPT-2 uses)."""
    module = GPT2AttentionStandIn()
    nn.init.normal_(module.c_attn.weight)
    nn.init.zeros_(module.c_attn.bias)
    x = torch.randn(2, 3, E)
    projected = module.c_attn(x)
    for s, part in zip(build_particle_sets("m", projections_of(module)), projected.split(E, dim=-1)):
        blocks = s.weights().view(H, E, D)
        per_head = part.unflatten(-1, (H, D)).permute(2, 0, 1, 3)
        torch.testing.assert_close(torch.stack([x @ b for b in blocks]), per_head)
