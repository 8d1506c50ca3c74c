"""``probattn compare``: train attention variants over seeds on real data and compare them.

With no arguments: the variants softmax, doubly, hybrid, repulsive (SVGD) and alignment (CT) on Rotten
Tomatoes (split by movie) with Amazon Fine Food reviews as the out-of-domain set, 3 seeds each, using the
``tiny`` preset (a small encoder trained from scratch; 6 minutes on 2 shared CPU cores, see docs/experiments.md).

For every (variant, seed) it trains with :func:`probattn.training.train`, then measures on the in-domain
test split and on Amazon: accuracy, ECE (15 bins), NLL, Brier and reliability data; on the first 256 test
sentences, per layer: head diversity, explained-away fraction and key/query alignment distance
(:mod:`probattn.experiments.diagnostics`); and the training's time per step and peak memory
(:func:`peak_memory`). The run is saved at once (``runs/<variant>-seed<k>.json``), then ``results.md``,
``results.json`` are rebuilt from all saved runs, so a later failure never loses it (the figures are drawn
at the end); ``--resume`` skips finished runs (and redraws everything when all are finished).
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import gc
import json
import math
import shlex
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

from probattn.benchmarking import _reset_peak_rss, _status_kib
from probattn.experiments import plots
from probattn.experiments.diagnostics import collect_layer_statistics, layer_metrics
from probattn.experiments.results import (
    RUNS_DIR,
    Column,
    best_per_column,
    format_table,
    load_runs,
    run_path,
    save_run,
    summarize,
    summary_records,
    write_json,
)

__all__ = ["COLUMNS", "PRESETS", "VARIANTS", "add_arguments", "add_run_arguments", "apply_threads", "compare",
           "peak_memory", "run", "run_compare"]

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

# preset -> TrainConfig options (sizes, steps). Measured budgets are in docs/experiments.md.
PRESETS: dict[str, dict[str, Any]] = {
    "tiny": {"model": "tiny", "embed_dim": 64, "num_heads": 4, "num_layers": 2, "max_length": 32,
             "batch_size": 32, "lr": 1e-2, "warmup_steps": 30, "max_steps": 200},
    "self-attentive": {"model": "self-attentive", "embed_dim": 64, "num_heads": 30, "max_length": 48,
                       "batch_size": 32, "lr": 5e-4, "dropout": 0.3, "max_grad_norm": 0.5, "max_steps": 300,
                       "repulsive_alpha": 0.01},
    "minilm": {"model": "minilm", "max_length": 64, "batch_size": 16, "lr": 5e-5, "warmup_steps": 20,
               "max_steps": 150, "dropout": 0.1},
}

COLUMNS_IN_DOMAIN = [
    Column("accuracy_id", "accuracy", True), Column("ece_id", "ECE", False),
    Column("nll_id", "NLL", False), Column("brier_id", "Brier", False),
]
COLUMNS_OOD = [
    Column("accuracy_ood", "accuracy", True), Column("ece_ood", "ECE", False),
    Column("nll_ood", "NLL", False), Column("brier_ood", "Brier", False),
]
COLUMNS_ATTENTION = [
    Column("head_diversity", "head diversity (JS, bits)", True),
    Column("explained_away_0.1", "explained away (m̃<0.1)", False),
    Column("explained_away", "explained away (m̃<0.01)", False),
    Column("kq_alignment", "k/q distance (MMD²)", False, 4),
    Column("ms_per_step", "ms / step", False, 1),
    Column("peak_memory_mb", "peak memory (MiB)", False, 1),
]
COLUMNS = COLUMNS_IN_DOMAIN + COLUMNS_OOD + COLUMNS_ATTENTION
TABLES = {"In domain: Rotten Tomatoes test (held-out movies)": COLUMNS_IN_DOMAIN,
          "Out of domain: Amazon Fine Food reviews": COLUMNS_OOD,
          "Attention and cost": COLUMNS_ATTENTION}
DIAGNOSTIC_EXAMPLES = 256


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


def _split_metrics(predictions, suffix: str) -> tuple[dict[str, float], dict[str, Any]]:
    from probattn.metrics import calibration

    result = calibration(predictions.probs, predictions.labels, n_bins=15)
    metrics = {f"accuracy_{suffix}": result.accuracy, f"ece_{suffix}": result.ece,
               f"nll_{suffix}": result.nll, f"brier_{suffix}": result.brier}
    bins = {k: getattr(result, k) for k in ("bin_edges", "bin_confidence", "bin_accuracy", "bin_count")}
    return metrics, bins


def train_and_measure(config, ood) -> dict[str, Any]:
    """Train one run and measure it; returns the run record (without ``variant``/``seed``)."""
    from probattn.training import train

    device = torch.device("cuda" if config.device == "auto" and torch.cuda.is_available()
                          else ("cpu" if config.device == "auto" else config.device))
    began, cpu_began = time.perf_counter(), time.process_time()
    with peak_memory(device) as memory:
        result = train(config, progress=False)
    metrics, reliability = {}, {}
    for split, data in (("id", result.splits.test), ("ood", ood)):
        if data is None:
            continue
        values, bins = _split_metrics(result.predict(data), split)
        metrics.update(values)
        reliability["in_domain" if split == "id" else "ood"] = bins
    test = result.splits.test
    summaries = collect_layer_statistics(result.model, result.encode(test.texts[:DIAGNOSTIC_EXAMPLES], None),
                                         max_examples=DIAGNOSTIC_EXAMPLES)
    per_layer_values = [layer_metrics(s) for s in summaries]
    per_layer = {k: [v[k] for v in per_layer_values]
                 for k in ("head_diversity", "explained_away_0.1", "explained_away", "kq_alignment", "lin_redundancy")}
    for key, values in per_layer.items():
        finite = [v for v in values if math.isfinite(v)]
        metrics[key] = sum(finite) / len(finite) if finite else math.nan
    seconds = result.metrics["train"]["seconds_per_step"]
    metrics["ms_per_step"] = 1000 * seconds if seconds is not None else math.nan
    metrics["peak_memory_mb"] = memory["mb"]
    return {"metrics": metrics, "reliability": reliability, "per_layer": per_layer,
            "config": config.to_dict(), "seconds": time.perf_counter() - began,
            "cpu_seconds": time.process_time() - cpu_began,
            "final_loss": result.metrics["train"]["final_loss"]}


def _majority(data) -> float:
    counts = torch.bincount(torch.tensor(data.labels))
    return float(counts.max() / counts.sum())


def evaluation_data(config, ood_examples: int | None):
    """``(in-domain test split of config's data, Amazon OOD set)``; OOD cut to a fixed random subset."""
    from probattn.data import load_amazon_fine_food
    from probattn.training.data import load_splits

    ood = load_amazon_fine_food()
    if ood_examples is not None:
        if ood_examples < 1:
            raise ValueError(f"--ood-examples {ood_examples}: must be >= 1")
        if ood_examples < len(ood):
            keep = torch.randperm(len(ood), generator=torch.Generator().manual_seed(0))[:ood_examples]
            ood = ood.subset(sorted(keep.tolist()), name=f"{ood.name}:{ood_examples}")
    return load_splits(config).test, ood


def write_summary(output: Path, *, variants: Sequence[str], header: dict[str, Any],
                  failed: Sequence[dict[str, Any]] = (), tables: dict[str, list[Column]] | None = None,
                  figures: bool = True) -> str:
    """Rebuild ``results.md``, ``results.json`` (and with ``figures`` ``reliability.png``, ``per_layer.png``)
    from the saved runs.

    ``tables``: ``{title: columns}`` of the Markdown file (default :data:`TABLES`).
    """
    runs = [r for r in load_runs(output) if r["variant"] in variants]
    if not runs:
        return ""
    tables = tables or TABLES
    columns_all = [c for cols in tables.values() for c in cols]
    summary = summarize(runs, columns_all, order=variants)
    text = [f"# {header['title']}\n\nCommand: `{header['command']}`\n",
            f"Preset `{header['preset']}`; variants {', '.join(variants)}; seeds {header['seeds']}. "
            f"Out of domain: {header['ood_examples']} Amazon reviews. "
            f"Majority class: in domain {header['majority_id']:.3f}, out of domain {header['majority_ood']:.3f}. "
            "Cells are mean ± std over seeds (sample std); **bold** = best per column; "
            "↑ higher is better, ↓ lower is better.\n"]
    for title, columns in tables.items():
        text.append(f"## {title}\n\n{format_table(summary.loc[:, [c.key for c in columns]], columns)}\n")
    text.append("![reliability](reliability.png)\n\n![per layer](per_layer.png)\n")
    if failed:
        text.append("## Failed runs\n\n" + "\n".join(f"- {f['variant']} seed {f['seed']}: {f['error']}"
                                                     for f in failed) + "\n")
    markdown = "\n".join(text)
    (output / "results.md").write_text(markdown)
    best = best_per_column(summary, columns_all)
    write_json(output / "results.json", {**header, "variants": list(variants),
                                         "summary": summary_records(summary, columns_all), "best": best,
                                         "failed": list(failed), "runs": runs})
    if not figures:
        return markdown
    plots.reliability_figure(runs, [v for v in variants if v in summary.index],
                             {"in_domain": "Rotten Tomatoes", "ood": "Amazon (OOD)"}, output / "reliability.png")
    plots.per_layer_figure(runs, [v for v in variants if v in summary.index],
                           {"head_diversity": "head diversity (JS, bits)",
                            "explained_away_0.1": "explained-away fraction (m̃<0.1)",
                            "explained_away": "explained-away fraction (m̃<0.01)"}, output / "per_layer.png")
    return markdown


def compare(*, variants: Sequence[str] = DEFAULT_VARIANTS, seeds: Sequence[int] = DEFAULT_SEEDS,
            preset: str = "tiny", output: str | Path = "probattn-compare", resume: bool = False,
            overrides: dict[str, Any] | None = None, ood_examples: int | None = 2000,
            command: str = "probattn compare",
            title: str = "probattn compare", tables: dict[str, list[Column]] | None = None) -> dict[str, Any]:
    """Train every (variant, seed), save each run as it finishes, and write the summary files.

    ``overrides`` are :class:`probattn.training.TrainConfig` options applied over the preset (e.g.
    ``{"max_steps": 50}``); ``ood_examples`` evaluates on a fixed random subset of that many Amazon reviews
    (None = all 5,000); ``title`` and ``tables`` shape ``results.md`` (see :func:`write_summary`). Returns the
    content of ``results.json``. Raises ``ValueError`` for unknown variants/presets, and when ``output`` already
    holds runs but ``resume`` is False.
    """
    from probattn.training import TrainConfig

    unknown = [v for v in variants if v not in VARIANTS]
    if unknown or not variants:
        raise ValueError(f"--variants {' '.join(unknown) or '(none)'}: choose from {', '.join(VARIANTS)}")
    if len(set(variants)) != len(variants) or len(set(seeds)) != len(seeds) or not seeds:
        raise ValueError("--variants and --seeds must be non-empty and list each value once")
    if preset not in PRESETS:
        raise ValueError(f"--preset {preset!r}: choose one of {', '.join(PRESETS)}")
    output = Path(output)
    existing = sorted((output / RUNS_DIR).glob("*.json")) if (output / RUNS_DIR).is_dir() else []
    if existing and not resume:
        raise ValueError(f"--output {output} already holds {len(existing)} finished run(s); pass --resume to "
                         "skip them and run the rest, or choose another --output")
    base = {**PRESETS[preset], **(overrides or {})}
    configs = {(v, s): TrainConfig.from_dict({**base, **VARIANTS[v], "seed": s}, source="compare")
               for v in variants for s in seeds}
    test, ood = evaluation_data(next(iter(configs.values())), ood_examples)
    header = {"title": title, "command": command, "preset": preset, "seeds": list(seeds), "overrides": overrides or {},
              "ood_examples": len(ood),
              "majority_id": _majority(test), "majority_ood": _majority(ood)}
    failed: list[dict[str, Any]] = []
    todo = list(configs.items())
    for i, ((variant, seed), config) in enumerate(todo, 1):
        path = run_path(output, variant, seed)
        if path.exists():
            saved = json.loads(path.read_text())
            diff = TrainConfig.from_dict(saved["config"], source=str(path)).differences(config)
            if diff:
                raise ValueError(f"--resume: {path} was made with other options ({diff}); use the same options "
                                 "or another --output")
            print(f"[{i}/{len(todo)}] {variant} seed {seed}: finished before, skipped", flush=True)
            continue
        print(f"[{i}/{len(todo)}] {variant} seed {seed}: training {config.max_steps} steps ...", flush=True)
        try:
            record = train_and_measure(config, ood)
        except Exception as exc:  # keep going: the other runs are independent; reported at the end
            failed.append({"variant": variant, "seed": seed, "error": f"{type(exc).__name__}: {exc}"})
            print(f"[{i}/{len(todo)}] {variant} seed {seed}: FAILED: {type(exc).__name__}: {exc}", flush=True)
            continue
        save_run(output, {"variant": variant, "seed": seed, **record})
        m = record["metrics"]
        print(f"[{i}/{len(todo)}] {variant} seed {seed}: accuracy {m['accuracy_id']:.3f} (OOD "
              f"{m.get('accuracy_ood', math.nan):.3f}), ECE {m['ece_id']:.3f} (OOD {m.get('ece_ood', math.nan):.3f}), "
              f"{m['ms_per_step']:.1f} ms/step, {record['seconds']:.1f} s ({record['cpu_seconds']:.1f} s CPU)",
              flush=True)
        write_summary(output, variants=variants, header=header, failed=failed, tables=tables, figures=False)
    markdown = write_summary(output, variants=variants, header=header, failed=failed, tables=tables)
    if not markdown:
        raise RuntimeError(f"no run finished; see the errors above ({len(failed)} failed)")
    print(markdown)
    return json.loads((output / "results.json").read_text())


def add_run_arguments(parser: argparse.ArgumentParser, *, seeds: Sequence[int], max_steps: int | None,
                      output: str, ood_examples: int) -> None:
    """The options every compare-based command shares: ``--seeds``, ``--max-steps``, ``--output``, ``--resume``,
    ``--ood-examples``, ``--threads`` (defaults given here)."""
    parser.add_argument("--seeds", nargs="+", type=int, default=list(seeds),
                        help=f"seeds (default {' '.join(map(str, seeds))})")
    steps = "the preset's" if max_steps is None else str(max_steps)
    parser.add_argument("--max-steps", type=int, default=max_steps, help=f"optimizer steps per run (default {steps})")
    parser.add_argument("--output", default=output, help=f"output folder (default ./{output})")
    parser.add_argument("--resume", action="store_true", help="skip the runs already finished in --output")
    parser.add_argument("--ood-examples", type=int, default=ood_examples,
                        help=f"evaluate on a fixed random subset of this many of the 5,000 Amazon reviews "
                             f"(default {ood_examples}; 0 = all)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (default: 1 for the small from-scratch presets, whose small matrices "
                             "gain nothing from threads and lose much when the CPU is shared; torch's default otherwise)")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--variants", nargs="+", default=list(DEFAULT_VARIANTS), metavar="NAME",
                        help=f"variants to compare (default: {' '.join(DEFAULT_VARIANTS)}; "
                             f"available: {', '.join(VARIANTS)})")
    add_run_arguments(parser, seeds=DEFAULT_SEEDS, max_steps=None, output="probattn-compare", ood_examples=2000)
    parser.add_argument("--preset", default="tiny", choices=sorted(PRESETS),
                        help="tiny: small encoder from scratch (default); minilm: fine-tune pretrained MiniLM")
    parser.add_argument("--model", default=None, choices=("tiny", "minilm"), help="override the preset's model")
    parser.add_argument("--max-train-examples", type=int, default=None, help="train on a random subset")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda[:N]")


