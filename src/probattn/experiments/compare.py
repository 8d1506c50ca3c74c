"""``probattn compare``: train attention variants over seeds on real data and give a plain answer.

With no arguments: the variants softmax, doubly, hybrid, repulsive (SVGD) and alignment (CT) on Rotten
Tomatoes (split by movie) with 2,000 Amazon Fine Food reviews as the out-of-domain set, 3 seeds each, using
the ``minilm`` preset: two fresh probattn attention layers trained over the frozen token states of the
pretrained all-MiniLM-L6-v2 (computed once and cached on disk, :mod:`probattn.hf.states`), with model
selection on the validation split (the best checkpoint is kept, early stopping with patience). The variants
change exactly those trained attention layers. Measured run time and results: docs/experiments.md.

A study of the runner (:mod:`probattn.experiments.runner`): the runner owns the grid (variants × seeds, and
folds: ``--folds`` defaults to 5-fold cross-validation on a labelled file under 3,000 rows), worker processes,
resume, the statistics, the verdict and the files. This module gives what is compare's own:

1. the data (the fixed split of 0.2.0, or folds of the whole labelled set) and, once, the frozen MiniLM
   states of every text (:meth:`CompareStudy.prepare`);
2. the baselines on each split (majority class, bag of words + LR, frozen MiniLM + LR;
   :mod:`probattn.experiments.baselines`);
3. one (variant, seed[, fold]): :func:`probattn.training.train`, then on the test split and the OOD set
   accuracy, ECE (15 bins), NLL, Brier with per-example scores, reliability data, and on the first 256 test
   texts per layer head diversity, explained-away fractions, keys below the doubly-normalized bound and
   key/query distance (:mod:`probattn.experiments.diagnostics`);
4. a dedicated timing pass (:func:`timing_pass`) after the grid, and the reliability / per-layer / cost
   figures.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import gc
import math
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, ClassVar

import torch

from probattn.benchmarking import _reset_peak_rss, _status_kib
from probattn.experiments.runner import (
    Claim,
    Metric,
    Report,
    RunSpec,
    Split,
    Study,
    Table,
    fold_assignment,
    fold_indices,
    main,
    run_study,
)
from probattn.training.presets import DEFAULT_PRESET, PRESET_HELP, PRESETS

__all__ = ["ACCURACY", "BRIER", "CLAIMS", "DEFAULT_PRESET", "ECE", "NLL", "PRESETS", "TABLES", "VARIANTS",
           "CompareStudy", "Metric", "Table", "add_arguments", "compare", "evaluation_data", "peak_memory", "run", "timing_pass", "train_and_measure"]

# variant name -> TrainConfig options that make it
VARIANTS: dict[str, dict[str, Any]] = {
    "softmax": {"normalization": "softmax"},
    "doubly": {"normalization": "doubly"},
    "hybrid": {"normalization": "hybrid"},
    "sinkhorn": {"normalization": "sinkhorn"},
    "repulsive": {"repulsive": "svgd"},
    "repulsive-spos": {"repulsive": "spos"},
    "alignment": {"alignment": "ct"},
    "alignment-gan": {"alignment": "gan"},
}
DEFAULT_VARIANTS = ("softmax", "doubly", "hybrid", "repulsive", "alignment")
DEFAULT_SEEDS = (0, 1, 2)
DIAGNOSTIC_EXAMPLES = 256
# model selection of the compare presets (flags --eval-every / --patience win; 0 turns it off). The default
# validates about twice per epoch, every 25 to 100 steps (auto_eval_every): on Rotten Tomatoes (279 steps per
# epoch) 3 validations of 1,314 texts per run, on an 800-row file every 25 steps (17 steps per epoch).
SELECTION = {"eval_every": "about twice per epoch (25-100 steps)", "patience": 4}


def auto_eval_every(train_examples: int, batch_size: int) -> int:
    """Validation interval of the default model selection: half an epoch, at least 25 and at most 100 steps."""
    return max(25, min(100, train_examples // batch_size // 2))

ACCURACY = Metric("accuracy", "accuracy", True, bounds=(0.0, 1.0), score="correct")
ECE = Metric("ece", "ECE", False, bounds=(0.0, 1.0))
NLL = Metric("nll", "NLL", False, bounds=(0.0, math.inf), score="nll")
BRIER = Metric("brier", "Brier", False, bounds=(0.0, 2.0), score="brier")
CLASSIFICATION = (ACCURACY, ECE, NLL, BRIER)
ATTENTION = (
    Metric("head_diversity", "head diversity (JS, bits)", True, bounds=(0.0, 1.0)),
    Metric("below_bound", "keys below 1/N of fair share", False, 4, bounds=(0.0, 1.0)),
    Metric("explained_away_0.1", "explained away (m̃<0.1)", False, bounds=(0.0, 1.0)),
    Metric("explained_away", "explained away (m̃<0.01)", False, bounds=(0.0, 1.0)),
    Metric("kq_alignment", "k/q distance (MMD²)", False, 4, bounds=(0.0, math.inf)),
)
COST = (Metric("ms_per_step", "wall ms / step", False, 1, (0.0, math.inf)),
        Metric("cpu_ms_per_step", "CPU ms / step", False, 1, (0.0, math.inf)),
        Metric("peak_memory_mb", "peak memory (MiB)", False, 1, (0.0, math.inf)))
TABLES = (Table("In domain: test split", CLASSIFICATION, "test"),
          Table("Out of domain", CLASSIFICATION, "ood"),
          Table(f"Attention (first {DIAGNOSTIC_EXAMPLES} test texts, mean over layers)", ATTENTION, None))
CLAIMS = (
    Claim("doubly", "no key below 1/N of its fair share (the guaranteed bound, m̃ ≥ 1/N_q)", "below_bound",
          "at_most", None, 0.0, 4),
    Claim("doubly", "accuracy in domain up", "accuracy", "up"),
    Claim("doubly", "explained-away tokens (m̃<0.1) down (secondary: a threshold, not the bound)",
          "explained_away_0.1", "down", None),
    Claim("hybrid", "accuracy in domain up", "accuracy", "up"),
    Claim("hybrid", "explained-away tokens (m̃<0.1) down", "explained_away_0.1", "down", None),
    Claim("repulsive", "head diversity up", "head_diversity", "up", None),
    Claim("repulsive", "accuracy in domain up", "accuracy", "up"),
    Claim("repulsive", "calibration: ECE in domain down", "ece", "down"),
    Claim("alignment", "key/query distance (MMD²) down", "kq_alignment", "down", None, digits=4),
    Claim("alignment", "ECE in domain down", "ece", "down"),
    Claim("alignment", "ECE out of domain down", "ece", "down", "ood"),
    Claim("alignment", "accuracy out of domain up", "accuracy", "up", "ood"),
)


@contextlib.contextmanager
def peak_memory(device: torch.device) -> Iterator[dict[str, float]]:
    """Measure the peak memory of the enclosed code, in MiB, into the yielded dict's ``"mb"``.

    CUDA: ``torch.cuda.max_memory_allocated`` after resetting the peak. CPU (Linux): the peak resident set
    size above the level at entry (free heap memory is first returned to the OS with ``malloc_trim`` and the
    kernel's high-water mark reset through ``/proc/self/clear_refs``). NaN where neither is available.
    """
    box = {"mb": math.nan}
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        yield box
        box["mb"] = torch.cuda.max_memory_allocated(device) / 2**20
        return
    start = None
    gc.collect()
    with contextlib.suppress(OSError):  # not Linux/glibc, or /proc not writable: leave NaN
        ctypes.CDLL("libc.so.6").malloc_trim(0)
        start = _status_kib("VmRSS") if _reset_peak_rss() else None
    yield box
    end = _status_kib("VmHWM")
    if start is not None and end is not None:
        box["mb"] = (end - start) / 1024


def train_and_measure(config, splits, ood, *, log: Callable[[str], None] | None = None, progress: bool = False,
                      desc: str | None = None, extra: Callable[[Any], dict[str, Any]] | None = None
                      ) -> dict[str, Any]:
    """Train one run on ``splits`` and measure it; returns the runner's run record.

    ``extra(result)`` (the trained :class:`probattn.training.RunResult`, model in eval mode) may measure more
    (``experiment finetune``: attacks): its ``"sets"`` and ``"metrics"`` join the record's, its other keys join
    the record."""
    from probattn.experiments.diagnostics import collect_layer_statistics, layer_metrics
    from probattn.metrics.calibration import measure_probabilities
    from probattn.training import train

    result = train(config, progress=progress, log=log, desc=desc, evaluate=False, splits=splits)
    record: dict[str, Any] = {"sets": {}, "reliability": {}}
    for name, key, data in (("test", "in_domain", splits.test), ("ood", "ood", ood)):
        if data is None:
            continue
        predictions = result.predict(data)
        measured = measure_probabilities(predictions.probs.numpy(), predictions.labels.tolist())
        record["sets"][name] = {"metrics": measured["metrics"], "scores": measured["scores"]}
        record["reliability"][key] = measured["reliability"]
    summaries = collect_layer_statistics(result.model, result.encode(splits.test.texts[:DIAGNOSTIC_EXAMPLES], None),
                                         max_examples=DIAGNOSTIC_EXAMPLES)
    per_layer_values = [layer_metrics(s) for s in summaries]
    per_layer = {k: [v[k] for v in per_layer_values] for k in per_layer_values[0]} if per_layer_values else {}
    metrics = {}
    for key, values in per_layer.items():
        finite = [v for v in values if math.isfinite(v)]
        metrics[key] = sum(finite) / len(finite) if finite else math.nan
    train_info = result.metrics["train"]
    if extra is not None:
        more = dict(extra(result))
        metrics.update(more.pop("metrics", {}))
        record["sets"].update(more.pop("sets", {}))
        record.update(more)
    return {"metrics": metrics, **record, "per_layer": per_layer, "config": config.to_dict(),
            "epochs": train_info["epochs"], "steps_trained": train_info["steps_trained"],
            "selection": train_info["selection"], "final_loss": train_info["final_loss"],
            **({"adapt": train_info["adapt"]} if train_info.get("adapt") else {})}


def timing_pass(configs: dict[str, Any], *, rounds: int, steps: int, splits=None,
                progress: Callable[[str], None] | None = None) -> dict[str, list[dict[str, float]]]:
    """Time ``steps`` training steps of every variant, interleaved: round 1 runs each variant once, then round 2...

    ``configs``: ``{variant: TrainConfig}``. Returns ``{variant: [one record per round]}`` with ``ms_per_step``
    (wall), ``cpu_ms_per_step`` (process CPU time, all threads) and ``peak_memory_mb`` (:func:`peak_memory`).
    Interleaving spreads any change of machine load over all variants alike.
    """
    from probattn.training import train

    out: dict[str, list[dict[str, float]]] = {v: [] for v in configs}
    for r in range(rounds):
        for variant, config in configs.items():
            if progress is not None:
                progress(f"timing round {r + 1}/{rounds}: {variant}")
            with peak_memory(_device(config)) as memory:
                # the per-step cost of training: a distillation first (adapt_steps) is a one-off, not timed here
                result = train(config.replace(max_steps=steps, warmup_steps=0, eval_every=0, adapt_steps=0),
                               progress=False, log=lambda _: None, evaluate=False, splits=splits)
            t = result.metrics["train"]
            out[variant].append({"ms_per_step": 1000 * t["seconds_per_step"],
                                 "cpu_ms_per_step": 1000 * t["cpu_seconds_per_step"],
                                 "peak_memory_mb": memory["mb"]})
    return out


def _device(config) -> torch.device:
    if config.device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(config.device)


def evaluation_data(config, ood_examples: int | None):
    """``(splits of config's data, OOD set or None)``.

    Rotten Tomatoes: Amazon Fine Food reviews, cut to a fixed random subset of ``ood_examples``. A user's
    ``--data FILE``: ``--ood FILE`` (or ``amazon``) when given, else no OOD set.
    """
    from probattn.data import load_amazon_fine_food
    from probattn.training.data import load_ood, load_splits

    splits = load_splits(config)
    if config.data == "rotten_tomatoes" or config.ood == "amazon":
        ood = load_amazon_fine_food() if config.ood is None else load_ood(config, splits.label_names)
    else:
        ood = load_ood(config, splits.label_names)
    if ood is not None and ood_examples is not None:
        if ood_examples < 1:
            raise ValueError(f"--ood-examples {ood_examples}: must be >= 1")
        if ood_examples < len(ood):
            keep = torch.randperm(len(ood), generator=torch.Generator().manual_seed(0))[:ood_examples]
            ood = ood.subset(sorted(keep.tolist()), name=f"{ood.name}:{ood_examples}")
    return splits, ood


def _labelled(config, group_column: str | None):
    """The whole labelled set (for folds): Rotten Tomatoes (groups = movies) or the user's file."""
    from probattn.data import load_file
    from probattn.data.sources import load_rotten_tomatoes

    if config.data == "rotten_tomatoes":
        if group_column is not None:
            raise ValueError("--group-column: Rotten Tomatoes is always grouped by movie; drop the flag")
        return load_rotten_tomatoes()
    return load_file(config.data, text_column=config.text_column, label_column=config.label_column,
                     text_pair_column=config.text_pair_column, group_column=group_column)


class CompareStudy(Study):
    """``probattn compare`` (and the experiments built on it: ``alignment``, ``self-attentive``)."""

    name = "compare"
    title = "probattn compare"
    output = "probattn-compare"
    variants: ClassVar[dict[str, Any]] = VARIANTS
    default_variants = DEFAULT_VARIANTS
    default_seeds = DEFAULT_SEEDS
    tables = TABLES
    claims = CLAIMS
    supports_folds = True

    def __init__(self, *, name: str = "compare", title: str = "probattn compare", preset: str | None = None,
                 tables: tuple[Table, ...] | None = None, default_variants: tuple[str, ...] | None = None,
                 default_seeds: tuple[int, ...] | None = None, output: str | None = None,
                 max_steps: int | None = None, ood_examples: int = 2000) -> None:
        self.name, self.title, self.fixed_preset = name, title, preset
        self.tables = tables or TABLES
        self.default_variants = default_variants or DEFAULT_VARIANTS
        self.default_seeds = default_seeds or DEFAULT_SEEDS
        self.output = output or self.output
        self.max_steps, self.ood_examples = max_steps, ood_examples

    # -- flags and options ------------------------------------------------------------------------------------
    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--max-steps", type=int, default=self.max_steps,
                            help="optimizer steps per run at most (default: the preset's)")
        parser.add_argument("--eval-every", type=int, default=None,
                            help=f"model selection: validation every N steps, best checkpoint kept (default "
                                 f"{SELECTION['eval_every']}; 0 = off, the last step)")
        parser.add_argument("--patience", type=int, default=None,
                            help=f"early stopping after N validations without improvement (default "
                                 f"{SELECTION['patience']}; 0 = never)")
        parser.add_argument("--ood-examples", type=int, default=self.ood_examples,
                            help="evaluate on a fixed random subset of this many out-of-domain texts (0 = all)")
        parser.add_argument("--timing-rounds", type=int, default=3,
                            help="rounds of the interleaved timing pass (0 = skip it)")
        parser.add_argument("--timing-steps", type=int, default=20, help="training steps per variant and round")
        parser.add_argument("--max-train-examples", type=int, default=None, help="train on a random subset")
        if self.fixed_preset is not None:
            return
        parser.add_argument("--preset", default=DEFAULT_PRESET, choices=list(PRESETS),
                            help="; ".join(f"{k}: {v}" for k, v in PRESET_HELP.items()))
        parser.add_argument("--data", default=None,
                            help="your CSV / JSONL / Parquet file instead of Rotten Tomatoes (needs --text-column "
                                 "and --label-column)")
        parser.add_argument("--text-column", default=None, help="--data FILE: the text column")
        parser.add_argument("--label-column", default=None, help="--data FILE: the label column")
        parser.add_argument("--ood", default=None,
                            help="out-of-domain test file with the same columns and labels (or 'amazon' for "
                                 "binary sentiment); Rotten Tomatoes uses Amazon by default")
        parser.add_argument("--max-length", type=int, default=None, help="tokens per text (None = the preset's)")
        parser.add_argument("--device", default="auto", help="auto, cpu or cuda[:N]")

    def extra_overrides(self, args: argparse.Namespace) -> dict[str, Any]:
        """TrainConfig options a subclass sets from its own flags."""
        return {}

    def options(self, args: argparse.Namespace) -> dict[str, Any]:
        preset = self.fixed_preset or args.preset
        if preset not in PRESETS:
            raise ValueError(f"--preset {preset!r}: choose one of {', '.join(PRESETS)}")
        data = getattr(args, "data", None)
        if data is not None and (args.text_column is None or args.label_column is None):
            raise ValueError(f"--data {data}: also give --text-column and --label-column")
        if args.timing_rounds < 0 or args.timing_steps < 1:
            raise ValueError(f"--timing-rounds {args.timing_rounds} / --timing-steps {args.timing_steps}: need "
                             "rounds >= 0 and steps >= 1")
        overrides = {k: v for k, v in (
            ("max_steps", args.max_steps), ("max_train_examples", args.max_train_examples),
            ("max_length", getattr(args, "max_length", None)), ("data", data),
            ("text_column", getattr(args, "text_column", None)), ("label_column", getattr(args, "label_column", None)),
            ("ood", getattr(args, "ood", None)),
            ("device", args.device if getattr(args, "device", "auto") != "auto" else None),
            ("eval_every", args.eval_every), ("patience", SELECTION["patience"] if args.patience is None
                                                           else args.patience)) if v is not None}
        overrides.update(self.extra_overrides(args))
        options = {"preset": preset, "overrides": overrides, "ood_examples": args.ood_examples or None,
                   "auto_eval_every": "eval_every" not in overrides,  # neither --eval-every nor the study's own
                   "timing_rounds": args.timing_rounds, "timing_steps": args.timing_steps}
        self.config(options, "softmax", 0)  # bad options fail here, naming the flag
        return options

    def config(self, options: dict[str, Any], variant: str, seed: int):
        from probattn.training import TrainConfig

        return TrainConfig.from_dict({**PRESETS[options["preset"]], "data_seed": options.get("split_seed", 0),
                                      **options["overrides"], **VARIANTS[variant], "seed": seed}, source=self.name)

    # -- data ---------------------------------------------------------------------------------------------------
    def prepare(self, options: dict[str, Any], *, output: Path, log: Callable[[str], None]) -> dict[str, Any]:
        config = self.config(options, "softmax", 0)
        splits, ood = evaluation_data(config, options["ood_examples"])
        labelled = _labelled(config, options.get("group_column"))
        prepared = {"splits": splits, "ood": ood, "labelled": labelled, "states": None, "config": config}
        if config.model == "minilm-states":  # the frozen part once, up front (cached on disk)
            from probattn.hf.states import STORE

            began = time.perf_counter()
            sets = [labelled, *([ood] if ood is not None else [])]
            encoded = [STORE.encode(s.texts, s.text_pairs, max_length=config.max_length, log=log) for s in sets]
            prepared["states"] = (labelled, encoded[0])
            truncated = sum(e.truncated for e in encoded)
            if truncated:
                log(f"{truncated} texts are longer than {config.max_length} MiniLM tokens and were cut (--max-length)")
            log(f"frozen MiniLM token states ready in {time.perf_counter() - began:.0f} s")
            self._register(prepared, splits)
        return prepared

    def labelled_size(self, prepared: dict[str, Any]) -> int | None:
        labelled = prepared["labelled"]
        return len(labelled) if labelled is not None else None

    def _register(self, prepared: dict[str, Any], splits) -> None:
        """Make the split's texts known to the MiniLM state store as rows of the encoded labelled set."""
        if prepared["states"] is None or prepared["labelled"] is None:
            return
        from probattn.hf.states import STORE

        full, encoded = prepared["states"]
        if "row_of" not in prepared:
            pairs = full.text_pairs or [None] * len(full)
            prepared["row_of"] = {(t, p): i for i, (t, p) in enumerate(zip(full.texts, pairs))}
        row_of = prepared["row_of"]
        diagnosed = splits.test.subset(range(min(DIAGNOSTIC_EXAMPLES, len(splits.test))))  # the attention probe's
        for data in (splits.train, splits.validation, splits.test, diagnosed):
            pairs = data.text_pairs or [None] * len(data)
            rows = [row_of[(t, p)] for t, p in zip(data.texts, pairs)]
            STORE.alias(data.texts, data.text_pairs, max_length=prepared["config"].max_length, source=encoded,
                        rows=rows)

    def splits(self, prepared: dict[str, Any], split: Split):
        """The fixed split of 0.2.0 (``split.fold`` None) or fold ``split.fold`` of the labelled set."""
        from probattn.data import DataSplits

        if split.fold is None:
            return prepared["splits"]
        labelled = prepared["labelled"]
        if labelled is None:
            raise ValueError("--folds: this data has no single labelled set to fold")
        groups = labelled.groups if (split.group_column or prepared["config"].data == "rotten_tomatoes") else None
        assign = fold_assignment(len(labelled), split.folds, split.seed, groups)
        train, validation, test = fold_indices(assign, split.fold, seed=split.seed, groups=groups)
        return DataSplits(labelled.subset(train), labelled.subset(validation), labelled.subset(test))

    def describe(self, prepared: dict[str, Any], options: dict[str, Any]) -> str:
        config, splits, ood = prepared["config"], prepared["splits"], prepared["ood"]
        data = "Rotten Tomatoes, split by movie" if config.data == "rotten_tomatoes" else config.data
        labelled = prepared["labelled"]
        sizes = (f"{len(labelled)} labelled rows; fixed split: " if labelled is not None else "") + \
            f"train {len(splits.train)}, validation {len(splits.validation)}, test {len(splits.test)}"
        ood_name = (f"{len(ood)} {'Amazon Fine Food reviews' if 'amazon' in ood.name else ood.name}"
                    if ood is not None else "none")
        every = (f"{auto_eval_every(len(splits.train), config.batch_size)} steps on the fixed split"
                 if options.get("auto_eval_every") else f"{config.eval_every} steps")
        selection = (f"model selection: validation every {every}, best checkpoint kept, patience {config.patience}"
                     if options.get("auto_eval_every") or config.eval_every else "no model selection (the last step)")
        return (f"Preset `{options['preset']}` ({PRESET_HELP.get(options['preset'], '')}); at most {config.max_steps} "
                f"steps of {config.batch_size}, {selection}. Data: {data} ({sizes}); out of domain: {ood_name}.")

    # -- runs -----------------------------------------------------------------------------------------------------
    def baselines(self, prepared: dict[str, Any], options: dict[str, Any], split: Split, *,
                  log: Callable[[str], None]) -> dict[str, dict[str, Any]]:
        from probattn.experiments.baselines import run_baselines

        splits = self.splits(prepared, split)
        self._register(prepared, splits)
        config = prepared["config"]
        return run_baselines(splits, prepared["ood"], minilm=config.model == "minilm-states",
                             max_length=config.max_length, log=log)

    def run(self, prepared: dict[str, Any], options: dict[str, Any], spec: RunSpec, *,
            log: Callable[[str], None]) -> dict[str, Any]:
        splits = self.splits(prepared, spec.split)
        self._register(prepared, splits)
        config = self.config(options, spec.variant, spec.seed)
        if options.get("auto_eval_every"):
            config = config.replace(eval_every=auto_eval_every(len(splits.train), config.batch_size))
        desc = f"{spec.variant} seed {spec.seed}" + (f" fold {spec.split.fold}" if spec.split.fold is not None else "")
        return train_and_measure(config, splits, prepared["ood"], log=log, progress=spec.progress, desc=desc)

    def progress_line(self, record: dict[str, Any]) -> str:
        parts = []
        for name, label in (("test", ""), ("ood", "OOD ")):
            m = record.get("sets", {}).get(name, {}).get("metrics")
            if m:
                parts.append(f"{label}accuracy {m['accuracy']:.3f}, {label}ECE {m['ece']:.3f}")
        if record.get("epochs") is not None:
            parts.append(f"{record['epochs']:.1f} epochs")
        return "; ".join(parts)

    def after_runs(self, prepared: dict[str, Any], options: dict[str, Any], variants: list[str], *, output: Path,
                   log: Callable[[str], None]) -> dict[str, Any] | None:
        if not options["timing_rounds"]:
            return None
        configs = {v: self.config(options, v, 0) for v in variants}
        self._register(prepared, prepared["splits"])
        return {"rounds": timing_pass(configs, rounds=options["timing_rounds"], steps=options["timing_steps"],
                                      splits=prepared["splits"], progress=log),
                "steps": options["timing_steps"], "threads": torch.get_num_threads()}

    def _cost(self, report: Report):
        from probattn.experiments.runner import _cell

        timing = report.extra
        if not timing:
            return None
        return {v: {m.key: _cell({(i, None): {"metrics": r} for i, r in enumerate(rounds)}, m, None) for m in COST}
                for v, rounds in timing["rounds"].items()}

    def sections(self, report: Report) -> list[str]:
        cost, timing = self._cost(report), report.extra
        if cost is None:
            return []
        rounds = len(next(iter(timing["rounds"].values())))
        lines = ["| variant | " + " | ".join(m.label for m in COST) + " |", "|---|" + "---|" * len(COST)]
        for v, row in cost.items():
            cells = []
            for m in COST:
                c = row[m.key]
                interval = (f" [{c['low']:.1f}, {c['high']:.1f}]" if math.isfinite(c["low"]) else "")
                cells.append(f"{c['mean']:.1f}{interval}" if math.isfinite(c["mean"]) else "n/a")
            lines.append(f"| {v} | " + " | ".join(cells) + " |")
        return [f"## Cost (dedicated timing pass: {timing['steps']} steps × {rounds} interleaved rounds per variant, "
                f"{timing['threads']} thread(s); interval over rounds; never ranked)\n\n" + "\n".join(lines) + "\n"]

    def figures(self, report: Report, output: Path) -> list[Path]:
        from probattn.experiments import plots

        runs, found = report.runs, report.variants
        splits = {"in_domain": "in domain", **({"ood": "out of domain"} if any("ood" in r.get("reliability", {})
                                                                                for r in runs) else {})}
        paths = [plots.reliability_figure(runs, found, splits, output / "reliability.png"),
                 plots.per_layer_figure(runs, found, {"head_diversity": "head diversity (JS, bits)",
                                                      "explained_away_0.1": "explained-away fraction (m̃<0.1)",
                                                      "kq_alignment": "key/query distance (MMD²)"},
                                        output / "per_layer.png")]
        cost = self._cost(report)
        if cost is not None:
            paths.append(plots.summary_figure(cost, [v for v in found if v in cost], [], COST, output / "cost.png",
                                              title="cost (timing pass)"))
        return paths


STUDY = CompareStudy()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from probattn.experiments import runner

    runner.add_arguments(parser, STUDY)


def run(args: argparse.Namespace) -> int:
    return main(STUDY, args)


def compare(*, output: str | Path = "probattn-compare", study: CompareStudy | None = None,
            command: str | None = None, **flags: Any) -> dict[str, Any]:
    """Python entry: ``compare(variants=[...], seeds=[...], preset="tiny", max_steps=50, output=...)``; keyword
    arguments are the command's flags with underscores. Returns the content of ``results.json``."""
    from probattn.experiments import runner

    study = study or STUDY
    parser = argparse.ArgumentParser()
    runner.add_arguments(parser, study)
    args = parser.parse_args(["--output", str(output), "--no-progress"])
    unknown = sorted(set(flags) - set(vars(args)))
    if unknown:
        raise ValueError(f"compare(): unknown options {unknown}; use the flags of `probattn {study.name}`")
    for key, value in flags.items():
        setattr(args, key, value)
    return run_study(study, args, command=command or f"probattn {study.name} (Python)")
