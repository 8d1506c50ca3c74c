"""Causal-aware incoming mass, sinks, causal entropy normalization, head clustering and MDS, against plain
float64 loops written here (independent of the code under test)."""

import math

import pytest
import torch

from probattn.metrics import (
    attention_entropy,
    attention_sinks,
    classical_mds,
    head_clusters,
    incoming_mass,
)


def _causal_rows(b, h, n, seed, valid=None):
    g = torch.Generator().manual_seed(seed)
    scores = torch.randn(b, h, n, n, generator=g, dtype=torch.float64)
    allowed = torch.ones(n, n, dtype=torch.bool).tril().expand(b, 1, n, n)
    if valid is not None:
        allowed = allowed & valid[:, None, None, :] & valid[:, None, :, None]
    w = scores.masked_fill(~allowed, float("-inf")).softmax(-1)
    return torch.nan_to_num(w, nan=0.0)  # padded rows: all -inf -> zeros


def _reference_causal_mass(w, valid):
    b, h, n, _ = w.shape
    out = torch.zeros(b, h, n, dtype=torch.float64)
    for e in range(b):
        real = [i for i in range(n) if valid[e, i]]
        for hh in range(h):
            for j in real:
                m = sum(float(w[e, hh, i, j]) for i in real if j <= i)
                u = sum(1.0 / sum(1 for k in real if k <= i) for i in real if j <= i)
                out[e, hh, j] = m / u
    return out


def test_causal_mass_matches_loop_and_is_one_for_uniform():
    valid = torch.tensor([[True] * 6, [True] * 4 + [False] * 2])
    w = _causal_rows(2, 3, 6, seed=0, valid=valid)
    got = incoming_mass(w, query_valid=valid, key_valid=valid, causal=True)
    torch.testing.assert_close(got, _reference_causal_mass(w, valid), rtol=1e-12, atol=1e-12)
    assert got[1, :, 4:].abs().max() == 0  # padded keys get 0
    n = 7
    uniform = torch.ones(n, n, dtype=torch.float64).tril()
    uniform = (uniform / uniform.sum(-1, keepdim=True))[None, None]
    torch.testing.assert_close(incoming_mass(uniform, causal=True), torch.ones(1, 1, n, dtype=torch.float64))
    # the non-causal normalization calls the last keys explained away under the same uniform attention
    assert float(incoming_mass(uniform)[0, 0, -1]) == pytest.approx(1 / n)


def test_causal_mass_errors():
    with pytest.raises(ValueError, match="causal=True needs square"):
        incoming_mass(torch.full((1, 1, 2, 3), 1 / 3), causal=True)
    with pytest.raises(ValueError, match="no real token"):
        incoming_mass(torch.full((1, 1, 2, 2), 0.5), key_valid=torch.zeros(1, 2, dtype=torch.bool), causal=True)


def test_sinks():
    mass = torch.tensor([[[6.0, 0.5, 0.3, 0.2, 5.0]]], dtype=torch.float64)
    sink, frac = attention_sinks(mass, threshold=5.0)
    assert sink.tolist() == [[[True, False, False, False, True]]] and float(frac) == pytest.approx(0.4)
    sink, frac = attention_sinks(mass, threshold=5.0, key_valid=torch.tensor([[True, True, True, True, False]]))
    assert sink.tolist() == [[[True, False, False, False, False]]] and float(frac) == pytest.approx(0.25)
    with pytest.raises(ValueError, match="threshold must be > 1"):
        attention_sinks(mass, threshold=0.5)


def test_causal_sinks_need_a_large_share_of_all_attention():
    # 4 tokens, causal: the first token takes most attention; the last query gives 0.5 to itself
    w = torch.tensor([[1.0, 0, 0, 0], [0.7, 0.3, 0, 0], [0.7, 0.15, 0.15, 0], [0.5, 0, 0, 0.5]],
                     dtype=torch.float64)[None, None]
    causal, plain = incoming_mass(w, causal=True), incoming_mass(w)
    # by hand: u = (1 + 1/2 + 1/3 + 1/4, 1/2 + 1/3 + 1/4, 1/3 + 1/4, 1/4); m = (2.9, 0.45, 0.15, 0.5)
    u = torch.tensor([25 / 12, 13 / 12, 7 / 12, 1 / 4], dtype=torch.float64)
    m = torch.tensor([2.9, 0.45, 0.15, 0.5], dtype=torch.float64)
    torch.testing.assert_close(causal[0, 0], m / u)
    torch.testing.assert_close(plain[0, 0], m)  # N_k / N_q = 1
    assert float(causal[0, 0, 3]) == pytest.approx(2.0)  # the last key: half of its only query's attention
    sink, _ = attention_sinks(causal, threshold=1.3)
    assert sink[0, 0].tolist() == [True, False, False, True]
    sink, frac = attention_sinks(causal, threshold=1.3, plain_mass=plain)
    assert sink[0, 0].tolist() == [True, False, False, False] and float(frac) == pytest.approx(0.25)
    with pytest.raises(ValueError, match="plain_mass must have the shape"):
        attention_sinks(causal, plain_mass=plain[:, :, :2])


def test_causal_entropy_normalization_per_query():
    valid = torch.tensor([[True] * 5, [True] * 3 + [False] * 2])
    w = _causal_rows(2, 2, 5, seed=1, valid=valid)
    got = attention_entropy(w, key_valid=valid, normalized=True, causal=True)
    for e in range(2):
        for h in range(2):
            for i in range(int(valid[e].sum())):
                row = [float(w[e, h, i, j]) for j in range(i + 1)]
                ent = -sum(p * math.log(p) for p in row if p > 0)
                want = 0.0 if i == 0 else ent / math.log(i + 1)
                assert float(got[e, h, i]) == pytest.approx(want, abs=1e-12)
    uniform = torch.ones(4, 4, dtype=torch.float64).tril()
    uniform = (uniform / uniform.sum(-1, keepdim=True))[None, None]
    torch.testing.assert_close(attention_entropy(uniform, normalized=True, causal=True)[0, 0, 1:],
                               torch.ones(3, dtype=torch.float64))


def test_head_clusters_and_mds():
    # two tight groups {0, 2} and {1, 3, 4}, far apart
    points = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.1, 0.2], [10.2, 0.1], [9.9, -0.2]], dtype=torch.float64)
    distance = torch.cdist(points, points)
    assert head_clusters(distance, 2).tolist() == [0, 1, 0, 1, 1]
    assert head_clusters(distance, 5).tolist() == [0, 1, 2, 3, 4]
    assert head_clusters(distance, 1).tolist() == [0] * 5
    embedded = classical_mds(distance, dims=2)
    torch.testing.assert_close(torch.cdist(embedded, embedded), distance, rtol=1e-9, atol=1e-9)  # exact for 2-D
    with pytest.raises(ValueError, match="clusters must be between 1"):
        head_clusters(distance, 6)
    with pytest.raises(ValueError, match="distance must be a square"):
        classical_mds(torch.zeros(3, 2))