def apply_threads(threads: int | None, preset: str) -> None:
    """``torch.set_num_threads``: ``threads``, or 1 for the small from-scratch presets, else leave torch's."""
    threads = threads if threads is not None else (1 if preset in ("tiny", "self-attentive") else None)
    if threads is not None:
        if threads < 1:
            raise ValueError(f"--threads {threads}: must be >= 1")
        torch.set_num_threads(threads)


def run_compare(args: argparse.Namespace, *, name: str, preset: str, variants: Sequence[str],
                overrides: dict[str, Any], title: str = "probattn compare",
                tables: dict[str, list[Column]] | None = None) -> int:
    """Run :func:`compare` with the options of :func:`add_run_arguments`; exit code 1 when a run failed.

    ``name``: the command as typed after ``probattn`` (``"compare"``, ``"experiment alignment"``); the command
    line recorded in ``results.md`` is the real one when the process was started as ``probattn name ...``.
    """
    apply_threads(args.threads, preset)
    if args.max_steps is not None:
        overrides = {**overrides, "max_steps": args.max_steps}
    words = name.split()
    typed = sys.argv[1:1 + len(words)] == words
    command = shlex.join(["probattn", *(sys.argv[1:] if typed else words)])
    result = compare(variants=variants, seeds=args.seeds, preset=preset, output=args.output, resume=args.resume,
                     overrides=overrides, ood_examples=args.ood_examples or None, command=command, title=title,
                     tables=tables)
    print(f"wrote {Path(args.output) / 'results.md'}, results.json, reliability.png, per_layer.png")
    return 1 if result["failed"] else 0


def run(args: argparse.Namespace) -> int:
    overrides = {k: v for k, v in (("model", args.model), ("max_train_examples", args.max_train_examples),
                                   ("device", args.device if args.device != "auto" else None)) if v is not None}
    return run_compare(args, name="compare", preset=args.preset, variants=args.variants, overrides=overrides)
