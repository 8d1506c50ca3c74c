"""Alignment on a tiny randomly initialised Hugging Face BERT (no download): gradient checkpointing."""

import pytest
import torch

transformers = pytest.importorskip("transformers")

from probattn.alignment import alignment_loss, attached_regularizers  # noqa: E402
from probattn.hf import convert  # noqa: E402

pytestmark = pytest.mark.hf


def _bert():
    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=4,
                                     intermediate_size=20, num_labels=2, hidden_dropout_prob=0.0,
                                     attention_probs_dropout_prob=0.0)
    model = transformers.BertForSequenceClassification(config)
    return convert(model, normalization="softmax", alignment={"variant": "ct", "weight": 0.5}).train()


def test_gradient_checkpointing_gives_the_same_gradients_over_two_steps():
    ids = torch.randint(0, 50, (3, 9), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    mask[0, 6:] = 0
    labels = torch.tensor([0, 1, 1])

    def grads(checkpointing):
        model = _bert()
        if checkpointing:
            model.activation_checkpointing_enable()
        for _ in range(2):  # a recomputation that stored its term would break the second step
            model.zero_grad()
            out = model(input_ids=ids, attention_mask=mask, labels=labels)
            align, stats = alignment_loss(model)
            (out.loss + align).backward()
            assert len(stats.terms) == 2
        assert all(not r.pop_observations() for r in attached_regularizers(model))
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    plain, checkpointed = grads(False), grads(True)
    assert plain.keys() == checkpointed.keys()
    for name, grad in plain.items():
        torch.testing.assert_close(checkpointed[name], grad, rtol=1e-5, atol=1e-7, msg=name)
