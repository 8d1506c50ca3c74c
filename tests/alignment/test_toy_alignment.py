"""Spec 9.3 item 6: two trainable linear maps of a shared input (queries and keys), trained only on the
regularizer, bring their clouds together: the model-free MMD between them drops by a large factor."""

import pytest
import torch

from probattn.alignment import AlignmentRegularizer, alignment_distance

HEADS, HEAD_DIM, IN = 2, 8, 8


@pytest.mark.parametrize(("variant", "options", "steps", "lr"), [
    ("ct", {}, 100, 0.03),
    ("gan", {"symmetric": True}, 200, 0.01),
    ("mmd", {}, 150, 0.01),
    ("sinkhorn", {"ot_iters": 20}, 120, 0.03),
])
def test_training_on_the_regularizer_alone_aligns_queries_and_keys(variant, options, steps, lr):
    torch.manual_seed(0)
    to_q, to_k = torch.nn.Linear(IN, HEADS * HEAD_DIM), torch.nn.Linear(IN, HEADS * HEAD_DIM)
    with torch.no_grad():
        to_k.bias += 2.0  # keys start far from the queries
    reg = AlignmentRegularizer(HEAD_DIM, variant=variant, **options)
    opt = torch.optim.Adam([*to_q.parameters(), *to_k.parameters(), *reg.parameters()], lr=lr)

    def clouds(x):
        b, length, _ = x.shape
        split = (b, length, HEADS, HEAD_DIM)
        return to_q(x).view(split).transpose(1, 2), to_k(x).view(split).transpose(1, 2)

    held_out = torch.randn(8, 32, IN)
    valid = torch.ones(8, 32, dtype=torch.bool)
    before = alignment_distance(*clouds(held_out), valid, valid)
    for _ in range(steps):
        loss = reg(*clouds(torch.randn(8, 32, IN)))
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = alignment_distance(*clouds(held_out), valid, valid)
    assert after < before / 5, (before.item(), after.item())
