"""Explaining away: the hand-checkable 3x3 example of the doubly-normalized notes (§8) and padding rules."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from probattn.metrics import explained_away_fraction, incoming_mass, min_incoming_mass

# exp(S) of Example 1; SNAS rows are K0 / rowsum, DNAS rows are the exact fractions of §8.
K0 = torch.tensor([[8.0, 4, 1], [4, 8, 1], [8, 4, 2]], dtype=torch.float64)
SNAS = (K0 / K0.sum(-1, keepdim=True))[None, None]
DNAS = torch.tensor(
    [[4 / 9, 5 / 18, 5 / 18], [4 / 19, 10 / 19, 5 / 19], [8 / 23, 5 / 23, 10 / 23]], dtype=torch.float64
)[None, None]


def test_softmax_example_masses():
    mass = incoming_mass(SNAS)  # Nq = Nk, so normalized = raw column sums
    expected = torch.tensor([136 / 91, 110 / 91, 27 / 91], dtype=torch.float64)
    torch.testing.assert_close(mass[0, 0], expected)
    assert [round(x, 4) for x in mass[0, 0].tolist()] == [1.4945, 1.2088, 0.2967]
    assert min_incoming_mass(mass).item() == pytest.approx(27 / 91)
    assert explained_away_fraction(mass, threshold=0.3).item() == pytest.approx(1 / 3)
    assert explained_away_fraction(mass, threshold=0.1).item() == 0.0


def test_doubly_example_masses_respect_bound():
    mass = incoming_mass(DNAS)
    expected = torch.tensor([3944 / 3933, 8035 / 7866, 7675 / 7866], dtype=torch.float64)
    torch.testing.assert_close(mass[0, 0], expected)
    assert min_incoming_mass(mass).item() >= 1 / 3


def test_explained_away_extreme():
    # scores [[15,0,0]]*3 (notes §2.2): keys 1 and 2 get ~9e-7 of the mass
    s = torch.tensor([[15.0, 0, 0]] * 3, dtype=torch.float64)
    mass = incoming_mass(torch.softmax(s, -1)[None, None])
    assert explained_away_fraction(mass, threshold=0.01).item() == pytest.approx(2 / 3)
    assert min_incoming_mass(mass).item() == pytest.approx(3 * math.exp(-15) / (1 + 2 * math.exp(-15)))


def test_padding_is_ignored_and_normalization_uses_real_counts():
    # example 0: 2 real queries, 3 real keys of 4; the padded query row and padded key are garbage
    w = torch.rand(1, 2, 4, 4, dtype=torch.float64)
    w[..., 3] = 0.0
    w = w / w.sum(-1, keepdim=True)
    qv = torch.tensor([[True, True, False, False]])
    kv = torch.tensor([[True, True, True, False]])
    mass = incoming_mass(w, query_valid=qv, key_valid=kv)
    expected = w[:, :, :2, :].sum(2) * 3 / 2
    expected[..., 3] = 0
    torch.testing.assert_close(mass, expected)
    torch.testing.assert_close(mass[..., :3].mean(-1), torch.ones(1, 2, dtype=torch.float64))  # fair share
    frac = explained_away_fraction(mass, threshold=0.5, key_valid=kv)  # padded key (mass 0) not counted
    assert frac.shape == (1, 2) and bool((frac < 1).all())
    assert min_incoming_mass(mass, key_valid=kv).min().item() > 0


def test_bad_input_names_the_argument():
    with pytest.raises(ValueError, match="weights"):
        incoming_mass(torch.rand(3, 3))
    with pytest.raises(ValueError, match="key_valid"):
        incoming_mass(torch.rand(1, 1, 3, 3), key_valid=torch.ones(1, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="no real token"):
        incoming_mass(torch.rand(1, 1, 3, 3), key_valid=torch.zeros(1, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match="threshold"):
        explained_away_fraction(torch.rand(1, 1, 3), threshold=0)
    with pytest.raises(ValueError, match="key_valid"):
        explained_away_fraction(torch.rand(1, 1, 3), threshold=0.1, key_valid=torch.ones(1, 4, dtype=torch.bool))


def test_key_valid_as_0_1_integers_reads_like_bool():
    """Every function here reads padding masks through probattn.masks: 0/1 integers work everywhere."""
    w = torch.rand(2, 2, 3, 4).softmax(-1)
    as_bool = torch.tensor([[True, True, True, False], [True, True, False, False]])
    mass = incoming_mass(w, key_valid=as_bool.long())
    torch.testing.assert_close(mass, incoming_mass(w, key_valid=as_bool))
    for fn in (lambda kv: explained_away_fraction(mass, threshold=0.5, key_valid=kv),
               lambda kv: min_incoming_mass(mass, key_valid=kv)):
        torch.testing.assert_close(fn(as_bool.long()), fn(as_bool))


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 3), st.integers(1, 3), st.integers(1, 6), st.integers(1, 6), st.integers(0, 10_000))
def test_mass_has_mean_one_and_doubly_bound(b, h, lq, lk, seed):
    g = torch.Generator().manual_seed(seed)
    qv = torch.rand(b, lq, generator=g) < 0.7
    kv = torch.rand(b, lk, generator=g) < 0.7
    qv[:, 0] = True
    kv[:, 0] = True
    scores = 4 * torch.randn(b, h, lq, lk, generator=g, dtype=torch.float64)
    scores = scores.masked_fill(~kv[:, None, None, :], float("-inf"))
    softmax = torch.softmax(scores, -1)
    mass = incoming_mass(softmax, query_valid=qv, key_valid=kv)
    mean = mass.sum(-1) / kv.sum(-1, keepdim=True)
    torch.testing.assert_close(mean, torch.ones_like(mean))  # fair share on average, padding excluded
    # doubly-normalized (column softmax over real queries, then rows): m̃_j >= 1 / Nq for every real key
    col = scores.masked_fill(~qv[:, None, :, None], float("-inf")).softmax(dim=2).nan_to_num(0.0)
    doubly = col / col.sum(-1, keepdim=True)
    dmass = incoming_mass(doubly, query_valid=qv, key_valid=kv)
    bound = 1 / qv.sum(-1).double()
    assert bool((min_incoming_mass(dmass, key_valid=kv) >= bound[:, None] - 1e-9).all())
