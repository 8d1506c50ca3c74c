"""Small models owned by probattn."""

from probattn.models.self_attentive import SelfAttentiveClassifier, SelfAttentiveOutput

__all__ = ["SelfAttentiveClassifier", "SelfAttentiveOutput"]
