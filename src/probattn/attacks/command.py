"""``probattn attack``: attack a trained classifier with PWWS and DeepWordBug and count the outcomes.

``--model`` is a ``probattn train --output`` folder or a Hugging Face sequence-classification folder. The
attacked texts are a fixed random subset (``--examples``, seed 0: the same texts for every model) of the test
split of ``--data`` (default: the data the probattn run was trained on, else Rotten Tomatoes split by movie).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from probattn.attacks import RECIPES, Attack, AttackResult, summarize

__all__ = ["add_arguments", "attack_indices", "label_mapping", "run", "run_attacks"]


def attack_indices(size: int, examples: int | None, seed: int = 0) -> list[int]:
    """A fixed random subset of ``examples`` indices of a split of ``size`` texts (sorted; all when None or
    larger than the split): every model is attacked on the same texts."""
    if examples is not None and (isinstance(examples, bool) or not isinstance(examples, int) or examples < 1):
        raise ValueError(f"--examples {examples!r}: must be a positive integer")
    if examples is None or examples >= size:
        return list(range(size))
    return sorted(np.random.default_rng(seed).permutation(size)[:examples].tolist())


def label_mapping(model_labels: Sequence[str], data_labels: Sequence[str]) -> list[int]:
    """``mapping[data label id] = model label id``: by name when the names match, by position when the model's
    names are Hugging Face's defaults (``LABEL_0``, ``0``, ...); anything else is an error naming both."""
    model_labels, data_labels = [str(x) for x in model_labels], [str(x) for x in data_labels]
    if set(data_labels) <= set(model_labels):
        return [model_labels.index(name) for name in data_labels]
    default = [f"LABEL_{i}" for i in range(len(model_labels))], [str(i) for i in range(len(model_labels))]
    if model_labels in default and len(model_labels) == len(data_labels):
        return list(range(len(data_labels)))
    raise ValueError(f"the model's labels {model_labels} do not match the data's labels {data_labels}")


def run_attacks(classifier: Any, texts: Sequence[str], labels: Sequence[int], *, recipes: Sequence[str],
                seed: int = 0, query_budget: int | None = None, progress: bool = False,
                desc: str = "attack") -> dict[str, dict[str, Any]]:
    """``{recipe: {"summary": AttackSummary dict, "results": [AttackResult dicts]}}`` for each recipe."""
    unknown = [r for r in recipes if r not in RECIPES]
    if unknown or not recipes:
        raise ValueError(f"--recipes {' '.join(unknown) or '(none)'}: choose from {', '.join(RECIPES)}")
    out: dict[str, dict[str, Any]] = {}
    for name in recipes:
        attack = Attack(RECIPES[name](), classifier, query_budget=query_budget, seed=seed)
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=len(texts), desc=f"{desc}: {name}", unit="text", dynamic_ncols=True, leave=False)
        step = None if bar is None else (lambda i, r, bar=bar: bar.update(1))
        results: list[AttackResult] = attack.attack_many(list(texts), list(labels), progress=step)
        if bar is not None:
            bar.close()
        out[name] = {"summary": summarize(results).to_dict(), "results": [r.to_dict() for r in results]}
    return out


def _data(args: argparse.Namespace, info: dict[str, Any]):
    from probattn.training import TrainConfig
    from probattn.training.data import load_ood, load_splits

    saved = info.get("config") or {}
    values = {"data": args.data or saved.get("data", "rotten_tomatoes"),
              "text_column": args.text_column if args.data else saved.get("text_column", args.text_column),
              "label_column": args.label_column if args.data else saved.get("label_column", args.label_column),
              "data_seed": saved.get("data_seed", 0) if not args.data else 0}
    if args.split == "ood":
        values["ood"] = args.ood or "amazon"
    config = TrainConfig.from_dict(values, source="probattn attack")
    splits = load_splits(config)
    if args.split == "ood":
        return load_ood(config, splits.train.label_names)
    return getattr(splits, args.split)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.ArgumentDefaultsHelpFormatter
    parser.add_argument("--model", required=True, metavar="DIR",
                        help="a `probattn train --output` folder or a Hugging Face sequence-classification folder")
    parser.add_argument("--data", default=None, help="rotten_tomatoes or a CSV/JSONL/Parquet file (default: the "
                        "probattn run's own data, else rotten_tomatoes)")
    parser.add_argument("--text-column", default=None, help="--data FILE: the text column")
    parser.add_argument("--label-column", default=None, help="--data FILE: the label column")
    parser.add_argument("--split", default="test", choices=["test", "validation", "ood"],
                        help="which texts to attack (ood: --ood, default the Amazon reviews)")
    parser.add_argument("--ood", default=None, help="--split ood: 'amazon' or a file with the same columns")
    parser.add_argument("--recipes", nargs="+", default=list(RECIPES), help=f"from {', '.join(RECIPES)}")
    parser.add_argument("--examples", type=int, default=200,
                        help="attack a fixed random subset of this many texts (0 = all)")
    parser.add_argument("--query-budget", type=int, default=None, help="model queries per attack (None = no limit)")
    parser.add_argument("--max-length", type=int, default=128, help="tokens per text (Hugging Face folders)")
    parser.add_argument("--seed", type=int, default=0, help="seed of DeepWordBug's random character edits")
    parser.add_argument("--output", default=None, help="write every result and the summary to this JSON file")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --output file")
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def run(args: argparse.Namespace) -> int:
    from probattn.attacks.classifiers import load_classifier
    from probattn.io import write_json

    output = Path(args.output) if args.output else None
    if output is not None and output.exists() and not args.overwrite:
        raise ValueError(f"--output {output} exists; pass --overwrite to replace it or choose another file")
    if args.data is not None and args.data != "rotten_tomatoes" and (args.text_column is None
                                                                     or args.label_column is None):
        raise ValueError(f"--data {args.data}: also give --text-column and --label-column")
    classifier, model_labels, info = load_classifier(args.model, max_length=args.max_length, device=args.device)
    data = _data(args, info)
    mapping = label_mapping(model_labels, data.label_names)
    keep = attack_indices(len(data), args.examples or None)
    texts = [data.texts[i] for i in keep]
    labels = [mapping[data.labels[i]] for i in keep]
    attacks = run_attacks(classifier, texts, labels, recipes=args.recipes, seed=args.seed,
                          query_budget=args.query_budget, progress=not args.no_progress)
    print(f"{'recipe':<12} {'attacked':>8} {'skipped':>8} {'succeeded':>9} {'failed':>7} {'failed %':>8} "
          f"{'acc. under attack':>17} {'words changed':>13} {'queries':>8}")
    for name, found in attacks.items():
        s = found["summary"]
        print(f"{name:<12} {s['attacked']:>8} {s['skipped']:>8} {s['succeeded']:>9} {s['failed']:>7} "
              f"{100 * s['failed_share']:>8.1f} {s['accuracy_under_attack']:>17.3f} {s['words_changed']:>13.2f} "
              f"{s['queries']:>8.1f}")
    if output is not None:
        write_json(output, {"model": str(args.model), "command": " ".join(["probattn", *sys.argv[1:]]),
                            "split": args.split, "indices": keep, "attacks": attacks})
        print(f"wrote {output}")
    return 0


