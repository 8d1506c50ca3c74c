"""Small models owned by probattn."""

from probattn.models.graph import GraphTransformer, MLPClassifier
from probattn.models.self_attentive import SelfAttentiveClassifier, SelfAttentiveOutput

__all__ = ["GraphTransformer", "MLPClassifier", "SelfAttentiveClassifier", "SelfAttentiveOutput"]
