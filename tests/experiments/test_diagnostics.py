import math

import pytest
import torch

from probattn.data import Encoded
from probattn.experiments.diagnostics import attention_layers, collect_layer_statistics, layer_metrics
from probattn.metrics import AttentionStatistics
from probattn.models.tiny import TinyEncoderClassifier, TinyEncoderConfig


def _encoded(batch=6, length=9, vocab=50, seed=0):
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, vocab, (batch, length), generator=gen)
    lengths = torch.tensor([9, 5, 7, 3, 9, 6])[:batch]
    mask = torch.arange(length)[None, :] < lengths[:, None]
    return Encoded(ids.masked_fill(~mask, 0), mask, 0)


@pytest.mark.parametrize("normalization", ["softmax", "doubly", "hybrid"])
def test_probe_statistics_equal_those_of_the_layers_own_weights(normalization):
    torch.manual_seed(0)
    model = TinyEncoderClassifier(TinyEncoderConfig(vocab_size=50, num_labels=2, max_length=16, embed_dim=16,
                                                    num_heads=4, num_layers=2, normalization=normalization)).eval()
    encoded = _encoded()
    layers = attention_layers(model)
    users_probe = object()  # a probe the user had set is put back afterwards
    layers[1].probattn_probe = users_probe
    got = collect_layer_statistics(model, encoded, batch_size=4)
    assert layers[1].probattn_probe is users_probe and not hasattr(layers[0], "probattn_probe")
    del layers[1].probattn_probe

    # reference: ask each layer for its own per-head weights (need_weights=True) on the same inputs
    expected = [AttentionStatistics(4, thresholds=(0.1, 0.01)) for _ in layers]

    current = {}

    def hook(stats):
        def fn(module, args, kwargs, output):
            kwargs = {**kwargs, "need_weights": True, "average_attn_weights": False}
            _, weights = module.forward(*args, **kwargs)
            stats.update_weights(weights.double(), query_valid=current["valid"], key_valid=current["valid"])
        return fn

    handles = [m.register_forward_hook(hook(s), with_kwargs=True) for m, s in zip(layers, expected)]
    with torch.no_grad():
        for start in range(0, 6, 4):
            mask = encoded.attention_mask[start:start + 4]
            width = int(mask.sum(1).max())
            current["valid"] = mask[:, :width]
            model(encoded.input_ids[start:start + 4, :width], mask[:, :width])
    for h in handles:
        h.remove()
    assert len(got) == 2
    for g, e in zip(got, [s.summary() for s in expected]):
        for key in ("explained_away_0.01", "explained_away_0.1", "min_incoming_mass", "attention_similarity"):
            torch.testing.assert_close(torch.tensor(g[key]), torch.tensor(e[key]), atol=1e-5, rtol=1e-5)
    values = layer_metrics(got[0])
    assert 0 <= values["head_diversity"] <= 1 and 0 <= values["explained_away"] <= 1
    assert values["kq_alignment"] >= 0
    assert not any(hasattr(m, "probattn_probe") for m in layers)  # probes removed


def test_doubly_never_explains_away_below_the_guarantee():
    torch.manual_seed(1)
    model = TinyEncoderClassifier(TinyEncoderConfig(vocab_size=50, num_labels=2, max_length=16, embed_dim=16,
                                                    num_heads=2, num_layers=1, normalization="doubly"))
    summary = collect_layer_statistics(model, _encoded())[0]
    # every real key gets >= 1/N of the mass, i.e. normalized mass >= 1/N_q >= 1/9 > 0.1 is not guaranteed,
    # but > 0.01 is: no key is explained away at tau = 0.01
    assert max(summary["explained_away_0.01"]) == 0.0
    assert min(summary["min_incoming_mass"]) >= 1 / 9 - 1e-6


def test_layer_metrics_of_an_empty_summary_are_nan():
    assert all(math.isnan(v) for v in layer_metrics({}).values())


def test_model_without_attention_is_refused():
    with pytest.raises(ValueError, match="no probattn attention layer"):
        collect_layer_statistics(torch.nn.Linear(3, 2), _encoded())
