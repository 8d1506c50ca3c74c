"""Models owned by probattn: the self-attentive classifier (Lin et al. 2017) and a Transformer encoder–decoder."""

from probattn.models.graph import GraphTransformer, MLPClassifier
from probattn.models.self_attentive import SelfAttentiveClassifier, SelfAttentiveOutput
from probattn.models.seq2seq import (
    Seq2SeqConfig,
    Seq2SeqOutput,
    Seq2SeqTransformer,
    attention_modules,
    collate,
    label_smoothed_loss,
    paper_particle_sets,
)

__all__ = [
    "GraphTransformer",
    "MLPClassifier",
    "SelfAttentiveClassifier",
    "SelfAttentiveOutput",
    "Seq2SeqConfig",
    "Seq2SeqOutput",
    "Seq2SeqTransformer",
    "attention_modules",
    "collate",
    "label_smoothed_loss",
    "paper_particle_sets",
]
