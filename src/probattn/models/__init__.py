"""Models owned by probattn: the self-attentive classifier (Lin et al. 2017), a Transformer encoder–decoder, a graph
Transformer and an MCAN-style co-attention network for visual question answering."""

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
from probattn.models.vqa import VQABaseline, VQAConfig, VQAOutput, VQATransformer

__all__ = [
    "GraphTransformer",
    "MLPClassifier",
    "SelfAttentiveClassifier",
    "SelfAttentiveOutput",
    "Seq2SeqConfig",
    "Seq2SeqOutput",
    "Seq2SeqTransformer",
    "VQABaseline",
    "VQAConfig",
    "VQAOutput",
    "VQATransformer",
    "attention_modules",
    "collate",
    "label_smoothed_loss",
    "paper_particle_sets",
]
