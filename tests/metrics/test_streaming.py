"""Streaming accumulators agree with the one-shot metrics on the concatenated data."""

import pytest
import torch

from probattn.metrics import (
    AttentionStatistics,
    attention_entropy,
    explained_away_fraction,
    head_js_divergence,
    incoming_mass,
    qk_alignment,
)


def _batch(b, h, n, seed):
    g = torch.Generator().manual_seed(seed)
    valid = torch.ones(b, n, dtype=torch.bool)
    valid[0, n - 2 :] = False  # first example padded
    scores = 3 * torch.randn(b, h, n, n, generator=g, dtype=torch.float64)
    scores = scores.masked_fill(~valid[:, None, None, :], float("-inf"))
    return torch.softmax(scores, -1), valid


def test_attention_statistics_match_one_shot():
    stats = AttentionStatistics(3, thresholds=(0.5, 0.1))
    batches = [_batch(2, 3, 6, 0), _batch(3, 3, 6, 1)]
    for w, valid in batches:
        stats.update_weights(w, query_valid=valid, key_valid=valid)
    summary = stats.summary()
    w = torch.cat([b[0] for b in batches])
    valid = torch.cat([b[1] for b in batches])
    mass = incoming_mass(w, query_valid=valid, key_valid=valid)
    n_k = valid.sum(-1, keepdim=True).double()
    pooled = (explained_away_fraction(mass, threshold=0.5, key_valid=valid) * n_k).sum(0) / n_k.sum()
    assert summary["explained_away_0.5"] == pytest.approx(pooled.tolist())
    js = head_js_divergence(w, query_valid=valid).mean(0)
    torch.testing.assert_close(torch.tensor(summary["attention_similarity"], dtype=torch.float64), 1 - js)
    ent = attention_entropy(w, key_valid=valid, normalized=True)
    assert summary["entropy"] == pytest.approx(((ent * valid[:, None]).sum((0, 2)) / valid.sum()).tolist())
    assert summary["examples"] == 5 and sum(summary["incoming_mass_histogram"]["counts"]) == 3 * int(valid.sum())
    assert stats.example_map.shape == (3, 4, 4)  # first example: 4 real tokens
    assert "qk_mmd2" not in summary and "output_cka" not in summary


def test_garbage_in_padding_is_ignored():
    w, valid = _batch(2, 3, 6, 2)
    clean = AttentionStatistics(3)
    clean.update_weights(w, query_valid=valid, key_valid=valid)
    dirty = w.clone()
    dirty[0, :, 4:, :] = float("nan")  # padded query rows of example 0
    noisy = AttentionStatistics(3)
    noisy.update_weights(dirty, query_valid=valid, key_valid=valid)
    assert noisy.summary() == clean.summary()


def test_qk_and_outputs_accumulate():
    stats = AttentionStatistics(2)
    q, k = torch.randn(2, 2, 5, 4), torch.randn(2, 2, 5, 4)
    stats.update_qk(q, k)
    stats.update_qk(q, k)
    mmd, _ = qk_alignment(q, k)
    assert stats.summary()["qk_mmd2"] == pytest.approx(mmd.double().mean(0).tolist(), rel=1e-5)
    out = torch.randn(2, 5, 2, 3)
    stats.update_head_outputs(out, valid=torch.ones(2, 5, dtype=torch.bool))
    cka = stats.summary()["output_cka"]
    assert cka[0][0] == pytest.approx(1.0) and 0 <= cka[0][1] <= 1


def test_bad_input():
    stats = AttentionStatistics(2)
    with pytest.raises(ValueError, match="heads"):
        stats.update_weights(torch.full((1, 3, 2, 2), 0.5))
    with pytest.raises(ValueError, match="NaN"):
        stats.update_weights(torch.full((1, 2, 2, 2), float("nan")))
