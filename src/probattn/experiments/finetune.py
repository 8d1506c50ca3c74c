"""``probattn experiment finetune``: the papers' own setting. A pretrained encoder is fine-tuned end to end with
each variant acting on **its own attention layers**, then tested in domain, out of domain, for calibration and
under adversarial attack.

Variants (:data:`VARIANTS`, each a set of :class:`probattn.training.TrainConfig` options over :data:`BASE`):

* ``softmax``: plain fine-tuning of the pretrained model;
* ``alignment`` / ``alignment-gan``: the alignment paper's setting, CT (or GAN) on **every** layer, λ = 0.01;
* ``repulsive``: SVGD on the heads with the released ELECTRA layout (``repulsive_preset="electra_small"``):
  the query/key/value projections of **layer 0 only**, kernel weight α = 0.1, stepsize 0.01, grouped by head
  (the released code's head-grouping bug fixed, docs/repulsive.md);
* ``doubly`` / ``hybrid``: every layer switched with :func:`probattn.hf.convert`, then fine-tuned.

Per run (:func:`measure_run`): accuracy, ECE (15 bins and the paper's 10), NLL and Brier on the test split and
out of domain; head diversity, explained-away share and key/query distance of the fine-tuned model's own layers
(first 256 test texts); the doubly bound ``min m̃_j · N_q`` of every layer (:func:`doubly_bound`); and PWWS /
DeepWordBug attacks on the same ``attack_examples`` test texts for every model
(:mod:`probattn.attacks`), with per-example records (correct / correct under attack) for paired tests.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from probattn.experiments.verdict import Claim

__all__ = ["ATTACK_RECIPES", "BASE", "CLAIMS", "DEFAULT_VARIANTS", "VARIANTS", "attack_metrics", "doubly_bound",
           "finetune_config", "measure_run"]

BASE: dict[str, Any] = {"model": "minilm", "max_length": 64, "batch_size": 16, "lr": 5e-5, "warmup_steps": 30,
                        "max_steps": 400, "dropout": 0.1, "alignment_weight": 0.01}
VARIANTS: dict[str, dict[str, Any]] = {
    "softmax": {"normalization": "softmax"},
    "alignment": {"alignment": "ct"},
    "alignment-gan": {"alignment": "gan"},
    "repulsive": {"repulsive": "svgd", "repulsive_preset": "electra_small"},
    "doubly": {"normalization": "doubly"},
    "hybrid": {"normalization": "hybrid"},
}
DEFAULT_VARIANTS = ("softmax", "alignment", "repulsive", "doubly", "hybrid")
ATTACK_RECIPES = ("pwws", "deepwordbug")
DIAGNOSTIC_EXAMPLES = 256
BOUND_TOLERANCE = 1e-6

CLAIMS = (
    Claim("alignment", "accuracy in domain up", "accuracy_id", "up"),
    Claim("alignment", "ECE in domain down (10 bins)", "ece10_id", "down"),
    Claim("alignment", "ECE out of domain down (10 bins)", "ece10_ood", "down"),
    Claim("alignment", "accuracy out of domain up", "accuracy_ood", "up"),
    *(Claim("alignment", f"share of failed {r} attacks up", f"attack_failed_{r}", "up") for r in ATTACK_RECIPES),
    Claim("repulsive", "head diversity up", "head_diversity", "up"),
    Claim("repulsive", "accuracy in domain up", "accuracy_id", "up"),
    Claim("doubly", "accuracy in domain up", "accuracy_id", "up"),
)


def finetune_config(variant: str, seed: int, overrides: dict[str, Any] | None = None):
    """The :class:`~probattn.training.TrainConfig` of one (variant, seed): :data:`BASE`, ``overrides`` (e.g.
    ``model``, ``max_steps``, ``data``), then the variant's options."""
    from probattn.training import TrainConfig

    if variant not in VARIANTS:
        raise ValueError(f"--variants {variant}: choose from {', '.join(VARIANTS)}")
    return TrainConfig.from_dict({**BASE, **(overrides or {}), **VARIANTS[variant], "seed": seed},
                                 source="experiment finetune")


class _BoundProbe:
    """``min over examples, heads and real keys of m̃_j · N_q`` of one layer, weights recomputed in float64."""

    def __init__(self, module: torch.nn.Module) -> None:
        self.module = module
        self.minimum = math.inf

    def observe(self, q, k, *, query_valid, key_valid) -> None:
        from probattn.experiments.diagnostics import _settings
        from probattn.functional import attention
        from probattn.metrics import incoming_mass, min_incoming_mass

        normalization, alpha, iters = _settings(self.module)
        q64, k64 = q.to(torch.float64), k.to(torch.float64)
        _, weights = attention(q64, k64, k64, normalization=normalization, hybrid_alpha=alpha, sinkhorn_iters=iters,
                               key_padding_mask=key_valid, query_padding_mask=query_valid, return_weights=True)
        mass = incoming_mass(weights, query_valid=query_valid, key_valid=key_valid)
        n_q = (query_valid.sum(-1) if query_valid is not None else
               torch.full(weights.shape[:1], weights.shape[-2])).to(torch.float64)
        per_example = min_incoming_mass(mass, key_valid=key_valid) * n_q[:, None]
        self.minimum = min(self.minimum, float(per_example.min()))


