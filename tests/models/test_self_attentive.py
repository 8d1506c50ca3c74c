"""Self-attentive sentence embedding (Lin et al. 2017): shapes, padding, penalty, validation, learning."""

from __future__ import annotations

import pytest
import torch

from probattn.models import SelfAttentiveClassifier
from probattn.repulsive import RepulsiveHeads

SIZES = dict(embed_dim=8, hidden=6, attention_hops=3, attention_unit=5, mlp_hidden=10, dropout=0.0)


def model(**kwargs) -> SelfAttentiveClassifier:
    torch.manual_seed(0)
    return SelfAttentiveClassifier(40, 3, **(SIZES | kwargs)).eval()


def test_shapes_and_attention_over_real_tokens_only():
    ids = torch.tensor([[5, 6, 7, 8], [9, 10, 0, 0]])
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]])
    out = model()(ids, mask)
    assert out.logits.shape == (2, 3) and out.attention.shape == (2, 3, 4)
    torch.testing.assert_close(out.attention.sum(-1), torch.ones(2, 3))
    assert (out.attention[1, :, 2:] == 0).all()
    assert out.penalty.item() == 0.0


def test_padding_does_not_change_the_output():
    m = model()
    short = m(torch.tensor([[5, 6, 7]]), torch.ones(1, 3))
    padded = m(torch.tensor([[5, 6, 7, 3, 3]]), torch.tensor([[1, 1, 1, 0, 0]]))  # pad ids are ignored too
    torch.testing.assert_close(padded.logits, short.logits)
    torch.testing.assert_close(padded.attention[..., :3], short.attention)


def test_penalty_is_the_frobenius_norm_of_a_at_minus_identity():
    m = model(penalization=0.5)
    ids = torch.tensor([[5, 6, 7, 8], [9, 10, 11, 0]])
    out = m(ids, (ids != 0).long())
    a = out.attention.double()
    gram = a @ a.transpose(1, 2) - torch.eye(3, dtype=torch.float64)
    expected = 0.5 * gram.flatten(1).norm(dim=1).mean()
    torch.testing.assert_close(out.penalty.double(), expected, rtol=1e-5, atol=1e-7)
    out.penalty.backward()
    assert m.attention.w_s2.weight.grad.abs().sum() > 0


@pytest.mark.parametrize(
    ("mask", "message"),
    [
        (torch.tensor([[1, 1, 0], [0, 0, 0]]), "at least one real token"),
        (torch.tensor([[0, 1, 1], [1, 1, 1]]), "right-padded"),
        (torch.ones(2, 4), "shape"),
    ],
)
def test_bad_masks_are_named(mask, message):
    with pytest.raises(ValueError, match=message):
        model()(torch.ones(2, 3, dtype=torch.long), mask)


def test_bad_sizes_are_named():
    with pytest.raises(ValueError, match="attention_hops"):
        SelfAttentiveClassifier(10, 2, attention_hops=0)
    with pytest.raises(ValueError, match="penalization"):
        SelfAttentiveClassifier(10, 2, penalization=-1.0)
    with pytest.raises(ValueError, match="input_ids"):
        model()(torch.ones(2, 3))


@pytest.mark.parametrize("alpha", [None, 0.01])
def test_learns_a_keyword_task_with_and_without_repulsion(alpha):
    """Label = whether token 3 occurs; 40 Adam steps reach ≥ 90% training accuracy either way."""
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(4, 40, (64, 7), generator=gen)
    labels = torch.randint(0, 2, (64,), generator=gen)
    ids[labels == 1, torch.randint(0, 7, (int(labels.sum()),), generator=gen)] = 3
    m = SelfAttentiveClassifier(40, 2, **SIZES)
    optimizer = torch.optim.Adam(m.parameters(), lr=1e-2)
    if alpha is not None:
        RepulsiveHeads(m, alpha=alpha).attach(optimizer)
    for _ in range(40):
        loss = torch.nn.functional.cross_entropy(m(ids).logits, labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    accuracy = (m.eval()(ids).logits.argmax(-1) == labels).float().mean().item()
    assert accuracy >= 0.9
