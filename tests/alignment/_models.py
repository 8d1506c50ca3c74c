"""A tiny encoder of probattn self-attention blocks and a batch for model-level alignment tests."""

from __future__ import annotations

import torch
from torch import nn

from probattn.nn import MultiheadAttention


class TinyEncoder(nn.Module):
    """Embedding -> a stack of probattn self-attention blocks -> mean pool -> 2 classes."""

    def __init__(self, layers=2, width=16, heads=4, shared=False, normalization="softmax"):
        super().__init__()
        self.embed = nn.Linear(5, width)

        def block():
            return MultiheadAttention(width, heads, batch_first=True, normalization=normalization)

        one = block()
        self.blocks = nn.ModuleList([one if shared else block() for _ in range(layers)])
        self.head = nn.Linear(width, 2)

    def forward(self, x, key_padding_mask=None):
        h = self.embed(x)
        for block in self.blocks:
            h = h + block(h, h, h, key_padding_mask=key_padding_mask, need_weights=False)[0]
        return self.head(h.mean(1))


def tiny_model(seed=0, **kw):
    torch.manual_seed(seed)
    return TinyEncoder(**kw).double()


def tiny_batch(n=4, length=7, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, length, 5, generator=g, dtype=torch.float64), torch.randint(0, 2, (n,), generator=g)
