"""The structured self-attentive sentence embedding of Lin et al. (ICLR 2017), as a text classifier.

    E = embed(input_ids)                       (B, L, embed_dim)
    H = BiLSTM(E)                              (B, L, 2·hidden)   padding packed away
    A = softmax_L(W_s2 · tanh(W_s1 · Hᵀ))      (B, r, L)          r = attention_hops, padding gets 0
    M = A · H                                  (B, r, 2·hidden)
    logits = MLP(flatten(M))                   (B, num_classes)

Each row of ``W_s2 (r, attention_unit)`` scores the tokens for one hop: these rows are the particles of
repulsive attention (An et al. 2020) — ``RepulsiveHeads(model)`` finds them through the ``hops`` adapter.
``penalization`` adds Lin et al.'s redundancy penalty ``P = mean_batch ‖A Aᵀ − I‖_F`` (the Frobenius norm as in
the authors' code, not squared) times the coefficient; it is returned as ``output.penalty`` (0 when disabled) —
add it to the task loss.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from probattn.metrics import lin_redundancy

__all__ = ["SelfAttentiveClassifier", "SelfAttentiveOutput", "StructuredSelfAttention"]


@dataclass
class SelfAttentiveOutput:
    logits: Tensor  # (B, C)
    attention: Tensor  # A (B, r, L): hop attention over tokens, rows sum to 1 over real tokens
    penalty: Tensor  # scalar: penalization · mean_batch ‖A Aᵀ − I‖_F (0 when penalization = 0)


class StructuredSelfAttention(nn.Module):
    """``A = softmax(W_s2 tanh(W_s1 Hᵀ))`` over real tokens: ``H (B, L, in_dim)``, ``valid (B, L)`` -> ``(B, r, L)``."""

    def __init__(self, in_dim: int, attention_unit: int, hops: int) -> None:
        super().__init__()
        self.hops = hops
        self.w_s1 = nn.Linear(in_dim, attention_unit, bias=False)
        self.w_s2 = nn.Linear(attention_unit, hops, bias=False)

    def forward(self, hidden: Tensor, valid: Tensor) -> Tensor:
        scores = self.w_s2(torch.tanh(self.w_s1(hidden))).transpose(1, 2)  # (B, r, L)
        return scores.masked_fill(~valid[:, None, :], float("-inf")).softmax(dim=-1)


class SelfAttentiveClassifier(nn.Module):
    """BiLSTM + r-hop structured self-attention pooling + MLP classifier (see the module docstring).

    Args:
        vocab_size, num_classes: sizes of the input vocabulary and of the output.
        embed_dim: word vector size. hidden: LSTM size per direction (H has 2·hidden features).
        attention_hops: r, the number of hops (particles for repulsive attention).
        attention_unit: d_a, the width of ``W_s1``. mlp_hidden: hidden width of the classifier MLP.
        dropout: on the embeddings and in the MLP. penalization: coefficient of ``‖A Aᵀ − I‖_F`` (0 disables).
        padding_idx: id of the padding token (its embedding is zero and not trained).
    """

    def __init__(
        self,
        vocab_size: int,
        num_classes: int,
        *,
        embed_dim: int = 300,
        hidden: int = 300,
        attention_hops: int = 30,
        attention_unit: int = 350,
        mlp_hidden: int = 2000,
        dropout: float = 0.3,
        penalization: float = 0.0,
        padding_idx: int = 0,
    ) -> None:
        super().__init__()
        sizes = dict(
            vocab_size=vocab_size,
            num_classes=num_classes,
            embed_dim=embed_dim,
            hidden=hidden,
            attention_hops=attention_hops,
            attention_unit=attention_unit,
            mlp_hidden=mlp_hidden,
        )
        for name, value in sizes.items():
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must lie in [0, 1), got {dropout!r}")
        if not penalization >= 0.0:
            raise ValueError(f"penalization must be >= 0 (0 disables the penalty), got {penalization!r}")
        if not 0 <= padding_idx < vocab_size:
            raise ValueError(f"padding_idx must lie in [0, vocab_size), got {padding_idx!r}")
        self.penalization = penalization
        self.embedding = nn.Embedding(vocab_size, embed_dim, padding_idx=padding_idx)
        self.lstm = nn.LSTM(embed_dim, hidden, batch_first=True, bidirectional=True)
        self.attention = StructuredSelfAttention(2 * hidden, attention_unit, attention_hops)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Sequential(
            nn.Linear(attention_hops * 2 * hidden, mlp_hidden),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(mlp_hidden, num_classes),
        )

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None) -> SelfAttentiveOutput:
        """``input_ids (B, L)`` long, ``attention_mask (B, L)`` bool or 0/1 (1 = real token, right-padded)."""
        if not isinstance(input_ids, Tensor) or input_ids.dim() != 2 or input_ids.is_floating_point():
            raise ValueError("input_ids must be an integer tensor (batch, length)")
        valid = self._valid(input_ids, attention_mask)
        lengths = valid.sum(dim=1)
        embedded = self.dropout(self.embedding(input_ids))
        packed = pack_padded_sequence(embedded, lengths.cpu(), batch_first=True, enforce_sorted=False)
        hidden, _ = pad_packed_sequence(
            self.lstm(packed)[0], batch_first=True, total_length=input_ids.shape[1]
        )
        attention = self.attention(hidden, valid)  # (B, r, L)
        pooled = (attention @ hidden).flatten(1)  # (B, r·2·hidden)
        logits = self.classifier(self.dropout(pooled))
        if self.penalization > 0:
            penalty = self.penalization * lin_redundancy(attention[:, :, None, :]).mean()
        else:
            penalty = logits.new_zeros(())
        return SelfAttentiveOutput(logits, attention, penalty)

    @staticmethod
    def _valid(input_ids: Tensor, attention_mask: Tensor | None) -> Tensor:
        if attention_mask is None:
            return torch.ones_like(input_ids, dtype=torch.bool)
        if attention_mask.shape != input_ids.shape:
            raise ValueError(
                f"attention_mask {tuple(attention_mask.shape)} must have the shape of input_ids {tuple(input_ids.shape)}"
            )
        valid = attention_mask.bool()
        lengths = valid.sum(dim=1)
        if bool((lengths == 0).any()):
            raise ValueError("attention_mask: every sequence needs at least one real token (1)")
        positions = torch.arange(valid.shape[1], device=valid.device)
        if not torch.equal(valid, positions[None, :] < lengths[:, None]):
            raise ValueError("attention_mask must be right-padded: real tokens (1) first, then padding (0)")
        return valid