@torch.no_grad()
def doubly_bound(model: torch.nn.Module, encoded, *, max_examples: int = DIAGNOSTIC_EXAMPLES,
                 batch_size: int = 64) -> dict[str, Any]:
    """Check doubly-normalized attention's guarantee on a model's own layers: every real key receives at least
    ``1 / N_k`` of the attention mass (``m̃_j · N_q >= 1``), ``(1 - α) / N_k`` for hybrid (softmax weight α).

    Returns ``{"per_layer": [min m̃_j · N_q], "floors": [guaranteed floor or None (softmax)], "holds": bool or
    None (no layer guarantees anything), "min_ratio": min over guaranteed layers of value / floor}``.
    """
    from probattn.experiments.diagnostics import _batches, _settings, attention_layers
    from probattn.report.collect import attached_probes
    from probattn.training.modeling import forward_logits

    layers = attention_layers(model)
    if not layers:
        raise ValueError(f"{type(model).__name__} has no probattn attention layer to check")
    probes = [_BoundProbe(m) for m in layers]
    with attached_probes(layers, probes):
        for ids, valid in _batches(model, encoded, batch_size, max_examples):
            forward_logits(model, ids, valid)
    floors = []
    for m in layers:
        normalization, alpha, _ = _settings(m)
        floors.append(1.0 if normalization == "doubly" else
                      float(1.0 - float(torch.as_tensor(alpha).min())) if normalization == "hybrid" else None)
    ratios = [p.minimum / f for p, f in zip(probes, floors) if f is not None and f > 0]
    return {"per_layer": [p.minimum for p in probes], "floors": floors,
            "holds": (min(ratios) >= 1 - BOUND_TOLERANCE) if ratios else None,
            "min_ratio": min(ratios) if ratios else math.nan}


def attack_metrics(classifier: Callable[[list[str]], Any], texts: Sequence[str], labels: Sequence[int], *,
                   recipes: Sequence[str] = ATTACK_RECIPES, seed: int = 0, progress: bool = False,
                   desc: str = "attack") -> dict[str, Any]:
    """Attack ``texts`` with each recipe. Returns ``{"metrics": {attack_failed_<r>, attack_success_<r>,
    attack_accuracy_<r>, attack_words_<r>, attack_queries_<r>, attack_attacked_<r>, attack_skipped_<r>},
    "correct_attack_<r>": [1 when the model is still right after the attack, per text], "attacks": {r:
    {"summary", "results": [status, words changed, queries, perturbed text]}}}``."""
    from probattn.attacks.command import run_attacks

    found = run_attacks(classifier, texts, labels, recipes=recipes, seed=seed, progress=progress, desc=desc)
    out: dict[str, Any] = {"metrics": {}, "attacks": {}}
    for name, data in found.items():
        s = data["summary"]
        out["metrics"].update({f"attack_failed_{name}": s["failed_share"], f"attack_success_{name}": s["success_rate"],
                               f"attack_accuracy_{name}": s["accuracy_under_attack"],
                               f"attack_words_{name}": s["words_changed"], f"attack_queries_{name}": s["queries"],
                               f"attack_attacked_{name}": float(s["attacked"]),
                               f"attack_skipped_{name}": float(s["skipped"])})
        out[f"correct_attack_{name}"] = [int(r["status"] == "failed") for r in data["results"]]
        out[f"correct_attacked_{name}"] = [None if r["status"] == "skipped" else int(r["status"] == "failed")
                                           for r in data["results"]]
        out["attacks"][name] = {"summary": s, "results": [
            {k: r[k] for k in ("status", "words_changed", "num_words", "queries", "perturbed_text")}
            for r in data["results"]]}
    return out


def measure_run(config, ood, attack_texts: Sequence[str], attack_labels: Sequence[int], *,
                recipes: Sequence[str] = ATTACK_RECIPES, log: Callable[[str], None] | None = None,
                progress: bool = False, desc: str | None = None) -> dict[str, Any]:
    """Fine-tune one (variant, seed) and measure it (module doc): the record of
    :func:`probattn.experiments.compare.train_and_measure` plus ``ece10_*``, the doubly bound (``bound_*``) and
    the attacks (:func:`attack_metrics`)."""
    from probattn.attacks.classifiers import torch_classifier
    from probattn.experiments.compare import train_and_measure

    def extra(result) -> dict[str, Any]:
        more: dict[str, Any] = {"metrics": {}}
        encoded = result.encode(result.splits.test.texts[:DIAGNOSTIC_EXAMPLES], None)
        bound = doubly_bound(result.model, encoded)
        more["bound"] = bound
        more["metrics"]["bound_min_ratio"] = bound["min_ratio"]
        more["metrics"]["bound_holds"] = math.nan if bound["holds"] is None else float(bound["holds"])
        if recipes:
            classifier = torch_classifier(result.model, result.encode, batch_size=config.eval_batch_size)
            found = attack_metrics(classifier, attack_texts, attack_labels, recipes=recipes, seed=config.seed,
                                   progress=progress, desc=desc or "attack")
            more["metrics"].update(found.pop("metrics"))
            more.update(found)
        return more

    return train_and_measure(config, ood, log=log, progress=progress, desc=desc, extra=extra)


def attack_subset(test, examples: int | None) -> tuple[list[str], list[int], list[int]]:
    """``(texts, labels, indices)`` of the fixed random subset of the test split every model is attacked on."""
    from probattn.attacks.command import attack_indices

    keep = attack_indices(len(test), examples)
    return [test.texts[i] for i in keep], [int(test.labels[i]) for i in keep], keep


def bag_of_words_attacks(splits, texts: Sequence[str], labels: Sequence[int], *,
                         recipes: Sequence[str] = ATTACK_RECIPES, progress: bool = False) -> dict[str, Any]:
    """The bag-of-words + LR baseline attacked on the same texts (the floor a reader compares against)."""
    from probattn.experiments.baselines import fit_bag_of_words

    predict = fit_bag_of_words(splits)
    return attack_metrics(lambda batch: np.asarray(predict(batch)), texts, labels, recipes=recipes, progress=progress,
                          desc="bag of words + LR")
