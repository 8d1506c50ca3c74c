"""Experiments: ``probattn compare`` (train and compare attention variants over seeds) and
``probattn experiment NAME`` (the papers' experiments at CPU scale). See ``docs/experiments.md``."""
